"""VRNN (Chung et al. 2015) and STORN (Bayer & Osendorfer 2014) as Dai et al. 2019 Appendix A states them."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlv.nn.base import SequenceOutput
from fastlv.nn.heads import observation_head
from fastlv.nn.models.common import (LatentModel, StochasticLSTM, clamp_options, gaussian_mlp,
                                     orthogonal_recurrent_init, shift_right)
from fastlv.ops import gaussian_kl, gaussian_log_prob, gaussian_rsample, gaussian_sample_kl


class VRNN(LatentModel):
    """Variational RNN (Chung et al. 2015; Dai et al. Appendix A):

        v_t = LSTM([W_z z_t, x_t], v_{t-1})                   (z_t feeds the recurrence: a per-step loop)
        p(z_t | z_<t, x_<t) = N(MLP_p(v_{t-1})),   q(z_t | z_<t, x_<=t) = N(MLP_q([v_{t-1}, x_t]))
        p(x_t | z_<=t, x_<t) = p(x_t | [v_{t-1}, z_t])

    (Dai et al. write q(z_t | v_{t-1}); Chung et al.'s posterior also sees x_t, which it must to be useful.)
    The loop is :class:`~fastlv.nn.models.common.StochasticLSTM`; KL and output are batched after it.
    """
    CONFIGS = {
        # TIMIT-sized, the widths of the Z-Forcing configuration (no reference count exists for it)
        "timit": dict(frame_size=200, d_rnn=1024, d_latent=256, d_mlp=512, output="gmm", n_components=1),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 1024, d_latent: int = 256, d_mlp: int = 512,
                 output: str = "gmm", n_components: int = 20, param_clamp: float | None = 8.0, flat: bool = False):
        super().__init__(frame_size, flat)
        self.d_latent = d_latent
        self.embed = nn.Linear(self.step_size, d_emb)
        self.recurrence = StochasticLSTM(d_emb, d_emb, d_rnn, d_latent, d_mlp, param_clamp)
        self.head = observation_head(output, d_rnn + d_latent, self.step_size, n_components)

    def _run(self, x: Tensor, eps: Tensor | None):
        embedded = self.embed(x)
        if eps is None:
            eps = torch.randn(*x.shape[:2], self.d_latent, dtype=x.dtype, device=x.device)
        v_prev, _, z, posterior, prior = self.recurrence.unroll(embedded, embedded, eps)
        log_px = self.head.log_prob(torch.cat([v_prev, z], -1), x)
        return log_px, z, posterior.chunk(2, -1), prior.chunk(2, -1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, _ = self._steps(x, mask)
        log_px, _, posterior, prior = self._run(x, None)
        kl = self._total(gaussian_kl(*posterior, *prior), mask)
        return SequenceOutput(self._total(log_px, mask), kl, {"z": kl})

    def noise_shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0], self._num_steps(x.shape[1]), self.d_latent)

    def log_weights(self, x: Tensor, mask: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        x, mask, _ = self._steps(x, mask)
        log_px, z, posterior, prior = self._run(x, eps)
        return self._total(log_px + gaussian_log_prob(z, *prior) - gaussian_log_prob(z, *posterior), mask)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        recurrence = self.recurrence
        v = c = self.embed.weight.new_zeros(batch_size, recurrence.d_rnn)
        out = []
        for _ in range(self._num_steps(steps)):
            # z_t from the prior on v_{t-1}, x_t from [v_{t-1}, z_t], then v_t from (z_t, x_t)
            z = gaussian_rsample(*recurrence.clamp(recurrence.prior(v)).chunk(2, -1))
            x_t = self.head.sample(torch.cat([v, z], -1))
            v, c = recurrence.cell(torch.cat([recurrence.latent_proj(z), self.embed(x_t)], -1), (v, c))
            out.append(x_t)
        return self._frames(torch.stack(out, 1))


class STORN(LatentModel):
    """Stochastic recurrent network (Bayer & Osendorfer 2014; Dai et al. Appendix A):

        p(z_t) = N(0, I),   q(z_t | x_<=t) = N(MLP_q(r_t)),  r_t = LSTM_q(x_t, r_{t-1})
        h_t = LSTM([x_{t-1}, z_t], h_{t-1}),   p(x_t | z_<=t, x_<t) = p(x_t | h_t)

    Neither the prior nor the posterior depends on earlier samples, so there is no per-step loop: two
    ``nn.LSTM`` passes and one fused :func:`fastlv.ops.gaussian_sample_kl` against N(0, I). (Dai et al.
    write the posterior as q(z_t | x_<t); Bayer & Osendorfer's recognition network reads x_t too.)
    """
    CONFIGS = {
        # TIMIT-sized: the widths of the simplified SRNN configuration (no reference count exists)
        "timit": dict(frame_size=200, d_rnn=1024, d_latent=256, d_mlp=512, output="gmm", n_components=1),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 1024, d_latent: int = 256, d_mlp: int = 512,
                 output: str = "gmm", n_components: int = 20, param_clamp: float | None = 8.0, flat: bool = False):
        super().__init__(frame_size, flat)
        self.d_latent, self.clamps = d_latent, clamp_options(param_clamp)
        self.embed = nn.Linear(self.step_size, d_emb)
        self.recognition_rnn = nn.LSTM(d_emb, d_rnn, batch_first=True)
        self.posterior = gaussian_mlp(d_rnn, d_mlp, d_latent)
        self.rnn = nn.LSTM(d_emb + d_latent, d_rnn, batch_first=True)
        self.head = observation_head(output, d_rnn, self.step_size, n_components)
        for rnn in (self.recognition_rnn, self.rnn):
            orthogonal_recurrent_init(rnn)

    def _posterior(self, embedded: Tensor) -> tuple[Tensor, Tensor]:
        r, _ = self.recognition_rnn(embedded)  # r_t has seen x_<=t
        return self.posterior(r).chunk(2, -1)

    def _reconstruct(self, x: Tensor, embedded: Tensor, z: Tensor) -> Tensor:
        h, _ = self.rnn(torch.cat([shift_right(embedded), z], -1))
        return self.head.log_prob(h, x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, _ = self._steps(x, mask)
        embedded = self.embed(x)
        z, kl = gaussian_sample_kl(*self._posterior(embedded), **self.clamps)  # KL against N(0, I)
        kl = self._total(kl, mask)
        return SequenceOutput(self._total(self._reconstruct(x, embedded, z), mask), kl, {"z": kl})

    def noise_shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0], self._num_steps(x.shape[1]), self.d_latent)

    def log_weights(self, x: Tensor, mask: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        eps = torch.randn(self.noise_shape(x), dtype=x.dtype, device=x.device) if eps is None else eps
        x, mask, _ = self._steps(x, mask)
        embedded = self.embed(x)
        posterior = self._posterior(embedded)
        z = gaussian_rsample(*posterior, eps, **self.clamps)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        log_ratio = gaussian_log_prob(z, zero, zero) - gaussian_log_prob(z, *posterior, **self.clamps)
        return self._total(self._reconstruct(x, embedded, z) + log_ratio, mask)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        x_prev = self.embed.weight.new_zeros(batch_size, 1, self.step_size)
        state, out = None, []
        for _ in range(self._num_steps(steps)):
            z = torch.randn(batch_size, 1, self.d_latent, dtype=x_prev.dtype, device=x_prev.device)
            h, state = self.rnn(torch.cat([self.embed(x_prev), z], -1), state)
            x_prev = self.head.sample(h)
            out.append(x_prev)
        return self._frames(torch.cat(out, 1))
