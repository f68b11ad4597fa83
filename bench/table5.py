"""Table 5 of Dai et al. 2019 (Appendix A): training time of the simplified SRNN vs the Z-Forcing SRNN.

Paper (TIMIT, 40k training steps, batch 32, one GPU):

    Z-F-SRNN       T=40   L=200  17.44M   1.38 h      Sim-F-SRNN     T=40   L=200  17.45M   0.96 h
    Z-SRNN-flat    T=1000 L=1    16.98M  62.86 h      Sim-SRNN-flat  T=1000 L=1    16.78M  20.62 h

so Sim/Z = 0.70 (factorized) and 0.33 (flat). The simplified model needs no per-step loop (its
posterior is factorized over steps, all recurrences are one fused LSTM call each); Z-Forcing feeds z_t
into the forward LSTM, a per-step loop by construction.

This script builds the four models from fastlv.nn (``--full``: the paper's sizes, parameter counts
printed next to Table 5's), times a full training step (forward, backward, Adam update; median over
repeats, models interleaved) at batch 32 and extrapolates to 40k steps. Each model runs twice: with
fastlv's fused ops and with the pure-PyTorch reference ops (the same module under
``fastlv.use_backend("ref")``). Quick mode (default) keeps T, L and batch but shrinks the widths
(stated in the output) so it finishes in about 3 minutes on 2 CPU cores.

``--train-steps N`` then (after the timing) trains a fresh copy of each model for N updates of
fastlv.train's recipe at batch 32 with fastlv's fused ops, on training chunks of the model's T
(``--data``, default the real speech set; the flat models see the same frames flattened), and adds
two columns: the ELBO of the validation split in nats per sequence (whole utterances, the same for
all four models, by fastlv.train.evaluate) and the wall time of the N updates. On the speech set the
flat models' evaluation dominates: its longest validation utterance is 2407 frames, 481k flat steps.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

import fastlv
import fastlv.data as D
import fastlv.train
from bench.common import format_table, machine, save_results
from fastlv.nn import FlatSRNN, SimplifiedSRNN, ZForcingSRNN

PAPER_STEPS = 40_000
QUICK_WIDTHS = dict(d_emb=64, d_rnn=128, d_mlp=64, d_latent=32)
HELD_OUT = "valid"
ELBO_COLUMN = "held-out ELBO/seq"


@dataclass
class Entry:
    name: str
    model: type
    config: str
    frames: int  # frames of 200 samples per sequence: T = frames (factorized) or frames * 200 (flat)
    flat: bool
    paper_params: float  # millions
    paper_hours: float


ENTRIES = [
    Entry("Z-F-SRNN", ZForcingSRNN, "timit", 40, False, 17.44, 1.38),
    Entry("Sim-F-SRNN", SimplifiedSRNN, "timit", 40, False, 17.45, 0.96),
    Entry("Z-SRNN-flat", ZForcingSRNN, "timit_flat", 5, True, 16.98, 62.86),
    Entry("Sim-SRNN-flat", FlatSRNN, "timit", 5, True, 16.78, 20.62),
]
PAIRS = {"factorized": ("Sim-F-SRNN", "Z-F-SRNN", 0.70), "flat": ("Sim-SRNN-flat", "Z-SRNN-flat", 0.33)}


def build(entry: Entry, full: bool, widths: dict = QUICK_WIDTHS) -> torch.nn.Module:
    torch.manual_seed(0)
    return entry.model.from_config(entry.config, **({} if full else widths))


def training_step(model, optimizer, x):
    optimizer.zero_grad(set_to_none=True)
    loss = model(x).loss(kl_weight=1.0, scale=x.shape[1] * x.shape[2])  # per-sample loss, as Dai et al.
    loss.backward()
    optimizer.step()
    return loss


def time_steps(setups: dict[str, tuple], repeats: int) -> dict[str, float]:
    """Median seconds per training step of each (model, optimizer, x, backend), interleaved."""
    times = {name: [] for name in setups}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (model, optimizer, x, backend) in setups.items():
            with fastlv.use_backend(backend):
                start = time.perf_counter()
                training_step(model, optimizer, x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def run(full: bool = False, repeats: int | None = None, batch: int = 32) -> list[dict]:
    repeats = repeats or (5 if full else 7)
    setups, models = {}, {}
    for entry in ENTRIES:
        model = build(entry, full)
        models[entry.name] = model
        x = torch.randn(batch, entry.frames, 200, generator=torch.Generator().manual_seed(1))
        for backend in (None, "ref"):  # None: fastlv's default kernels for the device
            # one optimizer per timed variant so the two runs do not share Adam state
            setups[(entry.name, backend)] = (model, torch.optim.Adam(model.parameters(), lr=1e-4), x, backend)
    seconds = time_steps(setups, repeats)
    rows = []
    for entry in ENTRIES:
        fused, ref = seconds[(entry.name, None)], seconds[(entry.name, "ref")]
        steps = entry.frames * 200 if entry.flat else entry.frames
        rows.append({"Model": entry.name, "T": steps, "L": 1 if entry.flat else 200,
                     "#Param": f"{models[entry.name].num_parameters() / 1e6:.2f}M",
                     "paper #Param": f"{entry.paper_params:.2f}M",
                     "Time (h)": fused * PAPER_STEPS / 3600, "Time ref ops (h)": ref * PAPER_STEPS / 3600,
                     "fastlv vs ref ops": ref / fused, "step ms": fused * 1e3, "paper Time (h)": entry.paper_hours})
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Sim/Z time ratio per family, measured (fastlv ops and reference ops) next to the paper's."""
    by_name = {row["Model"]: row for row in rows}
    out = []
    for family, (sim, z, paper) in PAIRS.items():
        out.append({"family": family, "Sim/Z (fastlv ops)": by_name[sim]["Time (h)"] / by_name[z]["Time (h)"],
                    "Sim/Z (ref ops)": by_name[sim]["Time ref ops (h)"] / by_name[z]["Time ref ops (h)"],
                    "paper Sim/Z": paper})
    return out


