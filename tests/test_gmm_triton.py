"""Triton kernels of the Gaussian mixtures (triton_kernels/gmm.py) against the C++ CPU op and the
pure-PyTorch reference (forward, and backward against autograd of the reference).

Runs on CUDA tensors when there is a GPU, else on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py
sets it before triton is imported), where each program instance costs ~10 ms: shapes stay small.
"""
import math
import os

import pytest
import torch

pytest.importorskip("triton")

import fastlv  # noqa: E402  (registers torch.ops.fastlv_C)
from fastlv import triton_kernels as tk  # noqa: E402
from fastlv.ops.gmm import diag_gmm_log_prob_ref, gmm_log_prob_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1", allow_module_level=True)

needs_cpp = pytest.mark.skipif(fastlv.backends("cpu")["cpp"] != "available",
                               reason=f"C++ op unavailable: {fastlv.backends('cpu')['cpp']}")

LO, HI = -1.0, 0.75  # clamp of log_sigma ~ N(0, 1): active for about 40% of the entries
# (forward, backward) tolerances as (rtol, atol); backward atol is relative to the largest gradient.
TOL = {torch.float32: ((1e-5, 1e-5), (1e-4, 1e-5)), torch.float64: ((1e-10, 1e-10), (1e-10, 1e-10))}
PER_ELEMENT_CASES = [(batch, K) for K in (1, 20, 64) for batch in ((231,), (3, 7, 11), ())]
FULL_FRAME_CASES = [(batch, K, D) for K in (1, 20, 64) for batch, D in (((7,), 1), ((2, 3), 37), ((3,), 150))]


def mixture_inputs(batch, K, D=None, dtype=torch.float32, seed=0):
    """(x, logits, mu, log_sigma) on DEVICE: per-element ([*batch], [*batch, K]) or full-frame
    ([*batch, D], [*batch, K], [*batch, K, D]). Every third component from the second has logit -inf."""
    gen = torch.Generator().manual_seed(seed)
    frame = (D,) if D is not None else ()
    x = 2 * torch.randn((*batch, *frame), generator=gen, dtype=torch.float64)
    logits = torch.randn((*batch, K), generator=gen, dtype=torch.float64)
    logits[..., 1::3] = -math.inf
    mu = torch.randn((*batch, K, *frame), generator=gen, dtype=torch.float64)
    log_sigma = torch.randn((*batch, K, *frame), generator=gen, dtype=torch.float64)
    return [t.to(DEVICE, dtype) for t in (x, logits, mu, log_sigma)]


def assert_close(actual, expected, tol, scale=1.0):
    rtol, atol = tol
    torch.testing.assert_close(actual.cpu().to(expected.dtype), expected.cpu(), rtol=rtol, atol=atol * scale)


