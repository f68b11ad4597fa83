"""Generate from a checkpoint of :mod:`fastlv.train` and save a plot (and WAV files for speech).

    python -m fastlv.sample runs/srnn/best.pt --num 4 --steps 160 --out runs/srnn/samples

Writes ``samples.png`` -- waveforms (speech), piano rolls (music), pen trajectories (handwriting) or a
digit grid (MNIST) -- and, for speech, ``sample_<i>.wav`` (16-bit PCM at the data's sample rate). The
samples are mapped back to the data's units first: speech frames un-permuted (Perm-TIMIT variant),
flattened and de-normalized with the training mean / std; pen offsets de-normalized and summed into
positions.
"""
from __future__ import annotations

import argparse
import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastlv.train import build_model, load_checkpoint, parse_kwargs


def waveforms(x: Tensor, meta: dict) -> np.ndarray:
    """``[B, T, frame]`` normalized (possibly permuted) frames -> ``[B, T * frame]`` waveforms."""
    frames = x.double().numpy()
    if meta.get("permutation") is not None:  # the data holds f[:, perm]; put each sample back in place
        restored = np.empty_like(frames)
        restored[..., meta["permutation"]] = frames
        frames = restored
    return frames.reshape(len(frames), -1) * meta.get("std", 1.0) + meta.get("mean", 0.0)


def write_wav(path: Path, signal: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit PCM; samples outside [-1, 1] are clipped."""
    pcm = (np.clip(signal, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def pen_positions(x: Tensor, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """``[B, T, 3]`` (dx, dy, pen_up) -> positions ``[B, T, 2]`` and pen-up flags ``[B, T]``."""
    offsets = x[..., :2].double().numpy() * np.asarray(meta.get("std", 1.0)) + np.asarray(meta.get("mean", 0.0))
    return offsets.cumsum(1), x[..., 2].numpy() > 0.5


def plot_samples(x: Tensor, kind: str, meta: dict, path: Path) -> Path:
    """One figure of all samples ``x`` ``[B, T, D]`` in the natural view of the data ``kind``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(x)
    if kind == "digits":  # [B, 784, 1] raster order -> a row of 28 x 28 images
        side = int(round(x.shape[1] ** 0.5))
        fig, axes = plt.subplots(1, n, figsize=(1.5 * n, 1.8), squeeze=False)
        for ax, img in zip(axes[0], x[:, :side * side, 0].reshape(n, side, side)):
            ax.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.axis("off")
    elif kind == "handwriting":
        positions, pen_up = pen_positions(x, meta)
        fig, axes = plt.subplots(1, n, figsize=(3 * n, 3), squeeze=False)
        for ax, pos, up in zip(axes[0], positions, pen_up):
            for stroke in np.split(pos, np.flatnonzero(up[:-1]) + 1):  # a stroke ends where the pen lifts
                ax.plot(stroke[:, 0], stroke[:, 1], "k-", lw=1)
            ax.set_aspect("equal")
            ax.axis("off")
    elif kind == "music":
        fig, axes = plt.subplots(n, 1, figsize=(10, 2 * n), squeeze=False)
        for ax, roll in zip(axes[:, 0], x):
            ax.imshow(roll.T.numpy(), origin="lower", aspect="auto", cmap="gray_r", vmin=0, vmax=1)
            ax.set_ylabel("key")
        axes[-1, 0].set_xlabel("step")
    else:
        signals = waveforms(x, meta)
        rate = meta.get("sample_rate", 16000)
        fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 * n), squeeze=False, sharex=True)
        for ax, signal in zip(axes[:, 0], signals):
            ax.plot(np.arange(len(signal)) / rate, signal, lw=0.5)
        axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fastlv.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint.pt or best.pt written by fastlv.train")
    p.add_argument("--num", type=int, default=4, help="number of samples")
    p.add_argument("--steps", type=int, default=None, help="steps per sample (default: the training length)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    state = load_checkpoint(args.checkpoint)
    config = state["config"]
    model = build_model(config["model"], parse_kwargs(config["model_args"]), state["data_dim"], state["data_kind"],
                        config["config"])
    model.load_state_dict(state["model"])
    model.to(args.device).eval()
    torch.manual_seed(args.seed)
    x = model.sample(args.steps or state["data_steps"], args.num).float().cpu()

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "samples"
    out.mkdir(parents=True, exist_ok=True)
    kind, meta = state["data_kind"], state["data_meta"]
    written = [plot_samples(x, kind, meta, out / "samples.png")]
    if kind == "speech":
        for i, signal in enumerate(waveforms(x, meta)):
            write_wav(out / f"sample_{i}.wav", signal, meta.get("sample_rate", 16000))
            written.append(out / f"sample_{i}.wav")
    print("fastlv.sample: wrote " + ", ".join(str(w) for w in written))


if __name__ == "__main__":
    main()
