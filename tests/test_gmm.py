"""fastlv.ops.gmm_log_prob / diag_gmm_log_prob against torch.distributions and the reference, on every
backend that can run here (ref, cpp, triton under the interpreter, cuda on a GPU)."""
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import fastlv
from fastlv.ops import diag_gmm_log_prob, diag_gmm_log_prob_ref, gmm_log_prob, gmm_log_prob_ref
from fastlv.nn import DiagGaussianMixture, GaussianMixture, GMMHead


def per_element_inputs(batch, K, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, generator=g, dtype=dtype) * 2
    logits = torch.randn(*batch, K, generator=g, dtype=dtype)
    mu = torch.randn(*batch, K, generator=g, dtype=dtype)
    log_sigma = torch.randn(*batch, K, generator=g, dtype=dtype) * 0.5
    return [t.to(device).requires_grad_(requires_grad) for t in (x, logits, mu, log_sigma)]


def frame_inputs(batch, K, D, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, D, generator=g, dtype=dtype)
    logits = torch.randn(*batch, K, generator=g, dtype=dtype)
    mu = torch.randn(*batch, K, D, generator=g, dtype=dtype)
    log_sigma = torch.randn(*batch, K, D, generator=g, dtype=dtype) * 0.3
    return [t.to(device).requires_grad_(requires_grad) for t in (x, logits, mu, log_sigma)]


def oracle_per_element(x, logits, mu, log_sigma):
    mix = MixtureSameFamily(Categorical(logits=logits.double()), Normal(mu.double(), log_sigma.double().exp()))
    return mix.log_prob(x.double())


def oracle_frame(x, logits, mu, log_sigma):
    comp = Independent(Normal(mu.double(), log_sigma.double().exp()), 1)
    return MixtureSameFamily(Categorical(logits=logits.double()), comp).log_prob(x.double())


