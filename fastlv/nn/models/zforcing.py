"""The Z-Forcing stochastic RNN of Goyal et al. 2017."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlv.nn.base import SequenceOutput
from fastlv.nn.heads import observation_head
from fastlv.nn.models.common import (LatentModel, StochasticLSTM, gaussian_mlp, orthogonal_recurrent_init,
                                     reverse_padded, shift_right)
from fastlv.ops import gaussian_kl, gaussian_log_prob


class ZForcingSRNN(LatentModel):
    """Z-Forcing SRNN (Goyal et al. 2017; Dai et al. Appendix A), in the indexing where step t predicts x_t:

        h_t = LSTM([W_z z_t, x_{t-1}], h_{t-1})                            (Eq. 4: z_t feeds the recurrence)
        p(z_t | x_<t, z_<t) = N(MLP_p(h_{t-1}))                            (Eq. 5)
        b_t = LSTM<-(x_t, b_{t+1})                                        (Eq. 6, one fused pass)
        q(z_t | x) = N(MLP_q([h_{t-1}, b_t]))                              (Eq. 7)
        ELBO = sum_t E_q[log p(x_t | h_t)] - KL(q || p)                    (Eq. 9 with alpha = 0)

    Since z_t enters h_t, the forward recurrence is a per-step loop by construction
    (:class:`~fastlv.nn.models.common.StochasticLSTM`: one matrix product of h_{t-1} per step, everything
    else batched over the sequence; the KL is one fused :func:`fastlv.ops.gaussian_kl` after the loop).

    Optional training terms, returned in ``SequenceOutput.aux`` already weighted:
    ``aux_weight`` alpha: alpha sum_t log p(b_t | z_t), a Gaussian from an MLP on z_t (Eq. 8-9), with the
    gradient stopped into the backward network; ``backward_weight`` beta: beta sum_t log p(x_{t-1} | b_t),
    the backward network as a language model of the preceding frame (Eq. 10). Their networks exist only
    when the weight is non-zero (the 17.44M TIMIT model of Table 5 has neither).

    As in sordonia/zforcing (reference-facts.md): input embedding Linear, MLPs with leaky-ReLU(1/3) clipped
    to +-3, prior/posterior parameters clamped to [-8, 8], Gaussian output with unclamped log-variance.
    ``flat=True`` runs it on one scalar per step (Z-SRNN-flat of Table 5).
    """
    CONFIGS = {
        # Table 5 Z-F-SRNN: emb 512, rnn 1024, z 256, mlp 512, Gaussian output (400 values): 17,440,144
        "timit": dict(frame_size=200),
        # Table 5 Z-SRNN-flat (one scalar per step) with the same widths
        "timit_flat": dict(frame_size=200, flat=True),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 1024, d_latent: int = 256, d_mlp: int = 512,
                 output: str = "gaussian", n_components: int = 20, aux_weight: float = 0.0,
                 backward_weight: float = 0.0, param_clamp: float | None = 8.0, flat: bool = False):
        super().__init__(frame_size, flat)
        self.d_latent, self.aux_weight, self.backward_weight = d_latent, aux_weight, backward_weight
        self.embed = nn.Linear(self.step_size, d_emb)
        self.backward_rnn = nn.LSTM(d_emb, d_rnn, batch_first=True)
        orthogonal_recurrent_init(self.backward_rnn)
        self.recurrence = StochasticLSTM(d_emb, d_rnn, d_rnn, d_latent, d_mlp, param_clamp)
        self.head = observation_head(output, d_rnn, self.step_size, n_components)
        self.aux_net = gaussian_mlp(d_latent, d_mlp, d_rnn) if aux_weight else None
        self.backward_head = observation_head(output, d_rnn, self.step_size, n_components) if backward_weight else None

    def _run(self, x: Tensor, lengths: Tensor | None, eps: Tensor | None):
        embedded = self.embed(x)
        backward, _ = self.backward_rnn(reverse_padded(embedded, lengths))
        backward = reverse_padded(backward, lengths)  # b_t has seen x_>=t
        if eps is None:
            eps = torch.randn(*x.shape[:2], self.d_latent, dtype=x.dtype, device=x.device)
        _, h, z, posterior, prior = self.recurrence.unroll(shift_right(embedded), backward, eps)
        return backward, h, z, posterior.chunk(2, -1), prior.chunk(2, -1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, lengths = self._steps(x, mask)
        backward, h, z, posterior, prior = self._run(x, lengths, None)
        kl = self._total(gaussian_kl(*posterior, *prior), mask)
        out = SequenceOutput(self._total(self.head.log_prob(h, x), mask), kl, {"z": kl})
        if self.aux_net is not None or self.backward_head is not None:
            out.aux = self._aux_terms(x, mask, backward, z)
        return out

    def _aux_terms(self, x: Tensor, mask: Tensor | None, backward: Tensor, z: Tensor) -> Tensor:
        aux = x.new_zeros(x.shape[0])
        if self.aux_net is not None:  # Eq. 8: no gradient into the backward network through its target
            mu, logvar = self.aux_net(z).chunk(2, -1)
            aux = aux + self.aux_weight * self._total(gaussian_log_prob(backward.detach(), mu, logvar), mask)
        if self.backward_head is not None:  # Eq. 10: b_t predicts the frame before it
            log_prob = self.backward_head.log_prob(backward[:, 1:], x[:, :-1])
            aux = aux + self.backward_weight * self._total(log_prob, None if mask is None else mask[:, 1:])
        return aux

    def noise_shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0], self._num_steps(x.shape[1]), self.d_latent)

    def log_weights(self, x: Tensor, mask: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        x, mask, lengths = self._steps(x, mask)
        _, h, z, posterior, prior = self._run(x, lengths, eps)
        log_ratio = gaussian_log_prob(z, *prior) - gaussian_log_prob(z, *posterior)  # parameters already clamped
        return self._total(self.head.log_prob(h, x) + log_ratio, mask)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        x_prev = self.embed.weight.new_zeros(batch_size, self.step_size)
        state, out = None, []
        for _ in range(self._num_steps(steps)):
            _, _, state = self.recurrence.step_prior(self.embed(x_prev), state)
            x_prev = self.head.sample(state[0])
            out.append(x_prev)
        return self._frames(torch.stack(out, 1))
