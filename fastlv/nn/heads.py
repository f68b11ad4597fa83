"""Observation models p(x_t | h_t): the output families of the papers' sequence models.

Every head maps a hidden state ``h [..., in_features]`` to a distribution over one frame
``x [..., frame_size]`` and offers ``log_prob(h, x) -> [...]`` (summed over the frame) and ``sample(h)``.

- ``gmm``: per-element Gaussian mixture, each value its own K components (Dai et al. 2019 Eq. 5; the
  re-examination code's output, log-std unclamped).
- ``diag_gmm``: full-frame mixture of diagonal Gaussians, one weight vector per step (STCN Appendix 7.1).
- ``gaussian``: a single diagonal Gaussian, mean and log-variance per element (Z-Forcing, Goyal et al.
  2017; Fraccaro et al. 2016 Appendix A).
- ``bernoulli``: independent Bernoulli per element (piano rolls, Dai et al. Sec. 5.1; sequential
  binarized MNIST, Hajiramezani et al. 2020 Sec. 4).
- ``pen_gmm``: handwriting steps ``(dx, dy, pen)`` as fastlv.data lays them out: a Bernoulli pen flag
  (the last element) times a K-component diagonal GMM over the offsets (Chung et al. 2015 / Dai et al.
  Sec. 5.1, IAM-OnDB).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv.nn.gmm import DiagGaussianMixture, GMMHead
from fastlv.ops import gaussian_log_prob, gaussian_rsample

FAMILIES = ("gmm", "diag_gmm", "gaussian", "bernoulli", "pen_gmm")


class ObservationHead(nn.Module):
    """Base class: ``log_prob(h, x)`` summed over the frame, ``sample(h)`` one frame per state."""
    frame_size: int

    def log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, h: Tensor) -> Tensor:
        raise NotImplementedError


class MixtureHead(ObservationHead):
    """``gmm`` (per element) or ``diag_gmm`` (full frame): :class:`fastlv.nn.GMMHead` and its fused op."""

    def __init__(self, in_features: int, frame_size: int, n_components: int, full_frame: bool, **clamps):
        super().__init__()
        self.frame_size, self.full_frame = frame_size, full_frame
        self.gmm = GMMHead(in_features, frame_size, n_components, full_frame=full_frame, **clamps)

    def log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        log_prob = self.gmm(h).log_prob(x)
        return log_prob if self.full_frame else log_prob.sum(-1)

    def sample(self, h: Tensor) -> Tensor:
        return self.gmm(h).sample()


class GaussianHead(ObservationHead):
    """Diagonal Gaussian: ``Linear -> (mean, log-variance)`` per element, log-density by the fused op."""

    def __init__(self, in_features: int, frame_size: int):
        super().__init__()
        self.frame_size = frame_size
        self.proj = nn.Linear(in_features, 2 * frame_size)

    def log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        mu, logvar = self.proj(h).chunk(2, -1)
        return gaussian_log_prob(x, mu, logvar)

    def sample(self, h: Tensor) -> Tensor:
        mu, logvar = self.proj(h).chunk(2, -1)
        return gaussian_rsample(mu, logvar)


class BernoulliHead(ObservationHead):
    """Independent Bernoulli per element from logits."""

    def __init__(self, in_features: int, frame_size: int):
        super().__init__()
        self.frame_size = frame_size
        self.proj = nn.Linear(in_features, frame_size)

    def log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(self.proj(h), x, reduction="none").sum(-1)

    def sample(self, h: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(self.proj(h)))


class PenGMMHead(ObservationHead):
    """Handwriting step ``(dx, dy, pen)``: Bernoulli pen flag (last element) x K-component diagonal GMM
    over the 2-d offset; one Linear produces ``[pen logit, K weights, K x 2 means, K x 2 log-stds]``."""

    def __init__(self, in_features: int, n_components: int, **clamps):
        super().__init__()
        self.frame_size, self.n_components, self.clamps = 3, n_components, clamps
        self.proj = nn.Linear(in_features, 1 + 5 * n_components)

    def _split(self, h: Tensor) -> tuple[Tensor, DiagGaussianMixture]:
        K = self.n_components
        pen_logit, logits, rest = self.proj(h).split([1, K, 4 * K], -1)
        mu, log_sigma = rest.unflatten(-1, (2, K, 2)).unbind(-3)
        return pen_logit.squeeze(-1), DiagGaussianMixture(logits, mu, log_sigma, **self.clamps)

    def log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        pen_logit, offsets = self._split(h)
        pen = -F.binary_cross_entropy_with_logits(pen_logit, x[..., 2], reduction="none")
        return pen + offsets.log_prob(x[..., :2])

    def sample(self, h: Tensor) -> Tensor:
        pen_logit, offsets = self._split(h)
        return torch.cat([offsets.sample(), torch.bernoulli(torch.sigmoid(pen_logit)).unsqueeze(-1)], -1)


def observation_head(family: str, in_features: int, frame_size: int, n_components: int = 20,
                     **clamps) -> ObservationHead:
    """The head of output family ``family`` (one of :data:`FAMILIES`); ``clamps`` (log_sigma_min /
    log_sigma_max) go to the mixture families."""
    if family in ("gmm", "diag_gmm"):
        return MixtureHead(in_features, frame_size, n_components, family == "diag_gmm", **clamps)
    if family == "gaussian":
        return GaussianHead(in_features, frame_size)
    if family == "bernoulli":
        return BernoulliHead(in_features, frame_size)
    if family == "pen_gmm":
        if frame_size != 3:
            raise ValueError(f"fastlv: the pen_gmm family models (dx, dy, pen) steps, got frame_size {frame_size}")
        return PenGMMHead(in_features, n_components, **clamps)
    raise ValueError(f"fastlv: output family must be one of {FAMILIES}, got {family!r}")
