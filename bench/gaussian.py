"""Gaussian latent step: eager PyTorch vs torch.compile of it vs fastlv's kernels, at the flat SRNN shape
[32, 1000, 256] and the speech shape [32, 40, 256].

- ``sample+KL``: z = mu_q + exp(logvar_q / 2) eps with fresh noise per call and KL(q || p) summed over
  the latent dimension. Eager and torch.compile draw eps with torch.randn_like inside the timed call
  (the usual eager code); fastlv draws it in the kernel.
- ``KL``: gaussian_kl with a learned prior.
Forward and forward+backward (gradients to all four parameter tensors). The bound is the bytes the
fused kernels must move over the measured copy bandwidth. Targets (issue 3): sample+KL fwd+bwd >= 4x
eager and faster than compile, KL fwd+bwd >= 1.5x compile, both within 3x of the bound at the flat shape.
"""
from __future__ import annotations

import torch

from bench.common import PASSES, op_providers, time_providers
from fastlv.ops import gaussian_kl, gaussian_kl_ref, gaussian_sample_kl, gaussian_sample_kl_ref

SHAPES = {"flat B32 T1000 D256": (32, 1000, 256), "speech B32 T40 D256": (32, 40, 256)}


def make_inputs(B, T, D, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, T, D, generator=g) * s).to(device).requires_grad_() for s in (1.0, 0.5, 1.0, 0.5)]


def eager_sample_kl(mu_q, logvar_q, mu_p, logvar_p):
    return gaussian_sample_kl_ref(mu_q, logvar_q, mu_p, logvar_p, eps=torch.randn_like(mu_q))


def bytes_moved(B, T, D, op: str, backward: bool, itemsize: int = 4) -> int:
    """Minimum traffic of the fused kernels. sample+KL: forward reads 4 [.., D] inputs, writes z and kl [..];
    backward reads grad_z, grad_kl, the 4 inputs and writes 4 gradients. KL: the same without z/grad_z."""
    nd, n = B * T * D, B * T
    if op == "sample+KL":
        forward, backward_bytes = 5 * nd + n, 9 * nd + n
    else:
        forward, backward_bytes = 4 * nd + n, 8 * nd + n
    return (forward + (backward_bytes if backward else 0)) * itemsize


def run(quick: bool = False, device: str = "cpu", bandwidth: float | None = None) -> list[dict]:
    rows = []
    ops = {"sample+KL": (eager_sample_kl, gaussian_sample_kl), "KL": (gaussian_kl_ref, gaussian_kl)}
    for op_name, (eager_fn, fused_fn) in ops.items():
        compiled = torch.compile(eager_fn)
        for shape_name, shape in SHAPES.items():
            inputs = make_inputs(*shape, device=device)

            for pass_name, run_pass in PASSES.items():
                providers = op_providers(run_pass, inputs, eager_fn, compiled, fused_fn, device)
                times = time_providers(providers, repeats=5 if quick else 15, device=device)
                bound = bytes_moved(*shape, op_name, pass_name != "fwd") / bandwidth if bandwidth else None
                for name, t in times.items():
                    rows.append({"op": f"gaussian {op_name}", "shape": shape_name, "pass": pass_name,
                                 "provider": name, "ms": t * 1e3, "x vs eager": times["eager"] / t,
                                 "x vs compile": times["compile"] / t, "bound ms": bound * 1e3 if bound else None})
    return rows