def grads(fn, inputs, **kw):
    out = fn(*inputs, **kw)
    return torch.autograd.grad((out * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum(), inputs)


@pytest.mark.parametrize("K", [1, 20, 64])
@pytest.mark.parametrize("batch", [(37,), (3, 5, 7)])
def test_per_element_matches_oracle(backend, batch, K):
    _, device = backend
    inputs = per_element_inputs(batch, K, device=device)
    out = gmm_log_prob(*inputs)
    assert out.shape == batch and out.dtype == torch.float32
    torch.testing.assert_close(out.double().cpu(), oracle_per_element(*[t.cpu() for t in inputs]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K,D", [(1, 3), (20, 200), (5, 17)])
def test_frame_matches_oracle(backend, K, D):
    _, device = backend
    inputs = frame_inputs((2, 3), K, D, device=device)
    out = diag_gmm_log_prob(*inputs)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.double().cpu(), oracle_frame(*[t.cpu() for t in inputs]), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("K", [1, 20])
def test_per_element_gradients_match_reference(backend, K):
    _, device = backend
    inputs = per_element_inputs((4, 33), K, device=device, requires_grad=True)
    for got, want in zip(grads(gmm_log_prob, inputs), grads(gmm_log_prob_ref, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_frame_gradients_match_reference(backend):
    _, device = backend
    inputs = frame_inputs((5,), 4, 19, device=device, requires_grad=True)
    for got, want in zip(grads(diag_gmm_log_prob, inputs), grads(diag_gmm_log_prob_ref, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_gradcheck_float64(backend):
    name, device = backend
    if device.type == "cpu" and name == "triton":
        pytest.skip("gradcheck runs the interpreter hundreds of times; fp64 grads are checked against the reference")
    inputs = per_element_inputs((3, 5), 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: gmm_log_prob(*t, log_sigma_min=-0.4, log_sigma_max=0.6), inputs)
    inputs = frame_inputs((3,), 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(diag_gmm_log_prob, inputs)


def test_clamp_zeroes_gradient_outside(backend):
    _, device = backend
    x, logits, mu, log_sigma = per_element_inputs((64,), 3, device=device)
    log_sigma = (torch.linspace(-3, 3, 64 * 3, device=device).view(64, 3)).requires_grad_()
    out = gmm_log_prob(x, logits, mu, log_sigma, log_sigma_min=-1.0, log_sigma_max=1.0)
    ref = gmm_log_prob_ref(x, logits, mu, log_sigma.clamp(-1, 1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), log_sigma)
    outside = (log_sigma < -1) | (log_sigma > 1)
    assert outside.any() and (g[outside] == 0).all() and (g[~outside] != 0).any()


def test_extreme_values_are_finite_and_accurate(backend):
    _, device = backend
    n, K = 40, 8
    x = torch.linspace(-1e4, 1e4, n)
    logits = torch.randn(n, K)
    logits[:, 1::2] = -math.inf  # unused components
    mu = torch.randn(n, K)
    log_sigma = torch.linspace(-20, 20, n * K).view(n, K)
    inputs = [t.to(device).requires_grad_() for t in (x, logits, mu, log_sigma)]
    out = gmm_log_prob(*inputs)
    want = gmm_log_prob_ref(*[t.detach().double() for t in inputs])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-3)
    for g in torch.autograd.grad(out.sum(), inputs):
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 5, 20])
def test_parameters_unbound_from_one_output(backend, K, dtype):
    """logits, mu and log_sigma as the slices of one [..., 3, K] tensor (a network's output layer): the C++
    kernels read their rows 3K apart in place. 3 x 67 elements: full and short blocks of 8 or 16 lanes,
    and a short last chunk of the backward."""
    _, device = backend
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 67, generator=g, dtype=dtype).to(device)
    params = torch.randn(3, 67, 3, K, generator=g, dtype=dtype).to(device).requires_grad_()
    logits, mu, log_sigma = params.unbind(-2)
    out = gmm_log_prob(x, logits, mu, log_sigma)
    want = gmm_log_prob_ref(x, logits, mu, log_sigma)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(out, want, **tol)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=dtype, device=device).view_as(out)
    got, = torch.autograd.grad((out * weights).sum(), params)
    expected, = torch.autograd.grad((want * weights).sum(), params)
    torch.testing.assert_close(got, expected, **tol)


def test_non_contiguous_and_broadcast_inputs(backend):
    _, device = backend
    x, logits, mu, log_sigma = per_element_inputs((6, 20), 5, device=device)
    logits_t = logits.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    mu_shared = mu[:1]  # [1, 20, K] broadcasts over the first dim
    out = gmm_log_prob(x[:, ::2], logits_t[:, ::2], mu_shared[:, ::2], log_sigma[:, ::2])
    want = oracle_per_element(x[:, ::2], logits[:, ::2], mu_shared[:, ::2].expand(6, 10, 5), log_sigma[:, ::2])
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    x, logits, mu, log_sigma = frame_inputs((4,), 3, 6, device=device)
    out = diag_gmm_log_prob(x.t().contiguous().t(), logits, mu[:1], log_sigma[:1])
    torch.testing.assert_close(out.double(), oracle_frame(x, logits, mu[:1].expand(4, 3, 6), log_sigma[:1]),
                               rtol=1e-5, atol=1e-4)


def test_empty_inputs(backend):
    _, device = backend
    inputs = per_element_inputs((0, 3), 4, device=device, requires_grad=True)
    out = gmm_log_prob(*inputs)
    assert out.shape == (0, 3)
    assert [g.shape for g in torch.autograd.grad(out.sum(), inputs)] == [t.shape for t in inputs]
    assert diag_gmm_log_prob(*frame_inputs((0,), 2, 3, device=device)).shape == (0,)


def test_reduction_and_mask():
    inputs = per_element_inputs((4, 6), 3)
    full = gmm_log_prob(*inputs)
    mask = torch.ones(4, 6)
    mask[:, 4:] = 0
    torch.testing.assert_close(gmm_log_prob(*inputs, reduction="sum"), full.sum())
    torch.testing.assert_close(gmm_log_prob(*inputs, reduction="mean", mask=mask), full[:, :4].mean())
    masked = gmm_log_prob(*inputs, mask=mask.bool())
    assert (masked[:, 4:] == 0).all() and torch.equal(masked[:, :4], full[:, :4])
    with pytest.raises(ValueError, match="reduction"):
        gmm_log_prob(*inputs, reduction="avg")
    with pytest.raises(ValueError, match="mask"):
        gmm_log_prob(*inputs, mask=torch.ones(5))


@pytest.mark.parametrize("op", ["gmm_log_prob", "diag_gmm_log_prob"])
def test_opcheck(op):
    make = per_element_inputs if op == "gmm_log_prob" else lambda b, K, **kw: frame_inputs(b, K, 7, **kw)
    custom_op = getattr(torch.ops.fastlv, op)
    for args in ([*make((3, 17), 4, requires_grad=True), -1.0, 1.0],
                 [*make((2,), 1, dtype=torch.float64, requires_grad=True), -math.inf, math.inf]):
        torch.library.opcheck(custom_op, args)


def test_torch_compile_fullgraph():
    inputs = per_element_inputs((8, 30), 6, requires_grad=True)

    def loss(x, logits, mu, log_sigma):
        return -gmm_log_prob(x, logits, mu, log_sigma, log_sigma_min=-5.0, reduction="mean")

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs), loss(*inputs))
    for got, want in zip(grads(compiled, inputs), grads(loss, inputs)):
        torch.testing.assert_close(got, want)
    frames = frame_inputs((3,), 2, 5, requires_grad=True)
    compiled = torch.compile(diag_gmm_log_prob, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*frames), diag_gmm_log_prob(*frames))


