"""Differential fuzzing: every public op of fastlv.ops on every backend that runs here (ref, cpp, triton
under TRITON_INTERPRET=1), against its pure-PyTorch reference, forward and backward, on random shapes
(including 0 and 1 sizes), broadcast and expanded (stride-0) views, non-contiguous and transposed inputs,
fp32/fp64 and values up to the documented limits.

NaN/inf policy (enforced here, per op):

- Finite inputs inside an op's documented range give finite outputs and finite gradients. The ranges
  fuzzed: GMMs |x|, |mu| <= 1e4 and log_sigma in [-20, 20] (logits may be -inf for all but one
  component); Gaussian ops means up to 1e3 and log-variances in [-20, 20] (fp32) or [-80, 80] (fp64),
  variances of precision_weighted in [e^-20, e^20], one of a pair possibly 0; gated_causal_conv1d any
  |x| <= 1e3 (the gate saturates); masked_linear any finite x, weight and bias, and masked weights may
  even be inf or NaN (they are never read).
- A NaN input gives NaN in the output elements that depend on it and leaves the others finite (the
  free-bits floor and the clamps do not swallow a NaN).

The reference of each op is the oracle; gaussian_rsample and gaussian_sample_kl get eps explicitly for
the differential check, and their in-kernel noise path is checked separately (finite, and equal to the
reference generator's samples). FASTLV_FUZZ_EXAMPLES sets the number of cases per op and backend
(default 200); shapes are small because the Triton interpreter costs ~10 ms per program instance.
"""
import math
import os
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import fastlv
from fastlv.ops import (diag_gmm_log_prob, diag_gmm_log_prob_ref, gated_causal_conv1d, gated_causal_conv1d_ref,
                        gaussian_kl, gaussian_kl_ref, gaussian_log_prob, gaussian_log_prob_ref, gaussian_rsample,
                        gaussian_rsample_ref, gaussian_sample_kl, gaussian_sample_kl_ref, gmm_log_prob,
                        gmm_log_prob_ref, masked_linear, masked_linear_ref, precision_weighted,
                        precision_weighted_ref)

