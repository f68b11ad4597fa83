"""The semi-implicit stochastic RNN of Hajiramezani et al. 2020."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv.nn.base import SequenceOutput
from fastlv.nn.heads import observation_head
from fastlv.nn.models.common import LatentModel, gaussian_mlp
from fastlv.ops import gaussian_log_prob, gaussian_rsample


class SISRNN(LatentModel):
    """SIS-RNN (Hajiramezani et al. 2020, Eq. 3-12): a VRNN backbone whose posterior is semi-implicit.

        h_t = GRU([x_t, z_t], h_{t-1})                                              (Eq. 4)
        p(z_t | h_{t-1}) = N(phi_prior(h_{t-1})),   p(x_t | z_t, h_{t-1}) = head([h_{t-1}, z_t])   (Eq. 8-9)
        psi_t = phi_enc(x_t, h_{t-1}, noise) = (mu, log-variance),   z_t ~ N(psi_t)        (Eq. 3, 5)

    The encoder injects fresh Bernoulli(1/2) noise into each of its layers (SIVI), which makes the mixing
    distribution q(psi_t | x_t, h_{t-1}) implicit. Training maximizes the bound of Eq. 11-12,

        L_K = sum_t E[log p(x_t | z_t, h_{t-1}) + log p(z_t | h_{t-1})
                      - log (1/(K+1)) (q(z_t | psi_t) + sum_k q(z_t | psi_t^(k)))]

    with K = ``mixing_samples`` extra encoder draws psi^(k) per step (L_0 is the bound of Eq. 11). The
    K + 1 encoder passes run as one batch per step; the log-densities, a single fused
    :func:`fastlv.ops.gaussian_log_prob` over all steps and draws, after the loop. ``kl`` holds the
    per-sequence estimate sum_t log g_K(z_t) - log p(z_t | h_{t-1}). ``log_weights``/``iwae`` use the same
    mixture density for q, so they bound log p(x) only as K grows.
    """
    CONFIGS = {
        # Sec. 4, sequential binarized MNIST: GRU 64, prior 2 x 64, encoder 3 x 128 with [150, 100, 50]
        # Bernoulli noise dims (the latent size is not stated; 64 here), pixels one per step
        "mnist": dict(frame_size=1, d_rnn=64, d_latent=64, d_emb=64, prior_hidden=64, encoder_hidden=128,
                      noise_dims=(150, 100, 50), output="bernoulli", mixing_samples=100),
    }

    def __init__(self, frame_size: int, d_rnn: int = 64, d_latent: int = 64, d_emb: int = 64, prior_hidden: int = 64,
                 encoder_hidden: int = 128, noise_dims: tuple[int, ...] = (150, 100, 50), output: str = "bernoulli",
                 n_components: int = 20, mixing_samples: int = 10, param_clamp: float | None = 8.0, flat: bool = False):
        super().__init__(frame_size, flat)
        self.d_rnn, self.d_latent, self.mixing_samples = d_rnn, d_latent, mixing_samples
        self.noise_dims, self.param_clamp = tuple(noise_dims), param_clamp
        self.embed = nn.Linear(self.step_size, d_emb)
        self.prior = gaussian_mlp(d_rnn, prior_hidden, d_latent, layers=2)
        widths = [d_emb + d_rnn] + [encoder_hidden] * len(noise_dims)
        self.encoder = nn.ModuleList(nn.Linear(widths[i] + noise_dims[i], widths[i + 1]) for i in range(len(noise_dims)))
        self.encoder_out = nn.Linear(encoder_hidden, 2 * d_latent)
        self.cell = nn.GRUCell(d_emb + d_latent, d_rnn)
        self.head = observation_head(output, d_rnn + d_latent, self.step_size, n_components)

    def _clamp(self, params: Tensor) -> Tensor:
        return params if self.param_clamp is None else params.clamp(-self.param_clamp, self.param_clamp)

    def _encode(self, layer_1: Tensor, draws: int) -> Tensor:
        """``draws`` samples of psi ``[draws, B, 2 Z]`` from the first layer's noise-free part ``[B, H]``."""
        first = self.encoder[0]
        noise_1 = torch.bernoulli(layer_1.new_full((draws, layer_1.shape[0], self.noise_dims[0]), 0.5))
        hidden = F.leaky_relu(layer_1 + noise_1 @ first.weight[:, -self.noise_dims[0]:].t(), 1.0 / 3.0).clamp(-3, 3)
        for layer, n in zip(self.encoder[1:], self.noise_dims[1:]):
            noise = torch.bernoulli(hidden.new_full((*hidden.shape[:-1], n), 0.5))
            hidden = F.leaky_relu(layer(torch.cat([hidden, noise], -1)), 1.0 / 3.0).clamp(-3, 3)
        return self._clamp(self.encoder_out(hidden))

    def _run(self, x: Tensor, eps: Tensor | None, mixing_samples: int):
        """The loop -> (log p(x_t | .), log p(z_t | h_{t-1}), log g_K(z_t)), each ``[B, N]``."""
        B, N, _ = x.shape
        embedded = self.embed(x)
        if eps is None:
            eps = torch.randn(B, N, self.d_latent, dtype=x.dtype, device=x.device)
        first = self.encoder[0]
        x_part = F.linear(embedded, first.weight[:, :embedded.shape[-1]], first.bias)  # z-free part of layer 1
        w_state = first.weight[:, embedded.shape[-1]:embedded.shape[-1] + self.d_rnn].t()
        h = x.new_zeros(B, self.d_rnn)
        h_prev, zs, psis, priors = [], [], [], []
        # unbind, not [:, t]: the backward of N slices would write N full-size zero tensors (O(N^2))
        for x_t, embedded_t, eps_t in zip(x_part.unbind(1), embedded.unbind(1), eps.unbind(1)):
            psi = self._encode(torch.addmm(x_t, h, w_state), mixing_samples + 1)  # draw 0 samples z_t
            mu_q, logvar_q = psi[0].chunk(2, -1)
            z = torch.addcmul(mu_q, torch.exp(0.5 * logvar_q), eps_t)
            h_prev.append(h), zs.append(z), psis.append(psi), priors.append(self._clamp(self.prior(h)))
            h = self.cell(torch.cat([embedded_t, z], -1), h)
        h_prev, z, psi, prior = torch.stack(h_prev, 1), torch.stack(zs, 1), torch.stack(psis, 2), torch.stack(priors, 1)
        log_px = self.head.log_prob(torch.cat([h_prev, z], -1), x)
        log_pz = gaussian_log_prob(z, *prior.chunk(2, -1))
        log_q_draws = gaussian_log_prob(z, *psi.chunk(2, -1))  # z [B, N, Z] against [K + 1, B, N, Z] -> [K + 1, B, N]
        log_g = torch.logsumexp(log_q_draws, 0) - math.log(mixing_samples + 1)  # Eq. 12
        return log_px, log_pz, log_g

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, _ = self._steps(x, mask)
        log_px, log_pz, log_g = self._run(x, None, self.mixing_samples)
        kl = self._total(log_g - log_pz, mask)
        return SequenceOutput(self._total(log_px, mask), kl, {"z": kl})

    def noise_shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0], self._num_steps(x.shape[1]), self.d_latent)

    def log_weights(self, x: Tensor, mask: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        x, mask, _ = self._steps(x, mask)
        log_px, log_pz, log_g = self._run(x, eps, self.mixing_samples)
        return self._total(log_px + log_pz - log_g, mask)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        h = self.embed.weight.new_zeros(batch_size, self.d_rnn)
        out = []
        for _ in range(self._num_steps(steps)):
            z = gaussian_rsample(*self._clamp(self.prior(h)).chunk(2, -1))
            x_t = self.head.sample(torch.cat([h, z], -1))
            h = self.cell(torch.cat([self.embed(x_t), z], -1), h)
            out.append(x_t)
        return self._frames(torch.stack(out, 1))
