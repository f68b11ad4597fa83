"""Pieces the recurrent models share: data layout (frames or flattened scalars, padding masks), the
clamped leaky-ReLU MLPs of the papers, the importance-weighted bound, and the per-step stochastic LSTM
loop of the models whose latent variables feed back into the recurrence (Z-Forcing, VRNN)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv._backend import select
from fastlv.nn.base import SequenceModel
from fastlv.ops import gaussian_rsample


class ClampedLeakyReLU(nn.Module):
    """leaky_relu(x, 1/3) clipped to [-3, 3]: the nonlinearity of Fraccaro et al. 2016 (Appendix A),
    Z-Forcing and the re-examination code (reference-facts.md)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, 1.0 / 3.0).clamp(-3.0, 3.0)


def gaussian_mlp(in_features: int, hidden: int, latent: int, layers: int = 1) -> nn.Sequential:
    """``layers`` x (Linear -> clamped leaky-ReLU), then Linear to ``2 * latent`` = (mean, log-variance)."""
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(in_features if i == 0 else hidden, hidden), ClampedLeakyReLU()]
    return nn.Sequential(*blocks, nn.Linear(hidden, 2 * latent))


def orthogonal_recurrent_init(rnn: nn.Module) -> None:
    """Orthogonal hidden-to-hidden weights, as the reference implementations initialize them."""
    for name, param in rnn.named_parameters():
        if name.startswith("weight_hh"):
            nn.init.orthogonal_(param.data)


def shift_right(x: Tensor) -> Tensor:
    """Inputs of an autoregressive step model: step t sees x_{t-1}, step 0 a zero frame."""
    return F.pad(x, (0, 0, 1, 0))[:, :-1]


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of ``x [B, T, D]`` within its own length (padding stays at the end), so a
    backward RNN over the result starts at each sequence's last valid step. Its own inverse."""
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.shape[1], device=x.device)
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # [B, T]
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell update from pre-activations ``[B, 4H]`` in PyTorch's gate order (i, f, g, o)."""
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def clamp_options(param_clamp: float | None) -> dict:
    """Keyword clamps of the fastlv Gaussian ops for means and log-variances in [-c, c]."""
    if param_clamp is None:
        return {}
    return dict(mu_min=-param_clamp, mu_max=param_clamp, logvar_min=-param_clamp, logvar_max=param_clamp)


