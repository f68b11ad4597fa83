"""MADE and the hierarchical output head of RNN-hier / SRNN-hier.

Dai et al. 2019, Sec. 5.2, Eq. 13-14 factorize each multivariate step autoregressively,
p(x_t | h_t) = prod_i p(x_{t,i} | x_{t,<i}, h_t), with a low-level model g_{t,i} = f_low(x_{t,<i}, h_t):
a causally masked MLP (MADE, Germain et al. 2015) on Perm-TIMIT, an LSTM over the elements elsewhere.

MADE (Germain et al. 2015, Sec. 4): every unit k gets a degree m(k); the inputs a permutation of 1..L
(the order), hidden units degrees in [0, L-1]. A hidden unit sees the units below of degree <= its own,
an output of degree d the hidden units of degree < d, so output i depends on exactly the inputs before
it in the order. The context h_t enters as extra inputs of degree 0, which every unit sees. The masked
layers run on :func:`fastlv.ops.masked_linear`, which computes only the blocks the masks keep.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv.nn.gmm import GaussianMixture
from fastlv.ops._common import reduce
from fastlv.ops.gmm import gmm_log_prob
from fastlv.ops.masked_linear import masked_linear

DISTRIBUTIONS = ("gmm", "bernoulli")


def input_degrees(n_inputs: int, order: str | Sequence[int] | Tensor = "natural",
                  generator: torch.Generator | None = None) -> Tensor:
    """Degrees 1..L of the inputs: ``"natural"`` (x_1 first), ``"random"`` (a random permutation from
    ``generator``) or a user-given order (a permutation of 0..L-1 listing the inputs first to last)."""
    if isinstance(order, str):
        if order == "natural":
            return torch.arange(1, n_inputs + 1)
        if order == "random":
            return torch.randperm(n_inputs, generator=generator) + 1
        raise ValueError(f"fastlv: order must be 'natural', 'random' or a permutation, got {order!r}")
    order = torch.as_tensor(order, dtype=torch.long)
    if order.shape != (n_inputs,) or not torch.equal(order.sort().values, torch.arange(n_inputs)):
        raise ValueError(f"fastlv: order must be a permutation of 0..{n_inputs - 1}, got {order.tolist()}")
    degrees = torch.empty(n_inputs, dtype=torch.long)
    degrees[order] = torch.arange(1, n_inputs + 1)
    return degrees


def hidden_degrees(n_hidden: int, n_inputs: int, with_context: bool) -> Tensor:
    """Sorted degrees of a hidden layer, spread evenly over [lo, L-1]; lo = 0 with a context (units that
    see only h_t carry it to the first output), else 1 (a degree-0 unit would be a constant)."""
    lo = 0 if with_context or n_inputs == 1 else 1
    span = max(n_inputs - lo, 1)  # number of degrees lo..L-1
    return lo + torch.arange(n_hidden) * span // max(n_hidden, 1)


def made_mask(in_degrees: Tensor, out_degrees: Tensor, strict: bool) -> Tensor:
    """``[out, in]`` bool mask: unit o sees unit i iff m(o) > m(i) (strict, output layer) or
    m(o) >= m(i) (hidden layers)."""
    out_d, in_d = out_degrees[:, None], in_degrees[None, :]
    return out_d > in_d if strict else out_d >= in_d


class MaskedLinear(nn.Linear):
    """``nn.Linear`` with a fixed connectivity mask (``[out, in]`` buffer), on :func:`masked_linear`."""

    def __init__(self, mask: Tensor, bias: bool = True, activation: str | None = None):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.bool())
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return masked_linear(x, self.weight, self.mask, self.bias, self.activation)


class PerDimensionLinear(nn.Module):
    """One independent linear map per data dimension: ``[..., L, in] -> [..., L, out]`` with weights
    ``[L, in, out]`` (the "no parameter sharing" layers of Dai et al. 2019, Sec. 5.2)."""

    def __init__(self, n_dims: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features) if in_features else 0.0
        self.weight = nn.Parameter(torch.empty(n_dims, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_dims, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("...li,lio->...lo", x, self.weight) + self.bias


class ElementDistribution:
    """Per-element output distribution from ``[..., L, n_params]`` parameters: ``"gmm"`` (``n_components``
    Gaussians: logits, mu, log_sigma; the fused :func:`fastlv.ops.gmm_log_prob`) or ``"bernoulli"``
    (one logit; piano rolls)."""

    def __init__(self, distribution: str = "gmm", n_components: int = 20, log_sigma_min: float | None = None,
                 log_sigma_max: float | None = None):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"fastlv: distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        self.distribution, self.n_components = distribution, n_components
        self.clamps = dict(log_sigma_min=log_sigma_min, log_sigma_max=log_sigma_max)
        self.n_params = 3 * n_components if distribution == "gmm" else 1

    def _mixture(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return params.unflatten(-1, (3, self.n_components)).unbind(-2)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x_i | params_i) ``[..., L]``."""
        if self.distribution == "bernoulli":
            return -F.binary_cross_entropy_with_logits(params[..., 0], x, reduction="none")
        return gmm_log_prob(x, *self._mixture(params), **self.clamps)

    def sample(self, params: Tensor) -> Tensor:
        if self.distribution == "bernoulli":
            return torch.bernoulli(torch.sigmoid(params[..., 0]))
        return GaussianMixture(*self._mixture(params), **self.clamps).sample()


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015), conditioned on a context.

    Two layouts:

    - shared hidden layers (default): ``hidden_sizes`` masked layers (ReLU) whose units each see the
      inputs up to their degree, then a masked output layer with the parameters of every element;
    - ``per_dimension=d``: the causally masked MLP without parameter sharing of Dai et al. 2019,
      Sec. 5.2 (Perm-TIMIT): element i gets its own ``d`` hidden units on ``[h_t, x_{<i}]`` (one
      masked layer of ``L * d`` units), LayerNorm + ReLU, ``len(hidden_sizes) - 1`` further
      per-element ``d x d`` layers (each LayerNorm + ReLU), and a per-element output layer. The
      re-examination code normalizes jointly over ``[L, d]``, which lets output i see x_{>=i} through
      the statistics; here LayerNorm runs per element over ``d``, which keeps the model autoregressive.

    Output distribution per element: ``"gmm"`` (``n_components`` Gaussians: logits, mu, log_sigma; the
    fused :func:`fastlv.ops.gmm_log_prob`) or ``"bernoulli"`` (one logit; piano rolls).

    Args:
        n_inputs: L.
        hidden_sizes: widths of the shared hidden layers (shared layout); only ``len`` counts with
            ``per_dimension``.
        context_size: width of the context h (0 = unconditional).
        order: ``"natural"``, ``"random"`` or a permutation of 0..L-1 (inputs first to last).
        seed: seed of the random order.
    """

    def __init__(self, n_inputs: int, hidden_sizes: Sequence[int] = (512, 512), *, context_size: int = 0,
                 distribution: str = "gmm", n_components: int = 20, order: str | Sequence[int] = "natural",
                 per_dimension: int | None = None, seed: int = 0,
                 log_sigma_min: float | None = None, log_sigma_max: float | None = None):
        super().__init__()
        if n_inputs < 1:
            raise ValueError(f"fastlv: n_inputs must be >= 1, got {n_inputs}")
        if per_dimension is not None and len(hidden_sizes) < 1:
            raise ValueError("fastlv: the per-dimension layout needs at least one hidden layer")
        self.n_inputs, self.context_size, self.per_dimension = n_inputs, context_size, per_dimension
        self.dist = ElementDistribution(distribution, n_components, log_sigma_min, log_sigma_max)
        self.n_params = self.dist.n_params
        degrees = input_degrees(n_inputs, order, torch.Generator().manual_seed(seed))
        self.register_buffer("degrees", degrees)
        # Inputs of the first layer: [context, x]; the context has degree 0.
        first_in = torch.cat([torch.zeros(context_size, dtype=torch.long), degrees])
        if per_dimension is None:
            self.hidden = nn.ModuleList()
            previous = first_in
            for size in hidden_sizes:
                current = hidden_degrees(size, n_inputs, context_size > 0)
                self.hidden.append(MaskedLinear(made_mask(previous, current, strict=False), activation="relu"))
                previous = current
            out_degrees = degrees.repeat_interleave(self.n_params)  # rows [i, p]: element i's parameters
            self.output = MaskedLinear(made_mask(previous, out_degrees, strict=True))
        else:
            d = per_dimension
            # Element i's units see [h, x_j] for x_j before x_i: strict against the inputs.
            first_mask = made_mask(first_in, degrees.repeat_interleave(d), strict=True)
            self.first = MaskedLinear(first_mask)
            self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in hidden_sizes)
            self.hidden = nn.ModuleList(PerDimensionLinear(n_inputs, d, d) for _ in hidden_sizes[1:])
            self.output = PerDimensionLinear(n_inputs, d, self.n_params)

    def _first_input(self, x: Tensor, context: Tensor | None) -> Tensor:
        if x.shape[-1] != self.n_inputs:
            raise ValueError(f"fastlv: x must end in n_inputs = {self.n_inputs}, got shape {tuple(x.shape)}")
        if self.context_size == 0:
            if context is not None:
                raise ValueError("fastlv: this MADE has no context (context_size=0) but a context was given")
            return x
        if context is None or context.shape[-1] != self.context_size:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"fastlv: context must end in context_size = {self.context_size}, got {got}")
        batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        return torch.cat([context.expand(*batch, -1), x.expand(*batch, -1)], -1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Parameters ``[..., L, n_params]`` of p(x_i | x_{<i}, context) for every element i."""
        u = self._first_input(x, context)
        if self.per_dimension is None:
            for layer in self.hidden:
                u = layer(u)
            return self.output(u).unflatten(-1, (self.n_inputs, self.n_params))
        u = self.first(u).unflatten(-1, (self.n_inputs, self.per_dimension))
        u = F.relu(self.norms[0](u))
        for layer, norm in zip(self.hidden, self.norms[1:]):
            u = F.relu(norm(layer(u)))
        return self.output(u)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(x | context) ``[...]``, summed over the L elements."""
        return self.dist.log_prob(x, self(x, context)).sum(-1)

    @torch.no_grad()
    def sample(self, context: Tensor | None = None, batch_shape: Sequence[int] = ()) -> Tensor:
        """Draw x ``[..., L]`` autoregressively: one pass per degree (L passes for an order), each
        fixing the elements of that degree. The batch shape is the context's (or ``batch_shape``)."""
        batch = tuple(context.shape[:-1]) if context is not None else tuple(batch_shape)
        param = next(self.parameters())
        x = torch.zeros(*batch, self.n_inputs, dtype=param.dtype, device=param.device)
        for degree in self.degrees.unique(sorted=True):
            draw = self.dist.sample(self(x, context))
            x = torch.where(self.degrees == degree, draw, x)
        return x