EXAMPLES = int(os.environ.get("FASTLV_FUZZ_EXAMPLES", "200"))
CASES_RUN = Counter()
CPU_BACKENDS = [b for b, state in fastlv.backends("cpu").items() if state == "available"]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LAYOUTS = ["contiguous", "transposed", "strided"]


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` in another memory layout."""
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "strided":
        filler = torch.full_like(t, math.nan) if t.is_floating_point() else torch.zeros_like(t)
        return torch.stack([t, filler], -1)[..., 0]  # every other element
    return t


def arrange(draw, *tensors):
    """Each tensor in a drawn memory layout."""
    return [None if t is None else layout(t, draw(st.sampled_from(LAYOUTS))) for t in tensors]


def generator(draw) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))


def shape(draw, max_dims=3, max_size=4):
    return tuple(draw(st.lists(st.integers(0, max_size), min_size=0, max_size=max_dims)))


def broadcast_view(draw, t: torch.Tensor) -> torch.Tensor:
    """t, or its first entry along a drawn dimension expanded back (a stride-0 view of the same shape)."""
    if t.dim() == 0 or t.shape[0] == 0 or not draw(st.booleans()):
        return t
    dim = draw(st.integers(0, t.dim() - 1))
    return t.narrow(dim, 0, 1).expand_as(t) if t.shape[dim] > 0 else t


def tolerances(dtype):
    return dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)


def check_against_reference(name, backend, op, ref, inputs, differentiable):
    """op(*inputs) on ``backend`` against ref(*inputs): outputs, and the gradients of a random weighting
    of the outputs w.r.t. the inputs flagged in ``differentiable`` (None inputs skipped). Both must be
    finite; tolerances are relative to the largest expected value (gradients scale with 1/sigma^2)."""
    def leaves_of(clone):
        return [None if t is None else (t.detach().clone() if clone else t.detach()).requires_grad_(d)
                for t, d in zip(inputs, differentiable)]

    def as_tuple(out):
        return out if isinstance(out, tuple) else (out,)

    leaves, ref_leaves = leaves_of(False), leaves_of(True)
    want = as_tuple(ref(*ref_leaves))
    weight_gen = torch.Generator().manual_seed(0)  # deterministic, so hypothesis can replay a failing case
    weights = [torch.rand(w.shape, generator=weight_gen, dtype=w.dtype) for w in want]
    with fastlv.use_backend(backend):  # forward and backward on the same backend
        got = as_tuple(op(*leaves))
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        total = sum((g * w).sum() for g, w in zip(got, weights))
        grads = torch.autograd.grad(total, wrt, allow_unused=True) if total.requires_grad else [None] * len(wrt)
    tol = tolerances(got[0].dtype)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all(), f"{name}: non-finite output"
        torch.testing.assert_close(g, w, rtol=tol["rtol"], atol=tol["atol"] * (1 + scale_of(w)))
    if not total.requires_grad:
        return count(name, backend)
    ref_total = sum((w * v).sum() for w, v in zip(want, weights))
    ref_wrt = [t for t in ref_leaves if t is not None and t.requires_grad]
    expected = torch.autograd.grad(ref_total, ref_wrt, allow_unused=True)
    # Rounding in autograd of the reference scales with the largest gradient of the case, not with each
    # tensor's own: e.g. precision_weighted with var_a = 0 has an exactly-zero d/dvar_b that autograd
    # gets as the difference of two ~1e9 terms (~1e-7).
    grad_scale = max(scale_of(e) for e in expected if e is not None)
    for g, e, t in zip(grads, expected, wrt):
        g = torch.zeros_like(t) if g is None else g
        e = torch.zeros_like(t) if e is None else e
        assert torch.isfinite(g).all(), f"{name}: non-finite gradient"
        torch.testing.assert_close(g, e, rtol=tol["rtol"] * 10, atol=tol["atol"] * (1 + grad_scale))
    count(name, backend)


def scale_of(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def count(name, backend):
    CASES_RUN[(name, backend)] += 1


# ------------------------------------------------------------------------------------------ mixtures

@st.composite
def mixture_case(draw, full_frame: bool):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    # full-frame kernels run one program per frame (~10 ms each under the Triton interpreter): fewer frames
    batch = draw(st.lists(st.integers(0, 3 if full_frame else 5), min_size=0, max_size=2 if full_frame else 3))
    K = draw(st.integers(1, 40))
    D = draw(st.integers(1, 24)) if full_frame else None
    scale = draw(st.sampled_from([1.0, 100.0, 1e4]))
    g = generator(draw)
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
    return arrange(draw, x, logits, mu, log_sigma)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_gmm_log_prob(backend):
    @FUZZ
    @given(mixture_case(full_frame=False))
    def run(inputs):
        check_against_reference("gmm_log_prob", backend, gmm_log_prob, gmm_log_prob_ref, inputs, [True] * 4)
    run()
    assert CASES_RUN[("gmm_log_prob", backend)] >= EXAMPLES


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_diag_gmm_log_prob(backend):
    @FUZZ
    @given(mixture_case(full_frame=True))
    def run(inputs):
        check_against_reference("diag_gmm_log_prob", backend, diag_gmm_log_prob, diag_gmm_log_prob_ref, inputs,
                                [True] * 4)
    run()
    assert CASES_RUN[("diag_gmm_log_prob", backend)] >= EXAMPLES


# ---------------------------------------------------------------------------------------- Gaussians

@st.composite
def latent_case(draw, prior: bool | None = None, noise: bool = False, operands: int = 2):
    """(tensors, keyword options) of a Gaussian latent op: mu_q, logvar_q (or the z, mu, logvar of
    log_prob when operands=3), then mu_p, logvar_p when there is a prior, then eps when ``noise``.
    Each tensor has a shape that broadcasts to the drawn [..., D] (some with size-1 or missing dims)."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    full = (*shape(draw, max_dims=2), draw(st.integers(0, 6)))
    g = generator(draw)
    lv_range = draw(st.sampled_from([2.0, 20.0] + ([80.0] if dtype == torch.float64 else [])))
    mu_scale = draw(st.sampled_from([1.0, 1e3]))
    has_prior = draw(st.booleans()) if prior is None else prior

    def operand_shape():  # the full shape, a suffix of it, or with some dims reduced to 1
        dims = list(full[draw(st.integers(0, len(full) - 1)):])
        return tuple(1 if s and draw(st.integers(0, 3)) == 0 else s for s in dims)

    def mean():
        return broadcast_view(draw, (torch.rand(operand_shape(), generator=g, dtype=dtype) * 2 - 1) * mu_scale)

    def logvar():
        return broadcast_view(draw, (torch.rand(operand_shape(), generator=g, dtype=dtype) * 2 - 1) * lv_range)

    tensors = [mean(), mean(), logvar()] if operands == 3 else [mean(), logvar()]
    if has_prior:
        tensors += [mean(), logvar()]
    if noise:
        tensors.append(torch.randn(operand_shape(), generator=g, dtype=dtype))
    options = {}
    if draw(st.booleans()):  # clamps, sometimes inside the drawn ranges so they bite
        options.update(mu_min=-draw(st.sampled_from([0.5, 1e4])), mu_max=draw(st.sampled_from([0.5, 1e4])),
                       logvar_min=-draw(st.sampled_from([1.0, 100.0])), logvar_max=draw(st.sampled_from([1.0, 100.0])))
    return arrange(draw, *tensors), options


def kl_options(draw):
    options = {"elementwise": draw(st.booleans())}
    if draw(st.booleans()):
        options["free_bits"] = draw(st.sampled_from([0.0, 0.1, 2.0]))
    options["reduction"] = draw(st.sampled_from(["none", "none", "sum"]))
    return options


@st.composite
def kl_case(draw):
    tensors, options = draw(latent_case())
    return tensors, {**options, **kl_options(draw)}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_gaussian_kl(backend):
    @FUZZ
    @given(kl_case())
    def run(case):
        tensors, options = case
        check_against_reference("gaussian_kl", backend, lambda *t: gaussian_kl(*t, **options),
                                lambda *t: gaussian_kl_ref(*t, **options), tensors, [True] * len(tensors))
    run()
    assert CASES_RUN[("gaussian_kl", backend)] >= EXAMPLES


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_gaussian_rsample(backend):
    @FUZZ
    @given(latent_case(prior=False, noise=True))
    def run(case):
        (mu, logvar, eps), options = case
        check_against_reference("gaussian_rsample", backend, lambda *t: gaussian_rsample(*t, **options),
                                lambda *t: gaussian_rsample_ref(*t, **options), [mu, logvar, eps], [True, True, False])
    run()
    assert CASES_RUN[("gaussian_rsample", backend)] >= EXAMPLES


@st.composite
def sample_kl_case(draw):
    tensors, options = draw(latent_case(noise=True))
    options = {**options, **kl_options(draw)}
    if len(tensors) == 5 and draw(st.booleans()):
        options["posterior"] = "precision_weighted"
    return tensors, options


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_gaussian_sample_kl(backend):
    @FUZZ
    @given(sample_kl_case())
    def run(case):
        tensors, options = case
        *params, eps = tensors

        def call(fn):
            return lambda *t: fn(*t[:-1], eps=t[-1], **options)
        check_against_reference("gaussian_sample_kl", backend, call(gaussian_sample_kl), call(gaussian_sample_kl_ref),
                                tensors, [True] * len(params) + [False])
    run()
    assert CASES_RUN[("gaussian_sample_kl", backend)] >= EXAMPLES


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_in_kernel_noise_is_finite_and_the_reference_stream(backend):
    """The eps-free path of gaussian_rsample / gaussian_sample_kl: finite samples, KL and gradients at the
    limits of the range, the same samples as the reference generator, on odd sizes around the vector width."""
    for seed, (n, d) in enumerate([(1, 1), (3, 7), (5, 17), (2, 64), (0, 3)]):
        g = torch.Generator().manual_seed(seed)
        for dtype, lv_range in ((torch.float32, 20.0), (torch.float64, 80.0)):
            mu = ((torch.rand(n, d, generator=g, dtype=dtype) * 2 - 1) * 1e3).requires_grad_()
            logvar = ((torch.rand(n, d, generator=g, dtype=dtype) * 2 - 1) * lv_range).requires_grad_()
            prior = [torch.zeros(n, d, dtype=dtype), torch.full((n, d), lv_range / 2, dtype=dtype)]
            with fastlv.use_backend(backend):
                z = gaussian_rsample(mu, logvar, generator=torch.Generator().manual_seed(seed))
                z2, kl = gaussian_sample_kl(mu, logvar, *prior, generator=torch.Generator().manual_seed(seed),
                                            posterior="precision_weighted")
                grads = torch.autograd.grad(z.sum() + z2.sum() + kl.sum(), [mu, logvar]) if n else []
            want = gaussian_rsample_ref(mu, logvar, generator=torch.Generator().manual_seed(seed))
            for t in (z, z2, kl, *grads):
                assert torch.isfinite(t).all()
            torch.testing.assert_close(z, want.detach(), rtol=1e-4, atol=1e-4 * (1 + scale_of(want)))
    count("in-kernel noise", backend)


@st.composite
def log_prob_case(draw):
    tensors, options = draw(latent_case(prior=False, operands=3))
    return tensors, {**options, **{k: v for k, v in kl_options(draw).items() if k != "free_bits"}}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_gaussian_log_prob(backend):
    @FUZZ
    @given(log_prob_case())
    def run(case):
        tensors, options = case
        check_against_reference("gaussian_log_prob", backend, lambda *t: gaussian_log_prob(*t, **options),
                                lambda *t: gaussian_log_prob_ref(*t, **options), tensors, [True] * 3)
    run()
    assert CASES_RUN[("gaussian_log_prob", backend)] >= EXAMPLES


@st.composite
def precision_case(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    full = shape(draw)
    g = generator(draw)
    log_range = draw(st.sampled_from([1.0, 20.0]))

    def operand(variance, may_be_zero=False):
        dims = tuple(1 if draw(st.integers(0, 3)) == 0 else s for s in full[draw(st.integers(0, len(full))):])
        t = torch.rand(dims, generator=g, dtype=dtype) * 2 - 1
        t = torch.exp(t * log_range) if variance else t * 1e3
        if may_be_zero and draw(st.booleans()):  # var_a = 0 in places (var_b never: one of a pair may be 0)
            t = torch.where(torch.rand(dims, generator=g) < 0.3, torch.zeros((), dtype=dtype), t)
        return broadcast_view(draw, t)
    return arrange(draw, operand(False), operand(True, may_be_zero=True), operand(False), operand(True))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_precision_weighted(backend):
    @FUZZ
    @given(precision_case())
    def run(tensors):
        check_against_reference("precision_weighted", backend, precision_weighted, precision_weighted_ref, tensors,
                                [True] * 4)
    run()
    assert CASES_RUN[("precision_weighted", backend)] >= EXAMPLES


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_precision_weighted_with_a_zero_variance(backend):
    """One variance of a pair 0 (documented as allowed): the combination is that exact Gaussian."""
    mu_a, mu_b = torch.tensor([0.5, -2.0, 3.0, 0.0]), torch.tensor([1.5, 4.0, -1.0, 0.0])
    var_a, var_b = torch.tensor([0.0, 2.0, 0.0, 1.0]), torch.tensor([3.0, 0.0, 1e-30, 0.0])
    with fastlv.use_backend(backend):
        mu, var = precision_weighted(mu_a, var_a, mu_b, var_b)
    torch.testing.assert_close(mu, torch.tensor([0.5, 4.0, 3.0, 0.0]))
    torch.testing.assert_close(var, torch.zeros(4))
    count("precision_weighted zero variance", backend)


# ------------------------------------------------------------------------------------- gated conv

@st.composite
def conv_case(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    B, C_in, C_out = draw(st.integers(0, 3)), draw(st.integers(0, 5)), draw(st.integers(1, 4))
    T = draw(st.integers(0, 9))
    k, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    g = generator(draw)
    scale = draw(st.sampled_from([1.0, 1e3]))
    x = torch.randn(B, C_in, T, generator=g, dtype=dtype) * scale
    weight = torch.randn(2 * C_out, C_in, k, generator=g, dtype=dtype) / max(C_in * k, 1) ** 0.5
    bias = torch.randn(2 * C_out, generator=g, dtype=dtype)
    cond_kind = draw(st.sampled_from([None, "local", "global", "batch-expanded"]))
    cond = None
    if cond_kind is not None:
        cond = torch.randn(B, 2 * C_out, 1 if cond_kind == "global" else T, generator=g, dtype=dtype)
        cond = broadcast_view(draw, cond) if cond_kind == "batch-expanded" else cond
    x = x[:1].expand_as(x) if B and draw(st.booleans()) else x  # stride-0 batch
    x_layout = draw(st.sampled_from(LAYOUTS + ["time-major"]))  # time-major: the zero-copy layout
    x = x.permute(2, 0, 1).contiguous().permute(1, 2, 0) if x_layout == "time-major" else layout(x, x_layout)
    weight, bias, cond = arrange(draw, weight, bias, cond)
    return [x, weight, bias, cond], dilation


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_gated_causal_conv1d(backend):
    @FUZZ
    @given(conv_case())
    def run(case):
        tensors, dilation = case

        def call(fn):
            return lambda x, w, b, c: fn(x, w, b, dilation, c)
        check_against_reference("gated_causal_conv1d", backend, call(gated_causal_conv1d),
                                call(gated_causal_conv1d_ref), tensors, [True] * 4)
    run()
    assert CASES_RUN[("gated_causal_conv1d", backend)] >= EXAMPLES


# ----------------------------------------------------------------------------------- masked linear

@st.composite
def masked_linear_case(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    batch, n_in, n_out = shape(draw, max_dims=2), draw(st.integers(0, 7)), draw(st.integers(0, 7))
    g = generator(draw)
    x = torch.randn(*batch, n_in, generator=g, dtype=dtype) * draw(st.sampled_from([1.0, 1e3]))
    weight = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    keep = torch.rand(n_out, n_in, generator=g) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    if draw(st.booleans()):  # masked weights are never read: even inf / NaN there is harmless
        weight = torch.where(keep, weight, torch.tensor(draw(st.sampled_from([math.inf, math.nan])), dtype=dtype))
    mask = keep.to(draw(st.sampled_from([torch.bool, torch.float32, torch.int64, torch.uint8])))
    bias = torch.randn(n_out, generator=g, dtype=dtype) if draw(st.booleans()) else None
    x = broadcast_view(draw, x)
    x, weight, bias, mask = arrange(draw, x, weight, bias, mask)
    return [x, weight, mask, bias], draw(st.sampled_from([None, "relu"]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzz_masked_linear(backend):
    @FUZZ
    @given(masked_linear_case())
    def run(case):
        tensors, activation = case

        def call(fn):
            return lambda x, w, m, b: fn(x, w, m, b, activation)
        check_against_reference("masked_linear", backend, call(masked_linear), call(masked_linear_ref), tensors,
                                [True, True, False, True])
    run()
    assert CASES_RUN[("masked_linear", backend)] >= EXAMPLES


# ------------------------------------------------------------------ regressions found by the fuzzer

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gated_conv_without_input_channels_is_the_bias_gate(backend):
    """C_in = 0 (with an empty batch, where F.conv1d got the output shape wrong): out = gate(bias)."""
    bias = torch.tensor([0.5, -1.0, 2.0, 0.3])
    for B, T in ((0, 0), (0, 3), (2, 3)):
        x, weight = torch.zeros(B, 0, T), torch.zeros(4, 0, 2)
        want = (torch.tanh(bias[:2]) * torch.sigmoid(bias[2:])).view(1, 2, 1).expand(B, 2, T)
        with fastlv.use_backend(backend):
            torch.testing.assert_close(gated_causal_conv1d(x, weight, bias), want)
        torch.testing.assert_close(gated_causal_conv1d_ref(x, weight, bias), want)


def test_precision_weighted_reference_broadcasts_both_outputs():
    """The variance does not involve the means, but both outputs have the broadcast shape of all four."""
    mu, var = precision_weighted_ref(torch.zeros(1), torch.ones(1), torch.zeros(0), torch.tensor(2.0))
    assert mu.shape == var.shape == (0,)
    mu, var = precision_weighted_ref(torch.zeros(3, 2), torch.ones(2), torch.zeros(2), torch.ones(()))
    assert mu.shape == var.shape == (3, 2)


# ---------------------------------------------------------------------------------- NaN propagation

def body_and_tail(n_inputs):
    """NaN spots in each of n inputs of shape [3, 19]: one in the vectorized body of the CPU kernels and
    one in their scalar tail (19 = 16 + 3 = 2 * 8 + 3 lanes)."""
    return [(i, spot) for i in range(n_inputs) for spot in ((0, 3), (2, 17))]


def nan_cases():
    """(op name, call, inputs, index of the input set to NaN, element set to NaN, output elements that
    must be NaN as a boolean mask or index) for every public op."""
    r = torch.randn
    return {
        "gmm_log_prob": (lambda x, l, m, s: gmm_log_prob(x, l, m, s),
                         [r(6), r(6, 3), r(6, 3), r(6, 3)], [(0, (1,)), (1, (2, 0)), (2, (3, 1)), (3, (4, 2))],
                         lambda i, e: e[0]),
        "diag_gmm_log_prob": (lambda x, l, m, s: diag_gmm_log_prob(x, l, m, s),
                              [r(4, 5), r(4, 3), r(4, 3, 5), r(4, 3, 5)],
                              [(0, (1, 4)), (1, (2, 0)), (2, (3, 2, 1)), (3, (0, 1, 3))], lambda i, e: e[0]),
        "gaussian_kl": (lambda a, b, c, d: gaussian_kl(a, b, c, d, free_bits=0.1, mu_min=-5, logvar_max=5),
                        [r(3, 19) for _ in range(4)], body_and_tail(4), lambda i, e: e[0]),
        "gaussian_kl elementwise": (lambda a, b: gaussian_kl(a, b, elementwise=True),
                                    [r(3, 19) for _ in range(2)], body_and_tail(2), lambda i, e: e),
        "gaussian_rsample": (lambda m, v, e: gaussian_rsample(m, v, e, mu_max=3.0),
                             [r(3, 19) for _ in range(3)], body_and_tail(3), lambda i, e: e),
        "gaussian_sample_kl": (lambda a, b, c, d, e: gaussian_sample_kl(
                                   a, b, c, d, eps=e, posterior="precision_weighted", free_bits=0.5)[1],
                               [r(3, 19) for _ in range(5)], body_and_tail(4), lambda i, e: e[0]),
        "gaussian_log_prob": (lambda z, m, v: gaussian_log_prob(z, m, v, logvar_min=-3.0),
                              [r(3, 19) for _ in range(3)], body_and_tail(3), lambda i, e: e[0]),
        "precision_weighted": (lambda a, b, c, d: precision_weighted(a, b, c, d)[0],
                               [r(3, 19), r(3, 19).exp(), r(3, 19), r(3, 19).exp()], body_and_tail(4),
                               lambda i, e: e),
        "gated_causal_conv1d": (lambda x, w, b: gated_causal_conv1d(x, w, b, 2),
                                [r(2, 3, 6), r(4, 3, 2), r(4)], [(0, (1, 2, 3))],
                                lambda i, e: (e[0], slice(None), [3, 5])),  # steps t and t + dilation
        "masked_linear": (lambda x, w, m: masked_linear(x, w, m),
                          [r(3, 4), r(5, 4), torch.ones(5, 4)], [(0, (1, 2)), (1, (3, 0))],
                          lambda i, e: (e[0], slice(None)) if i == 0 else (slice(None), e[0])),
    }


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(nan_cases()))
def test_nan_inputs_propagate(backend, name):
    torch.manual_seed(0)
    call, inputs, spots, affected = nan_cases()[name]
    for which, element in spots:
        poisoned = [t.clone() for t in inputs]
        poisoned[which][element] = math.nan
        with fastlv.use_backend(backend):
            out = call(*poisoned)
        expected = torch.zeros(out.shape, dtype=torch.bool)
        expected[affected(which, element)] = True
        assert torch.isnan(out[expected]).all(), f"{name}: NaN in input {which} at {element} did not propagate"
        assert torch.isfinite(out[~expected]).all(), f"{name}: NaN in input {which} leaked to other elements"
    count(f"NaN {name}", backend)


def teardown_module(module):
    print("\nfuzz cases run per (op, backend):", dict(sorted(CASES_RUN.items())))
