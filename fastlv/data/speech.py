"""Raw-waveform speech in the format of the TIMIT/Blizzard experiments of the latent-variable RNN papers.

Format (Fraccaro et al. 2016, "Sequential Neural Models with Stochastic Layers", Sec. 5;
Dai et al. ICML 2019, "Re-examination of the Role of Latent Variables in Sequence Modeling",
Sec. 5.1 and Appendix C; Aksan & Hilliges 2019, STCN):

* audio is resampled to 16 kHz mono;
* normalized with the global (scalar) mean and standard deviation of the TRAINING split;
* each utterance is cut into frames of ``frame_size=200`` samples (one step = 12.5 ms; a trailing
  partial frame is dropped), so every step is a 200-dim real vector;
* training split: utterances are shuffled with a fixed seed, their frames concatenated into one
  stream, and the stream cut into ``seq_len=40`` step chunks (8000 samples, 0.5 s) -> ``[N, 40, 200]``;
  chunks may cross utterance boundaries. :class:`~fastlv.data.core.TrainStream` re-reads that stream
  as ``batch_size`` contiguous rows ("[steps, batch, 200]"-style) for truncated BPTT;
* valid/test splits: whole utterances, zero-padded -> ``[N, T_max, 200]`` with ``lengths``; the papers
  report the log-likelihood per sequence (sum over its valid steps, see ``SeqData.mask``);
* ``permute=True`` gives the frame-permuted variant ("Perm-TIMIT", Dai et al. Sec. 5.1): one fixed
  random permutation of the 200 samples, applied inside every frame of every split, so that the
  within-frame (intra-step) correlation can no longer be exploited by an autoregressive output layer.

Sources (nothing is downloaded at run time):

* ``fillets``: ~106 min of Czech voice acting, 1882 OGG/Vorbis utterances at 22.05/44.1 kHz, from
  Debian's ``fillets-ng-data-cs`` (``/usr/share/games/fillets-ng/sound/*/cs/*.ogg``);
* ``pocketsphinx``: 10 utterances (34 s) of 16 kHz English from Debian's ``pocketsphinx-testdata``
  (``/usr/share/pocketsphinx/test/data/{cards,librivox}/*.wav``), small enough for tests;
* ``synthetic``: see :mod:`fastlv.data.synthetic`, needs nothing installed.
"""
from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .core import SeqData, cached, check_split, files_fingerprint, missing, pad, split_indices

SAMPLE_RATE = 16000
FRAME_SIZE = 200
SEQ_LEN = 40
FRACTIONS = (0.8, 0.1, 0.1)

FILLETS_ROOT = "/usr/share/games/fillets-ng/sound"
FILLETS_APT = "apt-get install --no-install-recommends fillets-ng-data-cs"
POCKETSPHINX_ROOT = "/usr/share/pocketsphinx/test/data"
POCKETSPHINX_APT = "apt-get install pocketsphinx-testdata"
SOUNDFILE_PIP = "pip install soundfile==0.14.0"
SCIPY_PIP = "pip install scipy"


# ------------------------------------------------------------------------------------- audio reading

def read_audio(path: Path, source: str) -> tuple:
    """Decode one file to mono float32 in [-1, 1]; returns ``(samples, sample_rate)``.

    OGG/Vorbis needs ``soundfile`` (its wheel bundles libsndfile with Vorbis); plain 16-bit PCM WAV
    falls back to the standard library when ``soundfile`` is absent.
    """
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None:
        x, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
        return x.mean(axis=1), sr
    if Path(path).suffix.lower() != ".wav":
        raise missing("speech", source, "Python package", SOUNDFILE_PIP, f"to decode {Path(path).suffix}")
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise missing("speech", source, "Python package", SOUNDFILE_PIP, "for non-16-bit WAV")
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        return raw.reshape(-1, w.getnchannels()).mean(axis=1), w.getframerate()


