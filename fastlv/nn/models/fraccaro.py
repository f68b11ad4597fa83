"""The SRNN of Fraccaro et al. 2016: a deterministic GRU layer under a state-space-model layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv.nn.base import SequenceOutput
from fastlv.nn.heads import observation_head
from fastlv.nn.models.common import ClampedLeakyReLU, LatentModel, gaussian_mlp, reverse_padded, shift_right
from fastlv.ops import gaussian_kl, gaussian_log_prob, gaussian_rsample


def _features(in_features: int, hidden: int, layers: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(in_features if i == 0 else hidden, hidden), ClampedLeakyReLU()]
    return nn.Sequential(*blocks)


class FraccaroSRNN(LatentModel):
    """SRNN of Fraccaro et al. 2016 (Eq. 1-12, Algorithm 1):

        d_t = GRU(d_{t-1}, u_t),  u_t = phi(x_{t-1})                   deterministic layer (Eq. 1)
        p(z_t | z_{t-1}, d_t) = N(NN_p([z_{t-1}, d_t]))                SSM layer (Eq. 3)
        p(x_t | z_t, d_t) = head(NN_x([z_t, d_t]))
        a_t = GRU<-([d_t, phi(x_t)], a_{t+1})        smoothing (Eq. 7), or a_t = NN_a([d_t, phi(x_t)]) filtering
        q(z_t | z_{t-1}, a_t): mu_q = mu_p + NN_q([z_{t-1}, a_t]) (Res_q, Eq. 12), log v_q = NN_q'([z_{t-1}, a_t])

    phi is a feature network shared by the generative and inference parts (Appendix A); every MLP has
    ``mlp_layers`` hidden layers of ``d_mlp`` clamped leaky-ReLU units. The recurrences d and a run as
    one ``nn.GRU`` pass each; only the z chain is a per-step loop (its z_{t-1} part of both first layers
    is one matrix product per step, the d_t / a_t parts are computed before the loop), and the KL and
    emission are batched after it. ``residual=False`` learns mu_q directly (Eq. 10).
    """
    CONFIGS = {
        # Appendix A, TIMIT: GRU 1024, z 256, 2-layer MLPs of 512 units, Gaussian output
        "timit": dict(frame_size=200),
    }

    def __init__(self, frame_size: int, d_rnn: int = 1024, d_latent: int = 256, d_mlp: int = 512, mlp_layers: int = 2,
                 output: str = "gaussian", n_components: int = 20, posterior: str = "smoothing", residual: bool = True,
                 param_clamp: float | None = 8.0, flat: bool = False):
        super().__init__(frame_size, flat)
        if posterior not in ("smoothing", "filtering"):
            raise ValueError(f"fastlv: posterior must be 'smoothing' or 'filtering', got {posterior!r}")
        self.d_latent, self.residual, self.param_clamp = d_latent, residual, param_clamp
        self.features = _features(self.step_size, d_mlp, mlp_layers)
        self.deterministic_rnn = nn.GRU(d_mlp, d_rnn, batch_first=True)
        if posterior == "smoothing":
            self.inference_rnn = nn.GRU(d_rnn + d_mlp, d_rnn, batch_first=True)
        else:
            self.inference_rnn = _features(d_rnn + d_mlp, d_rnn, 1)
        self.prior = gaussian_mlp(d_latent + d_rnn, d_mlp, d_latent, mlp_layers)
        self.posterior = gaussian_mlp(d_latent + d_rnn, d_mlp, d_latent, mlp_layers)
        self.emission = _features(d_latent + d_rnn, d_mlp, mlp_layers)
        self.head = observation_head(output, d_mlp, self.step_size, n_components)

    def _clamp(self, params: Tensor) -> Tensor:
        return params if self.param_clamp is None else params.clamp(-self.param_clamp, self.param_clamp)

    def _states(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """d_t (has seen x_<t) and a_t (has seen d_>=t, x_>=t, or d_t, x_t when filtering)."""
        phi = self.features(x)
        d, _ = self.deterministic_rnn(shift_right(phi))
        da = torch.cat([d, phi], -1)
        if isinstance(self.inference_rnn, nn.GRU):
            a, _ = self.inference_rnn(reverse_padded(da, lengths))
            return d, reverse_padded(a, lengths)
        return d, self.inference_rnn(da)

    def _unroll(self, d: Tensor, a: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 1: the z chain -> samples, posterior and prior (mean, log-variance) ``[B, N, .]``."""
        B = d.shape[0]
        Z = self.d_latent
        prior_in, post_in = self.prior[0], self.posterior[0]
        M = prior_in.out_features
        pre = torch.cat([F.linear(d, prior_in.weight[:, Z:], prior_in.bias),
                         F.linear(a, post_in.weight[:, Z:], post_in.bias)], -1)  # z-free parts of layer 1
        w_z = torch.cat([prior_in.weight[:, :Z], post_in.weight[:, :Z]]).t()  # z_{t-1} -> both first layers
        z = d.new_zeros(B, Z)  # z_0
        zs, qs, ps = [], [], []
        for pre_t, eps_t in zip(pre.unbind(1), eps.unbind(1)):  # unbind: pre[:, t]'s backward is O(N) each
            prior_hidden, post_hidden = F.leaky_relu(torch.addmm(pre_t, z, w_z), 1.0 / 3.0).clamp(-3, 3).split(M, 1)
            p_t = self._clamp(self.prior[2:](prior_hidden))
            q_t = self.posterior[2:](post_hidden)
            if self.residual:  # Eq. 12: the posterior mean is a correction of the prior mean
                q_t = q_t + F.pad(p_t[:, :Z], (0, Z))
            q_t = self._clamp(q_t)
            mu_q, logvar_q = q_t.chunk(2, 1)
            z = torch.addcmul(mu_q, torch.exp(0.5 * logvar_q), eps_t)
            zs.append(z), qs.append(q_t), ps.append(p_t)
        return tuple(torch.stack(s, 1) for s in (zs, qs, ps))

    def _run(self, x: Tensor, lengths: Tensor | None, eps: Tensor | None):
        d, a = self._states(x, lengths)
        if eps is None:
            eps = torch.randn(*x.shape[:2], self.d_latent, dtype=x.dtype, device=x.device)
        z, posterior, prior = self._unroll(d, a, eps)
        log_px = self.head.log_prob(self.emission(torch.cat([z, d], -1)), x)
        return log_px, z, posterior.chunk(2, -1), prior.chunk(2, -1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        x, mask, lengths = self._steps(x, mask)
        log_px, _, posterior, prior = self._run(x, lengths, None)
        kl = self._total(gaussian_kl(*posterior, *prior), mask)
        return SequenceOutput(self._total(log_px, mask), kl, {"z": kl})

    def noise_shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0], self._num_steps(x.shape[1]), self.d_latent)

    def log_weights(self, x: Tensor, mask: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        x, mask, lengths = self._steps(x, mask)
        log_px, z, posterior, prior = self._run(x, lengths, eps)
        return self._total(log_px + gaussian_log_prob(z, *prior) - gaussian_log_prob(z, *posterior), mask)

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        x_prev = self.features[0].weight.new_zeros(batch_size, 1, self.step_size)
        z = x_prev.new_zeros(batch_size, 1, self.d_latent)
        state, out = None, []
        for _ in range(self._num_steps(steps)):
            d, state = self.deterministic_rnn(self.features(x_prev), state)
            z = gaussian_rsample(*self._clamp(self.prior(torch.cat([z, d], -1))).chunk(2, -1))
            x_prev = self.head.sample(self.emission(torch.cat([z, d], -1)))
            out.append(x_prev)
        return self._frames(torch.cat(out, 1))