def test_double_backward_raises():
    inputs = per_element_inputs((5,), 2, dtype=torch.float64, requires_grad=True)
    (gx, *_) = torch.autograd.grad(gmm_log_prob(*inputs).sum(), inputs, create_graph=True)
    with pytest.raises((NotImplementedError, RuntimeError), match="double backward"):
        gx.sum().backward()


def test_errors_name_the_argument():
    x, logits, mu, log_sigma = per_element_inputs((4,), 3)
    with pytest.raises(ValueError, match=r"mu \(4, 2\)"):
        gmm_log_prob(x, logits, mu[:, :2], log_sigma)
    with pytest.raises(ValueError, match="x"):
        gmm_log_prob(torch.randn(5), logits, mu, log_sigma)
    with pytest.raises(TypeError, match="log_sigma has dtype torch.float64"):
        gmm_log_prob(x, logits, mu, log_sigma.double())
    with pytest.raises(TypeError, match="x must be a floating-point"):
        gmm_log_prob(x.long(), logits, mu, log_sigma)
    with pytest.raises(TypeError, match="float16"):
        gmm_log_prob(x.half(), logits.half(), mu.half(), log_sigma.half())
    with pytest.raises(ValueError, match="mu is on meta"):
        gmm_log_prob(x, logits, mu.to("meta"), log_sigma)
    with pytest.raises(ValueError, match="logits must have at least 1"):
        gmm_log_prob(x, torch.tensor(0.0), mu, log_sigma)
    with pytest.raises(ValueError, match=r"\[K, D\]"):
        diag_gmm_log_prob(torch.randn(4, 5), logits, torch.randn(4, 3, 6), torch.randn(4, 3, 6))
    with pytest.raises(ValueError, match="clamp minimum"):
        gmm_log_prob(x, logits, mu, log_sigma, log_sigma_min=1.0, log_sigma_max=0.0)


def test_cpp_kernel_checks_arguments():
    x, logits, mu, log_sigma = per_element_inputs((4,), 3)
    with pytest.raises(RuntimeError, match="mu must have shape"):
        torch.ops.fastlv_C.gmm_log_prob(x, logits, mu[:, :2], log_sigma, -1.0, 1.0)
    with pytest.raises(RuntimeError, match="log_sigma has dtype"):
        torch.ops.fastlv_C.gmm_log_prob(x, logits, mu, log_sigma.double(), -1.0, 1.0)
    with pytest.raises(RuntimeError, match="x must be a floating-point"):
        torch.ops.fastlv_C.diag_gmm_log_prob(x.long(), logits, mu, log_sigma, -1.0, 1.0)


def test_distributions_match_torch_distributions():
    x, logits, mu, log_sigma = per_element_inputs((3, 4), 5)
    dist = GaussianMixture(logits, mu, log_sigma)
    oracle = MixtureSameFamily(Categorical(logits=logits), Normal(mu, log_sigma.exp()))
    torch.testing.assert_close(dist.log_prob(x), oracle.log_prob(x))
    torch.testing.assert_close(dist.mean, oracle.mean)
    torch.testing.assert_close(dist.variance, oracle.variance)
    assert dist.sample((2,)).shape == (2, 3, 4)
    x, logits, mu, log_sigma = frame_inputs((3,), 4, 6)
    dist = DiagGaussianMixture(logits, mu, log_sigma)
    oracle = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mu, log_sigma.exp()), 1))
    torch.testing.assert_close(dist.log_prob(x), oracle.log_prob(x).float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dist.mean, oracle.mean)
    assert dist.sample((7,)).shape == (7, 3, 6)


def test_sample_statistics():
    torch.manual_seed(0)
    logits = torch.tensor([0.0, math.log(3.0)])
    dist = GaussianMixture(logits, torch.tensor([-2.0, 1.0]), torch.tensor([0.0, -1.0]))
    s = dist.sample((200_000,))
    assert abs(s.mean() - dist.mean) < 4 * dist.variance.sqrt() / math.sqrt(len(s))


@pytest.mark.parametrize("full_frame", [False, True])
def test_gmm_head_loss_trains(full_frame):
    torch.manual_seed(0)
    head = GMMHead(16, 10, n_components=4, full_frame=full_frame)
    h, x = torch.randn(32, 16), torch.randn(32, 10) * 0.1 + 1.0
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = head.loss(h, x)
    for _ in range(50):
        opt.zero_grad()
        loss = head.loss(h, x)
        loss.backward()
        opt.step()
    assert loss.shape == () and loss < first - 1.0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
