"""Deterministic recurrent models of Dai et al. 2019: F-RNN (Sec. 4.1) and RNN-flat (Sec. 5.2)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlv.nn.base import SequenceOutput
from fastlv.nn.heads import observation_head
from fastlv.nn.models.common import RecurrentModel, orthogonal_recurrent_init, shift_right


class FRNN(RecurrentModel):
    """Factorized RNN (Dai et al. Sec. 4.1): h_t = LSTM(x_{t-1}, h_{t-1}) (Eq. 2) over multi-frame steps,
    and an output factorized over the frame, p(x_t | x_<t) = prod_i p(x_t,i | h_t) (Eq. 5), by default a
    20-component Gaussian mixture per value (the fused :func:`fastlv.ops.gmm_log_prob`). The
    log-likelihood is exact; ``kl`` is zero. ``flat=True`` gives RNN-flat."""
    CONFIGS = {
        # re-examination code, TIMIT F-RNN 2 x 750: 17,412,912 parameters
        "timit": dict(frame_size=200, d_rnn=750, n_layers=2),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 750, n_layers: int = 2, output: str = "gmm",
                 n_components: int = 20, flat: bool = False):
        super().__init__(frame_size, flat)
        self.embed = nn.Linear(self.step_size, d_emb)
        self.rnn = nn.LSTM(d_emb, d_rnn, n_layers, batch_first=True)
        orthogonal_recurrent_init(self.rnn)
        self.head = observation_head(output, d_rnn, self.step_size, n_components)

    def step_log_probs(self, x: Tensor) -> Tensor:
        """log p(x_t | x_<t) per step ``[B, N]`` of steps ``x [B, N, step_size]``."""
        h, _ = self.rnn(self.embed(shift_right(x)))
        return self.head.log_prob(h, x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, _ = self._steps(x, mask)
        log_likelihood = self._total(self.step_log_probs(x), mask)
        return SequenceOutput(log_likelihood, torch.zeros_like(log_likelihood))

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
