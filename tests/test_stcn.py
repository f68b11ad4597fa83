"""STCN, STCN-dense and the WaveNet baselines (fastlv.nn.models.stcn): the interface, per-layer KL, gradients,
padding, causality of the generative path (the prior reads d_{t-1} only), incremental ancestral sampling
against a full recomputation under the same noise, parameter counts of the paper's configurations and a
short overfit run, on tiny shapes."""
import pytest
import torch

from fastlv.nn import STCN, TCN, STCNDense, WaveNet, WaveNetBlock, WaveNetDense

pytestmark = pytest.mark.usefixtures("one_thread")


STCN_TINY = dict(channels=8, levels=3, blocks_per_level=2, latent_sizes=(4, 3, 2), latent_hidden=6, n_components=3)
TINY = {  # name -> (class, keyword arguments); the frame size is 4
    "STCN": (STCN, dict(output_layer="wavenet", output_layers=2, output="diag_gmm", **STCN_TINY)),
    "STCN-conv1-unshared": (STCN, dict(output_layer="conv1", output_layers=2, output="gaussian",
                                       share_latent_nets=False, **STCN_TINY)),
    "STCNDense": (STCNDense, dict(output_layer="wavenet", output_layers=2, output="diag_gmm", **STCN_TINY)),
    "STCNDense-conv1": (STCNDense, dict(output_layer="conv1", output_layers=1, output="gaussian", **STCN_TINY)),
    "WaveNet": (WaveNet, dict(channels=8, levels=2, blocks_per_level=3, output_layers=2, n_components=3)),
    "WaveNetDense": (WaveNetDense, dict(channels=8, levels=2, blocks_per_level=3, output_layers=1, output="gaussian")),
}
LATENT = [name for name, (cls, _) in TINY.items() if cls.is_latent]


