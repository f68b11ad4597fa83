"""MADE and the hierarchical output heads (low levels) of RNN-hier / SRNN-hier.

Dai et al. 2019, Sec. 5.2, Eq. 13-14 factorize each multivariate step autoregressively,
p(x_t | h_t) = prod_i p(x_{t,i} | x_{t,<i}, h_t), with a low-level model g_{t,i} = f_low(x_{t,<i}, h_t):
a causally masked MLP (MADE, Germain et al. 2015) on Perm-TIMIT, an LSTM over the elements elsewhere.

MADE (Germain et al. 2015, Sec. 4): every unit k gets a degree m(k); the inputs a permutation of 1..L
(the order), hidden units degrees in [0, L-1]. A hidden unit sees the units below of degree <= its own,
an output of degree d the hidden units of degree < d, so output i depends on exactly the inputs before
it in the order. The context h_t enters as extra inputs of degree 0, which every unit sees. The masked
layers run on :func:`fastlv.ops.masked_linear`, which computes only the blocks the masks keep.

The low levels are :class:`fastlv.nn.heads.ObservationHead` s (``log_prob(h, x)``, ``sample(h)``), so
:class:`fastlv.nn.HierRNN` / :class:`fastlv.nn.HierSRNN` plug them in as their output model.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv.nn.gmm import GaussianMixture
from fastlv.nn.heads import ObservationHead
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


class PerDimensionLayerNorm(nn.Module):
    """LayerNorm of each data dimension's ``d`` units ``[..., L, d]`` with its own affine ``[L, d]``: the
    parameters of the re-examination code's ``LayerNorm([L, d])``, normalized per element so that element
    i's statistics see only its own units (x_{<i})."""

    def __init__(self, n_dims: int, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_dims, features))
        self.bias = nn.Parameter(torch.zeros(n_dims, features))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


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
      masked layer of ``L * d`` units on the context and the L - 1 inputs that precede some element,
      i.e. the re-examination code's ``[L, H + L - 1, d]`` weights), LayerNorm + ReLU,
      ``len(hidden_sizes) - 1`` further per-element ``d x d`` layers (each LayerNorm + ReLU), and a
      per-element output layer. The re-examination code normalizes jointly over ``[L, d]``, which lets
      output i see x_{>=i} through the statistics; here each element is normalized over its ``d`` units
      (:class:`PerDimensionLayerNorm`, the same ``[L, d]`` affine parameters), which keeps the model
      autoregressive.

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
            # The last input in the order precedes no element: the first layer skips it.
            self.register_buffer("feeding", degrees.argsort()[:-1].sort().values)
            first_in = torch.cat([first_in[:context_size], degrees[self.feeding]])
            # Element i's units see [h, x_j] for x_j before x_i: strict against the inputs.
            first_mask = made_mask(first_in, degrees.repeat_interleave(d), strict=True)
            self.first = MaskedLinear(first_mask)
            self.norms = nn.ModuleList(PerDimensionLayerNorm(n_inputs, d) for _ in hidden_sizes)
            self.hidden = nn.ModuleList(PerDimensionLinear(n_inputs, d, d) for _ in hidden_sizes[1:])
            self.output = PerDimensionLinear(n_inputs, d, self.n_params)

    def _first_input(self, x: Tensor, context: Tensor | None) -> Tensor:
        if x.shape[-1] != self.n_inputs:
            raise ValueError(f"fastlv: x must end in n_inputs = {self.n_inputs}, got shape {tuple(x.shape)}")
        if self.per_dimension is not None:
            x = x[..., self.feeding]
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