def resample(x: np.ndarray, sr: int, target: int, source: str) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``, Kaiser-windowed FIR anti-aliasing)."""
    if sr == target:
        return x.astype(np.float32, copy=False)
    try:
        from scipy.signal import resample_poly
    except ImportError:
        raise missing("speech", source, "Python package", SCIPY_PIP, f"to resample {sr} Hz audio") from None
    ratio = Fraction(target, sr)
    return resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def _audio_files(source: str, root: Optional[str]) -> tuple:
    if source == "fillets":
        base, pattern, apt = Path(root or FILLETS_ROOT), "*/cs/*.ogg", FILLETS_APT
    elif source == "pocketsphinx":
        base, pattern, apt = Path(root or POCKETSPHINX_ROOT), "*/*.wav", POCKETSPHINX_APT
    else:
        raise ValueError(f"unknown speech source {source!r}")
    files = sorted(base.glob(pattern)) if base.is_dir() else []
    if not files:
        raise missing("speech", source, "Debian package", apt, f"no {pattern} under {base}")
    return base, files


def read_utterances(source: str, root: Optional[str] = None, sample_rate: int = SAMPLE_RATE,
                    use_cache: bool = True) -> tuple:
    """All utterances of a real speech source, resampled: ``(list of float32 arrays, file names)``.

    Decoding and resampling is the slow part (~20 s for ``fillets``), so its result is
    cached as one ``.npz`` keyed by source, root, sample rate and the (name, size) of every file.
    """
    base, files = _audio_files(source, root)

    def build():
        utts = [resample(*read_audio(f, source), sample_rate, source) for f in files]
        return {"audio": np.concatenate(utts), "offsets": np.cumsum([0] + [len(u) for u in utts]),
                "files": np.array([str(f.relative_to(base)) for f in files])}

    params = {"root": str(base), "sample_rate": sample_rate, "files": files_fingerprint(files, base)}
    arr = cached(f"speech-{source}", params, build, use_cache)
    off = arr["offsets"]
    utts = [arr["audio"][off[i]:off[i + 1]] for i in range(len(off) - 1)]
    return utts, [str(f) for f in arr["files"]]


# --------------------------------------------------------------------------------------- formatting

def frame_permutation(frame_size: int = FRAME_SIZE, perm_seed: int = 1234) -> np.ndarray:
    """The fixed within-frame permutation of the permuted ("Perm-TIMIT") variant."""
    return np.random.default_rng(perm_seed).permutation(frame_size)


def to_frames(u: np.ndarray, frame_size: int) -> np.ndarray:
    """``[L]`` samples -> ``[L // frame_size, frame_size]`` (trailing partial frame dropped)."""
    n = len(u) // frame_size
    return u[:n * frame_size].reshape(n, frame_size)


def format_speech(name: str, utterances: Sequence[np.ndarray], split: str, *,
                  names: Optional[Sequence[str]] = None, seq_len: int = SEQ_LEN,
                  frame_size: int = FRAME_SIZE, fractions=FRACTIONS, seed: int = 0,
                  permute: bool = False, perm_seed: int = 1234, chunked: Optional[bool] = None,
                  sample_rate: int = SAMPLE_RATE) -> SeqData:
    """Split, normalize, frame and chunk utterances (see the module docstring for the format).

    Args:
        utterances: 1-D float arrays at ``sample_rate``, in a fixed order.
        split: ``"train"``, ``"valid"`` or ``"test"``; utterances are assigned to splits by a seeded
            permutation (``fractions`` of train/valid/test, ``seed``), so splits are disjoint.
        chunked: cut into ``seq_len`` chunks (default: True for train, False otherwise). With
            ``chunked=False`` the training split too is returned as whole utterances.
        permute: apply the fixed ``perm_seed`` permutation inside every frame.

    Returns:
        :class:`SeqData` with ``x`` ``[N, seq_len, frame_size]`` (chunked) or
        ``[N, T_max, frame_size]`` (whole utterances, zero-padded), normalization stats in
        ``meta["mean"]``/``meta["std"]``.
    """
    check_split(split)
    utts = [u for u in utterances if len(u) >= frame_size]
    keep = [i for i, u in enumerate(utterances) if len(u) >= frame_size]
    names = [names[i] for i in keep] if names is not None else [str(i) for i in keep]
    idx = split_indices(len(utts), fractions, seed)
    # global mean / std of all training samples, accumulated in float64 one utterance at a time
    count = sum(len(utts[i]) for i in idx["train"])
    mean = sum(float(utts[i].sum(dtype=np.float64)) for i in idx["train"]) / count
    var = sum(float(np.square(utts[i] - mean, dtype=np.float64).sum()) for i in idx["train"]) / count
    std = float(np.sqrt(var))
    chosen = idx[split]
    if split == "train":  # training stream order: utterances shuffled with a fixed seed
        chosen = chosen[np.random.default_rng(seed + 1).permutation(len(chosen))]
    frames = [((to_frames(utts[i], frame_size) - mean) / std).astype(np.float32) for i in chosen]
    perm = frame_permutation(frame_size, perm_seed) if permute else None
    if perm is not None:
        frames = [f[:, perm] for f in frames]
    meta = {"mean": mean, "std": std, "sample_rate": sample_rate, "frame_size": frame_size,
            "permutation": perm, "utterances": [names[i] for i in chosen], "seed": seed}
    if chunked is None:
        chunked = split == "train"
    if chunked:
        stream = np.concatenate(frames)
        n = len(stream) // seq_len
        x = stream[:n * seq_len].reshape(n, seq_len, frame_size)
        lengths = np.full(n, seq_len, dtype=np.int64)
        meta["seq_len"] = seq_len
    else:
        x, lengths = pad(frames)
    return SeqData(x, lengths, name + ("-perm" if permute else ""), split, meta)


def load_speech(source: str, split: str = "train", root: Optional[str] = None,
                cache: bool = True, **opts) -> SeqData:
    """Load a real speech source (``"fillets"`` or ``"pocketsphinx"``); ``opts`` go to
    :func:`format_speech` (``seq_len``, ``frame_size``, ``fractions``, ``seed``, ``permute``,
    ``perm_seed``, ``chunked``). ``root`` overrides where the audio files are looked for."""
    check_split(split)
    sample_rate = opts.pop("sample_rate", SAMPLE_RATE)
    utts, names = read_utterances(source, root, sample_rate, cache)
    return format_speech(source, utts, split, names=names, sample_rate=sample_rate, **opts)
