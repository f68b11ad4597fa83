"""Gaussian-mixture output distributions and the output head that produces them.

``GaussianMixture`` / ``DiagGaussianMixture`` are ``torch.distributions.Distribution`` subclasses whose
``log_prob`` is the fused op, so they drop into code written against ``torch.distributions``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from fastlv.ops._common import clamp_bounds, reduce
from fastlv.ops.gmm import diag_gmm_log_prob, gmm_log_prob


class GaussianMixture(Distribution):
    """Per-element mixture: each scalar of the event has its own K components (Dai et al. 2019, Eq. 5).

    logits, mu, log_sigma: ``[..., K]``; batch_shape ``[...]``, event_shape ``()``.
    """
    arg_constraints = {"logits": constraints.real, "mu": constraints.real, "log_sigma": constraints.real}
    support = constraints.real
    has_rsample = False

    def __init__(self, logits: Tensor, mu: Tensor, log_sigma: Tensor, *, log_sigma_min: float | None = None,
                 log_sigma_max: float | None = None, validate_args: bool | None = None):
        self.logits, self.mu, self.log_sigma = torch.broadcast_tensors(logits, mu, log_sigma)
        self.log_sigma_min, self.log_sigma_max = clamp_bounds(log_sigma_min, log_sigma_max)
        super().__init__(self.logits.shape[:-1], validate_args=validate_args)

    def _sigma(self) -> Tensor:
        return self.log_sigma.clamp(self.log_sigma_min, self.log_sigma_max).exp()

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return gmm_log_prob(value, self.logits, self.mu, self.log_sigma, log_sigma_min=self.log_sigma_min,
                            log_sigma_max=self.log_sigma_max)

    @property
    def mean(self) -> Tensor:
        return (self.logits.softmax(-1) * self.mu).sum(-1)

    @property
    def variance(self) -> Tensor:
        w = self.logits.softmax(-1)
        second_moment = (w * (self._sigma() ** 2 + self.mu ** 2)).sum(-1)
        return second_moment - self.mean ** 2

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        k = torch.distributions.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
        mu = self.mu.expand(*shape, -1).gather(-1, k).squeeze(-1)
        sigma = self._sigma().expand(*shape, -1).gather(-1, k).squeeze(-1)
        return mu + sigma * torch.randn_like(mu)


class DiagGaussianMixture(Distribution):
    """Full-frame mixture of diagonal Gaussians: one weight vector per frame (STCN Appendix 7.1).

    logits ``[..., K]``, mu/log_sigma ``[..., K, D]``; batch_shape ``[...]``, event_shape ``[D]``.
    """
    arg_constraints = {"logits": constraints.real, "mu": constraints.real, "log_sigma": constraints.real}
    support = constraints.independent(constraints.real, 1)
    has_rsample = False

    def __init__(self, logits: Tensor, mu: Tensor, log_sigma: Tensor, *, log_sigma_min: float | None = None,
                 log_sigma_max: float | None = None, validate_args: bool | None = None):
        self.mu, self.log_sigma = torch.broadcast_tensors(mu, log_sigma)
        self.logits = logits.expand(self.mu.shape[:-1])
        self.log_sigma_min, self.log_sigma_max = clamp_bounds(log_sigma_min, log_sigma_max)
        super().__init__(self.logits.shape[:-1], self.mu.shape[-1:], validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return diag_gmm_log_prob(value, self.logits, self.mu, self.log_sigma, log_sigma_min=self.log_sigma_min,
                                 log_sigma_max=self.log_sigma_max)

    @property
    def mean(self) -> Tensor:
        return (self.logits.softmax(-1).unsqueeze(-1) * self.mu).sum(-2)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)  # [*sample, *batch, D]
        K, D = self.mu.shape[-2:]
        k = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
        index = k[..., None, None].expand(*k.shape, 1, D)
        mu = self.mu.expand(*shape[:-1], K, D).gather(-2, index).squeeze(-2)
        log_sigma = self.log_sigma.clamp(self.log_sigma_min, self.log_sigma_max)
        sigma = log_sigma.exp().expand(*shape[:-1], K, D).gather(-2, index).squeeze(-2)
        return mu + sigma * torch.randn_like(mu)


class GMMHead(nn.Module):
    """Linear map from a hidden state to a Gaussian-mixture output distribution.

    ``full_frame=False`` (default): each of the ``out_features`` values gets its own K-component
    mixture (Dai et al. 2019, Eq. 5; the re-examination code's per-sample GMM, log-std unclamped).
    ``full_frame=True``: one K-vector of weights per step shared by all ``out_features`` dims
    (STCN Appendix 7.1).

    ``head(h)`` returns the distribution; ``head.loss(h, x)`` the negative log-likelihood
    (``reduction``/``mask`` as in :func:`fastlv.ops.gmm_log_prob`).
    """

    def __init__(self, in_features: int, out_features: int, n_components: int = 20, *, full_frame: bool = False,
                 log_sigma_min: float | None = None, log_sigma_max: float | None = None):
        super().__init__()
        self.out_features, self.n_components, self.full_frame = out_features, n_components, full_frame
        self.log_sigma_min, self.log_sigma_max = log_sigma_min, log_sigma_max
        n_logits = n_components if full_frame else out_features * n_components
        self.proj = nn.Linear(in_features, n_logits + 2 * out_features * n_components)

    def forward(self, h: Tensor) -> GaussianMixture | DiagGaussianMixture:
        L, K = self.out_features, self.n_components
        params = self.proj(h)
        clamps = dict(log_sigma_min=self.log_sigma_min, log_sigma_max=self.log_sigma_max)
        if self.full_frame:
            logits, rest = params.split([K, 2 * K * L], -1)
            mu, log_sigma = rest.unflatten(-1, (2, K, L)).unbind(-3)
            return DiagGaussianMixture(logits, mu, log_sigma, **clamps)
        logits, mu, log_sigma = params.unflatten(-1, (3, L, K)).unbind(-3)
        return GaussianMixture(logits, mu, log_sigma, **clamps)

    def loss(self, h: Tensor, x: Tensor, *, reduction: str = "mean", mask: Tensor | None = None) -> Tensor:
        """Negative log-likelihood of x ``[..., out_features]`` (per step, summed over the frame)."""
        log_prob = self(h).log_prob(x)
        if not self.full_frame:
            log_prob = log_prob.sum(-1)
        return -reduce(log_prob, reduction, mask)
