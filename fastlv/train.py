"""Train any :mod:`fastlv.nn` sequence model on any :mod:`fastlv.data` set.

    python -m fastlv.train --model SimplifiedSRNN --model-args d_rnn=64,d_z=16 --data pocketsphinx \\
        --steps 2000 --batch-size 32 --out runs/srnn
    torchrun --nproc_per_node 4 -m fastlv.train ...same arguments...   # data-parallel (DDP)
    python -m fastlv.train ...same arguments... --resume                # continue from runs/srnn/checkpoint.pt

Recipe (Dai et al. ICML 2019, Appendix C): Adam at lr 1e-3, cosine-annealed to 1e-6 over ``--steps``
updates; the KL weight starts at 0.2 and grows by 5e-5 per update up to 1 (Goyal et al. 2017);
gradient-norm clipping (0.5 in the re-examination code). The training loss is the negative ELBO
averaged over the batch and divided by ``--loss-scale``: ``sample`` (steps x frame size, the
re-examination code's per-sample loss, default), ``step`` or ``sequence`` (Z-Forcing's code: summed
over time and dimensions). A non-finite loss or gradient norm skips the update (weights and optimizer
state untouched) and is counted in the ``skipped`` column of the log.

Evaluation: the validation split every ``--valid-every`` updates and, at the end, the test split with
the weights of the best validation ELBO: the ELBO (the exact log-likelihood for deterministic models)
and, for latent models, the importance-weighted bound with ``--iw-k`` samples (Burda et al. 2015).
Units are nats of the data as ``fastlv.data`` returns it (speech: normalized by the training std), as
the papers report them: per step for music (Dai et al. Table 4, after Boulanger-Lewandowski et al.), per
sequence otherwise (speech: Dai et al. Table 4, STCN Table 1; handwriting: Dai et al. Sec. 5.1 after Chung
et al.; MNIST: nats per image, Z-Forcing Table 1).

Outputs in ``--out``: ``checkpoint.pt`` (latest), ``best.pt`` (best validation ELBO), ``train.csv``,
``valid.csv``, ``test.json``, ``curves.png`` and ``tb/`` (TensorBoard, when it is installed).
Checkpoints are written atomically and load with ``torch.load(..., weights_only=True)``; they hold
everything needed to continue bit-exactly: model, optimizer, scheduler, step, random states of every
process and the position in the data order. :mod:`fastlv.sample` generates from them.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes an equal slice of every global
batch of ``--batch-size`` sequences and DistributedDataParallel averages the gradients (NCCL on GPUs,
gloo on CPUs), so the updates equal single-process training with the same global batch.
"""
from __future__ import annotations

import argparse
import ast
import csv
import importlib
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

import fastlv.data as D
import fastlv.nn
from fastlv.nn import SequenceModel

CHECKPOINT_FORMAT = 1
# Constructor arguments that receive the data's frame size when the command line does not set them.
DATA_DIM_ARGS = ("x_dim", "d_x", "input_dim", "d_input", "in_features", "frame_size", "dim")
# Observation family of fastlv.nn.heads for each data kind (models with an ``output`` argument).
DEFAULT_OUTPUT = {"music": "bernoulli", "digits": "bernoulli", "handwriting": "pen_gmm"}
# Arguments that must not change between a run and its --resume (the rest, e.g. --stop-at, may).
RUN_DEFINING_ARGS = ("model", "config", "model_args", "data", "data_args", "steps", "batch_size", "lr", "lr_min",
                     "adam_eps", "kl_start", "kl_increment", "clip", "loss_scale", "seed")


