"""Differential fuzzing: every public op on every backend that runs here, against its pure-PyTorch
reference, forward and backward, on random shapes (including 0 and 1 sizes), broadcast and expanded
(stride-0) views, non-contiguous inputs, fp32/fp64 and values up to the documented limits.

NaN/inf policy (enforced here): finite inputs inside the documented range give finite outputs and
gradients; a NaN input gives a NaN output for the element it belongs to.
FASTLV_FUZZ_EXAMPLES sets the number of cases per op and backend (default 200).
"""
import math
import os
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import fastlv
from fastlv.ops import diag_gmm_log_prob, diag_gmm_log_prob_ref, gmm_log_prob, gmm_log_prob_ref

EXAMPLES = int(os.environ.get("FASTLV_FUZZ_EXAMPLES", "200"))
CASES_RUN = Counter()
CPU_BACKENDS = [b for b, state in fastlv.backends("cpu").items() if state == "available"]


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` in another memory layout."""
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "strided":
        return torch.stack([t, torch.full_like(t, math.nan)], -1)[..., 0]  # every other element
    return t


@st.composite
def mixture_case(draw, full_frame: bool):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    # full-frame kernels run one program per frame (~10 ms each under the Triton interpreter): fewer frames
    batch = draw(st.lists(st.integers(0, 3 if full_frame else 5), min_size=0, max_size=2 if full_frame else 3))
    K = draw(st.integers(1, 40))
    D = draw(st.integers(1, 24)) if full_frame else None
    scale = draw(st.sampled_from([1.0, 100.0, 1e4]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    event = (D,) if full_frame else ()
    comp = (K, D) if full_frame else (K,)
    x = (torch.rand((*batch, *event), generator=g, dtype=dtype) * 2 - 1) * scale
    logits = torch.randn((*batch, K), generator=g, dtype=dtype) * draw(st.sampled_from([1.0, 30.0]))
    if K > 1 and draw(st.booleans()):
        logits[..., 1:] = torch.where(torch.rand((*batch, K - 1), generator=g, dtype=dtype) < 0.3, -math.inf, logits[..., 1:])
    mu = (torch.rand((*batch, *comp), generator=g, dtype=dtype) * 2 - 1) * scale
    log_sigma = torch.rand((*batch, *comp), generator=g, dtype=dtype) * 40 - 20 if scale > 1 else \
        torch.randn((*batch, *comp), generator=g, dtype=dtype)
    if batch and draw(st.booleans()):  # broadcast: one set of parameters for the leading dim (stride 0)
        mu = mu[:1].expand_as(mu)
    kinds = [draw(st.sampled_from(["contiguous", "transposed", "strided"])) for _ in range(4)]
    return [layout(t, k) for t, k in zip((x, logits, mu, log_sigma), kinds)]


def check_against_reference(op, ref, inputs, backend, name):
    leaves = [t.detach().requires_grad_() for t in inputs]
    ref_leaves = [t.detach().clone().requires_grad_() for t in inputs]
    want = ref(*ref_leaves)
    weights = torch.rand(want.shape, dtype=want.dtype)
    with fastlv.use_backend(backend):  # forward and backward on the same backend
        out = op(*leaves)
        got = torch.autograd.grad((out * weights).sum(), leaves) if out.numel() else None
    tol = dict(rtol=1e-4, atol=1e-3) if out.dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want, **tol)
    if got is not None:
        expected = torch.autograd.grad((want * weights).sum(), ref_leaves)
        for g, e in zip(got, expected):
            assert torch.isfinite(g).all()
            # gradients scale with 1/sigma^2 (up to e^40 here): compare relative to their size
            torch.testing.assert_close(g, e, rtol=tol["rtol"] * 10, atol=tol["atol"] * (1 + e.abs().max().item()))
    CASES_RUN[(name, backend)] += 1


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_gmm_log_prob(backend):
    @FUZZ
    @given(mixture_case(full_frame=False))
    def run(inputs):
        check_against_reference(gmm_log_prob, gmm_log_prob_ref, inputs, backend, "gmm_log_prob")
    run()
    assert CASES_RUN[("gmm_log_prob", backend)] >= EXAMPLES


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_diag_gmm_log_prob(backend):
    @FUZZ
    @given(mixture_case(full_frame=True))
    def run(inputs):
        check_against_reference(diag_gmm_log_prob, diag_gmm_log_prob_ref, inputs, backend, "diag_gmm_log_prob")
    run()
    assert CASES_RUN[("diag_gmm_log_prob", backend)] >= EXAMPLES


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_inputs_propagate(backend):
    x, logits, mu, log_sigma = torch.randn(6), torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 3)
    x[1], logits[2, 0], mu[3, 1], log_sigma[4, 2] = math.nan, math.nan, math.nan, math.nan
    with fastlv.use_backend(backend):
        out = gmm_log_prob(x, logits, mu, log_sigma)
    assert torch.isnan(out[1:5]).all() and torch.isfinite(out[[0, 5]]).all()


def teardown_module(module):
    print("\nfuzz cases run per (op, backend):", dict(CASES_RUN))
