"""fastlv.nn.MADE and the hierarchical low levels (LowLevelMADE, LowLevelLSTM): autoregressive by Jacobian,
normalized, sampling consistent with the likelihood, equal to a dense torch.nn construction."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from fastlv.nn import MADE, LowLevelLSTM, LowLevelMADE, hidden_degrees, input_degrees, made_mask
from fastlv.nn.made import hierarchical_output
from fastlv.ops import gmm_log_prob_ref

pytestmark = pytest.mark.usefixtures("one_thread")


def output_jacobian(fn, x):
    """d (sum of element i's parameters) / d x_j for the first batch row: [L, L]."""
    return torch.autograd.functional.jacobian(lambda v: fn(v)[0].sum(-1), x)[:, 0]


def assert_autoregressive(jac, degrees):
    """Exactly zero for every j at or after i in the order, nonzero somewhere before."""
    allowed = degrees[None, :] < degrees[:, None]
    assert (jac[~allowed] == 0).all()
    assert (jac[allowed] != 0).any()


LAYOUTS = {
    "natural": dict(),
    "random": dict(order="random", seed=3),
    "given": dict(order=[2, 0, 1, 4, 3, 6, 5]),
    "per-dimension": dict(per_dimension=4, order="random"),
    "bernoulli": dict(distribution="bernoulli"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_made_is_autoregressive(layout):
    torch.manual_seed(0)
    made = MADE(7, (48, 48, 48), context_size=3, n_components=2, **LAYOUTS[layout]).double()
    x, h = torch.randn(8, 7, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    assert_autoregressive(output_jacobian(lambda v: made(v, h[:1]), x[:1]), made.degrees)
    # The first element in the order depends on the context (through the degree-0 hidden units).
    first = made.degrees.argmin()
    jac_h = torch.autograd.functional.jacobian(lambda c: made(x, c)[:, first].sum(), h)
    assert (jac_h != 0).any()


@pytest.mark.parametrize("L", [88, 200, 3, 1])
def test_made_odd_sizes(L):
    torch.manual_seed(L)
    made = MADE(L, (64,), order="random", n_components=3, seed=L)
    x = torch.randn(4, L, requires_grad=True)
    params = made(x)
    assert params.shape == (4, L, 9)
    jac = output_jacobian(made, x[:1].detach()) if L <= 88 else None
    if jac is not None and L > 1:
        assert_autoregressive(jac, made.degrees)
    made.log_prob(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_made_equals_dense_torch_nn():
    torch.manual_seed(0)
    """MADE on the block-sparse op equals nn.Linear on W * M + the reference GMM."""
    made = MADE(10, (32, 32), context_size=6, n_components=4, order="random")
    x, h = torch.randn(3, 5, 10), torch.randn(3, 5, 6)
    u = torch.cat([h, x], -1)
    for layer in made.hidden:
        u = torch.relu(F.linear(u, layer.weight * layer.mask, layer.bias))
    params = F.linear(u, made.output.weight * made.output.mask, made.output.bias).unflatten(-1, (10, 3, 4))
    want = gmm_log_prob_ref(x, *params.unbind(-2)).sum(-1)
    torch.testing.assert_close(made.log_prob(x, h), want, rtol=1e-5, atol=1e-4)


def test_degrees_and_masks():
    assert input_degrees(4).tolist() == [1, 2, 3, 4]
    assert input_degrees(3, [2, 0, 1]).tolist() == [2, 3, 1]  # x_2 first, then x_0, then x_1
    assert torch.equal(input_degrees(5, "random").sort().values, torch.arange(1, 6))
    d = hidden_degrees(8, 5, with_context=False)
    assert d.min() == 1 and d.max() == 4 and torch.equal(d, d.sort().values)
    assert hidden_degrees(8, 5, with_context=True).min() == 0
    assert made_mask(torch.tensor([1, 2]), torch.tensor([1, 2]), strict=True).tolist() == [[False, False],
                                                                                           [True, False]]
    with pytest.raises(ValueError, match="permutation"):
        input_degrees(3, [0, 0, 1])


def test_bernoulli_made_is_normalized_and_samples_match():
    """All 2^L binary vectors: probabilities sum to 1, and sample frequencies follow them."""
    torch.manual_seed(0)
    made = MADE(3, (16,), context_size=2, distribution="bernoulli", order="random", seed=1).double()
    with torch.no_grad():
        for p in made.parameters():
            p.mul_(3)  # a peaked distribution
    h = torch.randn(2, dtype=torch.float64)
    grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    probs = made.log_prob(grid, h.expand(8, 2)).exp()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    samples = made.sample(h.expand(20000, 2))
    codes = (samples * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).sum(-1).long()
    freq = torch.bincount(codes, minlength=8).double() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_gmm_made_sampling_follows_the_order():
    torch.manual_seed(0)
    made = MADE(5, (16,), context_size=2, n_components=3, order="random", seed=2)
    h = torch.randn(4, 7, 2)
    samples = made.sample(h)
    assert samples.shape == (4, 7, 5) and torch.isfinite(samples).all()
    assert torch.isfinite(made.log_prob(samples, h)).all()


LOW_LEVELS = {  # name -> low level over L = 5 elements with h_t of width 6
    "lstm": lambda: LowLevelLSTM(5, 6, 4, 7, n_components=2),
    "made": lambda: LowLevelMADE(5, 6, (16, 16), n_components=2),
    "made-random-order": lambda: LowLevelMADE(5, 6, (16,), n_components=2, order="random", seed=1),
    "made-per-dimension": lambda: LowLevelMADE(5, 6, (4, 4, 4), n_components=2, per_dimension=4),
    "made-bernoulli": lambda: LowLevelMADE(5, 6, (16,), distribution="bernoulli"),
}


@pytest.mark.parametrize("name", list(LOW_LEVELS))
def test_low_level_is_autoregressive_within_the_frame(name):
    """Element i's parameters see h_t and x_t,<i only (Eq. 13-14): zero Jacobian on x_t,>=i (in the
    order), and element 0 in the order depends on h_t. log_prob / loss / sample on [B, T, .] states."""
    torch.manual_seed(0)
    head = LOW_LEVELS[name]().double()
    h, x = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    degrees = head.made.degrees if isinstance(head, LowLevelMADE) else torch.arange(1, 6)
    assert_autoregressive(output_jacobian(lambda v: head.element_params(h[0, :1], v), x[0, :1]), degrees)
    first = degrees.argmin()
    jac_h = torch.autograd.functional.jacobian(lambda c: head.element_params(c, x[0])[:, first].sum(), h[0])
    assert (jac_h != 0).any()
    log_p = head(h, x)
    assert log_p.shape == (2, 3)
    torch.testing.assert_close(log_p, head.dist.log_prob(x, head.element_params(h, x)).sum(-1))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(head.loss(h, x, mask=mask), -(log_p * mask).sum() / 3)
    sample = head.sample(h)
    assert sample.shape == (2, 3, 5) and torch.isfinite(sample).all()


def test_per_dimension_layout_has_the_reference_shapes():
    """Per-dimension MADE = the re-examination code's Perm-TIMIT low level: first weights [L, H + L - 1, d]
    (the last element feeds nothing), [L, d] LayerNorm affines, [L, d, d] layers, a [L, d, P] output."""
    L, H, d = 7, 5, 3
    made = LowLevelMADE(L, H, (d, d, d), n_components=2, per_dimension=d).made
    assert made.first.weight.shape == (L * d, H + L - 1)
    assert [tuple(n.weight.shape) for n in made.norms] == [(L, d)] * 3
    assert [tuple(layer.weight.shape) for layer in made.hidden] == [(L, d, d)] * 2
    assert made.output.weight.shape == (L, d, 6)
    # the mask is the code's tril(ones(L, H + L - 1), H - 1) repeated over each element's d units
    expected = torch.ones(L, H + L - 1).tril(H - 1).bool().repeat_interleave(d, 0)
    assert torch.equal(made.first.mask, expected)


@pytest.mark.parametrize("low_level", ["lstm", "made"])
def test_low_level_sampling_is_consistent_with_its_likelihood(low_level):
    """Bernoulli low level over L=2: probabilities sum to 1 and sample frequencies match exp(log p)."""
    torch.manual_seed(0)
    head = hierarchical_output(low_level, 2, 3, d_emb=4, d_low=8, made_layers=1, distribution="bernoulli").double()
    h = torch.randn(3, dtype=torch.float64)
    grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)), dtype=torch.float64)
    probs = head(h.expand(4, 3), grid).exp()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    samples = head.sample(h.expand(20000, 3))
    freq = torch.bincount((samples[:, 0] * 2 + samples[:, 1]).long(), minlength=4).double() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_made_compiles_fullgraph():
    torch.manual_seed(0)
    made = MADE(6, (16, 16), context_size=3, n_components=2, order="random")
    x, h = torch.randn(4, 6), torch.randn(4, 3, requires_grad=True)
    fn = torch.compile(made.log_prob, fullgraph=True, backend="aot_eager")
    got = fn(x, h)
    torch.testing.assert_close(got, made.log_prob(x, h))
    (g,) = torch.autograd.grad(got.sum(), h)
    (want,) = torch.autograd.grad(made.log_prob(x, h).sum(), h)
    torch.testing.assert_close(g, want)


def test_errors_name_the_argument():
    made = MADE(4, (8,), context_size=2)
    with pytest.raises(ValueError, match="context must end in context_size = 2"):
        made(torch.randn(3, 4))
    with pytest.raises(ValueError, match="x must end in n_inputs = 4"):
        made(torch.randn(3, 5), torch.randn(3, 2))
    with pytest.raises(ValueError, match="distribution"):
        MADE(4, (8,), distribution="poisson")
    with pytest.raises(ValueError, match="low_level"):
        hierarchical_output("gru", 4, 4, d_emb=4, d_low=4)
