"""The simplified stochastic RNN of Dai et al. 2019 (Sec. 3, Eq. 3-4, Appendix A) and its flat variant."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlv.nn.base import SequenceOutput
from fastlv.nn.heads import observation_head
from fastlv.nn.models.common import (LatentModel, clamp_options, gaussian_mlp, orthogonal_recurrent_init,
                                     reverse_padded, shift_right)
from fastlv.ops import gaussian_log_prob, gaussian_rsample, gaussian_sample_kl


class SimplifiedSRNN(LatentModel):
    """Simplified (F-)SRNN, Dai et al. 2019 Sec. 3:

        v->_t = LSTM->(x_t, v->_{t-1}),   v<-_t = LSTM<-(x_t, v<-_{t+1})       (one fused pass each)
        p(z_t | x_<t) = N(MLP_p(v->_{t-1})),   q(z_t | x) = N(MLP_q([v->_{t-1}, v<-_t]))
        h_t = LSTM([v->_{t-1}, z_t], h_{t-1})                                    (Eq. 3)
        ELBO = sum_t E_q[log p(x_t | h_t)] - KL(q(z_t | x) || p(z_t | x_<t))    (Eq. 4)

    The posterior is factorized over steps, so no per-step Python loop: all three recurrences are
    ``nn.LSTM`` (cuDNN / oneDNN) calls, and the sample and KL are one fused
    :func:`fastlv.ops.gaussian_sample_kl` over the whole sequence. As in the re-examination code
    (reference-facts.md): an input embedding shared by both directions, MLPs Linear -> leaky-ReLU(1/3)
    clipped to +-3 -> Linear, means and log-variances clamped to [-8, 8] (``param_clamp``, None = off),
    orthogonal recurrent weights, and one Gaussian (a 1-component GMM) per output value.

    ``flat=True`` models the sequence flattened to one scalar per step (SRNN-flat, Sec. 5.2).
    """
    CONFIGS = {
        # re-examination code, TIMIT F-SRNN: 17,525,848 parameters
        "timit": dict(frame_size=200, d_rnn=825),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 750, d_mlp: int = 512, d_latent: int = 256,
                 n_layers: int = 1, output: str = "gmm", n_components: int = 1, param_clamp: float | None = 8.0,
                 flat: bool = False):
        super().__init__(frame_size, flat)
        self.clamps = clamp_options(param_clamp)
        self.d_latent = d_latent
        self.embed = nn.Linear(self.step_size, d_emb)
        self.forward_rnn = nn.LSTM(d_emb, d_rnn, n_layers, batch_first=True)
        self.backward_rnn = nn.LSTM(d_emb, d_rnn, n_layers, batch_first=True)
        self.prior = gaussian_mlp(d_rnn, d_mlp, d_latent)
        self.posterior = gaussian_mlp(2 * d_rnn, d_mlp, d_latent)
        self.latent_rnn = nn.LSTM(d_rnn + d_latent, d_rnn, batch_first=True)
        self.head = observation_head(output, d_rnn, self.step_size, n_components)
        for rnn in (self.forward_rnn, self.backward_rnn, self.latent_rnn):
            orthogonal_recurrent_init(rnn)

    def _encode(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, tuple, tuple]:
        """Forward states v->_{t-1} and the (mean, log-variance) of the posterior and prior, ``[B, N, .]``."""
        forward, _ = self.forward_rnn(self.embed(shift_right(x)))  # step t has seen x_<t
        backward, _ = self.backward_rnn(reverse_padded(self.embed(x), lengths))
        backward = reverse_padded(backward, lengths)  # step t has seen x_>=t
        prior = self.prior(forward).chunk(2, -1)
        posterior = self.posterior(torch.cat([forward, backward], -1)).chunk(2, -1)
        return forward, posterior, prior

    def _reconstruct(self, x: Tensor, forward: Tensor, z: Tensor) -> Tensor:
        h, _ = self.latent_rnn(torch.cat([forward, z], -1))
        return self.head.log_prob(h, x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, lengths = self._steps(x, mask)
        forward, posterior, prior = self._encode(x, lengths)
        z, kl = gaussian_sample_kl(*posterior, *prior, **self.clamps)
        kl = self._total(kl, mask)
        return SequenceOutput(self._total(self._reconstruct(x, forward, z), mask), kl, {"z": kl})

    def noise_shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0], self._num_steps(x.shape[1]), self.d_latent)

    def log_weights(self, x: Tensor, mask: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        eps = torch.randn(self.noise_shape(x), dtype=x.dtype, device=x.device) if eps is None else eps
        x, mask, lengths = self._steps(x, mask)
        forward, posterior, prior = self._encode(x, lengths)
        z = gaussian_rsample(*posterior, eps, **self.clamps)
        log_ratio = gaussian_log_prob(z, *prior, **self.clamps) - gaussian_log_prob(z, *posterior, **self.clamps)
        return self._total(self._reconstruct(x, forward, z) + log_ratio, mask)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        x_prev = self.embed.weight.new_zeros(batch_size, 1, self.step_size)
        forward_state = latent_state = None
        out = []
        for _ in range(self._num_steps(steps)):
            forward, forward_state = self.forward_rnn(self.embed(x_prev), forward_state)
            z = gaussian_rsample(*self.prior(forward).chunk(2, -1), **self.clamps)
            h, latent_state = self.latent_rnn(torch.cat([forward, z], -1), latent_state)
            x_prev = self.head.sample(h)
            out.append(x_prev)
        return self._frames(torch.cat(out, 1))


class FlatSRNN(SimplifiedSRNN):
    """SRNN-flat (Dai et al. Sec. 5.2): the simplified SRNN over the sequence flattened to one scalar per
    step, so the output p(x_t,i | z_<=, x_<) is autoregressive within each frame (Eq. 14)."""
    CONFIGS = {
        # re-examination code, TIMIT SRNN-flat 1 x 825: 16,930,838 parameters
        "timit": dict(frame_size=200, d_rnn=825),
    }

    def __init__(self, frame_size: int, **kwargs):
        super().__init__(frame_size, flat=True, **kwargs)
