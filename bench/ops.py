"""Every op's provider comparison (eager reference, torch.compile of it, fastlv kernels) in one run,
with the machine's measured memory bandwidth; writes bench/results/ops.{md,json,png}."""
from __future__ import annotations

import argparse
import importlib

import torch

from bench.common import format_table, machine, memory_bandwidth, save_results

# One module per op family; each has run(quick, device, bandwidth) -> rows.
OP_BENCHES = ["bench.gmm", "bench.gaussian", "bench.gated_conv", "bench.masked_linear"]
COLUMNS = ["op", "shape", "pass", "provider", "ms", "x vs eager", "x vs compile", "bound ms", "peak MB", "GFLOP/s",
           "sgemm GFLOP/s"]


def main(quick: bool = True, device: str = "cpu", only: list[str] | None = None) -> list[dict]:
    benches = [name for name in OP_BENCHES if not only or any(o in name for o in only)]
    if not benches:  # e.g. --only table5
        return []
    info = machine()
    bandwidth = memory_bandwidth()
    info["copy bandwidth GB/s"] = round(bandwidth / 1e9, 1)
    print(f"# Op benchmarks ({'quick' if quick else 'full'}), device={device}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    rows = []
    for name in benches:
        module = importlib.import_module(name)
        new_rows = module.run(quick=quick, device=device, bandwidth=bandwidth)
        print(format_table(new_rows, COLUMNS), flush=True)
        rows += new_rows
    markdown = "machine: " + ", ".join(f"{k}={v}" for k, v in info.items()) + "\n\n" + format_table(rows, COLUMNS)
    save_results("ops", {"machine": info, "rows": rows}, markdown)
    plot(rows)
    return rows


def plot(rows: list[dict], path: str = "bench/results/ops.png"):
    """Bar chart: speedup of each provider over eager, per op/shape/pass."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = sorted({(r["op"], r["shape"], r["pass"]) for r in rows}, key=str)
    providers = sorted({r["provider"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases)), 4))
    width = 0.8 / len(providers)
    for i, provider in enumerate(providers):
        speedups = [next((r["x vs eager"] for r in rows if (r["op"], r["shape"], r["pass"]) == case
                          and r["provider"] == provider), 0) for case in cases]
        ax.bar([c + i * width for c in range(len(cases))], speedups, width, label=provider)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))])
    ax.set_xticklabels(["\n".join(case) for case in cases], fontsize=6)
    ax.set_ylabel("speedup over eager PyTorch")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="more repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="substrings of bench module names to run")
    args = parser.parse_args()
    main(quick=not args.full, device=args.device, only=args.only)