class RecurrentModel(SequenceModel):
    """A model over data frames ``x [B, T, frame_size]`` that runs its recurrence over steps of
    ``step_size`` values: the frame itself, or with ``flat=True`` one scalar per step (the flat models
    of Dai et al. Sec. 5.2: the sequence flattened to ``T * frame_size`` steps)."""

    def __init__(self, frame_size: int, flat: bool = False):
        super().__init__()
        self.frame_size, self.flat = frame_size, flat
        self.step_size = 1 if flat else frame_size

    def _steps(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``x`` as steps ``[B, N, step_size]``, the mask as float ``[B, N]`` and the valid lengths ``[B]``
        (None without a mask). Masks mark a valid prefix of each sequence (fastlv.data's layout)."""
        if x.dim() != 3 or x.shape[-1] != self.frame_size:
            raise ValueError(f"fastlv: x must be [batch, steps, {self.frame_size}], got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"fastlv: mask must be [batch, steps] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        if self.flat:
            x = x.reshape(x.shape[0], -1, 1)
            mask = None if mask is None else mask.repeat_interleave(self.frame_size, 1)
        if mask is None:
            return x, None, None
        mask = mask.to(x.dtype)
        return x, mask, mask.sum(1).long()

    def _frames(self, steps: Tensor) -> Tensor:
        """Generated steps ``[B, N, step_size]`` back to frames ``[B, N * step_size / frame_size, frame_size]``."""
        return steps.reshape(steps.shape[0], -1, self.frame_size)

    def _num_steps(self, frames: int) -> int:
        return frames * self.frame_size if self.flat else frames

    @staticmethod
    def _total(per_step: Tensor, mask: Tensor | None) -> Tensor:
        """Sum of per-step terms ``[B, N]`` over the valid steps -> ``[B]``."""
        return (per_step if mask is None else per_step * mask).sum(1)

    @classmethod
    def from_config(cls, name: str, **overrides):
        """The named configuration of ``cls.CONFIGS`` (e.g. ``"timit"``), with keyword overrides."""
        configs = getattr(cls, "CONFIGS", {})
        if name not in configs:
            raise ValueError(f"fastlv: {cls.__name__} has no configuration {name!r}; known: {sorted(configs)}")
        return cls(**{**configs[name], **overrides})


class LatentModel(RecurrentModel):
    """A latent-variable model: ``log_weights(x, mask, eps)`` = log p(x, z) - log q(z | x) for the z
    drawn with standard-normal noise ``eps`` (shape ``noise_shape(x)``), and the importance-weighted bound
    (Burda et al. 2016) built on it."""
    is_latent = True

    def noise_shape(self, x: Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def log_weights(self, x: Tensor, mask: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def iwae(self, x: Tensor, k: int, mask: Tensor | None = None) -> Tensor:
        """log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q: a lower bound on log p(x) ``[B]`` that
        tightens with k (the ELBO at k = 1)."""
        B = x.shape[0]
        x_k = x.repeat(k, 1, 1)  # row i * B + b is sample i of sequence b
        mask_k = None if mask is None else mask.repeat(k, 1)
        log_w = self.log_weights(x_k, mask_k).view(k, B)
        return torch.logsumexp(log_w, 0) - math.log(k)


def _fused_loop(u: Tensor) -> bool:
    """Whether StochasticLSTM runs its loop as fastlv_C::stochastic_lstm: eager mode on the cpp backend
    (torch.compile and the other backends trace or run the PyTorch loop)."""
    return (u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and select(u.device) == "cpp")


class _FusedLoop(torch.autograd.Function):
    """The stochastic LSTM loop as one C++ call forward and one backward (csrc/cpu/stochastic_lstm.cpp),
    time-major: ``pre [N, B, 2M + 4H]``, ``eps [N, B, L]`` -> ``(h_prev, h, z, q, p)`` ``[N, B, ...]``.
    It keeps the gate pre-activations, cell states, MLP hidden units and unclamped outputs of every step
    for the backward, as PyTorch's autograd of the loop does."""

    @staticmethod
    def forward(ctx, pre, eps, w_state, w_latent, w_out, b_out, param_clamp):
        h_prev, h, z, q, p, *saved = torch.ops.fastlv_C.stochastic_lstm(pre, eps, w_state, w_latent, w_out, b_out,
                                                                        param_clamp)
        ctx.save_for_backward(eps, w_state, w_latent, w_out, h_prev, z, *saved)
        ctx.param_clamp = param_clamp
        return h_prev, h, z, q, p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        eps, w_state, w_latent, w_out, h_prev, z, s, c, u, o = ctx.saved_tensors
        shapes = (h_prev, h_prev, z, o[0], o[0])  # shapes of the outputs' gradients
        grads = [torch.zeros_like(like) if g is None else g for g, like in zip(grads, shapes)]
        d_pre, d_eps, d_w_state, d_w_latent, d_w_out, d_b_out = torch.ops.fastlv_C.stochastic_lstm_backward(
            *grads, eps, w_state, w_latent, w_out, h_prev, z, s, c, u, o, ctx.param_clamp)
        return d_pre, d_eps, d_w_state, d_w_latent, d_w_out, d_b_out, None


class StochasticLSTM(nn.Module):
    """The per-step loop of models whose latent z_t enters the recurrence (Z-Forcing Eq. 4-7; VRNN,
    Chung et al. 2015 / Dai et al. Appendix A):

        prior      p(z_t | h_{t-1})            = N(MLP_p(h_{t-1}))
        posterior  q(z_t | h_{t-1}, a_t)       = N(MLP_q([h_{t-1}, a_t]))
        state      h_t = LSTM([W_z z_t, u_t], h_{t-1})

    for per-step inputs u_t (embedded frames) and posterior inputs a_t (Z-Forcing: backward states b_t;
    VRNN: the embedded frame x_t). Everything that does not depend on z is computed for the whole
    sequence before the loop (the input and a_t parts of the gates and of the posterior's first layer);
    per step, ONE matrix product of h_{t-1} yields the hidden-state parts of the gates and of both MLPs'
    first layers, W_z is folded into the gate weights, and the KL and output terms are left to the caller
    over the whole sequence. Means and log-variances are clamped to [-param_clamp, param_clamp].

    In eager mode on the cpp backend the loop runs in C++ (fastlv_C::stochastic_lstm, forward and
    backward; csrc/cpu/stochastic_lstm.cpp): in PyTorch ops, each step's ~15 small ops cost more in
    dispatch and autograd than in arithmetic. torch.compile, the ref backend and GPUs run the PyTorch loop.
    """

    def __init__(self, d_input: int, d_posterior: int, d_rnn: int, d_latent: int, d_mlp: int,
                 param_clamp: float | None = 8.0):
        super().__init__()
        self.d_rnn, self.d_latent, self.d_mlp, self.param_clamp = d_rnn, d_latent, d_mlp, param_clamp
        self.prior = gaussian_mlp(d_rnn, d_mlp, d_latent)
        self.posterior = gaussian_mlp(d_rnn + d_posterior, d_mlp, d_latent)
        self.latent_proj = nn.Linear(d_latent, d_mlp)
        self.cell = nn.LSTMCell(d_mlp + d_input, d_rnn)  # input [W_z z_t, u_t]
        orthogonal_recurrent_init(self.cell)

    def clamp(self, params: Tensor) -> Tensor:
        return params if self.param_clamp is None else params.clamp(-self.param_clamp, self.param_clamp)

    def unroll(self, u: Tensor, a: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Run the loop over ``u [B, N, d_input]``, ``a [B, N, d_posterior]`` with posterior noise
        ``eps [B, N, d_latent]`` -> ``(h_prev, h, z, q, p)``: the states before and after each step
        ``[B, N, d_rnn]``, the samples ``[B, N, d_latent]`` and the clamped (mean, log-variance) of the
        posterior and prior ``[B, N, 2 * d_latent]``."""
        H, M = self.d_rnn, self.d_mlp
        w_ih, cell = self.cell.weight_ih, self.cell
        prior_in, prior_out = self.prior[0], self.prior[2]
        post_in, post_out = self.posterior[0], self.posterior[2]
        # z-independent parts for all steps at once: [prior layer-1 bias | posterior layer 1 on a_t | gates on u_t]
        gate_bias = cell.bias_ih + cell.bias_hh + w_ih[:, :M] @ self.latent_proj.bias
        fused = _fused_loop(u)
        if fused:  # time-major [N, B, ...]: the rows of one step are contiguous
            u, a, eps = u.transpose(0, 1), a.transpose(0, 1), eps.transpose(0, 1).contiguous()
        pre = torch.cat([prior_in.bias.expand(*u.shape[:2], M), F.linear(a, post_in.weight[:, H:], post_in.bias),
                         F.linear(u, w_ih[:, M:], gate_bias)], -1)
        w_state = torch.cat([prior_in.weight, post_in.weight[:, :H], cell.weight_hh]).t()  # h_{t-1} -> all three
        w_latent = (w_ih[:, :M] @ self.latent_proj.weight).t()  # z_t -> gates, W_z folded in
        w_out = torch.stack([prior_out.weight.t(), post_out.weight.t()])  # both second layers as one bmm
        b_out = torch.stack([prior_out.bias, post_out.bias])  # [2, 2 * d_latent]
        if fused:
            outputs = _FusedLoop.apply(pre, eps, w_state, w_latent, w_out, b_out, self.param_clamp)
            return tuple(out.transpose(0, 1) for out in outputs)
        return self._loop(pre, eps, w_state, w_latent, w_out, b_out)

    def _loop(self, pre: Tensor, eps: Tensor, w_state: Tensor, w_latent: Tensor, w_out: Tensor,
              b_out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The loop as PyTorch ops (the reference of fastlv_C::stochastic_lstm)."""
        B, H, M = pre.shape[0], self.d_rnn, self.d_mlp
        b_out = b_out.unsqueeze(1)  # [2, 1, 2L]: broadcast over the batch by baddbmm
        h = c = pre.new_zeros(B, H)
        h_prev, hs, zs, qs, ps = [], [], [], [], []
        # unbind, not pre[:, t]: the backward of N slices would write N full-size zero tensors (O(N^2))
        for pre_t, eps_t in zip(pre.unbind(1), eps.unbind(1)):
            first, gates = torch.addmm(pre_t, h, w_state).split([2 * M, 4 * H], 1)
            hidden = F.leaky_relu(first, 1.0 / 3.0).clamp(-3.0, 3.0).view(B, 2, M).transpose(0, 1)
            p_t, q_t = self.clamp(torch.baddbmm(b_out, hidden, w_out)).unbind(0)
            mu_q, logvar_q = q_t.chunk(2, 1)
            # two pointwise ops: at [B, d_latent] a custom-op call per step costs more in dispatch than it fuses
            z = torch.addcmul(mu_q, torch.exp(0.5 * logvar_q), eps_t)
            h_prev.append(h)
            h, c = lstm_pointwise(torch.addmm(gates, z, w_latent), c)
            hs.append(h), zs.append(z), qs.append(q_t), ps.append(p_t)
        return tuple(torch.stack(s, 1) for s in (h_prev, hs, zs, qs, ps))

    def step_prior(self, u_t: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, tuple]:
        """One generation step with z_t from the prior: ``(h_{t-1}, z_t, new state)``."""
        if state is None:
            state = (u_t.new_zeros(u_t.shape[0], self.d_rnn),) * 2
        h_prev = state[0]
        z = gaussian_rsample(*self.clamp(self.prior(h_prev)).chunk(2, -1))
        state = self.cell(torch.cat([self.latent_proj(z), u_t], -1), state)
        return h_prev, z, state
