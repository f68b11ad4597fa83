"""fastlv.nn recurrent models: the SequenceModel interface, gradients, padding, causality, the bounds
ELBO <= IWAE <= log p(x), the papers' parameter counts and a short overfit run, on tiny shapes."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, MixtureSameFamily, Normal

from fastlv.nn import (DeltaRNN, FlatRNN, FlatSRNN, FraccaroSRNN, FRNN, HierRNN, HierSRNN,
                       SimplifiedSRNN, SISRNN, STORN, VRNN, ZForcingSRNN, observation_head)

pytestmark = pytest.mark.usefixtures("one_thread")


LATENT = dict(d_latent=3, d_mlp=8)
TINY = {  # name -> (class, keyword arguments); frame size is the first argument
    "FRNN": (FRNN, dict(d_emb=8, d_rnn=12, n_components=3)),
    "FlatRNN": (FlatRNN, dict(d_emb=8, d_rnn=12, n_layers=1, n_components=3)),
    "DeltaRNN-interleave": (DeltaRNN, dict(split="interleave", leak=2, d_emb=8, d_rnn=12, n_components=3)),
    "DeltaRNN-random": (DeltaRNN, dict(split="random", leak=3, d_emb=8, d_rnn=12, n_components=3)),
    "SimplifiedSRNN": (SimplifiedSRNN, dict(d_emb=8, d_rnn=12, n_components=2, **LATENT)),
    "FlatSRNN": (FlatSRNN, dict(d_emb=8, d_rnn=12, n_components=2, **LATENT)),
    "ZForcingSRNN": (ZForcingSRNN, dict(d_emb=8, d_rnn=12, aux_weight=0.5, backward_weight=0.3, **LATENT)),
    "ZForcingSRNN-flat": (ZForcingSRNN, dict(d_emb=8, d_rnn=12, flat=True, **LATENT)),
    "VRNN": (VRNN, dict(d_emb=8, d_rnn=12, n_components=2, **LATENT)),
    "STORN": (STORN, dict(d_emb=8, d_rnn=12, n_components=2, **LATENT)),
    "FraccaroSRNN": (FraccaroSRNN, dict(d_rnn=12, **LATENT)),
    "FraccaroSRNN-filtering": (FraccaroSRNN, dict(d_rnn=12, posterior="filtering", residual=False, **LATENT)),
    "SISRNN": (SISRNN, dict(d_rnn=12, d_latent=3, d_emb=8, prior_hidden=8, encoder_hidden=8, noise_dims=(4, 3, 2),
                            output="gaussian", mixing_samples=3)),
    "HierRNN": (HierRNN, dict(d_emb=8, d_rnn=12, n_components=3)),
    "HierRNN-made": (HierRNN, dict(d_emb=8, d_rnn=12, n_components=3, low_level="made", d_low=10)),
    "HierSRNN": (HierSRNN, dict(d_emb=8, d_rnn=12, n_components=2, **LATENT)),
    "HierSRNN-made": (HierSRNN, dict(d_emb=8, d_rnn=12, n_components=2, low_level="made", d_low=10, **LATENT)),
    "HierRNN-made-per-dimension": (HierRNN, dict(d_emb=8, d_rnn=12, n_components=3, low_level="made", d_low=4,
                                                 made_layers=3, per_dimension=True)),
}
LATENT_MODELS = [n for n, (cls, _) in TINY.items() if cls.is_latent]


def tiny(name, frame_size=4, dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    cls, kwargs = TINY[name]
    return cls(frame_size, **{**kwargs, **overrides}).to(dtype)


def batch(B=3, T=5, F=4, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, F, generator=g, dtype=dtype)
    lengths = torch.tensor([T, T - 2, 1][:B])
    mask = torch.arange(T) < lengths[:, None]
    return x, mask


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_reaches_every_parameter(name):
    model = tiny(name)
    x, mask = batch()
    out = model(x, mask)
    for term in (out.log_likelihood, out.kl, out.elbo):
        assert term.shape == (3,) and torch.isfinite(term).all()
    assert (out.kl >= 0).all() if name != "SISRNN" else True  # SIS-RNN's kl is a one-sample estimate
    assert set(out.kl_layers) == ({"z"} if model.is_latent else set())
    assert (out.aux is not None) == (name == "ZForcingSRNN")
    loss = out.loss()
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize("name", TINY)
def test_padded_steps_are_ignored(name):
    model = tiny(name)
    x, mask = batch()
    garbage = torch.where(mask[..., None], x, torch.full_like(x, 7.0))
    torch.manual_seed(3)
    a = model(x, mask)
    torch.manual_seed(3)
    b = model(garbage, mask)
    torch.testing.assert_close(a.log_likelihood, b.log_likelihood)
    torch.testing.assert_close(a.kl, b.kl)
    # the full-length sequence is unaffected by its batch mates' padding
    torch.manual_seed(3)
    c = model(x[:1], mask[:1])
    if not model.is_latent:
        torch.testing.assert_close(a.log_likelihood[:1], c.log_likelihood)


@pytest.mark.parametrize("name", TINY)
def test_sample_shapes(name):
    model = tiny(name)
    samples = model.sample(3, batch_size=2)
    assert samples.shape == (2, 3, 4) and torch.isfinite(samples).all()


def test_interface_errors():
    model = tiny("FRNN")
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.randn(2, 5, 4, dtype=torch.float64), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no configuration"):
        FRNN.from_config("nope")
    with pytest.raises(ValueError, match="output family"):
        FRNN(4, output="poisson")


# ----------------------------------------------------------------------------------------------- causality

def _perturb_after(x, t):
    y = x.clone()
    y[:, t + 1:] += torch.randn_like(y[:, t + 1:])
    return y


@pytest.mark.parametrize("name", ["FRNN", "DeltaRNN-interleave", "DeltaRNN-random"])
def test_step_log_probs_are_causal(name):
    model = tiny(name)
    x, _ = batch()
    t = 2
    torch.testing.assert_close(model.step_log_probs(x)[:, :t + 1], model.step_log_probs(_perturb_after(x, t))[:, :t + 1])


def test_flat_rnn_is_causal_within_frames():
    model = tiny("FlatRNN")
    x, _ = batch()
    steps = x.reshape(3, -1, 1)
    t = 6  # inside frame 1
    before = model.step_log_probs(steps)[:, :t + 1]
    torch.testing.assert_close(before, model.step_log_probs(_perturb_after(steps, t))[:, :t + 1])
    # and the flat model's likelihood is its per-scalar sum
    torch.testing.assert_close(model(x).log_likelihood, model.step_log_probs(steps).sum(1))


@pytest.mark.parametrize("name", ["SimplifiedSRNN", "FlatSRNN"])
def test_simplified_srnn_generative_path_is_causal(name):
    """Given z, p(x_t | z_<=t, x_<t) ignores x_>t (the forward LSTM sees x_<t only)."""
    model = tiny(name)
    x, _ = batch()
    steps, _, _ = model._steps(x, None)
    z = torch.randn(*steps.shape[:2], 3, dtype=x.dtype)
    t = 2
    forward, _, _ = model._encode(steps, None)
    changed = _perturb_after(steps, t)
    forward_changed, _, _ = model._encode(changed, None)
    torch.testing.assert_close(model._reconstruct(steps, forward, z)[:, :t + 1],
                               model._reconstruct(changed, forward_changed, z)[:, :t + 1])


# ----------------------------------------------------------------------------------------------- bounds

BOUND_MODELS = ["SimplifiedSRNN", "FlatSRNN", "ZForcingSRNN-flat", "VRNN", "STORN", "FraccaroSRNN", "HierSRNN"]


@pytest.mark.parametrize("name", BOUND_MODELS)
def test_elbo_below_iwae_below_exact_log_likelihood(name):
    """Two 1-d latents (T = 2 steps of frame 1, d_latent 1): log p(x) by quadrature over the posterior
    noise, log p(x) = log int p(x, z(eps)) / q(z(eps)) N(eps) d eps (exact to ~1e-6 here)."""
    model = tiny(name, frame_size=1, d_latent=1)
    x = torch.tensor([[[0.7], [-1.1]]], dtype=torch.float64)
    grid = torch.linspace(-9, 9, 181, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    eps = torch.cartesian_prod(grid, grid).view(-1, 2, 1)
    with torch.no_grad():
        log_w = model.log_weights(x.expand(len(eps), -1, -1), eps=eps)
        log_normal = Normal(0.0, 1.0).log_prob(eps).sum((1, 2))
        exact = torch.logsumexp(log_w + log_normal, 0) + 2 * math.log(step)
        torch.manual_seed(0)
        n = 4000
        out = model(x.expand(n, -1, -1))
        elbo = out.elbo.mean()
        log_w_samples = model.log_weights(x.expand(n, -1, -1))
        iwae = model.iwae(x, n)
    spread = math.hypot(out.elbo.std(), log_w_samples.std()) / math.sqrt(n)
    assert abs(elbo - log_w_samples.mean()) < 5 * spread  # analytic-KL ELBO = mean log weight
    assert elbo < iwae[0] < exact + 0.01
    assert exact - iwae[0] < 0.3 * (exact - elbo)  # k = 4000 samples close most of the gap


def test_sisrnn_mixture_bound_tightens_with_k():
    """L_K of Eq. 12 rises with the number of mixing draws K (the surrogate density improves)."""
    model = tiny("SISRNN")
    x, _ = batch(B=1)
    means = []
    for k in (0, 20):
        model.mixing_samples = k
        torch.manual_seed(0)
        with torch.no_grad():
            means.append(model(x.expand(400, -1, -1)).elbo.mean())
    assert means[1] > means[0]


# ----------------------------------------------------------------------------------------------- sizes

REFERENCE_COUNTS = [  # (class, configuration, count of the reference code, source)
    (FRNN, "timit", 17_412_912, "reexamine-srnn F-RNN 2x750"),
    (SimplifiedSRNN, "timit", 17_525_848, "reexamine-srnn F-SRNN d_rnn 825"),
    (FlatRNN, "timit", 16_857_484, "reexamine-srnn RNN-flat 2x1100"),
    (FlatSRNN, "timit", 16_930_838, "reexamine-srnn SRNN-flat 1x825"),
    (ZForcingSRNN, "timit", 17_440_144, "zforcing, no aux / backward-output nets (Table 5: 17.44M)"),
    (HierRNN, "timit", 17_275_736, "reexamine-srnn RNN-hier d_rnn 700"),
    (HierSRNN, "timit", 17_248_352, "reexamine-srnn SRNN-hier d_rnn 660"),
]
PAPER_COUNTS = [  # (class, configuration, count the paper reports, relative tolerance)
    (DeltaRNN, "timit_random", 18_570_000, 0.005),  # Table 8: 18.57M
    (ZForcingSRNN, "timit_flat", 16_980_000, 0.005),  # Table 5: 16.98M (configuration not published)
]


def perm_timit_reference_count(d_emb, d_rnn, n_components, srnn, d_mlp=256, d_latent=256, L=200, d_nade=64, layers=3):
    """Parameters of the re-examination code's rnn_hier_nade / srnn_hier_nade from its tensor shapes:
    embedding, LSTMs (and the SRNN's MLPs), nade_w_0 [L, H + L - 1, d] + b_0 [L, d], LayerNorm([L, d]) per
    layer, nade_w_l [L, d, d] + b_l, and the GMM criterion's three [d, L, K] weights + [L, K] biases."""
    def lstm(n_in, n_out):
        return 4 * n_out * (n_in + n_out) + 8 * n_out
    high = d_emb * (L + 1) + lstm(d_emb, d_rnn)
    if srnn:
        mlp = lambda n_in: n_in * d_mlp + d_mlp + d_mlp * 2 * d_latent + 2 * d_latent
        high += lstm(d_emb, d_rnn) + mlp(d_rnn) + mlp(2 * d_rnn) + lstm(d_rnn + d_latent, d_rnn)
    low = L * (d_rnn + L - 1) * d_nade + L * d_nade + layers * 2 * L * d_nade
    low += (layers - 1) * (L * d_nade * d_nade + L * d_nade) + 3 * (d_nade * L * n_components + L * n_components)
    return high + low


SHAPE_COUNTS = [  # (class, configuration, count from the reference code's shapes, its README's count)
    (HierRNN, "perm_timit", perm_timit_reference_count(256, 512, 20, srnn=False), 17_094_012),
    (HierSRNN, "perm_timit", perm_timit_reference_count(256, 536, 1, srnn=True), 17_076_076),
]


def test_parameter_counts_of_named_configurations(capsys):
    rows = []
    with torch.device("meta"):
        for cls, config, expected, source in REFERENCE_COUNTS:
            rows.append((cls.__name__, config, cls.from_config(config).num_parameters(), expected, source))
        for cls, config, expected, rtol in PAPER_COUNTS:
            rows.append((cls.__name__, config, cls.from_config(config).num_parameters(), expected, f"paper, rtol {rtol}"))
        for cls, config, expected, readme in SHAPE_COUNTS:
            rows.append((cls.__name__, config, cls.from_config(config).num_parameters(), expected,
                         f"reexamine-srnn code's shapes (its README says {readme:,d})"))
    with capsys.disabled():
        print("\nmodel / config / fastlv / reference")
        for row in rows:
            print("  {:16s} {:16s} {:>12,d} {:>12,d}  {}".format(*row))
    n_exact, n_paper = len(REFERENCE_COUNTS), len(PAPER_COUNTS)
    for name, config, count, expected, _ in rows[:n_exact] + rows[n_exact + n_paper:]:
        assert count == expected, (name, config)
    for (name, config, count, expected, _), (_, _, _, rtol) in zip(rows[n_exact:n_exact + n_paper], PAPER_COUNTS):
        assert abs(count - expected) <= rtol * expected, (name, config)


# ----------------------------------------------------------------------------------------------- heads

def test_observation_heads_match_torch_distributions():
    torch.manual_seed(0)
    h = torch.randn(5, 6, dtype=torch.float64)
    real = torch.randn(5, 3, dtype=torch.float64)

    head = observation_head("gaussian", 6, 3).double()
    mu, logvar = head.proj(h).chunk(2, -1)
    torch.testing.assert_close(head.log_prob(h, real), Normal(mu, (0.5 * logvar).exp()).log_prob(real).sum(-1))

    head = observation_head("bernoulli", 6, 3).double()
    binary = (real > 0).double()
    torch.testing.assert_close(head.log_prob(h, binary), Bernoulli(logits=head.proj(h)).log_prob(binary).sum(-1))

    head = observation_head("pen_gmm", 6, 3, n_components=4).double()
    pen_logit, logits, rest = head.proj(h).split([1, 4, 16], -1)
    mu, log_sigma = rest.unflatten(-1, (2, 4, 2)).unbind(-3)
    offsets = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mu, log_sigma.exp()), 1))
    pen = binary[:, 2]
    expected = Bernoulli(logits=pen_logit.squeeze(-1)).log_prob(pen) + offsets.log_prob(real[:, :2])
    torch.testing.assert_close(head.log_prob(h, torch.cat([real[:, :2], pen[:, None]], -1)), expected)

    for family in ("gmm", "diag_gmm"):
        head = observation_head(family, 6, 3, n_components=4).double()
        dist = head.gmm(h)
        expected = dist.log_prob(real) if family == "diag_gmm" else dist.log_prob(real).sum(-1)
        torch.testing.assert_close(head.log_prob(h, real), expected)
        assert head.sample(h).shape == (5, 3)


@pytest.mark.parametrize("family", ["gmm", "diag_gmm", "gaussian", "bernoulli", "pen_gmm"])
def test_models_train_on_every_output_family(family):
    F = 3
    model = SimplifiedSRNN(F, d_emb=8, d_rnn=12, output=family, n_components=2, **LATENT).double()
    x, mask = batch(F=F)
    if family == "bernoulli":
        x = (x > 0).double()
    if family == "pen_gmm":
        x[..., 2] = (x[..., 2] > 0).double()
    out = model(x, mask)
    out.loss().backward()
    assert torch.isfinite(out.elbo).all()
    assert model.sample(2, 2).shape == (2, 2, F)


# ----------------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("name", TINY)
def test_short_overfit_run_drives_the_loss_down(name):
    model = tiny(name, dtype=torch.float32)
    x, mask = batch(B=3, T=4, dtype=torch.float32, seed=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(40):
        loss = model(x, mask).loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.25 * abs(first), (first, last)
