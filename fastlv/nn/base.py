"""The interface every sequence model of fastlv.nn shares, so the trainer and the benchmarks treat
them alike."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class SequenceOutput:
    """Per-sequence terms of one forward pass over x ``[B, T, D]`` (all ``[B]``, summed over steps and
    dimensions, padded steps excluded).

    log_likelihood: reconstruction term E_q[log p(x | z)] (the exact log-likelihood for deterministic
        models, for which ``kl`` is zero).
    kl: total KL(q || p) over all latent layers; ``kl_layers`` holds it per layer (name -> ``[B]``).
    aux: extra training terms already weighted (e.g. Z-Forcing's auxiliary cost), added to the loss.
    """
    log_likelihood: Tensor
    kl: Tensor
    kl_layers: dict[str, Tensor] = field(default_factory=dict)
    aux: Tensor | None = None

    @property
    def elbo(self) -> Tensor:
        """Evidence lower bound per sequence (= log-likelihood for deterministic models)."""
        return self.log_likelihood - self.kl

    def loss(self, kl_weight: float = 1.0, scale: float = 1.0) -> Tensor:
        """Scalar training loss: mean over the batch of -(log p - kl_weight * KL) - aux, divided by
        ``scale`` (Dai et al. divide by steps x 200 to report a per-sample loss)."""
        per_sequence = -(self.log_likelihood - kl_weight * self.kl)
        if self.aux is not None:
            per_sequence = per_sequence - self.aux
        return per_sequence.mean() / scale


class SequenceModel(nn.Module):
    """Base class: ``forward(x, mask=None) -> SequenceOutput``; ``sample(steps, batch_size=1)``;
    latent models also implement ``iwae(x, k, mask=None) -> [B]`` (importance-weighted bound)."""
    is_latent = False

    def forward(self, x: Tensor, mask: Tensor | None = None) -> SequenceOutput:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, steps: int, batch_size: int = 1) -> Tensor:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
