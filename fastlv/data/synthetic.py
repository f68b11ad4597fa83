"""Synthetic speech-like waveforms: the built-in default data set, needing nothing installed.

Each "utterance" is a sequence of segments; each segment is drawn from one of ``n_components``
second-order autoregressive (AR(2)) resonators -- a mixture of AR processes -- with a random gain and
a smooth amplitude envelope, plus a small white-noise floor. Because the AR processes run at the
sample level, consecutive samples inside one 200-sample frame are strongly correlated (the
intra-step correlation that separates autoregressive from factorized output layers in Dai et al.
ICML 2019, Sec. 5.1), and the regime switches give the frames a long-range latent structure.

The waveforms then go through exactly the speech pipeline of :mod:`fastlv.data.speech`
(train-set normalization, 200-sample frames, ``T=40`` training chunks, whole-utterance test
sequences, optional frame permutation), so the tensor layout is the same as for real speech.
Only numpy is used (AR filtering is done exactly in the frequency domain, as a circular process).
"""
from __future__ import annotations

import functools
from typing import List

import numpy as np

from .core import SeqData, check_split
from .speech import SAMPLE_RATE, format_speech


def ar2_components(n_components: int, rng: np.random.Generator) -> np.ndarray:
    """``[K, 2]`` AR(2) coefficients ``(a1, a2)`` of stable resonators: poles ``r * exp(+-i w)``."""
    r = rng.uniform(0.90, 0.995, n_components)
    w = np.pi * np.exp(rng.uniform(np.log(0.01), np.log(0.3), n_components))  # ~80 Hz..2.4 kHz at 16 kHz
    return np.stack([2 * r * np.cos(w), -r ** 2], axis=1)


def ar2_noise(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of the stationary circular AR(2) process ``x_t = a1 x_{t-1} + a2 x_{t-2} + e_t``,
    scaled to unit variance."""
    spec = np.fft.rfft(rng.standard_normal(n))
    z = np.exp(-1j * np.pi * np.arange(len(spec)) / (n / 2))  # e^{-i w} on the rfft grid
    x = np.fft.irfft(spec / (1 - a[0] * z - a[1] * z ** 2), n)
    return x / (x.std() + 1e-12)


def synthetic_utterances(n_utterances: int = 200, seed: int = 0, sample_rate: int = SAMPLE_RATE,
                         min_seconds: float = 0.5, max_seconds: float = 2.0,
                         n_components: int = 5) -> List[np.ndarray]:
    """Seeded list of float32 waveforms (same arguments, same list; the last few lists are kept in
    memory, read-only, so repeated ``load`` calls do not regenerate them)."""
    return list(_generate(n_utterances, seed, sample_rate, float(min_seconds), float(max_seconds),
                          n_components))


@functools.lru_cache(maxsize=4)
def _generate(n_utterances, seed, sample_rate, min_seconds, max_seconds, n_components) -> tuple:
    rng = np.random.default_rng(seed)
    comps = ar2_components(n_components, rng)
    weights = rng.dirichlet(np.full(n_components, 2.0))
    utts = []
    for _ in range(n_utterances):
        length = int(rng.uniform(min_seconds, max_seconds) * sample_rate)
        pieces, done = [], 0
        while done < length:
            seg = int(min(length - done, rng.integers(sample_rate // 20, sample_rate // 4)))
            k = rng.choice(n_components, p=weights)
            env = 0.2 + 0.8 * np.sin(np.pi * (np.arange(seg) + 0.5) / seg)
            gain = np.exp(rng.normal(-2.0, 0.5))
            pieces.append(gain * env * ar2_noise(comps[k], seg, rng))
            done += seg
        u = (np.concatenate(pieces) + 0.005 * rng.standard_normal(length)).astype(np.float32)
        u.setflags(write=False)
        utts.append(u)
    return tuple(utts)


def load_synthetic(split: str = "train", n_utterances: int = 200, data_seed: int = 0,
                   min_seconds: float = 0.5, max_seconds: float = 2.0, n_components: int = 5,
                   **opts) -> SeqData:
    """Synthetic data in the speech layout; ``opts`` go to :func:`fastlv.data.speech.format_speech`
    (``seq_len``, ``frame_size``, ``fractions``, ``seed``, ``permute``, ``perm_seed``, ``chunked``).
    ``data_seed`` seeds the waveforms, ``seed`` the split and the training-stream order."""
    check_split(split)
    opts.pop("cache", None)  # generated in well under a second: never cached
    utts = synthetic_utterances(n_utterances, data_seed, SAMPLE_RATE, min_seconds, max_seconds,
                                n_components)
    return format_speech("synthetic", utts, split, **opts)