def ref_grads(ref, inputs, grad, lo, hi):
    """Autograd of the reference w.r.t. (x, logits, mu, log_sigma)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = ref(*leaves, log_sigma_min=lo, log_sigma_max=hi)
    return torch.autograd.grad(out, leaves, grad)


def check_against_cpp(name, inputs, lo, hi, dtype):
    """Triton forward and backward vs torch.ops.fastlv_C.<name> on CPU copies."""
    fwd_tol, bwd_tol = TOL[dtype]
    cpp_fwd, cpp_bwd = getattr(torch.ops.fastlv_C, name), getattr(torch.ops.fastlv_C, name + "_backward")
    cpu_inputs = [t.cpu() for t in inputs]
    expected = cpp_fwd(*cpu_inputs, lo, hi)
    outputs = getattr(tk, name)(*inputs, lo, hi)
    for actual, exp in zip(outputs, expected):
        assert actual.shape == exp.shape and actual.dtype == dtype
        assert_close(actual, exp, fwd_tol)
    grad = torch.randn(expected[0].shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    expected_grads = cpp_bwd(grad, *cpu_inputs, *expected[1:], lo, hi)
    grads = getattr(tk, name + "_backward")(grad.to(DEVICE), *inputs, *outputs[1:], lo, hi)
    for actual, exp in zip(grads, expected_grads):
        assert actual.shape == exp.shape and actual.dtype == dtype
        assert_close(actual, exp, bwd_tol, scale=exp.abs().max().item())


def check_against_ref(name, ref, inputs, lo, hi):
    """Triton forward vs the reference, backward vs autograd of the reference (fp32)."""
    fwd_tol, bwd_tol = TOL[torch.float32]
    outputs = getattr(tk, name)(*inputs, lo, hi)
    assert_close(outputs[0], ref(*inputs, log_sigma_min=lo, log_sigma_max=hi), fwd_tol)
    grad = torch.randn(outputs[0].shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    grads = getattr(tk, name + "_backward")(grad, *inputs, *outputs[1:], lo, hi)
    for actual, exp in zip(grads, ref_grads(ref, inputs, grad, lo, hi)):
        assert torch.isfinite(actual).all()
        assert_close(actual, exp, bwd_tol, scale=exp.abs().max().item())
    disabled = inputs[1] == -math.inf  # components with logit -inf take no gradient at all
    assert (grads[1][disabled] == 0).all() and (grads[2][disabled] == 0).all()


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,K", PER_ELEMENT_CASES)
def test_gmm_matches_cpp(batch, K, dtype):
    check_against_cpp("gmm_log_prob", mixture_inputs(batch, K, dtype=dtype), LO, HI, dtype)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,K,D", FULL_FRAME_CASES)
def test_diag_gmm_matches_cpp(batch, K, D, dtype):
    check_against_cpp("diag_gmm_log_prob", mixture_inputs(batch, K, D, dtype=dtype), LO, HI, dtype)


@pytest.mark.parametrize("lo,hi", [(LO, HI), (-math.inf, math.inf)])
@pytest.mark.parametrize("K", [1, 20, 64])
def test_gmm_matches_ref(K, lo, hi):
    check_against_ref("gmm_log_prob", gmm_log_prob_ref, mixture_inputs((5, 47), K), lo, hi)


@pytest.mark.parametrize("lo,hi", [(LO, HI), (-math.inf, math.inf)])
@pytest.mark.parametrize("K", [1, 20])
def test_diag_gmm_matches_ref(K, lo, hi):
    check_against_ref("diag_gmm_log_prob", diag_gmm_log_prob_ref, mixture_inputs((2, 3), K, 37), lo, hi)


@pytest.mark.parametrize("dtype,eps", [(torch.float16, 2**-10), (torch.bfloat16, 2**-7)])
@pytest.mark.parametrize("name,ref,D", [("gmm_log_prob", gmm_log_prob_ref, None),
                                        ("diag_gmm_log_prob", diag_gmm_log_prob_ref, 37)])
def test_half_inputs_use_fp32_math(name, ref, D, dtype, eps):
    """Half inputs: outputs in the input dtype, equal to fp32 math on the same (rounded) inputs up to
    about the output rounding."""
    inputs = mixture_inputs((3, 41) if D is None else (3, 5), 20, D, dtype=dtype)
    inputs32 = [t.float() for t in inputs]
    outputs = getattr(tk, name)(*inputs, LO, HI)
    assert all(t.dtype == dtype for t in outputs)
    expected = ref(*inputs32, log_sigma_min=LO, log_sigma_max=HI)
    assert_close(outputs[0], expected, (eps, eps))
    grad = torch.randn(outputs[0].shape, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    grads = getattr(tk, name + "_backward")(grad, *inputs, *outputs[1:], LO, HI)
    for actual, exp in zip(grads, ref_grads(ref, inputs32, grad.float(), LO, HI)):
        assert actual.dtype == dtype
        assert_close(actual, exp, (2 * eps, 2 * eps), scale=exp.abs().max().item())


@pytest.mark.parametrize("name", ["gmm_log_prob", "diag_gmm_log_prob"])
def test_non_contiguous_inputs(name):
    """Expanded, transposed and sliced inputs give the results of their contiguous copies."""
    D = 5 if name == "diag_gmm_log_prob" else None
    strided = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in mixture_inputs((4, 3), 3, D)]
    strided[1] = strided[1][:, :1].expand_as(strided[1])  # logits broadcast over the second dimension
    assert not any(t.is_contiguous() for t in strided)
    contiguous = [t.contiguous() for t in strided]
    for actual, expected in zip(getattr(tk, name)(*strided, LO, HI), getattr(tk, name)(*contiguous, LO, HI)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    outputs = getattr(tk, name)(*contiguous, LO, HI)
    grad = torch.ones(outputs[0].shape, device=DEVICE).expand(outputs[0].shape)
    backward = getattr(tk, name + "_backward")
    for actual, expected in zip(backward(grad, *strided, *outputs[1:], LO, HI),
                                backward(grad.contiguous(), *contiguous, *outputs[1:], LO, HI)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name,D", [("gmm_log_prob", None), ("diag_gmm_log_prob", 3)])
def test_empty_batch(name, D):
    inputs = mixture_inputs((0, 5), 4, D)
    log_prob, lse_components, lse_logits = getattr(tk, name)(*inputs, LO, HI)
    assert log_prob.shape == lse_components.shape == lse_logits.shape == (0, 5)
    grads = getattr(tk, name + "_backward")(torch.zeros(0, 5, device=DEVICE), *inputs, lse_components, lse_logits, LO, HI)
    assert [g.shape for g in grads] == [t.shape for t in inputs]


def test_diag_gmm_empty_frames():
    """D == 0: every frame has log p = 0 and zero gradients."""
    inputs = mixture_inputs((4,), 3, 0)
    log_prob, lse_components, lse_logits = tk.diag_gmm_log_prob(*inputs, LO, HI)
    torch.testing.assert_close(log_prob, torch.zeros(4, device=DEVICE))
    grads = tk.diag_gmm_log_prob_backward(torch.ones(4, device=DEVICE), *inputs, lse_components, lse_logits, LO, HI)
    torch.testing.assert_close(grads[1], torch.zeros(4, 3, device=DEVICE))


@pytest.mark.parametrize("name,D", [("gmm_log_prob", None), ("diag_gmm_log_prob", 3)])
def test_mismatched_shapes_raise(name, D):
    x, logits, mu, log_sigma = mixture_inputs((6,), 4, D)
    with pytest.raises(ValueError, match="shapes do not match"):
        getattr(tk, name)(x, logits, mu[:5], log_sigma, LO, HI)
