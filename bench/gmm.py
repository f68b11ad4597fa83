"""GMM log-likelihood: eager reference vs torch.compile of it vs fastlv's kernels, forward and
forward+backward, at the speech shape (B=32, T=40, L=200, K=20) and the flat shape (B=32, T=8000,
L=1, K=20). Prints medians, ratios, peak extra memory and the memory-bandwidth lower bound."""
from __future__ import annotations

import torch

from bench.common import PASSES, op_providers, peak_extra_memory, time_providers
from fastlv.ops import gmm_log_prob, gmm_log_prob_ref

SHAPES = {"speech B32 T40 L200 K20": (32, 40, 200, 20), "flat B32 T8000 L1 K20": (32, 8000, 1, 20)}


def make_inputs(B, T, L, K, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, L, generator=g)
    params = [torch.randn(B, T, L, K, generator=g) * s for s in (1.0, 1.0, 0.5)]
    return [t.to(device).requires_grad_() for t in (x, *params)]


def bytes_moved(B, T, L, K, backward: bool, itemsize: int = 4) -> int:
    """Minimum traffic: read x and 3 [.., K] inputs, write log p (+ lse); backward reads them again
    plus the saved per-element values and writes the 4 gradients."""
    n, nk = B * T * L, B * T * L * K
    forward = (n + 3 * nk + 2 * n) * itemsize
    return forward + ((n + 3 * nk + 3 * n) + (n + 3 * nk)) * itemsize if backward else forward


def run(quick: bool = False, device: str = "cpu", bandwidth: float | None = None) -> list[dict]:
    rows = []
    compiled = torch.compile(gmm_log_prob_ref)
    for shape_name, shape in SHAPES.items():
        inputs = make_inputs(*shape, device=device)

        for pass_name, run_pass in PASSES.items():
            providers = op_providers(run_pass, inputs, gmm_log_prob_ref, compiled, gmm_log_prob, device)
            times = time_providers(providers, repeats=5 if quick else 15, device=device)
            bound = bytes_moved(*shape, backward=pass_name != "fwd") / bandwidth if bandwidth else None
            for name, t in times.items():
                rows.append({"op": "gmm_log_prob", "shape": shape_name, "pass": pass_name, "provider": name,
                             "ms": t * 1e3, "x vs eager": times["eager"] / t, "x vs compile": times["compile"] / t,
                             "bound ms": bound * 1e3 if bound else None})
    if device == "cpu":
        _add_peak_memory(rows)
    return rows


def _add_peak_memory(rows: list[dict]):
    """Peak extra memory of one forward+backward at the speech shape, per provider (after a warm-up
    call, so lazy imports and compilation are not counted)."""
    setup = ("from bench.gmm import make_inputs; from fastlv.ops import gmm_log_prob, gmm_log_prob_ref\n"
             f"inputs = make_inputs(*{SHAPES['speech B32 T40 L200 K20']})\n"
             "def step(fn): return torch.autograd.grad(fn(*inputs).sum(), inputs)\n")
    functions = {"eager": "gmm_log_prob_ref", "compile": "torch.compile(gmm_log_prob_ref)", "fastlv-cpp": "gmm_log_prob"}
    for provider, fn in functions.items():
        mb = peak_extra_memory("fastlv", setup + f"fn = {fn}; step(fn)", "grads = step(fn)") / 2**20
        for row in rows:
            if row["provider"] == provider and row["pass"] == "fwd+bwd" and row["shape"].startswith("speech"):
                row["peak MB"] = mb
