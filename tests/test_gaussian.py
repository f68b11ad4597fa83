"""fastlv.ops Gaussian latent ops (gaussian_kl, gaussian_rsample, gaussian_sample_kl, gaussian_log_prob,
precision_weighted) against torch.distributions and the references, on every backend that can run here
(ref, cpp, triton under the interpreter, cuda on a GPU); fastlv.nn.DiagGaussianLatent."""
import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import fastlv
from fastlv.nn import DiagGaussianLatent
from fastlv.ops import (gaussian_kl, gaussian_kl_ref, gaussian_log_prob, gaussian_rsample, gaussian_rsample_ref,
                        gaussian_sample_kl, gaussian_sample_kl_ref, precision_weighted, precision_weighted_ref)
from fastlv.ops.gaussian import philox4x32_10, standard_normal_ref

INF = math.inf


def params(shape, n=4, dtype=torch.float32, device="cpu", seed=0, requires_grad=False, scale=1.0):
    """n tensors: means ~ N(0, 1), log-variances ~ N(0, scale^2) alternating (mu_q, logvar_q, mu_p, logvar_p)."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(*shape, generator=g, dtype=dtype) * (1.0 if i % 2 == 0 else scale) for i in range(n)]
    return [t.to(device).requires_grad_(requires_grad) for t in out]


def normal(mu, logvar):
    return Normal(mu.double(), (0.5 * logvar.double()).exp())


def weighted_grads(fn, inputs, **kw):
    """Gradients of a weighted sum of every output of fn (weights break symmetries)."""
    outs = fn(*inputs, **kw)
    outs = outs if isinstance(outs, tuple) else (outs,)
    total = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
    return torch.autograd.grad(total, inputs)


# ---- KL ----

@pytest.mark.parametrize("shape", [(3, 5, 17), (40, 1), (2, 300)])
def test_kl_matches_torch_distributions(backend, shape):
    _, device = backend
    mu_q, logvar_q, mu_p, logvar_p = params(shape, device=device)
    oracle = kl_divergence(Independent(normal(mu_q, logvar_q), 1), Independent(normal(mu_p, logvar_p), 1))
    torch.testing.assert_close(gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).double(), oracle, rtol=1e-5, atol=1e-5)
    standard = kl_divergence(normal(mu_q, logvar_q), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu_q, logvar_q, elementwise=True).double(), standard, rtol=1e-5,
                               atol=1e-6)


def test_kl_gradients_match_reference(backend):
    _, device = backend
    inputs = params((6, 33), device=device, requires_grad=True)
    for kw in ({}, {"elementwise": True, "free_bits": 0.1}, {"mu_min": -0.5, "logvar_max": 0.5}):
        for got, want in zip(weighted_grads(gaussian_kl, inputs, **kw), weighted_grads(gaussian_kl_ref, inputs, **kw)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    two = inputs[:2]
    for got, want in zip(weighted_grads(gaussian_kl, two), weighted_grads(gaussian_kl_ref, two)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_kl_extreme_logvar(backend):
    """exp(logvar_q - logvar_p) up to e^16 under the [-8, 8] clamp, and unclamped log-variances of +-30."""
    _, device = backend
    n = 64
    logvar_q = torch.linspace(-30, 30, n).repeat(2, 1)
    logvar_p = logvar_q.flip(-1)
    mu_q, mu_p = torch.randn(2, n) * 3, torch.randn(2, n)
    inputs = [t.to(device).requires_grad_() for t in (mu_q, logvar_q, mu_p, logvar_p)]
    for kw in ({"logvar_min": -8.0, "logvar_max": 8.0, "mu_min": -8.0, "mu_max": 8.0}, {}):
        out = gaussian_kl(*inputs, elementwise=True, **kw)
        want = gaussian_kl_ref(*[t.detach().double() for t in inputs], elementwise=True, **kw)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), want, rtol=2e-5, atol=1e-5)
        assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.sum(), inputs))
    clamped = gaussian_kl(*inputs, elementwise=True, logvar_min=-8.0, logvar_max=8.0)
    assert clamped.max() > math.exp(16) / 2 * 0.99  # the e^16 ratio is reached and represented


def test_free_bits(backend):
    _, device = backend
    mu_q, logvar_q = params((4, 50), n=2, device=device, requires_grad=True, scale=0.3)
    mu_q.data *= 0.3
    raw = gaussian_kl(mu_q, logvar_q, elementwise=True)
    floored = gaussian_kl(mu_q, logvar_q, elementwise=True, free_bits=0.05)
    below = raw < 0.05
    assert below.any() and (~below).any()
    torch.testing.assert_close(floored, raw.clamp(min=0.05))
    g_mu, g_logvar = torch.autograd.grad(floored.sum(), (mu_q, logvar_q))
    assert (g_mu[below] == 0).all() and (g_logvar[below] == 0).all() and (g_logvar[~below] != 0).all()
    summed = gaussian_kl(mu_q, logvar_q, free_bits=0.05)
    torch.testing.assert_close(summed, floored.sum(-1))


def test_clamps_zero_gradient_outside(backend):
    _, device = backend
    mu_q, logvar_q, mu_p, logvar_p = params((3, 40), device=device, scale=6.0)
    mu_q = (mu_q * 6).requires_grad_()
    logvar_q.requires_grad_()
    bounds = dict(mu_min=-4.0, mu_max=4.0, logvar_min=-5.0, logvar_max=5.0)
    out = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, elementwise=True, **bounds)
    want = gaussian_kl(mu_q.clamp(-4, 4), logvar_q.clamp(-5, 5), mu_p.clamp(-4, 4), logvar_p.clamp(-5, 5),
                       elementwise=True)
    torch.testing.assert_close(out, want)
    g_mu, g_logvar = torch.autograd.grad(out.sum(), (mu_q, logvar_q))
    outside_mu, outside_lv = mu_q.abs() > 4, logvar_q.abs() > 5
    assert outside_mu.any() and outside_lv.any()
    assert (g_mu[outside_mu] == 0).all() and (g_logvar[outside_lv] == 0).all() and (g_mu[~outside_mu] != 0).all()


# ---- noise ----

def test_philox_known_answers():
    """Random123's known-answer vectors of Philox4x32-10, which every backend's generator implements."""
    def run(counter, key):
        return [int(x) for x in philox4x32_10(*(torch.tensor([c]) for c in counter), *key)]
    assert run((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert run((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_every_backend_draws_the_reference_noise(backend):
    """With mu = 0, logvar = 0 the sample is eps itself: the kernel's generator equals the reference's."""
    _, device = backend
    shape = (3, 7, 45)  # rows that straddle the 64-normal blocks
    torch.manual_seed(123)
    z = gaussian_rsample(torch.zeros(shape, device=device), torch.zeros(shape, device=device))
    torch.manual_seed(123)
    seed = fastlv.ops.gaussian.draw_seed(torch.device(device))
    torch.testing.assert_close(z.cpu(), standard_normal_ref(seed, z.numel()).view(shape), rtol=1e-5, atol=1e-5)


def test_cpu_generator_matches_the_reference_over_many_normals():
    """2^18 normals: every lane position, block and Box-Muller branch of the vectorized CPU generator
    (inline log and sin/cos(pi x)) against the PyTorch reference of the same definition."""
    n = 2**18
    torch.manual_seed(11)
    z = gaussian_rsample(torch.zeros(n), torch.zeros(n))
    torch.manual_seed(11)
    want = standard_normal_ref(fastlv.ops.gaussian.draw_seed(torch.device("cpu")), n)
    torch.testing.assert_close(z, want.to(z.dtype), rtol=2e-6, atol=2e-6)
    assert z.abs().max() > 4  # the tails (u near 0) are in the sample


def test_rsample_statistics_and_reproducibility(backend):
    _, device = backend
    n = 10**6
    mu = torch.full((n // 1000, 1000), 1.5, device=device)
    logvar = torch.full_like(mu, math.log(0.25))
    torch.manual_seed(0)
    z = gaussian_rsample(mu, logvar).double()
    mean, var = z.mean().item(), z.var().item()
    assert abs(mean - 1.5) < 4 * math.sqrt(0.25 / n)
    assert abs(var - 0.25) < 4 * 0.25 * math.sqrt(2 / (n - 1))
    kurtosis = (((z - mean) / math.sqrt(var)) ** 4).mean().item()
    assert abs(kurtosis - 3.0) < 4 * math.sqrt(24 / n)  # Gaussian shape, not only two moments
    small = mu[:4, :100]
    torch.manual_seed(7)
    first = gaussian_rsample(small, logvar[:4, :100])
    torch.manual_seed(7)
    assert torch.equal(first, gaussian_rsample(small, logvar[:4, :100]))
    assert not torch.equal(first, gaussian_rsample(small, logvar[:4, :100]))  # the next call differs
    torch.manual_seed(8)
    assert not torch.equal(first, gaussian_rsample(small, logvar[:4, :100]))
    gen = torch.Generator(device=device).manual_seed(5)
    from_gen = gaussian_rsample(small, logvar[:4, :100], generator=gen)
    torch.testing.assert_close(from_gen, gaussian_rsample_ref(small, logvar[:4, :100],
                                                              generator=torch.Generator(device=device).manual_seed(5)),
                               rtol=1e-5, atol=1e-5)


def test_backward_regenerates_the_forward_noise(backend):
    """d(sum z)/d logvar = sigma eps / 2 = (z - mu) / 2: the backward used the forward's eps."""
    _, device = backend
    mu_q, logvar_q, mu_p, logvar_p = params((5, 70), device=device, requires_grad=True, scale=0.5)
    z, kl = gaussian_sample_kl(mu_q, logvar_q, mu_p, logvar_p)
    (g_logvar,) = torch.autograd.grad(z.sum(), logvar_q)
    torch.testing.assert_close(g_logvar, 0.5 * (z - mu_q).detach(), rtol=1e-4, atol=1e-5)
    z2 = gaussian_rsample(mu_q, logvar_q)
    (g_logvar,) = torch.autograd.grad(z2.sum(), logvar_q)
    torch.testing.assert_close(g_logvar, 0.5 * (z2 - mu_q).detach(), rtol=1e-4, atol=1e-5)


