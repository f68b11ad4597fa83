"""Polyphonic music: the Bach four-part chorales bundled with ``music21``, as binary piano rolls.

Format (Boulanger-Lewandowski et al. 2012's JSB Chorales, used for latent-variable RNNs by
Fraccaro et al. 2016, Sec. 5, and Aksan & Hilliges 2019 (STCN)): one step per quarter note, an
88-dim binary vector over the piano keys A0..C8 (MIDI 21..108), 1 where a note of the Soprano, Alto,
Tenor or Bass part (five-voice chorales: all voices) sounds at that beat (sampled at the beat: a note is on at step ``k`` when
``onset <= k / steps_per_quarter < onset + duration``). Sequences have different lengths, so a split
is ``[N, T_max, 88]`` zero-padded with ``lengths``.

The 350 distinct chorale files of ``music21.corpus.chorales.Iterator`` (Riemenschneider numbering,
371 numbers) are split train/valid/test with a seeded permutation (default 60/20/20, the proportions
of the 229/76/77 JSB set).
Parsing costs ~0.15 s a chorale, so the rolls are cached; ``max_pieces`` keeps only the first
pieces of a split (for tests) without changing which split a piece belongs to.
"""
from __future__ import annotations

import importlib.metadata
import math
from typing import List, Optional

import numpy as np

from .core import SeqData, cached, check_split, missing, pad, split_indices

MUSIC21_PIP = "pip install music21==10.5.1"
LOWEST, KEYS = 21, 88
VOICES = ("soprano", "alto", "tenor", "bass")


def _music21():
    try:
        from music21 import corpus
    except ImportError:
        raise missing("music", "chorales", "Python package", MUSIC21_PIP) from None
    return corpus


def chorale_names() -> List[str]:
    """Corpus paths of the distinct chorales, in the fixed Riemenschneider order.

    The Riemenschneider numbering lists 371 chorales but 21 of its numbers point at a file already
    listed (e.g. ``bach/bwv112.5`` twice); keeping each file once (350) stops a piece from landing in
    two splits."""
    corpus = _music21()
    names = list(dict.fromkeys(str(n) for n in corpus.chorales.Iterator(returnType="filename")))
    if not names:
        raise missing("music", "chorales", "Python package", MUSIC21_PIP, "its chorale corpus is empty")
    return names


def satb_parts(score) -> list:
    """The vocal parts, found by name (Soprano, Alto, Tenor, Bass; also "Soprano 1", "Soprano 2" of
    the five-voice chorales, or "Soprano Oboe 1 Violin1" where instruments double a voice),
    leaving out obbligato instruments and continuo; the first four parts when they are unnamed."""
    named = [p for p in score.parts if (p.partName or "").strip().lower().startswith(VOICES)]
    return named if len(named) >= 4 else list(score.parts)[:4]


def piano_roll(score, steps_per_quarter: int = 1) -> np.ndarray:
    """``[T, 88]`` uint8 roll of a music21 score's SATB parts on a ``1/steps_per_quarter`` grid."""
    parts = satb_parts(score)
    end = max(float(p.highestTime) for p in parts)
    steps = max(1, math.ceil(end * steps_per_quarter - 1e-6))
    roll = np.zeros((steps, KEYS), dtype=np.uint8)
    for part in parts:
        for n in part.flatten().notes:
            on = float(n.offset) * steps_per_quarter
            off = on + float(n.quarterLength) * steps_per_quarter
            first, last = math.ceil(on - 1e-6), math.ceil(off - 1e-6)  # steps k with on <= k < off
            for p in n.pitches:
                key = p.midi - LOWEST
                if 0 <= key < KEYS:
                    roll[first:min(last, steps), key] = 1
    return roll


def load_chorales(split: str = "train", fractions=(0.6, 0.2, 0.2), seed: int = 0,
                  steps_per_quarter: int = 1, max_pieces: Optional[int] = None,
                  cache: bool = True) -> SeqData:
    """Piano rolls of one split: ``x`` ``[N, T_max, 88]`` float32 in {0, 1}, ``lengths`` ``[N]``,
    ``meta["pieces"]`` the corpus paths."""
    check_split(split)
    names = chorale_names()
    chosen = [names[i] for i in split_indices(len(names), fractions, seed)[split]]
    if max_pieces is not None:
        chosen = chosen[:max_pieces]

    def build():
        corpus = _music21()
        rolls = [piano_roll(corpus.parse(n), steps_per_quarter) for n in chosen]
        return {"rolls": np.concatenate(rolls), "offsets": np.cumsum([0] + [len(r) for r in rolls])}

    params = {"pieces": chosen, "steps_per_quarter": steps_per_quarter,
              "music21": importlib.metadata.version("music21")}
    arr = cached("chorales", params, build, cache)
    off = arr["offsets"]
    x, lengths = pad([arr["rolls"][off[i]:off[i + 1]] for i in range(len(chosen))])
    return SeqData(x, lengths, "chorales", split,
                   {"pieces": chosen, "steps_per_quarter": steps_per_quarter, "lowest_midi": LOWEST,
                    "seed": seed})