class HierarchicalOutput(ObservationHead):
    """Output model of RNN-hier / SRNN-hier (Dai et al. 2019, Sec. 5.2, Eq. 13-14):
    log p(x_t | h_t) = sum_i log p(x_{t,i} | x_{t,<i}, h_t), the element parameters from a low level
    g_{t,i} = f_low(x_{t,<i}, h_t): :class:`LowLevelMADE` (Perm-TIMIT, music) or :class:`LowLevelLSTM`
    (speech). Subclasses give ``element_params(h, x) -> [..., L, n_params]`` and ``sample(h)``.

    ``head(h, x)`` = ``head.log_prob(h, x)`` takes h ``[..., H]`` and x ``[..., L]`` and returns
    log p(x_t | h_t) ``[...]``; ``head.loss(h, x)`` the negative log-likelihood (``reduction`` / ``mask``
    as in :func:`fastlv.ops.gmm_log_prob`)."""
    dist: ElementDistribution

    def element_params(self, h: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        return self.dist.log_prob(x, self.element_params(h, x)).sum(-1)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.log_prob(h, x)

    def loss(self, h: Tensor, x: Tensor, *, reduction: str = "mean", mask: Tensor | None = None) -> Tensor:
        return -reduce(self.log_prob(h, x), reduction, mask)


class LowLevelMADE(HierarchicalOutput):
    """MADE low level (Germain et al. 2015; Dai et al. Sec. 5.2 on Perm-TIMIT): a :class:`MADE` over the
    frame's L elements with h_t as its degree-0 context, shared masked layers ``hidden_sizes`` or the
    re-examination code's per-dimension layout (``per_dimension=d``, ``len(hidden_sizes)`` layers)."""

    def __init__(self, frame_size: int, d_high: int, hidden_sizes: Sequence[int] = (512, 512), *,
                 distribution: str = "gmm", n_components: int = 20, per_dimension: int | None = None,
                 order: str | Sequence[int] = "natural", seed: int = 0):
        super().__init__()
        self.frame_size = frame_size
        self.made = MADE(frame_size, hidden_sizes, context_size=d_high, distribution=distribution,
                         n_components=n_components, order=order, per_dimension=per_dimension, seed=seed)
        self.dist = self.made.dist

    def element_params(self, h: Tensor, x: Tensor) -> Tensor:
        return self.made(x, h)

    @torch.no_grad()
    def sample(self, h: Tensor) -> Tensor:
        return self.made.sample(h)


class LowLevelLSTM(HierarchicalOutput):
    """LSTM low level (Dai et al. Sec. 5.2, speech): an LSTM over the L elements of a frame from a learned
    initial state, with input [embedded x_{t,i-1}, h_t] at element i (x_{t,-1} = 0), so g_{t,i} has seen
    h_t and x_{t,<i}; a per-element output layer (no parameter sharing, :class:`PerDimensionLinear`). All
    frames run as one ``nn.LSTM`` batch. The re-examination code feeds x_{t,i} at element i and predicts
    element 0 from the initial state alone, so there x_{t,0} ignores h_t; this shift has the same
    parameters (the TIMIT counts are exact) and lets every element see h_t."""

    def __init__(self, frame_size: int, d_high: int, d_emb: int, d_rnn: int, *, distribution: str = "gmm",
                 n_components: int = 20, num_layers: int = 1):
        super().__init__()
        self.frame_size = frame_size
        self.dist = ElementDistribution(distribution, n_components)
        self.embed = nn.Linear(1, d_emb)
        self.rnn = nn.LSTM(d_emb + d_high, d_rnn, num_layers=num_layers, batch_first=True)
        for i in range(num_layers):
            nn.init.orthogonal_(getattr(self.rnn, f"weight_hh_l{i}"))
        self.init_h = nn.Parameter(torch.empty(num_layers, d_rnn).uniform_(-0.01, 0.01))
        self.init_c = nn.Parameter(torch.empty(num_layers, d_rnn).uniform_(-0.01, 0.01))
        self.output = PerDimensionLinear(frame_size, d_rnn, self.dist.n_params)

    def _initial(self, n: int) -> tuple[Tensor, Tensor]:
        return self.init_h[:, None].expand(-1, n, -1).contiguous(), self.init_c[:, None].expand(-1, n, -1).contiguous()

    def element_params(self, h: Tensor, x: Tensor) -> Tensor:
        """Parameters of every element ``[..., L, n_params]``; element i's see h_t and x_{t,<i} only."""
        batch, L = torch.broadcast_shapes(h.shape[:-1], x.shape[:-1]), self.frame_size
        previous = F.pad(x.expand(*batch, L).reshape(-1, L, 1), (0, 0, 1, 0))[:, :-1]  # element i gets x_{t,i-1}
        h = h.expand(*batch, -1).reshape(-1, 1, h.shape[-1]).expand(-1, L, -1)
        g, _ = self.rnn(torch.cat([self.embed(previous), h], -1), self._initial(previous.shape[0]))
        return self.output(g).view(*batch, L, -1)

    @torch.no_grad()
    def sample(self, h: Tensor) -> Tensor:
        """Draw x ``[..., L]`` element by element (L sequential LSTM steps)."""
        batch = h.shape[:-1]
        h = h.reshape(-1, 1, h.shape[-1])
        state = self._initial(h.shape[0])
        value, values = h.new_zeros(h.shape[0]), []
        for i in range(self.frame_size):
            g, state = self.rnn(torch.cat([self.embed(value[:, None, None]), h], -1), state)
            params = g[:, 0] @ self.output.weight[i] + self.output.bias[i]
            value = self.dist.sample(params[:, None])[:, 0]
            values.append(value)
        return torch.stack(values, -1).view(*batch, self.frame_size)


LOW_LEVELS = ("lstm", "made")


def hierarchical_output(low_level: str, frame_size: int, d_high: int, *, d_emb: int, d_low: int,
                        made_layers: int = 2, per_dimension: bool = False, distribution: str = "gmm",
                        n_components: int = 20) -> HierarchicalOutput:
    """The low level of a hierarchical model: ``"lstm"`` (:class:`LowLevelLSTM`, embedding ``d_emb``, width
    ``d_low``) or ``"made"`` (:class:`LowLevelMADE`, ``made_layers`` layers of ``d_low`` units, or of
    ``d_low`` units per element with ``per_dimension``)."""
    if low_level == "lstm":
        return LowLevelLSTM(frame_size, d_high, d_emb, d_low, distribution=distribution, n_components=n_components)
    if low_level == "made":
        return LowLevelMADE(frame_size, d_high, (d_low,) * made_layers, distribution=distribution,
                            n_components=n_components, per_dimension=d_low if per_dimension else None)
    raise ValueError(f"fastlv: low_level must be one of {LOW_LEVELS}, got {low_level!r}")