# ---- fused step ----

@pytest.mark.parametrize("posterior", ["standard", "precision_weighted"])
def test_sample_kl_matches_reference(backend, posterior):
    _, device = backend
    inputs = params((4, 37), device=device, requires_grad=True)
    eps = params((4, 37), n=1, device=device, seed=1)[0]
    kw = dict(eps=eps, posterior=posterior, free_bits=0.02, mu_min=-1.5, logvar_max=1.0)
    z, kl = gaussian_sample_kl(*inputs, **kw)
    z_ref, kl_ref = gaussian_sample_kl_ref(*inputs, **kw)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(weighted_grads(gaussian_sample_kl, inputs, **kw),
                         weighted_grads(gaussian_sample_kl_ref, inputs, **kw)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_sample_kl_with_drawn_noise_matches_reference(backend):
    _, device = backend
    inputs = params((3, 64), device=device, requires_grad=True)
    torch.manual_seed(11)
    got = gaussian_sample_kl(*inputs, elementwise=True)
    torch.manual_seed(11)
    want = gaussian_sample_kl_ref(*inputs, elementwise=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    torch.manual_seed(11)
    grads = weighted_grads(gaussian_sample_kl, inputs, elementwise=True)
    torch.manual_seed(11)
    for g, w in zip(grads, weighted_grads(gaussian_sample_kl_ref, inputs, elementwise=True)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_precision_weighted_posterior_is_the_paper_update(backend):
    """STCN Eq. 11: the fused step samples from and takes the KL of the precision-weighted Gaussian."""
    _, device = backend
    mu_hat, logvar_hat, mu_p, logvar_p = params((3, 20), device=device)
    eps = params((3, 20), n=1, device=device, seed=2)[0]
    var_hat, var_p = logvar_hat.exp(), logvar_p.exp()
    mu, var = precision_weighted(mu_hat, var_hat, mu_p, var_p)
    torch.testing.assert_close(var, 1 / (1 / var_hat + 1 / var_p))
    torch.testing.assert_close(mu, var * (mu_hat / var_hat + mu_p / var_p))
    z, kl = gaussian_sample_kl(mu_hat, logvar_hat, mu_p, logvar_p, eps=eps, posterior="precision_weighted")
    torch.testing.assert_close(z, mu + var.sqrt() * eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl, gaussian_kl(mu, var.log(), mu_p, logvar_p), rtol=1e-5, atol=1e-5)


def test_precision_weighted_gradients_match_reference(backend):
    _, device = backend
    mu_a, logvar_a, mu_b, logvar_b = params((5, 21), device=device)
    inputs = [t.requires_grad_() for t in (mu_a, logvar_a.exp(), mu_b, logvar_b.exp())]
    for got, want in zip(weighted_grads(precision_weighted, inputs), weighted_grads(precision_weighted_ref, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---- log-prob ----

def test_log_prob_matches_normal(backend):
    _, device = backend
    z, mu, logvar = params((4, 6, 19), n=3, device=device, requires_grad=True)
    out = gaussian_log_prob(z, mu, logvar)
    torch.testing.assert_close(out.double(), Independent(normal(mu, logvar), 1).log_prob(z.double()), rtol=1e-5,
                               atol=1e-4)
    want = Normal(mu.double(), (0.5 * logvar.double()).exp()).log_prob(z.double())
    for got, ref in zip(torch.autograd.grad(gaussian_log_prob(z, mu, logvar, elementwise=True).sum(), (z, mu, logvar)),
                        torch.autograd.grad(want.sum(), (z, mu, logvar))):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # SIS-RNN Eq. 12: one z against K mixing samples of the posterior parameters
    mixing_mu, mixing_logvar = params((7, 6, 19), n=2, device=device, seed=3)
    out = gaussian_log_prob(z[0], mixing_mu, mixing_logvar)
    assert out.shape == (7, 6)
    torch.testing.assert_close(out.double(), Independent(normal(mixing_mu, mixing_logvar), 1).log_prob(z[0].double()),
                               rtol=1e-5, atol=1e-4)


# ---- generic properties ----

def test_gradcheck_float64(backend):
    name, device = backend
    if device.type == "cpu" and name == "triton":
        pytest.skip("gradcheck runs the interpreter hundreds of times; fp64 grads are checked against the reference")
    inputs = params((2, 5), dtype=torch.float64, device=device, requires_grad=True)
    eps = params((2, 5), n=1, dtype=torch.float64, device=device, seed=4)[0]
    for posterior in ("standard", "precision_weighted"):
        assert torch.autograd.gradcheck(
            lambda *t: gaussian_sample_kl(*t, eps=eps, posterior=posterior, free_bits=0.05, logvar_min=-1.0), inputs)
    assert torch.autograd.gradcheck(lambda *t: gaussian_kl(*t, elementwise=True, mu_max=0.5), inputs)
    assert torch.autograd.gradcheck(lambda *t: gaussian_kl(*t), inputs[:2])
    assert torch.autograd.gradcheck(lambda *t: gaussian_rsample(*t, eps=eps), inputs[:2])
    assert torch.autograd.gradcheck(gaussian_log_prob, inputs[:3])
    assert torch.autograd.gradcheck(lambda a, b, c, d: precision_weighted(a, b.exp(), c, d.exp()), inputs)


def test_non_contiguous_broadcast_and_empty(backend):
    _, device = backend
    mu_q, logvar_q, mu_p, logvar_p = params((6, 40), device=device)
    t = lambda x: x.t().contiguous().t()  # same values, transposed strides
    out = gaussian_kl(t(mu_q)[:, ::2], logvar_q[:, ::2], mu_p[:1, ::2], logvar_p[:1, ::2])
    want = gaussian_kl_ref(mu_q[:, ::2], logvar_q[:, ::2], mu_p[:1, ::2].expand(6, 20), logvar_p[:1, ::2])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    eps = params((3, 6, 40), n=1, device=device)[0]  # 3 samples per distribution
    z = gaussian_rsample(mu_q, logvar_q, eps)
    torch.testing.assert_close(z, mu_q + (0.5 * logvar_q).exp() * eps, rtol=1e-5, atol=1e-5)
    empty = [p.requires_grad_() for p in params((0, 5), device=device)]
    z, kl = gaussian_sample_kl(*empty)
    assert z.shape == (0, 5) and kl.shape == (0,)
    assert [g.shape for g in torch.autograd.grad(z.sum() + kl.sum(), empty)] == [(0, 5)] * 4
    zero_dim = params((3, 0), device=device)
    torch.testing.assert_close(gaussian_kl(*zero_dim), torch.zeros(3, device=device))


def test_mask_and_reduction():
    mu_q, logvar_q = params((4, 6, 8), n=2)
    full = gaussian_kl(mu_q, logvar_q)
    mask = torch.ones(4, 6)
    mask[:, 4:] = 0
    torch.testing.assert_close(gaussian_kl(mu_q, logvar_q, reduction="sum"), full.sum())
    torch.testing.assert_close(gaussian_kl(mu_q, logvar_q, mask=mask, reduction="mean"), full[:, :4].mean())
    z, kl = gaussian_sample_kl(mu_q, logvar_q, mask=mask.bool())
    assert (kl[:, 4:] == 0).all() and torch.equal(kl[:, :4], full[:, :4]) and z.shape == (4, 6, 8)
    per_dim = gaussian_kl(mu_q, logvar_q, elementwise=True, mask=mask[..., None], reduction="sum")
    torch.testing.assert_close(per_dim, full[:, :4].sum())
    logp = gaussian_log_prob(*params((4, 6, 8), n=3), mask=mask, reduction="mean")
    assert logp.shape == ()


def test_opcheck():
    mu_q, logvar_q, mu_p, logvar_p = params((3, 17), requires_grad=True)
    eps = params((3, 17), n=1, seed=5)[0]
    seed = torch.tensor(1234)
    floats = [-INF, -3.0, 3.0, -INF, INF]  # free_bits, mu_min, mu_max, logvar_min, logvar_max
    op = torch.ops.fastlv.gaussian_sample_kl
    for args in ([mu_q, logvar_q, mu_p, logvar_p, eps, None, [True, True, False, False], floats],
                 [mu_q, logvar_q, mu_p, logvar_p, None, seed, [True, True, True, True], [0.1, *floats[1:]]],
                 [mu_q, logvar_q, None, None, None, None, [False, True, False, False], floats],
                 [mu_q.double(), logvar_q.double(), None, None, None, seed, [True, False, False, False], floats]):
        torch.library.opcheck(op, args)
    torch.library.opcheck(torch.ops.fastlv.gaussian_log_prob, [mu_q, logvar_q, mu_p, False, -INF, INF, -2.0, 2.0])
    torch.library.opcheck(torch.ops.fastlv.precision_weighted, [mu_q, logvar_q.exp(), mu_p, logvar_p.exp()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_path_with_cpp_autograd_matches_the_custom_op(dtype):
    """In eager mode on the CPU the public ops call fastlv_C::gaussian_sample_kl, whose autograd is
    registered in C++ and keeps the eps it draws; the custom op fastlv::gaussian_sample_kl (torch.compile's
    path) regenerates eps in its backward. Both give the same outputs and gradients."""
    inputs = params((5, 37), dtype=dtype, requires_grad=True)
    limits = [0.05, -3.0, 3.0, -4.0, 4.0]  # free_bits, mu_min, mu_max, logvar_min, logvar_max
    for n_inputs, modes in ((4, [True, True, False, False]), (4, [True, True, True, True]),
                            (2, [True, False, False, False])):  # sample + KL, precision-weighted, rsample
        def via(op, *tensors):
            prior = tensors[2:] if n_inputs == 4 else (None, None)
            return op(*tensors[:2], *prior, None, torch.tensor(99), modes, limits)
        cpp = weighted_grads(lambda *t: via(fastlv.ops.gaussian._sample_kl_cpp_autograd, *t), inputs[:n_inputs])
        custom = weighted_grads(lambda *t: via(torch.ops.fastlv.gaussian_sample_kl, *t), inputs[:n_inputs])
        for a, b in zip(cpp, custom):
            assert torch.equal(a, b)
    z, _ = gaussian_sample_kl(*inputs)
    assert "SampleKL" in z.grad_fn.name()  # the public op took the C++ autograd path


def test_torch_compile_fullgraph():
    inputs = params((8, 30), requires_grad=True)

    def loss(mu_q, logvar_q, mu_p, logvar_p):
        z, kl = gaussian_sample_kl(mu_q, logvar_q, mu_p, logvar_p, logvar_min=-8.0, logvar_max=8.0)
        return (z ** 2).mean() + kl.mean() + gaussian_log_prob(z, mu_p, logvar_p).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    got = compiled(*inputs)
    torch.manual_seed(0)
    torch.testing.assert_close(got, loss(*inputs))
    torch.manual_seed(1)
    grads = weighted_grads(compiled, inputs)
    torch.manual_seed(1)
    for g, w in zip(grads, weighted_grads(loss, inputs)):
        torch.testing.assert_close(g, w)
    pw = torch.compile(precision_weighted, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(pw(*inputs), precision_weighted(*inputs))


def test_double_backward_raises():
    inputs = params((2, 5), dtype=torch.float64, requires_grad=True)
    (g, *_) = torch.autograd.grad(gaussian_kl(*inputs).sum(), inputs, create_graph=True)
    with pytest.raises((NotImplementedError, RuntimeError), match="double backward"):
        g.sum().backward()


def test_errors_name_the_argument():
    mu_q, logvar_q, mu_p, logvar_p = params((4, 3))
    with pytest.raises(ValueError, match=r"mu_p \(4, 2\)"):
        gaussian_kl(mu_q, logvar_q, mu_p[:, :2], logvar_p)
    with pytest.raises(ValueError, match="both mu_p and logvar_p"):
        gaussian_kl(mu_q, logvar_q, mu_p)
    with pytest.raises(TypeError, match="logvar_q has dtype torch.float64"):
        gaussian_sample_kl(mu_q, logvar_q.double())
    with pytest.raises(TypeError, match="eps must be a floating-point"):
        gaussian_rsample(mu_q, logvar_q, eps=mu_q.long())
    with pytest.raises(ValueError, match="precision_weighted' needs a prior"):
        gaussian_sample_kl(mu_q, logvar_q, posterior="precision_weighted")
    with pytest.raises(ValueError, match="posterior must be one of"):
        gaussian_sample_kl(mu_q, logvar_q, posterior="ladder")
    with pytest.raises(ValueError, match="clamp minimum"):
        gaussian_kl(mu_q, logvar_q, logvar_min=1.0, logvar_max=0.0)
    with pytest.raises(ValueError, match="trailing latent dimension"):
        gaussian_kl(torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="z \\(5, 3\\)"):
        gaussian_log_prob(torch.randn(5, 3), mu_q, logvar_q)
    with pytest.raises(ValueError, match="var_b is on meta"):
        precision_weighted(mu_q, logvar_q, mu_p, logvar_p.to("meta"))


def test_cpp_kernel_checks_arguments():
    mu_q, logvar_q, mu_p, logvar_p = params((4, 3))
    op = torch.ops.fastlv_C.gaussian_sample_kl
    floats = [-INF, -INF, INF, -INF, INF]
    with pytest.raises(RuntimeError, match="logvar_p must have shape"):
        op(mu_q, logvar_q, mu_p, logvar_p[:, :2], None, None, False, True, False, False, *floats)
    with pytest.raises(RuntimeError, match="exactly one of eps and seed"):
        op(mu_q, logvar_q, None, None, None, None, True, False, False, False, *floats)
    with pytest.raises(RuntimeError, match="seed must be a one-element int64"):
        op(mu_q, logvar_q, None, None, None, mu_q, True, False, False, False, *floats)
    with pytest.raises(RuntimeError, match="mu has dtype"):
        torch.ops.fastlv_C.gaussian_log_prob(mu_q, mu_p.double(), logvar_p, False, *floats[1:])
    with pytest.raises(RuntimeError, match="var_b must have shape"):
        torch.ops.fastlv_C.precision_weighted(mu_q, logvar_q, mu_p, logvar_p[:2])


# ---- module ----

@pytest.mark.parametrize("posterior", ["standard", "precision_weighted"])
def test_diag_gaussian_latent(posterior):
    torch.manual_seed(0)
    layer = DiagGaussianLatent(12, 20, 8, hidden_features=16, posterior=posterior, logvar_min=-8.0, logvar_max=8.0)
    h_prior, h_post = torch.randn(5, 7, 12), torch.randn(5, 7, 20)
    z, kl = layer(h_prior, h_post)
    assert z.shape == (5, 7, 8) and kl.shape == (5, 7)
    mu_p, logvar_p = layer.prior(h_prior)
    mu_q, logvar_q = layer.posterior(h_post)
    eps = torch.randn(5, 7, 8)
    z, kl = layer(h_prior, h_post, eps=eps)
    if posterior == "standard":
        torch.testing.assert_close(z, mu_q + (0.5 * logvar_q).exp() * eps)
        torch.testing.assert_close(kl, gaussian_kl(mu_q, logvar_q, mu_p, logvar_p))
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    first = kl.mean().item()
    for _ in range(30):  # the KL alone pulls q onto p
        opt.zero_grad()
        loss = layer(h_prior, h_post)[1].mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert layer.sample_prior(h_prior).shape == (5, 7, 8)


def test_diag_gaussian_latent_standard_prior():
    layer = DiagGaussianLatent(None, 6, 4)
    h = torch.randn(3, 6)
    z, kl = layer(None, h)
    mu_q, logvar_q = layer.posterior(h)
    torch.testing.assert_close(kl, gaussian_kl(mu_q, logvar_q))
    assert layer.sample_prior(None, shape=(3,)).shape == (3, 4)
    with pytest.raises(ValueError, match="needs a learned prior"):
        DiagGaussianLatent(None, 6, 4, posterior="precision_weighted")
