"""Deterministic recurrent models of Dai et al. 2019: F-RNN (Sec. 4.1) and RNN-flat (Sec. 5.2)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlv.nn.base import SequenceOutput
from fastlv.nn.heads import ObservationHead, observation_head
from fastlv.nn.models.common import RecurrentModel, orthogonal_recurrent_init, shift_right


class DeterministicModel(RecurrentModel):
    """A model without latent variables: the exact log-likelihood is the sum of ``step_log_probs``."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, _ = self._steps(x, mask)
        log_likelihood = self._total(self.step_log_probs(x), mask)
        return SequenceOutput(log_likelihood, torch.zeros_like(log_likelihood))


class FRNN(DeterministicModel):
    """Factorized RNN (Dai et al. Sec. 4.1): h_t = LSTM(x_{t-1}, h_{t-1}) (Eq. 2) over multi-frame steps,
    and an output factorized over the frame, p(x_t | x_<t) = prod_i p(x_t,i | h_t) (Eq. 5), by default a
    20-component Gaussian mixture per value (the fused :func:`fastlv.ops.gmm_log_prob`). The
    log-likelihood is exact; ``kl`` is zero. ``flat=True`` gives RNN-flat; ``head`` replaces the output
    model (the hierarchical models pass their low level)."""
    CONFIGS = {
        # re-examination code, TIMIT F-RNN 2 x 750: 17,412,912 parameters
        "timit": dict(frame_size=200, d_rnn=750, n_layers=2),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 750, n_layers: int = 2, output: str = "gmm",
                 n_components: int = 20, flat: bool = False, head: ObservationHead | None = None):
        super().__init__(frame_size, flat)
        self.embed = nn.Linear(self.step_size, d_emb)
        self.rnn = nn.LSTM(d_emb, d_rnn, n_layers, batch_first=True)
        orthogonal_recurrent_init(self.rnn)
        self.head = head if head is not None else observation_head(output, d_rnn, self.step_size, n_components)

    def step_log_probs(self, x: Tensor) -> Tensor:
        """log p(x_t | x_<t) per step ``[B, N]`` of steps ``x [B, N, step_size]``."""
        h, _ = self.rnn(self.embed(shift_right(x)))
        return self.head.log_prob(h, x)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        x_prev = self.embed.weight.new_zeros(batch_size, 1, self.step_size)
        state, out = None, []
        for _ in range(self._num_steps(steps)):
            h, state = self.rnn(self.embed(x_prev), state)
            x_prev = self.head.sample(h)
            out.append(x_prev)
        return self._frames(torch.cat(out, 1))


class FlatRNN(FRNN):
    """RNN-flat (Dai et al. Sec. 5.2): the RNN over the sequence flattened to one scalar per step, an
    autoregressive output over each frame (Eq. 13)."""
    CONFIGS = {
        # re-examination code, TIMIT RNN-flat 2 x 1100: 16,857,484 parameters
        "timit": dict(frame_size=200, d_rnn=1100, n_layers=2),
    }

    def __init__(self, frame_size: int, **kwargs):
        super().__init__(frame_size, flat=True, **kwargs)


class DeltaRNN(DeterministicModel):
    """delta-RNN (Dai et al. Sec. 4.4, Eq. 10-12): the RNN that an F-SRNN with the delta posterior
    q(z_t | x) = delta(z_t = x_t^a) (Eq. 10) amounts to. Each frame is split into a leaked subset x^a and
    the rest x^b, and

        p(x_t | x_<t) = prod_{i in a} p(x_t,i | h_t) * prod_{i in b} p(x_t,i | x_t^a, h_t)      (Eq. 12)

    with per-element GMMs: x^a from h_t, x^b from a 2-layer LayerNorm-ReLU MLP on [h_t, x_t^a] (the
    re-examination code). Splits: ``split="interleave"`` takes every ``leak``-th element (U, x^a =
    x_1, x_{U+1}, ...); ``split="random"`` a fixed random subset of ``leak`` elements (V), drawn from
    ``seed`` and stored in the state dict.
    """
    CONFIGS = {
        # Table 3/8 TIMIT delta-RNN-random, V = 75, 2 x 750 (Table 8: 18.57M)
        "timit_random": dict(frame_size=200, split="random", leak=75),
        # Table 3 TIMIT delta-RNN, U = 3
        "timit_interleave": dict(frame_size=200, split="interleave", leak=3),
    }

    def __init__(self, frame_size: int, split: str = "interleave", leak: int = 2, d_emb: int = 512, d_rnn: int = 750,
                 n_layers: int = 2, n_components: int = 20, seed: int = 0):
        super().__init__(frame_size)
        if split == "interleave":
            leaked = torch.arange(0, frame_size, leak)
        elif split == "random":
            leaked = torch.randperm(frame_size, generator=torch.Generator().manual_seed(seed))[:leak].sort().values
        else:
            raise ValueError(f"fastlv: split must be 'interleave' or 'random', got {split!r}")
        is_leaked = torch.zeros(frame_size, dtype=torch.bool, device="cpu")
        is_leaked[leaked] = True
        self.register_buffer("leaked", leaked)
        self.register_buffer("rest", torch.arange(frame_size)[~is_leaked])
        d_leak, d_rest = len(leaked), frame_size - len(leaked)
        self.embed = nn.Linear(frame_size, d_emb)
        self.rnn = nn.LSTM(d_emb, d_rnn, n_layers, batch_first=True)
        orthogonal_recurrent_init(self.rnn)
        self.leak_head = observation_head("gmm", d_rnn, d_leak, n_components)
        self.rest_net = nn.Sequential(nn.Linear(d_rnn + d_leak, d_rnn, bias=False), nn.LayerNorm(d_rnn), nn.ReLU(),
                                      nn.Linear(d_rnn, d_rnn, bias=False), nn.LayerNorm(d_rnn), nn.ReLU())
        self.rest_head = observation_head("gmm", d_rnn, d_rest, n_components)

    def step_log_probs(self, x: Tensor) -> Tensor:
        """log p(x_t | x_<t) per step ``[B, T]`` (Eq. 12)."""
        h, _ = self.rnn(self.embed(shift_right(x)))
        x_leak, x_rest = x[..., self.leaked], x[..., self.rest]
        rest_state = self.rest_net(torch.cat([h, x_leak], -1))
        return self.leak_head.log_prob(h, x_leak) + self.rest_head.log_prob(rest_state, x_rest)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        x_prev = self.embed.weight.new_zeros(batch_size, 1, self.frame_size)
        state, out = None, []
        for _ in range(steps):
            h, state = self.rnn(self.embed(x_prev), state)
            x_leak = self.leak_head.sample(h)
            x_rest = self.rest_head.sample(self.rest_net(torch.cat([h, x_leak], -1)))
            x_prev = torch.empty_like(x_prev)
            x_prev[..., self.leaked], x_prev[..., self.rest] = x_leak, x_rest
            out.append(x_prev)
        return torch.cat(out, 1)