def tiny(name, dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    cls, kwargs = TINY[name]
    return cls(4, **{**kwargs, **overrides}).to(dtype)


def batch(B=3, T=12, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 4, generator=g, dtype=dtype)
    lengths = torch.tensor([T, T - 5, 1][:B])
    return x, torch.arange(T) < lengths[:, None]


def noise(model, B, T, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, sum(model.latent_sizes), generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- interface

@pytest.mark.parametrize("name", TINY)
def test_forward_backward_reaches_every_parameter(name):
    model = tiny(name)
    x, mask = batch()
    out = model(x, mask)
    for term in (out.log_likelihood, out.kl, out.elbo):
        assert term.shape == (3,) and torch.isfinite(term).all()
    if model.is_latent:
        assert list(out.kl_layers) == ["z1", "z2", "z3"]
        for kl in out.kl_layers.values():
            assert kl.shape == (3,) and (kl >= 0).all() and (kl > 0).any()
        torch.testing.assert_close(out.kl, sum(out.kl_layers.values()))
    else:
        assert out.kl_layers == {} and (out.kl == 0).all()
    out.loss().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if name == "WaveNet":  # the last block's residual output feeds nothing (only the skips reach the head)
        assert no_grad == ["tcn.blocks.5.res.weight", "tcn.blocks.5.res.bias"]
    else:
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
    for key in a.kl_layers:
        torch.testing.assert_close(a.kl_layers[key], b.kl_layers[key])


@pytest.mark.parametrize("name", LATENT)
def test_fused_kl_path_and_importance_weight_path_agree(name):
    """The same noise gives the same z on both inference paths: the fused precision-weighted sampling op
    vs precision_weighted + rsample; and E_q[log p(z) - log q(z)] estimates -KL."""
    model = tiny(name)
    x, _ = batch()
    eps = noise(model, *x.shape[:2])
    log_px_fused, kls = model._inference(x, eps, exact_kl=True)
    log_px, log_ratios = model._inference(x, eps, exact_kl=False)
    torch.testing.assert_close(log_px_fused, log_px)
    k = 2000
    x_k = x[:1, :4].repeat(k, 1, 1)
    _, kls = model._inference(x_k, None, exact_kl=True)
    _, log_ratios = model._inference(x_k, None, exact_kl=False)
    for kl, log_ratio in zip(kls, log_ratios):
        kl, estimate = kl.mean(0), -log_ratio.mean(0)
        torch.testing.assert_close(estimate, kl, rtol=0.15, atol=0.15)


@pytest.mark.parametrize("name", LATENT[:2])
def test_iwae_bound(name):
    model = tiny(name)
    x, mask = batch()
    torch.manual_seed(0)
    elbo = torch.stack([model(x, mask).elbo for _ in range(20)]).mean(0)
    iwae = model.iwae(x, 64, mask)
    assert iwae.shape == (3,) and torch.isfinite(iwae).all()
    assert (iwae >= elbo - 0.05 * elbo.abs()).all()


@pytest.mark.parametrize("family,frame_size", [("bernoulli", 1), ("pen_gmm", 3)])
@pytest.mark.parametrize("cls", [STCNDense, WaveNet])
def test_output_families_of_the_configurations(cls, family, frame_size):
    torch.manual_seed(0)
    kwargs = STCN_TINY if cls.is_latent else dict(channels=8, levels=2, blocks_per_level=2, n_components=3)
    model = cls(frame_size, output=family, output_layers=1, **{**kwargs, "n_components": 3}).double()
    x = torch.randn(2, 6, frame_size, dtype=torch.float64)
    x[..., -1] = (x[..., -1] > 0).double()
    out = model(x)
    out.loss().backward()
    assert torch.isfinite(out.elbo).all()
    samples = model.sample(5, 2)
    assert samples.shape == (2, 5, frame_size) and ((samples[..., -1] == 0) | (samples[..., -1] == 1)).all()


def test_errors():
    with pytest.raises(ValueError, match="latent_sizes needs one size per level"):
        STCN(4, channels=8, levels=3, latent_sizes=(4, 2))
    with pytest.raises(ValueError, match="output_layer must be"):
        STCN(4, output_layer="lstm", **STCN_TINY)
    with pytest.raises(ValueError, match="no configuration"):
        STCN.from_config("nope")
    model = tiny("STCN")
    x, _ = batch()
    with pytest.raises(ValueError, match="eps must be"):
        model.log_weights(x, eps=torch.zeros(3, 12, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, 5, 3, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- causality

@pytest.mark.parametrize("name", LATENT)
def test_generative_path_is_causal_and_the_prior_reads_d_previous_only(name):
    """z_t of the generative model (prior on d_{t-1}) must not see x_t but must see x_{t-1}; the head's
    input at t sees z_<=t, so x_<t only."""
    model = tiny(name)
    x, _ = batch()
    eps = noise(model, *x.shape[:2])
    t = 6
    z, features = model.generative_path(x, eps)
    now, before = x.clone(), x.clone()
    now[:, t] += 1.0
    before[:, t - 1] += 1.0
    z_now, features_now = model.generative_path(now, eps)
    z_before, _ = model.generative_path(before, eps)
    torch.testing.assert_close(z_now[:, :t + 1], z[:, :t + 1])  # x_t reaches nothing up to step t
    torch.testing.assert_close(features_now[:, :t + 1], features[:, :t + 1])
    assert (z_now[:, t + 1] - z[:, t + 1]).abs().max() > 1e-6  # ... but step t + 1 through d_t
    torch.testing.assert_close(z_before[:, :t], z[:, :t])
    assert (z_before[:, t] - z[:, t]).abs().max() > 1e-6  # z_t reads d_{t-1}


@pytest.mark.parametrize("name", TINY)
def test_inference_terms_are_causal(name):
    """With the noise fixed, the bound over steps < t does not change when x_>=t does."""
    model = tiny(name)
    x, _ = batch()
    t = 5
    mask = torch.arange(x.shape[1]).expand(3, -1) < t
    changed = x.clone()
    changed[:, t:] += torch.randn_like(changed[:, t:])
    if model.is_latent:
        eps = noise(model, *x.shape[:2])
        torch.testing.assert_close(model.log_weights(x, mask, eps), model.log_weights(changed, mask, eps))
    else:
        torch.testing.assert_close(model(x, mask).log_likelihood, model(changed, mask).log_likelihood)


# ----------------------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("name", TINY)
def test_incremental_sampling_equals_full_recomputation(name):
    model = tiny(name).eval()
    steps = 40  # longer than the receptive fields: the queues wrap around
    assert model.tcn.receptive_field < steps
    eps = noise(model, 2, steps) if model.is_latent else None
    torch.manual_seed(4)
    generated = model.generate(steps, 2, eps)
    assert generated.x.shape == (2, steps, 4) and torch.isfinite(generated.x).all()
    z, features = model.generative_path(generated.x, eps)
    torch.testing.assert_close(generated.features, features, rtol=1e-9, atol=1e-9)
    if model.is_latent:
        torch.testing.assert_close(generated.z, z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["STCNDense", "WaveNet"])
def test_long_generation_never_reruns_the_full_network(name, monkeypatch):
    """4000 steps run on the per-block queues only: no block's full-sequence forward is ever called."""
    model = tiny(name, dtype=torch.float32, output="gaussian").eval()

    def full_forward(*args, **kwargs):
        raise AssertionError("generation recomputed a full sequence")

    monkeypatch.setattr(WaveNetBlock, "forward", full_forward)
    monkeypatch.setattr(TCN, "forward", full_forward)
    samples = model.sample(4000, batch_size=1)
    assert samples.shape == (1, 4000, 4) and torch.isfinite(samples).all()


# ----------------------------------------------------------------------------------------------- sizes

def block_count(in_channels, channels, skip=None, kernel_size=2):
    """One WaveNetBlock: gated conv (2C x C_in x k + 2C), residual 1x1 (C x C + C), skip 1x1, input projection."""
    count = 2 * channels * in_channels * kernel_size + 2 * channels + channels * channels + channels
    count += channels * skip + skip if skip else 0
    return count + (in_channels * channels if in_channels != channels else 0)


def tcn_count(in_channels, channels, blocks, skip=None):
    return sum(block_count(in_channels if i == 0 else channels, channels, skip) for i in range(blocks))


def mlp_count(in_features, width, layers):
    return in_features * width + width + (layers - 1) * (width * width + width)


def head_count(family, in_features, frame_size, K=20):
    outputs = {"diag_gmm": K + 2 * K * frame_size, "pen_gmm": 1 + 5 * K, "bernoulli": frame_size,
               "gaussian": 2 * frame_size}[family]
    return (in_features + 1) * outputs


def stcn_count(F, C, L, K, sizes, output_layer, output_layers, family, dense):
    """TCN + one shared latent net per level (mean and sigma stacks: 2 layers of C units + output each,
    on [d^l, z^{l+1}]) + output layer + head."""
    latent = sum(2 * mlp_count(C + (sizes[l + 1] if l + 1 < L else 0), C, 2) + 2 * (C * sizes[l] + sizes[l])
                 for l in range(L))
    Z = sum(sizes) if dense else sizes[0]
    output = tcn_count(Z, C, output_layers) if output_layer == "wavenet" else mlp_count(Z, C, output_layers)
    return tcn_count(F, C, L * K) + latent + output + head_count(family, C, F)


def wavenet_count(F, C, L, K, output_layers, family, dense):
    features = L * C if dense else C
    return (tcn_count(F, C, L * K, None if dense else C) + mlp_count(features, C, output_layers)
            + head_count(family, C, F))


CONFIG_COUNTS = [  # (class, configuration, count from the formulas above, the same number as printed)
    (STCN, "timit", stcn_count(200, 256, 5, 5, (256, 128, 64, 32, 16), "wavenet", 5, "diag_gmm", False), 13_602_100),
    (STCNDense, "timit", stcn_count(200, 256, 5, 5, (256, 128, 64, 32, 16), "wavenet", 5, "diag_gmm", True),
     13_974_836),
    (STCN, "timit_large", stcn_count(200, 512, 5, 5, (256, 128, 64, 32, 16), "wavenet", 5, "diag_gmm", False),
     48_559_924),
    (STCN, "iamondb", stcn_count(3, 256, 5, 6, (32, 16, 8, 5, 2), "conv1", 5, "pen_gmm", False), 11_256_803),
    (STCNDense, "iamondb", stcn_count(3, 256, 5, 6, (32, 16, 8, 5, 2), "conv1", 5, "pen_gmm", True), 11_264_739),
    (STCN, "mnist", stcn_count(1, 128, 6, 7, (2,) * 6, "conv1", 2, "bernoulli", False), 3_810_841),
    (STCNDense, "mnist", stcn_count(1, 128, 6, 7, (2,) * 6, "conv1", 2, "bernoulli", True), 3_812_121),
    (WaveNet, "timit", wavenet_count(200, 256, 5, 5, 2, "diag_gmm", False), 12_042_580),
    (WaveNetDense, "timit", wavenet_count(200, 256, 5, 5, 2, "diag_gmm", True), 10_659_924),
    (WaveNet, "iamondb", wavenet_count(3, 256, 5, 6, 2, "pen_gmm", False), 11_726_437),
    (WaveNetDense, "iamondb", wavenet_count(3, 256, 5, 6, 2, "pen_gmm", True), 10_014_821),
]


def test_parameter_counts_of_the_configurations(capsys):
    rows = []
    with torch.device("meta"):
        for cls, config, formula, stated in CONFIG_COUNTS:
            rows.append((cls.__name__, config, cls.from_config(config).num_parameters(), formula, stated))
    with capsys.disabled():
        print("\nmodel / config / fastlv / formula / stated")
        for row in rows:
            print("  {:14s} {:12s} {:>12,d} {:>12,d} {:>12,d}".format(*row))
    for name, config, count, formula, stated in rows:
        assert count == formula == stated, (name, config)


# ----------------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("name", ["STCN", "STCNDense", "WaveNet", "WaveNetDense"])
def test_short_overfit_run_drives_the_loss_down(name):
    model = tiny(name, dtype=torch.float32)
    x, mask = batch(B=3, T=8, dtype=torch.float32, seed=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(60):
        loss = model(x, mask).loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.25 * abs(first), (first, last)