class LowLevelLSTM(nn.Module):
    """The speech configuration's low level (Dai et al. 2019, Sec. 5.2): an LSTM over the L elements of a
    step with input [embedding of x_{t,j}, h_t] and a learned initial state, its outputs shifted so that
    element j's features g_{t,j} see only x_{t,<j}; then an output layer per element (no parameter
    sharing, as in the re-examination code), giving ``[..., L, n_params]``."""

    def __init__(self, n_inputs: int, context_size: int, hidden_size: int, embed_size: int, n_params: int,
                 num_layers: int = 1):
        super().__init__()
        self.embed = nn.Linear(1, embed_size)
        self.lstm = nn.LSTM(embed_size + context_size, hidden_size, num_layers=num_layers, batch_first=True)
        for i in range(num_layers):
            nn.init.orthogonal_(getattr(self.lstm, f"weight_hh_l{i}"))
        self.init_h = nn.Parameter(torch.empty(num_layers, hidden_size).uniform_(-0.01, 0.01))
        self.init_c = nn.Parameter(torch.empty(num_layers, hidden_size).uniform_(-0.01, 0.01))
        self.output = PerDimensionLinear(n_inputs, hidden_size, n_params)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1], 1)  # [B', L, 1]
        n = x.shape[0]
        inputs = torch.cat([self.embed(x), context.reshape(n, 1, -1).expand(-1, x.shape[1], -1)], -1)
        h0 = self.init_h[:, None].expand(-1, n, -1).contiguous()
        c0 = self.init_c[:, None].expand(-1, n, -1).contiguous()
        out, _ = self.lstm(inputs, (h0, c0))
        # g_j = LSTM output after x_{<j}: the initial state for j = 0, then the outputs shifted by one.
        features = torch.cat([h0[-1][:, None], out[:, :-1]], 1)
        return self.output(features).reshape(*batch, *features.shape[1:2], -1)

    @torch.no_grad()
    def sample(self, context: Tensor, dist: ElementDistribution) -> Tensor:
        """Draw x ``[..., L]`` element by element (L sequential LSTM steps)."""
        batch = context.shape[:-1]
        context = context.reshape(-1, 1, context.shape[-1])
        n, L = context.shape[0], self.output.weight.shape[0]
        state = (self.init_h[:, None].expand(-1, n, -1).contiguous(), self.init_c[:, None].expand(-1, n, -1).contiguous())
        g, xs = state[0][-1], []
        for j in range(L):
            params = torch.einsum("ni,io->no", g, self.output.weight[j]) + self.output.bias[j]
            xs.append(dist.sample(params[:, None])[:, 0])
            step_input = torch.cat([self.embed(xs[-1][:, None, None]), context], -1)
            out, state = self.lstm(step_input, state)
            g = out[:, 0]
        return torch.stack(xs, -1).reshape(*batch, L)