# ------------------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastlv.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="class name in fastlv.nn (e.g. SimplifiedSRNN), or module.path:ClassName")
    p.add_argument("--config", default=None, help="named configuration of the model (Class.CONFIGS), e.g. timit")
    p.add_argument("--model-args", default="", help="constructor keywords, e.g. d_rnn=64,d_latent=16")
    p.add_argument("--data", default="synthetic", help=f"fastlv.data set: {sorted(D.SOURCES)}")
    p.add_argument("--data-args", default="", help="fastlv.data.load keywords, e.g. seq_len=40")
    p.add_argument("--out", default=None, help="output folder (default runs/<model>-<data>)")
    p.add_argument("--steps", type=int, default=40000, help="updates; the cosine schedule spans them")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (all processes together)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-min", type=float, default=1e-6, help="end of the cosine schedule")
    p.add_argument("--adam-eps", type=float, default=1e-8, help="Z-Forcing's code uses 1e-5")
    p.add_argument("--kl-start", type=float, default=0.2, help="KL weight at step 0")
    p.add_argument("--kl-increment", type=float, default=5e-5, help="KL weight increase per update")
    p.add_argument("--clip", type=float, default=0.5, help="gradient-norm clip (0: none)")
    p.add_argument("--loss-scale", choices=("sample", "step", "sequence"), default="sample",
                   help="divide the per-sequence loss by steps x frame size, by steps, or by 1")
    p.add_argument("--valid-every", type=int, default=1000, help="updates between validations")
    p.add_argument("--checkpoint-every", type=int, default=None, help="default: --valid-every")
    p.add_argument("--log-every", type=int, default=10, help="updates between rows of train.csv")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--iw-k", type=int, default=10,
                   help="samples of the test importance-weighted bound (0: skip); its batch is "
                        "eval-batch-size // iw-k sequences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--stop-at", type=int, default=None,
                   help="end this invocation after this many updates (checkpoint saved; resume later)")
    p.add_argument("--find-unused-parameters", action="store_true",
                   help="DDP option for models with parameters the loss does not use")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    return p


def split_top_level(text: str) -> list[str]:
    """Split ``a=1,b=(2,3)`` on the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [s.strip() for s in parts if s.strip()]


def parse_kwargs(text: str) -> dict:
    """``"d_rnn=64,full_frame=True,name=x"`` -> ``{"d_rnn": 64, "full_frame": True, "name": "x"}``
    (values are Python literals; anything else stays a string)."""
    kwargs = {}
    for item in split_top_level(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"expected key=value, got {item!r} in {text!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return kwargs


# ---------------------------------------------------------------------------------------- building

def model_class(name: str) -> type:
    """A class of fastlv.nn by name, or ``module.path:ClassName``."""
    if ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        cls = getattr(fastlv.nn, name, None)
        if cls is None:
            known = sorted(n for n, c in vars(fastlv.nn).items()
                           if isinstance(c, type) and issubclass(c, SequenceModel) and c is not SequenceModel)
            raise ValueError(f"--model {name!r} is not in fastlv.nn; sequence models there: {known}")
    if not (isinstance(cls, type) and issubclass(cls, SequenceModel)):
        raise ValueError(f"--model {name!r} is not a fastlv.nn.SequenceModel subclass")
    return cls


def build_model(name: str, kwargs: dict, data_dim: int, kind: str = "speech", config: str | None = None
                ) -> SequenceModel:
    """Instantiate the model, from its named configuration (``Class.from_config``, e.g. ``"timit"``) when
    ``config`` is given, with ``kwargs`` on top. Unless set, the first data-dimension argument the model
    takes (see DATA_DIM_ARGS) gets the data's frame size, and its ``output`` family the one that fits
    the data kind (DEFAULT_OUTPUT; speech keeps the model's own default)."""
    cls = model_class(name)
    params = inspect.signature(cls).parameters
    configs = getattr(cls, "CONFIGS", {})
    if config is not None and config not in configs:
        raise ValueError(f"--config {config!r}: {cls.__name__} has the configurations {sorted(configs)}")
    kwargs = {**configs.get(config, {}), **kwargs}
    dim_arg = next((a for a in DATA_DIM_ARGS if a in params), None)
    if dim_arg is not None:
        kwargs.setdefault(dim_arg, data_dim)
        if kwargs[dim_arg] != data_dim:
            raise ValueError(f"the model's {dim_arg}={kwargs[dim_arg]} does not match the data's frame size {data_dim}")
    if "output" in params and "output" not in kwargs and kind in DEFAULT_OUTPUT:
        kwargs["output"] = DEFAULT_OUTPUT[kind]
    return cls(**kwargs)


def data_kind(name: str) -> str:
    """``speech`` (waveform frames), ``music``, ``handwriting`` or ``digits``: picks the units of the
    metrics and the plot of :mod:`fastlv.sample`."""
    base = name[:-len("-perm")] if name.endswith("-perm") else name
    base = D.ALIASES.get(base, base)
    return {"chorales": "music", "lasa": "handwriting", "mnist": "digits"}.get(base, "speech")


def data_meta(data: D.SeqData) -> dict:
    """What :mod:`fastlv.sample` needs to map samples back to the data's units (plain types only, so
    that checkpoints load with ``weights_only=True``)."""
    meta = {}
    for key in ("mean", "std", "sample_rate", "frame_size"):
        value = data.meta.get(key)
        if value is not None:
            meta[key] = value.tolist() if hasattr(value, "tolist") else value
    if data.meta.get("permutation") is not None:
        meta["permutation"] = [int(i) for i in data.meta["permutation"]]
    return meta


# ------------------------------------------------------------------------------------- distributed

@dataclass
class Processes:
    """This process's place in the (possibly single-process) job."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: Tensor) -> Tensor:
        """Sum over processes, in place."""
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_processes(device: str) -> Processes:
    """Join the torchrun job if there is one (NCCL on CUDA, gloo on CPU) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world == 1:
        return Processes(device=dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), dev)


