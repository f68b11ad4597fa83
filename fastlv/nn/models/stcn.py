"""Stochastic temporal convolutional networks (STCN, STCN-dense; Aksan & Hilliges 2019) and their WaveNet
baselines (WaveNet, van den Oord et al. 2016; WaveNet-dense, STCN Sec. 4), on the fused gated convolution
(:class:`fastlv.nn.TCN`) and the fused Gaussian ops.

Layout: the models take ``x [B, T, frame_size]`` like every fastlv sequence model and work time-major
inside (``[T, B, C]`` rows), so the TCN, the 1x1-convolution MLPs and the heads are single GEMMs.

Generation (``sample`` / ``generate``) runs the TCNs incrementally (:meth:`fastlv.nn.TCN.step`: per-block
input queues), so one step costs O(blocks) small GEMMs however long the sequence: no step recomputes the
receptive field. ``generative_path(x, eps)`` recomputes the same generative quantities over a whole given
sequence at once (what the tests compare the incremental path against).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv.nn.base import SequenceOutput
from fastlv.nn.heads import observation_head
from fastlv.nn.models.common import LatentModel, RecurrentModel
from fastlv.nn.wavenet import TCN, _single_threaded_if_small
from fastlv.ops import gaussian_log_prob, gaussian_rsample, gaussian_sample_kl, precision_weighted

OUTPUT_LAYERS = ("wavenet", "conv1")


def _time_major(x: Tensor) -> Tensor:
    """``[B, T, F]`` -> contiguous ``[T, B, F]``."""
    return x.transpose(0, 1).contiguous()


def _as_tcn_input(x_tm: Tensor) -> Tensor:
    """Time-major rows ``[T, B, F]`` as the TCN's ``[B, F, T]`` (a view with time-major memory)."""
    return x_tm.permute(1, 2, 0)


def _tcn_rows(level: Tensor) -> Tensor:
    """A TCN output ``[B, C, T]`` (time-major memory) as rows ``[T, B, C]`` (a contiguous view)."""
    return level.permute(2, 0, 1)


