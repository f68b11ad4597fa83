"""Hierarchical RNN / SRNN of Dai et al. 2019 (Sec. 5.2, Eq. 13-14): a high-level recurrence over frames
and an autoregressive low-level model within each frame, g_t,i = f_low(x_t,<i, h_t)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv.nn.heads import ObservationHead
from fastlv.nn.models.rnn import FRNN
from fastlv.nn.models.srnn import SimplifiedSRNN
from fastlv.ops import gmm_log_prob, masked_linear


def element_log_prob(output: str, params: Tensor, x: Tensor) -> Tensor:
    """log p(x) summed over the frame from per-element parameters ``[..., L, P]``: a GMM (P = 3K, the
    fused :func:`fastlv.ops.gmm_log_prob`) or a Bernoulli logit (P = 1)."""
    if output == "bernoulli":
        return -F.binary_cross_entropy_with_logits(params.squeeze(-1), x, reduction="none").sum(-1)
    logits, mu, log_sigma = params.chunk(3, -1)
    return gmm_log_prob(x, logits, mu, log_sigma).sum(-1)


def element_sample(output: str, params: Tensor) -> Tensor:
    """One draw per element from per-element parameters ``[..., n, P]`` -> ``[..., n]``."""
    if output == "bernoulli":
        return torch.bernoulli(torch.sigmoid(params.squeeze(-1)))
    logits, mu, log_sigma = params.chunk(3, -1)
    k = torch.distributions.Categorical(logits=logits).sample().unsqueeze(-1)
    return (mu.gather(-1, k) + log_sigma.gather(-1, k).exp() * torch.randn_like(mu[..., :1])).squeeze(-1)


def _check_output(output: str, n_components: int) -> int:
    """Parameters per element of the low-level output."""
    if output not in ("gmm", "bernoulli"):
        raise ValueError(f"fastlv: hierarchical models support output 'gmm' or 'bernoulli', got {output!r}")
    return 3 * n_components if output == "gmm" else 1


class PerElementLinear(nn.Module):
    """Element i's output parameters from its own low-level state g_i ``[..., L, d]`` with its own weights
    ``[L, d, P]`` (the re-examination code's per-dimension output layer)."""

    def __init__(self, frame_size: int, in_features: int, P: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(frame_size, in_features, P).uniform_(-1, 1) / in_features ** 0.5)
        self.bias = nn.Parameter(torch.zeros(frame_size, P))

    def forward(self, g: Tensor, index: slice = slice(None)) -> Tensor:
        """Parameters of elements ``index`` from their states ``g [..., n, d]`` -> ``[..., n, P]``."""
        return torch.einsum("...id,idp->...ip", g, self.weight[index]) + self.bias[index]


class LowLevelLSTM(ObservationHead):
    """RNN low level (Dai et al. Sec. 5.2): an LSTM over the L elements of a frame, from a learned initial
    state, with input [embedded x_t,i-1, h_t] at element i (x_t,-1 = 0), so g_t,i has seen h_t and x_t,<i;
    per-element output weights. All B x T frames run as one ``nn.LSTM`` batch. (The re-examination code
    feeds x_t,i at element i and predicts element 0 from the initial state alone, so there x_t,0 ignores
    h_t; this shift has the same parameters and lets every element see h_t.)"""

    def __init__(self, frame_size: int, d_high: int, d_emb: int, d_rnn: int, output: str = "gmm",
                 n_components: int = 20):
        super().__init__()
        self.frame_size, self.output = frame_size, output
        self.embed = nn.Linear(1, d_emb)
        self.rnn = nn.LSTM(d_emb + d_high, d_rnn, batch_first=True)
        nn.init.orthogonal_(self.rnn.weight_hh_l0)
        self.init_h = nn.Parameter(torch.empty(1, d_rnn).uniform_(-0.01, 0.01))
        self.init_c = nn.Parameter(torch.empty(1, d_rnn).uniform_(-0.01, 0.01))
        self.out = PerElementLinear(frame_size, d_rnn, _check_output(output, n_components))

    def _initial(self, n: int) -> tuple[Tensor, Tensor]:
        return self.init_h.expand(n, -1)[None].contiguous(), self.init_c.expand(n, -1)[None].contiguous()

    def element_params(self, h: Tensor, x: Tensor) -> Tensor:
        """Output parameters of every element ``[..., L, P]``; element i's see h_t and x_t,<i only."""
        lead, L = x.shape[:-1], self.frame_size
        previous = F.pad(x.reshape(-1, L, 1), (0, 0, 1, 0))[:, :-1]  # element i gets x_t,i-1
        h = h.reshape(-1, 1, h.shape[-1]).expand(-1, L, -1)
        g, _ = self.rnn(torch.cat([self.embed(previous), h], -1), self._initial(previous.shape[0]))
        return self.out(g).view(*lead, L, -1)

    def log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        return element_log_prob(self.output, self.element_params(h, x), x)

    def sample(self, h: Tensor) -> Tensor:
        lead = h.shape[:-1]
        h = h.reshape(-1, 1, h.shape[-1])
        state = self._initial(h.shape[0])
        value, values = h.new_zeros(h.shape[0], 1), []
        for i in range(self.frame_size):
            g, state = self.rnn(torch.cat([self.embed(value.unsqueeze(-1)), h], -1), state)
            value = element_sample(self.output, self.out(g, slice(i, i + 1)))  # [n, 1]
            values.append(value)
        return torch.cat(values, -1).view(*lead, self.frame_size)


class LowLevelMADE(ObservationHead):
    """Causally masked MLP low level (MADE, Germain et al. 2015; Dai et al. Sec. 5.2 on Perm-TIMIT):
    inputs [x_t (degrees 1..L), h_t (degree 0)], ``n_layers`` masked ReLU layers of ``d_hidden`` units
    (degrees cycling 0..L-1), and a masked output layer where element i's parameters see only units of
    degree <= i, i.e. h_t and x_t,<i. Every layer is the block-sparse :func:`fastlv.ops.masked_linear`."""

    def __init__(self, frame_size: int, d_high: int, d_hidden: int, n_layers: int = 2, output: str = "gmm",
                 n_components: int = 20):
        super().__init__()
        self.frame_size, self.output = frame_size, output
        self.P = P = _check_output(output, n_components)
        degrees = [torch.cat([torch.arange(1, frame_size + 1), torch.zeros(d_high, dtype=torch.long)])]
        degrees += [torch.arange(d_hidden) % frame_size for _ in range(n_layers)]
        out_degrees = torch.arange(1, frame_size + 1).repeat_interleave(P)  # element i (0-based): degree i + 1
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(degrees, degrees[1:] + [out_degrees])):
            hidden = i < n_layers
            mask = (d_out[:, None] >= d_in[None, :]) if hidden else (d_out[:, None] > d_in[None, :])
            layer = nn.Linear(len(d_in), len(d_out))
            self.weights.append(layer.weight), self.biases.append(layer.bias)
            self.register_buffer(f"mask_{i}", mask.float())

    def element_params(self, h: Tensor, x: Tensor) -> Tensor:
        """Output parameters of every element ``[..., L, P]``; element i's see h_t and x_t,<i only."""
        y = torch.cat([x, h], -1)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            y = masked_linear(y, weight, getattr(self, f"mask_{i}"), bias, activation=None if i == last else "relu")
        return y.unflatten(-1, (self.frame_size, self.P))

    def log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        return element_log_prob(self.output, self.element_params(h, x), x)

    def sample(self, h: Tensor) -> Tensor:
        x = h.new_zeros(*h.shape[:-1], self.frame_size)
        for i in range(self.frame_size):  # element i depends on x_<i only: fill them in order
            x[..., i] = element_sample(self.output, self.element_params(h, x)[..., i:i + 1, :]).squeeze(-1)
        return x


