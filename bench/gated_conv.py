"""WaveNet block and incremental generation: eager nn.Conv1d reference vs torch.compile of it vs fastlv.

1. One WaveNet block (gated dilated causal conv + 1x1 residual + 1x1 skip), B=32, C=256, T=1000, k=2,
   dilation 1 and 64, forward and forward+backward. The block is GEMM-bound: rows report the achieved
   GFLOP/s and the bound from the machine's sgemm rate (a large torch.mm timed in the same run).
2. Generation with a 25-block TCN (5 levels x dilations 1..16, STCN speech), B=1, C=128: 4000 steps of
   incremental generation (per-block queues) vs re-running the full forward over the prefix at every
   step (extrapolated from timed lengths: its cost is linear in the length) and vs re-running it over a
   receptive-field window per step.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bench.common import time_providers
from fastlv.nn import TCN, WaveNetBlock

BLOCK_SHAPE = dict(B=32, C=256, T=1000, k=2)
DILATIONS = (1, 64)
GEN = dict(B=1, C=128, levels=5, blocks_per_level=5, steps=4000)


def reference_block(x, weight, bias, res_weight, res_bias, skip_weight, skip_bias, dilation):
    """The eager baseline: left-padded nn.Conv1d-style convolutions (functional form)."""
    pre = F.conv1d(F.pad(x, ((weight.shape[-1] - 1) * dilation, 0)), weight, bias, dilation=dilation)
    f, g = pre.chunk(2, 1)
    h = torch.tanh(f) * torch.sigmoid(g)
    return x + F.conv1d(h, res_weight, res_bias), F.conv1d(h, skip_weight, skip_bias)


def block_flops(B, C, T, k, backward: bool) -> float:
    """GEMM FLOPs: gated conv (2C x C x k) + residual and skip 1x1 convs (2C x C), per step; backward 2x."""
    forward = 2.0 * B * T * (2 * C * C * k + 2 * C * C)
    return 3 * forward if backward else forward


def sgemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 torch.mm (MKL sgemm on all threads), best of a few."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _block_rows(quick: bool, device: str, sgemm: float) -> list[dict]:
    B, C, T, k = BLOCK_SHAPE.values()
    rows = []
    compiled = torch.compile(reference_block)
    for dilation in DILATIONS:
        block = WaveNetBlock(C, C, k, dilation, skip_channels=C).to(device)
        x = torch.randn(B, C, T, device=device, requires_grad=True)
        ref_params = [block.weight, block.bias, block.res.weight[:, :, None], block.res.bias,
                      block.skip.weight[:, :, None], block.skip.bias]
        ref_params = [p.detach().clone().requires_grad_() for p in ref_params]
        leaves = {"eager": [x, *ref_params], "compile": [x, *ref_params], "fastlv-cpp": [x, *block.parameters()]}

        def run(name, fn, backward):
            def call():
                if backward:
                    residual, skip = fn()
                    torch.autograd.grad(residual.sum() + skip.sum(), leaves[name])
                else:
                    with torch.no_grad():
                        fn()
            return call

        calls = {"eager": lambda: reference_block(x, *ref_params, dilation),
                 "compile": lambda: compiled(x, *ref_params, dilation),
                 "fastlv-cpp": lambda: block(x)}
        for pass_name, backward in (("fwd", False), ("fwd+bwd", True)):
            providers = {name: run(name, fn, backward) for name, fn in calls.items()}
            if device != "cpu":
                del providers["fastlv-cpp"]
            times = time_providers(providers, repeats=3 if quick else 10, warmup=1, device=device)
            flops = block_flops(B, C, T, k, backward)
            for name, t in times.items():
                rows.append({"op": "wavenet_block", "shape": f"B{B} C{C} T{T} k{k} d{dilation}", "pass": pass_name,
                             "provider": name, "ms": t * 1e3, "x vs eager": times["eager"] / t,
                             "x vs compile": times["compile"] / t, "bound ms": flops / sgemm * 1e3,
                             "GFLOP/s": flops / t / 1e9, "sgemm GFLOP/s": sgemm / 1e9})
    return rows


@torch.no_grad()
def _generation_rows(quick: bool, device: str) -> list[dict]:
    B, C, levels, per_level, steps = GEN.values()
    torch.manual_seed(0)
    tcn = TCN(C, C, levels, per_level).to(device).eval()
    x = torch.randn(B, C, steps, device=device)

    # Incremental: per-block queues; quick mode times the first 500 steps (constant cost per step).
    timed_steps = 500 if quick else steps
    state = tcn.init_state(B)
    start = time.perf_counter()
    for t in range(timed_steps):
        tcn.step(x[:, :, t], state)
    incremental = (time.perf_counter() - start) * steps / timed_steps

    # Full forward over the prefix x[:, :, :t + 1] at every step: cost a + b * t, fitted from timed lengths.
    lengths = [250, 1000, 2000, 4000] if quick else [250, 500, 1000, 2000, 3000, 4000]
    costs = [min(_timed(lambda: tcn(x[:, :, :n])) for _ in range(2)) for n in lengths]
    n_mean = sum(lengths) / len(lengths)
    c_mean = sum(costs) / len(costs)
    slope = sum((n - n_mean) * (c - c_mean) for n, c in zip(lengths, costs)) / sum((n - n_mean) ** 2 for n in lengths)
    intercept = c_mean - slope * n_mean
    full_prefix = sum(max(intercept + slope * (t + 1), 0.0) for t in range(steps))

    # Full forward over the receptive-field window ending at each step (constant cost per step).
    window = tcn.receptive_field
    per_window = min(_timed(lambda: tcn(x[:, :, :window])) for _ in range(20))
    windowed = per_window * steps

    shape = f"TCN {levels}x{per_level} B{B} C{C} {steps} steps"
    rows = []
    for name, total in (("full forward per step", full_prefix), (f"RF-window ({window}) forward per step", windowed),
                        ("fastlv incremental", incremental)):
        rows.append({"op": "tcn_generation", "shape": shape, "pass": "generate", "provider": name,
                     "ms": total * 1e3, "x vs eager": full_prefix / total})
    return rows


def run(quick: bool = False, device: str = "cpu", bandwidth: float | None = None) -> list[dict]:
    sgemm = sgemm_rate()
    # tcn_generation rows: "x vs eager" is the speedup over re-running the full forward per step
    return _block_rows(quick, device, sgemm) + _generation_rows(quick, device)
