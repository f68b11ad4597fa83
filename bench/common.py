"""Timing helpers shared by every benchmark: providers run interleaved in one process, medians,
the machine's memory bandwidth and peak extra memory, all measured in the same run."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from fastlv._backend import _C
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "fastlv_cpu_capability": getattr(_C, "cpu_capability", "extension not loaded"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def sync(device: str = "cpu"):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fastlv_providers(device: str) -> dict[str, str]:
    """fastlv backends to time on this device, as provider name -> backend: the C++ kernels on CPU;
    CUDA and Triton on a GPU."""
    import fastlv
    names = ["cpp"] if device == "cpu" else ["cuda", "triton"]
    return {f"fastlv-{b}": b for b in names if fastlv.backends(device)[b] == "available"}


def forward_pass(fn: Callable, inputs: list[torch.Tensor]):
    with torch.no_grad():
        fn(*inputs)


def forward_backward_pass(fn: Callable, inputs: list[torch.Tensor]):
    """Forward, then the gradients of the sum of every output w.r.t. the inputs."""
    out = fn(*inputs)
    outputs = out if isinstance(out, tuple) else (out,)
    torch.autograd.grad(sum(o.sum() for o in outputs), inputs)


PASSES = {"fwd": forward_pass, "fwd+bwd": forward_backward_pass}


def op_providers(run_pass: Callable, inputs: list[torch.Tensor], eager: Callable, compiled: Callable,
                 fused: Callable, device: str) -> dict[str, Callable[[], object]]:
    """One pass of an op per provider: the eager reference, torch.compile of it, and the fused op on
    each fastlv backend that runs on ``device``."""
    import fastlv

    def on_backend(backend):
        def call():
            with fastlv.use_backend(backend):
                run_pass(fused, inputs)
        return call
    providers = {"eager": lambda: run_pass(eager, inputs), "compile": lambda: run_pass(compiled, inputs)}
    providers.update({name: on_backend(backend) for name, backend in fastlv_providers(device).items()})
    return providers


def time_providers(providers: dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 2,
                   device: str = "cpu") -> dict[str, float]:
    """Median seconds per call of each provider. Providers are interleaved (round robin) so machine
    noise hits them alike."""
    for fn in providers.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in providers}
    for _ in range(repeats):
        for name, fn in providers.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def memory_bandwidth(size_mb: int = 256, repeats: int = 7) -> float:
    """Bytes per second of a large out-of-cache copy (read + write), as torch's copy kernel gets it."""
    src = torch.empty(size_mb * 2**20 // 4)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


_PEAK_RSS_SCRIPT = """
import ctypes, gc, os, threading, time
import torch, {module}
{setup}
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed setup memory, so new allocations show in RSS
base = peak = rss()
done = False
def watch():
    global peak
    while not done:
        peak = max(peak, rss())
        time.sleep(0.0005)
watcher = threading.Thread(target=watch)
watcher.start()
{call}
done = True
watcher.join()
print(max(peak, rss()) - base)
"""


def peak_extra_memory(module: str, setup: str, call: str) -> int:
    """Peak resident memory (bytes) that ``call`` adds on top of what ``setup`` left allocated, in a
    fresh process (Linux), sampled every 0.5 ms while it runs; torch ops release the GIL, so the
    sampling thread keeps running. CPU torch keeps no allocator statistics, hence RSS."""
    code = _PEAK_RSS_SCRIPT.format(module=module, setup=setup, call=call)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())))
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return int(out.stdout.split()[-1])


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of the rows (missing cells empty)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def save_results(name: str, payload: dict, markdown: str, out_dir: str = "bench/results"):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(markdown + "\n")
