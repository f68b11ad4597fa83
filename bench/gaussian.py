"""Gaussian latent ops: eager PyTorch vs torch.compile of it vs fastlv's kernels, at the flat SRNN shape
[32, 1000, 256] and the speech shape [32, 40, 256].

- ``sample+KL``: z = mu_q + exp(logvar_q / 2) eps with fresh noise per call and KL(q || p) summed over
  the latent dimension. Eager and torch.compile draw eps with torch.randn_like inside the timed call
  (the usual eager code); fastlv draws it in the kernel.
- ``KL``: gaussian_kl with a learned prior.
- ``rsample``: gaussian_rsample, noise as in sample+KL.
- ``log_prob``: gaussian_log_prob summed over the latent dimension.
- ``precision_weighted``: the STCN posterior update in variance form.
Forward and forward+backward (gradients to every input). The bound is the bytes the fused kernels must
move over the measured copy bandwidth. Targets (issue 3): sample+KL fwd+bwd >= 4x eager and faster than
compile, KL fwd+bwd >= 1.5x compile, both within 3x of the bound at the flat shape.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import torch

from bench.common import PASSES, op_providers, time_providers
from fastlv.ops import (gaussian_kl, gaussian_kl_ref, gaussian_log_prob, gaussian_log_prob_ref, gaussian_rsample,
                        gaussian_rsample_ref, gaussian_sample_kl, gaussian_sample_kl_ref, precision_weighted,
                        precision_weighted_ref)

SHAPES = {"flat B32 T1000 D256": (32, 1000, 256), "speech B32 T40 D256": (32, 40, 256)}


def make_inputs(B, T, D, device="cpu", seed=0, scales=(1.0, 0.5, 1.0, 0.5)):
    """Leaf tensors [B, T, D] of N(0, s^2) per scale s: (mu_q, logvar_q, mu_p, logvar_p) by default."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, T, D, generator=g) * s).to(device).requires_grad_() for s in scales]


def make_variance_inputs(B, T, D, device="cpu", seed=0):
    """(mu_a, var_a, mu_b, var_b) of precision_weighted: log-variances N(0, 0.5^2)."""
    mu_a, logvar_a, mu_b, logvar_b = make_inputs(B, T, D, seed=seed)
    return [t.detach().to(device).requires_grad_() for t in (mu_a, logvar_a.exp(), mu_b, logvar_b.exp())]


def eager_sample_kl(mu_q, logvar_q, mu_p, logvar_p):
    return gaussian_sample_kl_ref(mu_q, logvar_q, mu_p, logvar_p, eps=torch.randn_like(mu_q))


def eager_rsample(mu, logvar):
    return gaussian_rsample_ref(mu, logvar, eps=torch.randn_like(mu))


class Op(NamedTuple):
    eager: Callable
    fused: Callable
    make_inputs: Callable
    # Minimum traffic of the fused kernels in [.., D] tensors and [..] row vectors: (forward, backward).
    full_tensors: tuple[int, int]
    row_vectors: tuple[int, int]
    quick_repeats: int  # the target ops get more


OPS = {
    # forward reads 4 inputs, writes z and kl [..]; backward reads grad_z, grad_kl, the 4 inputs, writes 4 grads
    "sample+KL": Op(eager_sample_kl, gaussian_sample_kl, make_inputs, (5, 9), (1, 1), 5),
    "KL": Op(gaussian_kl_ref, gaussian_kl, make_inputs, (4, 8), (1, 1), 5),
    # forward reads mu, logvar, writes z; backward reads grad_z, mu, logvar, writes 2 grads (the minimum:
    # eps regenerated, as on GPU; the CPU kernels also write and read it)
    "rsample": Op(eager_rsample, gaussian_rsample, partial(make_inputs, scales=(1.0, 0.5)), (3, 5), (0, 0), 3),
    # forward reads z, mu, logvar, writes log p [..]; backward reads grad [..] and the 3 inputs, writes 3 grads
    "log_prob": Op(gaussian_log_prob_ref, gaussian_log_prob, partial(make_inputs, scales=(1.0, 1.0, 0.5)), (3, 6),
                   (1, 1), 3),
    # forward reads 4 inputs, writes mu, var; backward reads 2 grads and the 4 inputs, writes 4 grads
    "precision_weighted": Op(precision_weighted_ref, precision_weighted, make_variance_inputs, (6, 10), (0, 0), 3),
}


def bytes_moved(B, T, D, op: Op, backward: bool, itemsize: int = 4) -> int:
    """Minimum traffic of one forward (+ backward) of the fused kernels."""
    passes = 2 if backward else 1
    return (B * T * D * sum(op.full_tensors[:passes]) + B * T * sum(op.row_vectors[:passes])) * itemsize


def run(quick: bool = False, device: str = "cpu", bandwidth: float | None = None) -> list[dict]:
    rows = []
    for op_name, op in OPS.items():
        compiled = torch.compile(op.eager)
        for shape_name, shape in SHAPES.items():
            inputs = op.make_inputs(*shape, device=device)

            for pass_name, run_pass in PASSES.items():
                providers = op_providers(run_pass, inputs, op.eager, compiled, op.fused, device)
                times = time_providers(providers, repeats=op.quick_repeats if quick else 15, device=device)
                bound = bytes_moved(*shape, op, pass_name != "fwd") / bandwidth if bandwidth else None
                for name, t in times.items():
                    rows.append({"op": f"gaussian {op_name}", "shape": shape_name, "pass": pass_name,
                                 "provider": name, "ms": t * 1e3, "x vs eager": times["eager"] / t,
                                 "x vs compile": times["compile"] / t, "bound ms": bound * 1e3 if bound else None})
    return rows