class HierarchicalOutput(nn.Module):
    """Output head of RNN-hier / SRNN-hier (Dai et al. 2019, Sec. 5.2, Eq. 13-14):
    log p(x_t | h_t) = sum_i log p(x_{t,i} | x_{t,<i}, h_t), with the low level a MADE
    (``low_level="made"``: Perm-TIMIT, music) or an LSTM over the elements (``"lstm"``: speech).

    ``head(h, x)`` takes h ``[B, T, H]`` and x ``[B, T, L]`` and returns log p(x_t | h_t) ``[B, T]``;
    ``head.loss(h, x)`` the negative log-likelihood (``reduction``/``mask`` as in
    :func:`fastlv.ops.gmm_log_prob`); ``head.sample(h)`` draws x ``[B, T, L]``.

    Args:
        hidden_size: H. n_inputs: L.
        low_level: ``"made"`` or ``"lstm"``.
        made_hidden, per_dimension, order: the MADE's hidden sizes / layout / order (see :class:`MADE`).
        lstm_size, embed_size, lstm_layers: the low-level LSTM (the re-examination code uses the
            high level's size for both).
        distribution, n_components: per-element output distribution (``"gmm"`` or ``"bernoulli"``).
    """

    def __init__(self, hidden_size: int, n_inputs: int, *, low_level: str = "made",
                 distribution: str = "gmm", n_components: int = 20, made_hidden: Sequence[int] = (512, 512),
                 per_dimension: int | None = None, order: str | Sequence[int] = "natural", seed: int = 0,
                 lstm_size: int | None = None, embed_size: int = 512, lstm_layers: int = 1):
        super().__init__()
        if low_level == "made":
            self.low = MADE(n_inputs, made_hidden, context_size=hidden_size, distribution=distribution,
                            n_components=n_components, order=order, per_dimension=per_dimension, seed=seed)
            self.dist = self.low.dist
        elif low_level == "lstm":
            self.dist = ElementDistribution(distribution, n_components)
            self.low = LowLevelLSTM(n_inputs, hidden_size, lstm_size or hidden_size, embed_size,
                                    self.dist.n_params, lstm_layers)
        else:
            raise ValueError(f"fastlv: low_level must be 'made' or 'lstm', got {low_level!r}")
        self.low_level = low_level

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.dist.log_prob(x, self.low(x, h)).sum(-1)

    def loss(self, h: Tensor, x: Tensor, *, reduction: str = "mean", mask: Tensor | None = None) -> Tensor:
        return -reduce(self(h, x), reduction, mask)

    @torch.no_grad()
    def sample(self, h: Tensor) -> Tensor:
        return self.low.sample(h) if self.low_level == "made" else self.low.sample(h, self.dist)