def _shift_time(x_tm: Tensor) -> Tensor:
    """``[T, B, C]`` one step later in time: row t holds row t - 1, row 0 zeros (d_{-1} = 0)."""
    return F.pad(x_tm, (0, 0, 0, 0, 1, 0))[:-1]


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """A parameter initialized like nn.Linear's weights and biases (uniform in +-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class GaussianConv1(nn.Module):
    """The latent layer f^(l) of STCN (Eq. 8, 10; Appendix 7.1): mean and sigma of z^l, each from its own
    stack of 1x1 convolutions with ReLU (``layers`` hidden layers of ``hidden`` units, then a linear
    output), on the input [d^l, z^{l+1}]; sigma = softplus clipped to [sigma_min, sigma_max]
    (the paper's [1e-3, 5]).

    The two stacks run as one computation: their first layers as one GEMM split into the d part
    (:meth:`d_term`, no bias: d^l is computed once per sequence and reused shifted for the prior) and the
    z part (:meth:`z_term`, with both biases); the later layers as a batched GEMM over the two stacks.
    :meth:`gaussian` maps the first layer's pre-activations ``[..., 2 * hidden]`` to (mean, log-variance).
    """

    def __init__(self, d_features: int, z_features: int, hidden: int, latent: int, layers: int = 2,
                 sigma_min: float = 1e-3, sigma_max: float = 5.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"fastlv: latent layers must be >= 1, got {layers}")
        self.hidden, self.latent, self.sigma_min, self.sigma_max = hidden, latent, sigma_min, sigma_max
        fan_in = d_features + z_features
        # rows [0, H): the mean stack's first layer; rows [H, 2H): the sigma stack's
        self.d_weight = _uniform((2 * hidden, d_features), fan_in)
        self.z_weight = _uniform((2 * hidden, z_features), fan_in) if z_features else None
        self.first_bias = _uniform((2 * hidden,), fan_in)
        # later layers of both stacks: [2, H_in, H_out] for torch.baddbmm over [2, N, H] activations
        self.hidden_weights = nn.ParameterList(_uniform((2, hidden, hidden), hidden) for _ in range(layers - 1))
        self.hidden_biases = nn.ParameterList(_uniform((2, 1, hidden), hidden) for _ in range(layers - 1))
        self.out_weight = _uniform((2, hidden, latent), hidden)
        self.out_bias = _uniform((2, 1, latent), hidden)

    def d_term(self, d: Tensor) -> Tensor:
        """First-layer pre-activations from d ``[..., C]`` -> ``[..., 2H]`` (linear, no bias)."""
        return F.linear(d, self.d_weight)

    def z_term(self, z_above: Tensor | None) -> Tensor:
        """First-layer pre-activations from z^{l+1} plus the biases (just the biases at the top level)."""
        return self.first_bias if z_above is None else F.linear(z_above, self.z_weight, self.first_bias)

    def gaussian(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` ``[..., latent]`` from first-layer pre-activations ``[..., 2H]``."""
        lead, H = pre.shape[:-1], self.hidden
        h = F.relu(pre).reshape(-1, 2, H).transpose(0, 1)  # [2, N, H]: the mean stack, the sigma stack
        for weight, bias in zip(self.hidden_weights, self.hidden_biases):
            h = F.relu(torch.baddbmm(bias, h, weight))
        mu, raw_sigma = torch.baddbmm(self.out_bias, h, self.out_weight).unbind(0)
        sigma = F.softplus(raw_sigma).clamp(self.sigma_min, self.sigma_max)
        return mu.reshape(*lead, -1), (2.0 * sigma.log()).reshape(*lead, -1)


class OutputLayer(nn.Module):
    """The output layer f^(o) between the latent samples (or TCN features) and the observation head
    (STCN Appendix 7.1): ``wavenet``, ``layers`` WaveNet blocks of dilation 1 (speech; causal over the
    latent sequence, so generation keeps their queues), or ``conv1``, ``layers`` 1x1 convolutions with
    ReLU (handwriting, MNIST, the WaveNet baselines). ``forward`` maps rows ``[T, B, in]`` to
    ``[T, B, channels]``; ``step`` one step ``[B, in]`` with the state of ``init_state``."""

    def __init__(self, kind: str, in_features: int, channels: int, layers: int, kernel_size: int = 2):
        super().__init__()
        if kind not in OUTPUT_LAYERS:
            raise ValueError(f"fastlv: output_layer must be one of {OUTPUT_LAYERS}, got {kind!r}")
        self.kind = kind
        if kind == "wavenet":
            self.net = TCN(in_features, channels, levels=layers, blocks_per_level=1, kernel_size=kernel_size)
        else:
            self.net = nn.Sequential(*[m for i in range(layers)
                                       for m in (nn.Linear(in_features if i == 0 else channels, channels), nn.ReLU())])

    def forward(self, rows: Tensor) -> Tensor:
        if self.kind == "conv1":
            return self.net(rows)
        return _tcn_rows(self.net(_as_tcn_input(rows)).levels[-1])

    def init_state(self, batch_size: int, device=None, dtype=None) -> list | None:
        return self.net.init_state(batch_size, device, dtype) if self.kind == "wavenet" else None

    def step(self, row: Tensor, state: list | None) -> Tensor:
        return self.net(row) if self.kind == "conv1" else self.net.step(row, state).levels[-1]


class Generation(NamedTuple):
    x: Tensor  # [B, T, frame_size] the samples
    z: Tensor | None  # [B, T, Z] the latent samples the output layer read (None for WaveNet)
    features: Tensor  # [B, T, C] the observation head's input at every step


class STCN(LatentModel):
    """Stochastic temporal convolutional network (Aksan & Hilliges 2019, Sec. 3; Appendix 7.1).

    A TCN over x (``levels`` = L levels of ``blocks_per_level`` = K WaveNet blocks, dilations 1..2^(K-1))
    gives d^l_t, l = 1..L, computed from x_{1:t}. Latent variables z^l_t, top-down within each step
    and independent across steps given d:

        prior              p(z^l_t | z^{l+1}_t, d^l_{t-1}) = N(f_p^(l)(z^{l+1}_t, d^l_{t-1}))    (Eq. 7-8)
        approx likelihood  [mu_hat, sigma_hat] = f_q^(l)(z^{l+1}_t, d^l_t)                        (Eq. 10)
        posterior          precision-weighted combination of the two (Eq. 11), l < L;
                           q(z^L_t | d^L_t) = the approximate likelihood at the top (Eq. 12)
        observation        p(x_t | z^1_t) (STCN, Eq. 9, 16), p(x_t | [z^1_t, ..., z^L_t]) (STCN-dense, Eq. 17)

    with d_{-1} = 0 (the prior of step 0 sees no data). The KL of Eq. 15 is reported per layer in
    ``kl_layers`` (``"z1"`` .. ``"zL"``, the paper's Table 3). Eq. 11 is implemented as written, in
    variances, fused into the sampling step (:func:`fastlv.ops.gaussian_sample_kl`); the STCN code uses
    the resulting variance as a standard deviation (reference-facts.md).

    Latent nets (:class:`GaussianConv1`): ``latent_layers`` 1x1 convolutions of ``latent_hidden`` units
    (default: the TCN width) per mean and sigma, sigma clipped to [1e-3, 5]. With ``share_latent_nets``
    (the STCN code's default, share_latent_params) f_p^(l) and f_q^(l) are one net applied to d_{t-1} and
    d_t; the d part of its first layer is then computed once per sequence and shifted for the prior.

    Output: ``output_layer`` (:class:`OutputLayer`; ``wavenet`` for speech, ``conv1`` otherwise) of
    ``output_layers`` layers of ``output_channels``, then the observation head of family ``output``
    (fastlv.nn.heads; ``diag_gmm`` is the STCN code's full-frame 20-component mixture, its sigma an exp
    clamped to [1e-3, 50] where the code clips a softplus to that range). The KL-annealing weight
    (STCN: min(1e-4 * step, 1), Appendix 7.2) is the trainer's.
    """
    dense = False
    CONFIGS = {
        # Appendix 7.1: speech (TIMIT, Blizzard) K = 5, L = 5, 256 filters, output 5 WaveNet blocks of dilation 1
        "timit": dict(frame_size=200, channels=256, levels=5, blocks_per_level=5, latent_sizes=(256, 128, 64, 32, 16),
                      output_layer="wavenet", output_layers=5, output="diag_gmm", n_components=20),
        # the large speech model: 512 filters everywhere
        "timit_large": dict(frame_size=200, channels=512, levels=5, blocks_per_level=5,
                            latent_sizes=(256, 128, 64, 32, 16), output_layer="wavenet", output_layers=5,
                            output="diag_gmm", n_components=20),
        # handwriting (IAM-OnDB, Deepwriting) K = 6, L = 5, output 5 x 256 1x1 convolutions; (dx, dy, pen) steps;
        # the paper's latent sizes (the code's IAM-OnDB configuration has 4 where the paper has 5)
        "iamondb": dict(frame_size=3, channels=256, levels=5, blocks_per_level=6, latent_sizes=(32, 16, 8, 5, 2),
                        output_layer="conv1", output_layers=5, output="pen_gmm", n_components=20),
        # sequential MNIST K = 7, L = 6, 128 filters, 2 latent units per layer, output 2 x 128 1x1 convolutions
        "mnist": dict(frame_size=1, channels=128, levels=6, blocks_per_level=7, latent_sizes=(2,) * 6,
                      output_layer="conv1", output_layers=2, output="bernoulli"),
    }

    def __init__(self, frame_size: int, channels: int = 256, levels: int = 5, blocks_per_level: int = 5,
                 latent_sizes: tuple[int, ...] = (256, 128, 64, 32, 16), latent_hidden: int | None = None,
                 latent_layers: int = 2, output_layer: str = "wavenet", output_layers: int = 5,
                 output_channels: int | None = None, output: str = "diag_gmm", n_components: int = 20,
                 kernel_size: int = 2, share_latent_nets: bool = True, sigma_min: float = 1e-3,
                 sigma_max: float = 5.0, output_sigma_min: float = 1e-3, output_sigma_max: float = 50.0):
        super().__init__(frame_size)
        latent_sizes = tuple(latent_sizes)
        if len(latent_sizes) != levels:
            raise ValueError(f"fastlv: latent_sizes needs one size per level ({levels}), got {latent_sizes}")
        self.latent_sizes = latent_sizes
        hidden = latent_hidden or channels
        output_channels = output_channels or channels
        self.tcn = TCN(frame_size, channels, levels, blocks_per_level, kernel_size)

        def latent_nets() -> nn.ModuleList:  # index l is level l + 1; level l + 1 reads z of level l + 2
            return nn.ModuleList(
                GaussianConv1(channels, latent_sizes[l + 1] if l + 1 < levels else 0, hidden, latent_sizes[l],
                              latent_layers, sigma_min, sigma_max) for l in range(levels))

        self.latent = latent_nets()
        self.prior = None if share_latent_nets else latent_nets()
        z_features = sum(latent_sizes) if self.dense else latent_sizes[0]
        self.output_layer = OutputLayer(output_layer, z_features, output_channels, output_layers, kernel_size)
        self.head = observation_head(output, output_channels, frame_size, n_components,
                                     log_sigma_min=math.log(output_sigma_min), log_sigma_max=math.log(output_sigma_max))

    # ------------------------------------------------------------------------------------------- pieces

    def _prior_net(self, l: int) -> GaussianConv1:
        return self.latent[l] if self.prior is None else self.prior[l]

    def _level_params(self, l: int, d: Tensor, z_above: Tensor | None) -> tuple[Tensor, ...]:
        """Approximate likelihood and prior of level l + 1 over a whole sequence: d ``[T, B, C]`` (d_t at
        row t), z_above ``[T, B, D_{l+2}]`` -> ``(mu_hat, logvar_hat, mu_p, logvar_p)`` ``[T, B, D]``."""
        net, prior_net = self.latent[l], self._prior_net(l)
        d_term = net.d_term(d)
        if prior_net is net:  # one net: the prior's d part is the posterior's one step later; one pass for both
            z_term = net.z_term(z_above)
            mu, logvar = net.gaussian(torch.stack([d_term + z_term, _shift_time(d_term) + z_term]))
            return mu[0], logvar[0], mu[1], logvar[1]
        return (*net.gaussian(d_term + net.z_term(z_above)),
                *prior_net.gaussian(_shift_time(prior_net.d_term(d)) + prior_net.z_term(z_above)))

    def _posterior_kind(self, l: int) -> str:
        return "standard" if l == len(self.latent_sizes) - 1 else "precision_weighted"

    def _latent_noise(self, eps: Tensor | None, B: int, T: int, like: Tensor) -> list[Tensor | None]:
        """Per-level noise rows ``[T, B, D_l]`` from ``eps [B, T, sum(latent_sizes)]`` (None: drawn by the ops)."""
        if eps is None:
            return [None] * len(self.latent_sizes)
        if eps.shape != (B, T, sum(self.latent_sizes)):
            raise ValueError(f"fastlv: eps must be {(B, T, sum(self.latent_sizes))}, got {tuple(eps.shape)}")
        return [n.contiguous() for n in _time_major(eps.to(like)).split(self.latent_sizes, -1)]

    def _inference(self, x: Tensor, eps: Tensor | None, exact_kl: bool) -> tuple[Tensor, list[Tensor]]:
        """Run the inference path over x ``[B, T, F]``: ``(log p(x_t | z_t) [B, T], per-level terms [B, T])``
        with z ~ q; the terms are KL(q || p) (``exact_kl``, the fused op) or log p(z) - log q(z) (for
        importance weights)."""
        B, T, _ = x.shape
        x_tm = _time_major(x)
        levels = self.tcn(_as_tcn_input(x_tm)).levels
        noise = self._latent_noise(eps, B, T, x)
        z_above, zs, terms = None, [None] * len(levels), [None] * len(levels)
        for l in reversed(range(len(levels))):
            mu_hat, logvar_hat, mu_p, logvar_p = self._level_params(l, _tcn_rows(levels[l]), z_above)
            kind = self._posterior_kind(l)
            if exact_kl:
                z, term = gaussian_sample_kl(mu_hat, logvar_hat, mu_p, logvar_p, eps=noise[l], posterior=kind)
            else:
                mu_q, logvar_q = mu_hat, logvar_hat
                if kind == "precision_weighted":
                    mu_q, var_q = precision_weighted(mu_hat, logvar_hat.exp(), mu_p, logvar_p.exp())
                    logvar_q = var_q.log()
                z = gaussian_rsample(mu_q, logvar_q, noise[l])
                term = gaussian_log_prob(z, mu_p, logvar_p) - gaussian_log_prob(z, mu_q, logvar_q)
            zs[l], terms[l], z_above = z, term.t(), z
        features = self.output_layer(torch.cat(zs, -1) if self.dense else zs[0])
        return self.head.log_prob(features, x_tm).t(), terms

    # ------------------------------------------------------------------------------------------- interface

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, _ = self._steps(x, mask)
        log_px, kls = self._inference(x, None, exact_kl=True)
        kl_layers = {f"z{l + 1}": self._total(kl, mask) for l, kl in enumerate(kls)}
        return SequenceOutput(self._total(log_px, mask), sum(kl_layers.values()), kl_layers)

    def noise_shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0], x.shape[1], sum(self.latent_sizes))

    def log_weights(self, x: Tensor, mask: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        x, mask, _ = self._steps(x, mask)
        log_px, log_ratios = self._inference(x, eps, exact_kl=False)
        return self._total(log_px + sum(log_ratios), mask)

    def _prior_step(self, d_prev: list[Tensor], noise: list[Tensor]) -> Tensor:
        """z_t from the prior, top-down: d_prev ``[..., C]`` per level (d_{t-1}), noise ``[..., D_l]`` per
        level -> the output layer's input ``[..., Z]``. Works on one step ``[B, .]`` or a sequence
        ``[T, B, .]``. Two pointwise ops per level rather than the fused sampling op: at one step's size a
        custom-op call costs more in dispatch than it fuses."""
        z_above, zs = None, [None] * len(d_prev)
        for l in reversed(range(len(d_prev))):
            net = self._prior_net(l)
            mu, logvar = net.gaussian(net.d_term(d_prev[l]) + net.z_term(z_above))
            zs[l] = z_above = torch.addcmul(mu, torch.exp(0.5 * logvar), noise[l])
        return torch.cat(zs, -1) if self.dense else zs[0]

    @torch.no_grad()
    def generative_path(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """The generative model over a whole given sequence x ``[B, T, F]`` at once, with prior noise
        ``eps [B, T, sum(latent_sizes)]``: ``(z [B, T, Z], features [B, T, C])``, z_t drawn from the prior
        on d_{t-1} (computed from x_{<t}). Equal to what :meth:`generate` computes step by step."""
        B, T, _ = x.shape
        x_tm = _time_major(x)
        d_prev = [_shift_time(_tcn_rows(level)) for level in self.tcn(_as_tcn_input(x_tm)).levels]
        z = self._prior_step(d_prev, self._latent_noise(eps, B, T, x))
        return z.transpose(0, 1), self.output_layer(z).transpose(0, 1)

    @torch.no_grad()
    def generate(self, steps: int, batch_size: int = 1, eps: Tensor | None = None) -> Generation:
        """Ancestral sampling with incremental TCNs: per step, z_t top-down from the prior on d_{t-1},
        x_t from the head, then d_t from one TCN step on x_t. ``eps [B, steps, sum(latent_sizes)]`` fixes
        the latent noise (drawn here when None)."""
        weight = self.latent[0].d_weight
        if eps is None:
            eps = torch.randn(batch_size, steps, sum(self.latent_sizes), device=weight.device, dtype=weight.dtype)
        noise = self._latent_noise(eps, batch_size, steps, weight)
        tcn_state = self.tcn.init_state(batch_size)
        output_state = self.output_layer.init_state(batch_size)
        d_prev = [weight.new_zeros(batch_size, self.tcn.blocks[-1].channels)] * len(self.latent_sizes)
        xs, zs, features = [], [], []
        for t in range(steps):
            with _single_threaded_if_small(d_prev[0]):
                z = self._prior_step(d_prev, [n[t] for n in noise])
                h = self.output_layer.step(z, output_state)
                x_t = self.head.sample(h)
                if t + 1 < steps:
                    d_prev = self.tcn.step(x_t, tcn_state).levels
            xs.append(x_t), zs.append(z), features.append(h)
        return Generation(*(torch.stack(s, 1) for s in (xs, zs, features)))

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        return self.generate(steps, batch_size).x


class STCNDense(STCN):
    """STCN-dense (Aksan & Hilliges 2019, Eq. 9, 17): the observation model reads the concatenation of
    all latent samples [z^1_t, ..., z^L_t]; otherwise :class:`STCN`."""
    dense = True


class WaveNet(RecurrentModel):
    """The deterministic baselines of STCN (Sec. 4, Appendix 7.1): a TCN of ``levels`` x
    ``blocks_per_level`` WaveNet blocks over x_{<t} (the input shifted one step), then ``output_layers``
    1x1 convolutions with ReLU and the observation head for x_t (GMM or Normal).

    WaveNet (van den Oord et al. 2016): the head reads the sum of all blocks' skip outputs (separate 1x1
    skip convolutions of the TCN width), through a ReLU. (The STCN code's blocks have one 1x1 convolution
    whose output is both the skip and the residual update, so its baseline has 25 x (C^2 + C) fewer
    parameters.) WaveNet-dense (:class:`WaveNetDense`): it reads
    the concatenation of the levels' outputs d^1..d^L, like STCN-dense reads all z^l (the STCN code's
    TIMIT configuration picks the outputs of blocks 5, 15 and 25; here all L levels).
    ``log_likelihood`` is the exact log-likelihood and ``kl`` is zero.
    """
    dense = False
    CONFIGS = {
        # the STCN code's TIMIT baselines: 25 blocks, dilations 1..16 x 5, 256 filters, output 2 x 256
        "timit": dict(frame_size=200, channels=256, levels=5, blocks_per_level=5, output_layers=2,
                      output="diag_gmm", n_components=20),
        # handwriting: the STCN handwriting TCN (K = 6, L = 5); output width as for speech (assumed)
        "iamondb": dict(frame_size=3, channels=256, levels=5, blocks_per_level=6, output_layers=2,
                        output="pen_gmm", n_components=20),
    }

    def __init__(self, frame_size: int, channels: int = 256, levels: int = 5, blocks_per_level: int = 5,
                 kernel_size: int = 2, output_layers: int = 2, output_channels: int | None = None,
                 output: str = "diag_gmm", n_components: int = 20, output_sigma_min: float = 1e-3,
                 output_sigma_max: float = 50.0):
        super().__init__(frame_size)
        output_channels = output_channels or channels
        self.tcn = TCN(frame_size, channels, levels, blocks_per_level, kernel_size,
                       skip_channels=None if self.dense else channels)
        features = levels * channels if self.dense else channels
        self.output_layer = OutputLayer("conv1", features, output_channels, output_layers)
        self.head = observation_head(output, output_channels, frame_size, n_components,
                                     log_sigma_min=math.log(output_sigma_min), log_sigma_max=math.log(output_sigma_max))

    def _features(self, tcn_out) -> Tensor:
        """The output layer's input from a TCN output (rows ``[T, B, .]`` or one step ``[B, .]``)."""
        return torch.cat(tcn_out.levels, 1) if self.dense else F.relu(tcn_out.skip)  # channels: dim 1 of both

    def _step_features(self, x_tm: Tensor) -> Tensor:
        """Head inputs ``[T, B, C]`` for the targets x_tm ``[T, B, F]``: step t sees x_{<t}."""
        tcn_out = self.tcn(_as_tcn_input(_shift_time(x_tm).contiguous()))
        return self.output_layer(_tcn_rows(self._features(tcn_out)))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, _ = self._steps(x, mask)
        x_tm = _time_major(x)
        log_px = self.head.log_prob(self._step_features(x_tm), x_tm).t()
        return SequenceOutput(self._total(log_px, mask), log_px.new_zeros(x.shape[0]))

    @torch.no_grad()
    def generative_path(self, x: Tensor, eps: Tensor | None = None) -> tuple[None, Tensor]:
        """``(None, features [B, T, C])``: the head inputs over a whole given sequence at once."""
        x, _, _ = self._steps(x, None)
        return None, self._step_features(_time_major(x)).transpose(0, 1)

    @torch.no_grad()
    def generate(self, steps: int, batch_size: int = 1, eps: Tensor | None = None) -> Generation:
        """Ancestral sampling with the incremental TCN: one TCN step on x_{t-1} (zeros at t = 0) per x_t."""
        weight = next(self.parameters())
        state = self.tcn.init_state(batch_size)
        x_t = weight.new_zeros(batch_size, self.frame_size)
        xs, features = [], []
        for _ in range(steps):
            with _single_threaded_if_small(x_t):
                h = self.output_layer.step(self._features(self.tcn.step(x_t, state)), None)
                x_t = self.head.sample(h)
            xs.append(x_t), features.append(h)
        return Generation(torch.stack(xs, 1), None, torch.stack(features, 1))

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        return self.generate(steps, batch_size).x


class WaveNetDense(WaveNet):
    """WaveNet-dense (STCN Sec. 4): the output layer reads all levels' outputs [d^1_t, ..., d^L_t]."""
    dense = True
