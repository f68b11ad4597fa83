"""The diagonal-Gaussian stochastic layer shared by every latent model: prior net, posterior net, then the
fused sample + KL step (:func:`fastlv.ops.gaussian_sample_kl`)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fastlv.ops.gaussian import POSTERIORS, gaussian_rsample, gaussian_sample_kl


def gaussian_head(in_features: int, latent_features: int, hidden_features: int | None = None,
                  activation: nn.Module | None = None) -> nn.Module:
    """Net from features to [mean, log-variance] (``2 * latent_features`` outputs): Linear -> activation ->
    Linear (the prior/posterior MLPs of the re-examination code and of Z-Forcing), or one Linear when
    ``hidden_features`` is None."""
    if hidden_features is None:
        return nn.Linear(in_features, 2 * latent_features)
    return nn.Sequential(nn.Linear(in_features, hidden_features), activation or nn.ReLU(),
                         nn.Linear(hidden_features, 2 * latent_features))


class DiagGaussianLatent(nn.Module):
    """One stochastic layer: prior p(z | prior_input), posterior q(z | posterior_input), both diagonal
    Gaussians, and ``forward`` -> ``(z, kl)`` with z ~ q (reparameterized) and KL(q || p) per step
    (summed over the latent dimension), in one fused op.

    Args:
        prior_features: input width of the prior net; None for the fixed prior N(0, I).
        posterior_features: input width of the posterior net.
        latent_features: D, the latent dimension.
        hidden_features, activation: shape of the default nets (:func:`gaussian_head`).
        prior_net, posterior_net: custom nets instead (any module mapping its input to ``[..., 2 * D]`` =
            [mean, log-variance]).
        posterior: ``standard``, or ``precision_weighted`` (STCN Eq. 11: the posterior net gives the
            approximate likelihood, combined with the prior by precision).
        free_bits, mu_min, mu_max, logvar_min, logvar_max: as in :func:`fastlv.ops.gaussian_kl`
            (the re-examination SRNN clamps means and log-variances to [-8, 8]).

    The KL-annealing weight is the caller's. ``mask`` of ``forward`` zeroes the KL of padded steps.
    """

    def __init__(self, prior_features: int | None, posterior_features: int, latent_features: int,
                 hidden_features: int | None = None, *, activation: nn.Module | None = None,
                 prior_net: nn.Module | None = None, posterior_net: nn.Module | None = None,
                 posterior: str = "standard", free_bits: float | None = None, mu_min: float | None = None,
                 mu_max: float | None = None, logvar_min: float | None = None, logvar_max: float | None = None):
        super().__init__()
        if posterior not in POSTERIORS:
            raise ValueError(f"fastlv: posterior must be one of {POSTERIORS}, got {posterior!r}")
        if posterior == "precision_weighted" and prior_features is None and prior_net is None:
            raise ValueError("fastlv: posterior='precision_weighted' needs a learned prior (prior_features)")
        self.latent_features = latent_features
        self.posterior_kind = posterior
        self.options = dict(free_bits=free_bits, mu_min=mu_min, mu_max=mu_max, logvar_min=logvar_min,
                            logvar_max=logvar_max)
        if prior_net is None and prior_features is not None:
            prior_net = gaussian_head(prior_features, latent_features, hidden_features, activation)
        self.prior_net = prior_net
        self.posterior_net = posterior_net or gaussian_head(posterior_features, latent_features, hidden_features,
                                                            activation)

    def prior(self, prior_input: Tensor | None) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """(mu_p, logvar_p) ``[..., D]``, or (None, None) for N(0, I)."""
        if self.prior_net is None:
            return None, None
        return self.prior_net(prior_input).chunk(2, dim=-1)

    def posterior(self, posterior_input: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) from the posterior net (for ``precision_weighted``: the approximate likelihood)."""
        return self.posterior_net(posterior_input).chunk(2, dim=-1)

    def forward(self, prior_input: Tensor | None, posterior_input: Tensor, *, mask: Tensor | None = None,
                eps: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(z [..., D], kl [...])``: z ~ q by reparameterization, kl = KL(q || p) per step."""
        mu_p, logvar_p = self.prior(prior_input)
        mu_q, logvar_q = self.posterior(posterior_input)
        return gaussian_sample_kl(mu_q, logvar_q, mu_p, logvar_p, eps=eps, generator=generator,
                                  posterior=self.posterior_kind, mask=mask, **self.options)

    def sample_prior(self, prior_input: Tensor | None, *, shape: tuple[int, ...] | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
        """z ~ p (generation). With the fixed prior N(0, I), ``shape`` gives the batch shape."""
        mu_p, logvar_p = self.prior(prior_input)
        if mu_p is None:
            if shape is None:
                raise ValueError("fastlv: sampling the fixed prior N(0, I) needs shape")
            mu_p = torch.zeros(*shape, self.latent_features, device=self._device())
            logvar_p = torch.zeros_like(mu_p)
        bounds = {k: v for k, v in self.options.items() if k != "free_bits"}
        return gaussian_rsample(mu_p, logvar_p, generator=generator, **bounds)

    def _device(self) -> torch.device:
        return next(self.posterior_net.parameters()).device
