"""Shared pieces of ``fastlv.data``: the :class:`SeqData` container, the on-disk cache,
deterministic splits and the error raised when a data source is not installed."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

# Bump when a preprocessing step changes, so that stale cache entries are never read back.
CACHE_VERSION = 1


class SourceMissingError(RuntimeError):
    """A real data source is not installed; the message names the exact install command."""


def missing(kind: str, name: str, how: str, command: str, detail: str = "") -> SourceMissingError:
    """Build the uniform error, e.g.
    ``speech source 'fillets' needs the Debian package: apt-get install fillets-ng-data-cs``."""
    msg = f"{kind} source '{name}' needs the {how}: {command}"
    if detail:
        msg += f" ({detail})"
    return SourceMissingError(msg)


def package_dir(module: str) -> Optional[Path]:
    """Folder of an installed Python package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    """``$FASTLV_DATA_CACHE`` if set, else ``~/.cache/fastlv/data``."""
    env = os.environ.get("FASTLV_DATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastlv" / "data"


def cache_key(source: str, params: dict) -> str:
    """File stem for a cache entry: the source name plus a hash of every parameter that shapes it."""
    blob = json.dumps({"source": source, "version": CACHE_VERSION, **params}, sort_keys=True, default=str)
    return f"{source}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


def cached(source: str, params: dict, build: Callable[[], Dict[str, np.ndarray]],
           use_cache: bool = True) -> Dict[str, np.ndarray]:
    """Return ``build()``'s dict of arrays, read from / written to ``cache_dir()/<key>.npz``.

    The write is atomic (temporary file + rename) so that concurrent runs never see half a file.
    """
    if not use_cache:
        return build()
    path = cache_dir() / (cache_key(source, params) + ".npz")
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # truncated or corrupt: rebuild
            pass
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    except OSError as e:  # read-only home, full disk...: still usable, just not cached
        warnings.warn(f"fastlv.data: cannot write the cache under {path.parent}: {e}")
        return arrays
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return arrays


def files_fingerprint(files: Sequence[Path], root: Path) -> List[Tuple[str, int]]:
    """(relative path, size) of each input file: part of a cache key, so a changed source rebuilds."""
    return [(str(Path(f).relative_to(root)), os.path.getsize(f)) for f in files]


# -------------------------------------------------------------------------------------------- splits

SPLITS = ("train", "valid", "test")


def split_indices(n: int, fractions: Sequence[float], seed: int) -> Dict[str, np.ndarray]:
    """Disjoint, deterministic train/valid/test index sets covering ``range(n)``.

    ``fractions`` are (train, valid, test) proportions; valid and test get at least one item each
    when ``n >= 3``. The permutation comes from ``numpy.random.default_rng(seed)``.
    """
    if len(fractions) != 3 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(n * fractions[1] / total))
    n_test = int(round(n * fractions[2] / total))
    if n >= 3:
        n_valid = max(n_valid, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = n - n_valid - n_test
    return {"train": np.sort(perm[:n_train]),
            "valid": np.sort(perm[n_train:n_train + n_valid]),
            "test": np.sort(perm[n_train + n_valid:])}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


# ------------------------------------------------------------------------------------------- dataset

def pad(seqs: Sequence[np.ndarray], dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """Stack variable-length ``[T_i, D]`` arrays into zero-padded ``[N, T_max, D]`` plus lengths ``[N]``."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    dim = seqs[0].shape[1] if len(seqs) else 0
    out = np.zeros((len(seqs), int(lengths.max()) if len(seqs) else 0, dim), dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lengths


class SeqData(torch.utils.data.Dataset):
    """A split of a sequence data set, batch-first.

    Attributes:
        x:       ``[N, T, D]`` float32 tensor, zero-padded after each sequence's length.
        lengths: ``[N]`` int64 tensor, number of valid steps of each sequence.
        name, split: where it comes from.
        meta:    dict of everything else a user may need (normalization stats, sample rate,
                 frame permutation, source files of each sequence, ...).

    ``ds[i]`` returns ``(x[i], lengths[i])`` so a ``torch.utils.data.DataLoader`` batches it into
    ``([B, T, D], [B])``. Per-sequence log-likelihoods should be summed over ``mask`` (``[N, T]``).
    """

    def __init__(self, x, lengths, name: str, split: str, meta: Optional[dict] = None):
        self.x = torch.as_tensor(x)
        self.lengths = torch.as_tensor(lengths, dtype=torch.int64)
        if self.x.dim() != 3 or self.lengths.shape != (self.x.shape[0],):
            raise ValueError(f"expected x [N, T, D] and lengths [N], got {tuple(self.x.shape)}, "
                             f"{tuple(self.lengths.shape)}")
        self.name, self.split, self.meta = name, split, dict(meta or {})

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.lengths[i]

    def __repr__(self) -> str:
        return (f"SeqData(name={self.name!r}, split={self.split!r}, x={tuple(self.x.shape)}, "
                f"steps={int(self.lengths.sum())})")

    @property
    def dim(self) -> int:
        return self.x.shape[2]

    @property
    def mask(self) -> torch.Tensor:
        """``[N, T]`` bool, True on valid steps."""
        return torch.arange(self.x.shape[1]) < self.lengths[:, None]

    def sequences(self) -> List[torch.Tensor]:
        """The unpadded sequences, each ``[T_i, D]``."""
        return [self.x[i, :int(n)] for i, n in enumerate(self.lengths)]

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x [B, T, D], lengths [B])``; with ``shuffle`` the order comes from ``seed``."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle \
            else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            yield self[idx]

    def stream(self, batch_size: int) -> "TrainStream":
        """Contiguous training stream for truncated BPTT: see :class:`TrainStream`."""
        return TrainStream(self, batch_size)


class TrainStream:
    """Iterate a chunked training set as ``batch_size`` parallel contiguous streams.

    The chunks of a speech/synthetic training split are consecutive pieces of one long
    concatenated frame sequence. As in language-model style training (and the TIMIT setup of
    Fraccaro et al. 2016 / Dai et al. 2019, App. C), that sequence is reshaped to ``batch_size``
    rows and cut along time into ``T``-chunks: batch ``k`` is ``x[b * M + k]`` for each row ``b``
    (``M = N // batch_size``), so row ``b`` of batch ``k + 1`` continues row ``b`` of batch ``k`` and
    a model may carry its hidden state across batches. Each item is a ``[batch_size, T, D]`` tensor.
    """

    def __init__(self, data: SeqData, batch_size: int):
        self.data, self.batch_size = data, batch_size
        self.steps = len(data) // batch_size
        if self.steps == 0:
            raise ValueError(f"{len(data)} chunks are fewer than batch_size={batch_size}")

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        x = self.data.x[:self.steps * self.batch_size]
        x = x.reshape(self.batch_size, self.steps, *x.shape[1:])
        for k in range(self.steps):
            yield x[:, k]