def low_level_head(low_level: str, frame_size: int, d_high: int, d_emb: int, d_low: int, output: str,
                   n_components: int, made_layers: int) -> ObservationHead:
    if low_level == "lstm":
        return LowLevelLSTM(frame_size, d_high, d_emb, d_low, output, n_components)
    if low_level == "made":
        return LowLevelMADE(frame_size, d_high, d_low, made_layers, output, n_components)
    raise ValueError(f"fastlv: low_level must be 'lstm' or 'made', got {low_level!r}")


class HierRNN(FRNN):
    """RNN-hier (Dai et al. Sec. 5.2, Eq. 13): an LSTM over frames, h_t = LSTM(x_{t-1}, h_{t-1}), and
    p(x_t | x_<t) = prod_i p(x_t,i | x_<t, x_t,<i) from a low-level LSTM (``low_level="lstm"``, width
    ``d_rnn``) or MADE (``"made"``, ``made_layers`` x ``d_low``) on h_t. Exact log-likelihood."""
    CONFIGS = {
        # re-examination code, TIMIT RNN-hier d_rnn 700: 17,275,736 parameters
        "timit": dict(frame_size=200, d_rnn=700),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 700, n_layers: int = 1, output: str = "gmm",
                 n_components: int = 20, low_level: str = "lstm", d_low: int | None = None, made_layers: int = 2):
        head = low_level_head(low_level, frame_size, d_rnn, d_emb, d_low or d_rnn, output, n_components, made_layers)
        super().__init__(frame_size, d_emb, d_rnn, n_layers, head=head)


class HierSRNN(SimplifiedSRNN):
    """SRNN-hier (Dai et al. Sec. 5.2, Eq. 14): the simplified SRNN's h_t (Eq. 3) under the same low level,
    p(x_t | z_<=t, x_<t) = prod_i p(x_t,i | z_<=t, x_<t, x_t,<i); one Gaussian per element by default."""
    CONFIGS = {
        # re-examination code, TIMIT SRNN-hier d_rnn 660: 17,248,352 parameters
        "timit": dict(frame_size=200, d_rnn=660),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 660, d_mlp: int = 512, d_latent: int = 256,
                 output: str = "gmm", n_components: int = 1, param_clamp: float | None = 8.0, low_level: str = "lstm",
                 d_low: int | None = None, made_layers: int = 2):
        head = low_level_head(low_level, frame_size, d_rnn, d_emb, d_low or d_rnn, output, n_components, made_layers)
        super().__init__(frame_size, d_emb, d_rnn, d_mlp, d_latent, param_clamp=param_clamp, head=head)