def check_data(data: str) -> None:
    """Fail before the timing if ``data`` is not installed (the loader's error names the install command)
    or is not speech-layout frames of 200 samples, the models' input."""
    frame_size = D.load(data, HELD_OUT).dim
    if frame_size != 200:
        raise ValueError(f"--data {data!r} has frames of {frame_size} values; the Table 5 models take 200-sample "
                         "speech frames (speech, pocketsphinx, synthetic)")


def train_and_evaluate(data: str, steps: int, full: bool = False, batch: int = 32, entries: list[Entry] = ENTRIES,
                       widths: dict = QUICK_WIDTHS, **data_options) -> dict[str, dict]:
    """Train a fresh copy of each model for ``steps`` updates of fastlv.train's recipe (its defaults) on
    batches of ``batch`` training chunks of ``entry.frames`` frames, then evaluate the ELBO of the
    held-out split. ``data_options`` go to fastlv.data.load. Returns {model name: its extra cells}."""
    held_out = D.load(data, HELD_OUT, **data_options)
    procs = fastlv.train.Processes()  # this process alone, on the CPU
    cells = {}
    for entry in entries:
        train_split = D.load(data, "train", seq_len=entry.frames, **data_options)
        recipe = fastlv.train.build_parser().parse_args(
            ["--model", entry.model.__name__, "--steps", str(steps), "--batch-size", str(batch)])
        model = build(entry, full, widths)
        optimizer, scheduler = fastlv.train.make_optimizer(model, recipe)
        order = fastlv.train.BatchOrder(len(train_split), batch, recipe.seed)
        start = time.perf_counter()
        for step in range(steps):  # fastlv's default (fused) ops, as in the timed "Time (h)" column
            fastlv.train.train_on_batch(model, optimizer, train_split, order.next(), step, recipe, procs)
            scheduler.step()
        seconds = time.perf_counter() - start
        metrics = fastlv.train.evaluate(model, held_out, procs, batch_size=recipe.eval_batch_size,
                                        seed=recipe.seed)
        cells[entry.name] = {ELBO_COLUMN: metrics["elbo_per_sequence"], "train s": seconds}
    return cells


COLUMNS = ["Model", "T", "L", "#Param", "paper #Param", "Time (h)", "Time ref ops (h)", "fastlv vs ref ops",
           "step ms", "paper Time (h)"]
TRAIN_COLUMNS = [ELBO_COLUMN, "train s"]


def main(full: bool = False, repeats: int | None = None, train_steps: int = 0, data: str = "speech"
         ) -> tuple[list[dict], list[dict]]:
    if train_steps:
        check_data(data)
    info = machine()
    mode = "full (paper sizes)" if full else f"quick (paper T, L, batch 32; widths reduced to {QUICK_WIDTHS})"
    print(f"# Table 5 reproduction, {mode}; time = median training step (fwd+bwd+Adam) x {PAPER_STEPS} steps")
    header = "machine: " + ", ".join(f"{k}={v}" for k, v in info.items())
    if train_steps:
        header += (f"\n{ELBO_COLUMN}: ELBO of the {data} {HELD_OUT} split in nats per sequence (whole utterances) "
                   f"after {train_steps} training steps (batch 32, fastlv.train's recipe, fused ops); "
                   "train s: wall time of those steps")
    print(header, flush=True)
    rows = run(full, repeats)
    columns = COLUMNS
    if train_steps:
        cells = train_and_evaluate(data, train_steps, full)
        for row in rows:
            row.update(cells[row["Model"]])
        columns = COLUMNS + TRAIN_COLUMNS
    ratio_rows = ratios(rows)
    table = format_table(rows, columns) + "\n\n" + format_table(ratio_rows, list(ratio_rows[0]))
    print(table, flush=True)
    training = {"steps": train_steps, "data": data, "split": HELD_OUT, "unit": "nats per sequence"} \
        if train_steps else None
    save_results("table5", {"machine": info, "mode": mode, "training": training, "rows": rows, "ratios": ratio_rows},
                 f"{mode}\n{header}\n\n{table}")
    return rows, ratio_rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the paper's model sizes")
    parser.add_argument("--repeats", type=int, help="timed training steps per model and backend")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="then train each model this many steps and add its held-out ELBO (0: off)")
    parser.add_argument("--data", default="speech", help="fastlv.data set of --train-steps")
    args = parser.parse_args()
    main(args.full, args.repeats, args.train_steps, args.data)