# ---------------------------------------------------------------------------------------- schedules

def kl_weight(step: int, start: float, increment: float) -> float:
    """KL annealing: ``start + increment * step``, capped at 1 (Dai et al. Appendix C)."""
    return min(1.0, start + increment * step)


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine annealing from ``lr`` at step 0 to ``lr_min`` at ``total`` (Loshchilov & Hutter 2016)."""
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


# --------------------------------------------------------------------------------------------- data

class BatchOrder:
    """Global batches of training indices: a fresh seeded permutation every epoch, the last partial batch
    dropped. Its state (epoch, position) is part of the checkpoint, so a resumed run reads the same
    batches as an uninterrupted one."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise ValueError(f"the training split has {n} sequences, fewer than --batch-size {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.position = 0, 0

    def next(self) -> Tensor:
        if self.position + self.batch_size > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        batch = order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def make_batch(data: D.SeqData, indices: Tensor, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """``(x [B, T, D], mask [B, T] or None)``: cut to the longest sequence of the batch; no mask when
    every sequence fills it."""
    x, lengths = data[indices]  # through __getitem__: MNIST's dynamic binarization samples here
    steps = int(lengths.max())
    mask = torch.arange(steps) < lengths[:, None]
    return x[:, :steps].to(device), None if bool(mask.all()) else mask.to(device)


def loss_scale(kind: str, lengths: Tensor, dim: int) -> float:
    """Divisor of the per-sequence loss, from the GLOBAL batch's lengths (equal on every process)."""
    if kind == "sequence":
        return 1.0
    steps = float(lengths.float().mean())
    return steps * dim if kind == "sample" else steps


# ------------------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def evaluate(model: SequenceModel, data: D.SeqData, procs: Processes, *, batch_size: int, iw_k: int = 0,
             seed: int = 0) -> dict:
    """ELBO (and the k-sample importance-weighted bound) of every sequence of ``data``, in nats per
    sequence and per step. Sequences are shared out among the processes and the sums all-reduced. The
    sampling noise comes from its own seeded stream, so evaluating leaves the training's random state
    untouched and every evaluation of the same weights gives the same numbers."""
    was_training = model.training
    model.eval()
    use_iw = iw_k > 0 and model.is_latent
    # sums of: elbo, reconstruction, kl, iw bound, sequences, steps
    sums = torch.zeros(6, dtype=torch.float64, device=procs.device)
    devices = [procs.device] if procs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=procs.device.type):
        torch.manual_seed(seed + procs.rank)
        for indices in torch.arange(procs.rank, len(data), procs.world).split(batch_size):
            x, mask = make_batch(data, indices, procs.device)
            out = model(x, mask)
            sums[0] += out.elbo.double().sum()
            sums[1] += out.log_likelihood.double().sum()
            sums[2] += out.kl.double().sum()
            if use_iw:
                for part in indices.split(max(1, batch_size // iw_k)):
                    x_part, mask_part = make_batch(data, part, procs.device)
                    sums[3] += model.iwae(x_part, iw_k, mask_part).double().sum()
            sums[4] += len(indices)
            sums[5] += data.lengths[indices].sum()
    model.train(was_training)
    elbo, recon, kl, iw, sequences, steps = procs.sum(sums).tolist()
    metrics = {}
    for name, total in [("elbo", elbo), ("log_px", recon), ("kl", kl)] + ([(f"iwae{iw_k}", iw)] if use_iw else []):
        metrics[f"{name}_per_sequence"] = total / sequences
        metrics[f"{name}_per_step"] = total / steps
    return metrics


def unit(kind: str) -> str:
    """How the papers normalize the log-likelihood of a data kind: per step for music, else per sequence."""
    return "per step" if kind == "music" else "per sequence"


def headline(metrics: dict, kind: str, name: str = "elbo") -> float:
    """The number the papers report (see :func:`unit`)."""
    return metrics[f"{name}_{unit(kind).replace(' ', '_')}"]


# ----------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` so that ``path`` always holds a complete checkpoint: a temporary file in the
    same folder, flushed to disk, then renamed over ``path`` (atomic on POSIX); a crash mid-write leaves
    the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# -------------------------------------------------------------------------------------------- logging

class Logs:
    """CSV files (appended to on resume, rows after the checkpoint's step dropped), TensorBoard when it
    is installed, and the learning-curve plot. Only the main process writes."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.out, self.enabled, self.writer = out, enabled, None
        if not enabled:
            return
        for name in ("train", "valid"):
            if resume_step is not None:
                self._truncate(out / f"{name}.csv", resume_step)
            elif (out / f"{name}.csv").exists():
                (out / f"{name}.csv").unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(out / "tb"))
            except ImportError:
                print("fastlv.train: TensorBoard logging off (pip install tensorboard to enable); "
                      "CSV logs are in " + str(out), file=sys.stderr)

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if int(r["step"]) <= step)

    def write(self, name: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        path = self.out / f"{name}.csv"
        row = {"step": step, **values}
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{name}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns of a log file as float lists (empty if the file does not exist)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def plot_curves(out: Path, kind: str) -> Path:
    """``curves.png``: training loss and KL, and the validation ELBO, against the update step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, valid = read_csv(out / "train.csv"), read_csv(out / "valid.csv")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        axes[0].plot(train["step"], train["loss"], label="loss")
        axes[0].plot(train["step"], train["nll"], label="reconstruction")
        axes[1].plot(train["step"], train["kl"], label="KL")
        axes[1].plot(train["step"], train["kl_weight"], "--", label="KL weight")
    if valid:
        axes[2].plot(valid["step"], valid[f"elbo_{unit(kind).replace(' ', '_')}"], "o-", label="validation ELBO")
    titles = ("training loss (scaled)", "training KL (scaled)", f"validation ELBO, nats {unit(kind)}")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("update")
        ax.legend()
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Progress:
    """One status line: redrawn in place (at most 5 times a second) on a terminal, printed as a plain
    line every ``--log-every`` updates otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.last_draw = 0.0

    def update(self, step: int, text: str, log_row: bool) -> None:
        if not self.enabled:
            return
        line = f"step {step}/{self.total} {text}"
        if self.tty:
            now = time.perf_counter()
            if now - self.last_draw > 0.2 or step == self.total:
                print("\r" + line + "\033[K", end="", file=sys.stderr, flush=True)
                self.last_draw = now
        elif log_row:
            print(line, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(("\n" if self.tty else "") + text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- training

def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, mask: Tensor | None,
               kl_w: float, scale: float, clip: float, procs: Processes) -> tuple[dict, bool]:
    """One update. Returns (statistics averaged over processes, whether it was applied). A non-finite
    loss or gradient norm (on any process: both are all-reduced) skips ``optimizer.step()``, so weights
    and optimizer state stay as they were."""
    optimizer.zero_grad(set_to_none=True)
    out = model(x, mask)
    loss = out.loss(kl_w, scale)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    # the total norm before clipping; gradients are already averaged over processes by DDP
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    stats = torch.stack([loss.detach(), -out.log_likelihood.detach().mean() / scale,
                         out.kl.detach().mean() / scale]).double()
    stats = procs.sum(stats) / procs.world
    applied = bool(torch.isfinite(stats).all()) and bool(torch.isfinite(grad_norm))
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_value, nll, kl = stats.tolist()
    return {"loss": loss_value, "nll": nll, "kl": kl, "grad_norm": float(grad_norm)}, applied


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace
                   ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam (``--lr``, ``--adam-eps``) and its cosine learning-rate schedule over ``--steps`` updates."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=args.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, args.steps, args.lr, args.lr_min) / args.lr)
    return optimizer, scheduler


def train_on_batch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: D.SeqData, indices: Tensor,
                   step: int, args: argparse.Namespace, procs: Processes) -> tuple[dict, bool]:
    """Update ``step`` of the recipe in ``args`` on the global batch ``indices`` of ``data``: this process
    takes its slice, with the annealed KL weight and the loss scale of the global batch (see
    :func:`train_step`, whose statistics it returns with the KL weight added)."""
    x, mask = make_batch(data, indices.chunk(procs.world)[procs.rank], procs.device)
    kl_w = kl_weight(step, args.kl_start, args.kl_increment)
    scale = loss_scale(args.loss_scale, data.lengths[indices], data.dim)
    stats, applied = train_step(model, optimizer, x, mask, kl_w, scale, args.clip, procs)
    return {**stats, "kl_weight": kl_w}, applied


def check_resume(config: dict, args: argparse.Namespace) -> None:
    changed = [f"--{k.replace('_', '-')} {config[k]!r} -> {getattr(args, k)!r}" for k in RUN_DEFINING_ARGS
               if config.get(k) != getattr(args, k)]
    if changed:
        raise ValueError("--resume with a different run definition: " + "; ".join(changed))


def train(args: argparse.Namespace) -> dict:
    """Run the training described by the parsed command line; returns the test metrics (the last
    validation metrics when ``--stop-at`` ends the run early)."""
    procs = setup_processes(args.device)
    try:
        result = _train(args, procs)
        procs.barrier()  # no process tears the group down while another still talks to it
        return result
    finally:
        if procs.world > 1:
            dist.destroy_process_group()


def _train(args: argparse.Namespace, procs: Processes) -> dict:
    out = Path(args.out or f"runs/{args.model.rpartition(':')[2]}-{args.data}")
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    if args.batch_size % procs.world:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the {procs.world} processes")
    checkpoint_every = args.checkpoint_every or args.valid_every
    kind = data_kind(args.data)
    data_args = parse_kwargs(args.data_args)
    splits = {s: D.load(args.data, s, **data_args) for s in ("train", "valid", "test")}
    train_data = splits["train"]

    torch.manual_seed(args.seed + procs.rank)  # DDP copies rank 0's initial weights to the others
    model = build_model(args.model, parse_kwargs(args.model_args), train_data.dim, kind, args.config)
    model.to(procs.device)
    ddp_model = model if procs.world == 1 else DistributedDataParallel(
        model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
        find_unused_parameters=args.find_unused_parameters)
    optimizer, scheduler = make_optimizer(model, args)
    order = BatchOrder(len(train_data), args.batch_size, args.seed)
    step, skipped, best = 0, 0, -math.inf

    if args.resume:
        state = load_checkpoint(out / "checkpoint.pt")
        check_resume(state["config"], args)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order.load_state_dict(state["order"])
        step, skipped, best = state["step"], state["skipped"], state["best"]
        if len(state["rng"]) == procs.world:
            set_rng_state(state["rng"][procs.rank], procs.device)
        elif procs.main:
            print(f"fastlv.train: resuming on {procs.world} processes instead of {len(state['rng'])}: "
                  "random streams restart from --seed", file=sys.stderr)
    elif procs.main:  # a fresh run: a best.pt left by an earlier run in --out must not be tested
        (out / "best.pt").unlink(missing_ok=True)

    logs = Logs(out, procs.main, not args.no_tensorboard, step if args.resume else None)
    progress = Progress(args.steps, procs.main)
    if procs.main:
        progress.message(f"fastlv.train: {args.model} ({model.num_parameters():,} parameters) on {args.data} "
                         f"{tuple(train_data.x.shape)}, {procs.world} process(es) on {procs.device}, out={out}")

    def checkpoint_state() -> dict:
        return {"format": CHECKPOINT_FORMAT, "config": vars(args), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "order": order.state_dict(), "step": step, "skipped": skipped, "best": best,
                "rng": procs.gather(rng_state(procs.device)), "data_kind": kind,
                "data_dim": train_data.dim, "data_steps": train_data.x.shape[1],
                "data_meta": data_meta(train_data)}

    def save(*names: str) -> None:
        state = checkpoint_state()  # a collective: every process takes part
        if procs.main:
            for name in names:
                save_checkpoint(out / name, state)

    stop = min(args.steps, args.stop_at if args.stop_at is not None else args.steps)
    interval, tick = [], time.perf_counter()
    last_valid = {}
    while step < stop:
        stats, applied = train_on_batch(ddp_model, optimizer, train_data, order.next(), step, args, procs)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        skipped += not applied
        if applied:
            interval.append(stats)
        log_row = step % args.log_every == 0 or step == stop
        steps_per_s = len(interval) / max(time.perf_counter() - tick, 1e-9)
        progress.update(step, f"loss {stats['loss']:.4f} KL {stats['kl']:.4f} {steps_per_s:.2f} steps/s"
                              + (f" skipped {skipped}" if skipped else ""), log_row)
        if log_row:
            means = {k: sum(s[k] for s in interval) / len(interval) for k in stats} if interval \
                else {k: math.nan for k in stats}
            logs.write("train", step, {**means, "kl_weight": stats["kl_weight"], "lr": lr, "skipped": skipped,
                                       "steps_per_s": len(interval) / (time.perf_counter() - tick)})
            interval, tick = [], time.perf_counter()
        if step % args.valid_every == 0 or step == args.steps:
            last_valid = evaluate(model, splits["valid"], procs, batch_size=args.eval_batch_size, seed=args.seed)
            logs.write("valid", step, last_valid)
            value = headline(last_valid, kind)
            improved = value > best
            best = max(best, value)
            progress.message(f"valid step {step}: ELBO {value:.4f} nats {unit(kind)}" + (" (best)" if improved else ""))
            if improved:
                save("best.pt")
        if step % checkpoint_every == 0 or step == stop:
            save("checkpoint.pt")
    if procs.main and not args.no_plot:
        plot_curves(out, kind)
    if step < args.steps:
        progress.message(f"stopped at step {step} (--stop-at); continue with --resume")
        logs.close()
        return last_valid

    procs.barrier()  # best.pt is complete before anyone reads it
    if (out / "best.pt").exists():
        model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    test = evaluate(model, splits["test"], procs, batch_size=args.eval_batch_size, iw_k=args.iw_k, seed=args.seed)
    result = {"data": args.data, "model": args.model, "parameters": model.num_parameters(), "steps": step,
              "skipped_updates": skipped, "best_valid_elbo": best,
              "units": f"nats {unit(kind)}", **test}
    if procs.main:
        (out / "test.json").write_text(json.dumps(result, indent=2) + "\n")
        names = ["elbo"] + ([f"iwae{args.iw_k}"] if f"iwae{args.iw_k}_per_step" in test else [])
        progress.message("test: " + ", ".join(f"{n} {headline(test, kind, n):.4f}" for n in names)
                         + f" {result['units']} -> {out / 'test.json'}")
    logs.close()
    return result


def run(argv: list[str] | None = None) -> dict:
    """``python -m fastlv.train`` as a function: parse ``argv`` and train; returns the test metrics."""
    return train(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m fastlv.train`` and the ``fastlv-train`` console script."""
    run(argv)


if __name__ == "__main__":
    main()
