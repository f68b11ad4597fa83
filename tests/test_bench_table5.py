"""bench/table5.py --train-steps: the four Table 5 models train with fastlv.train's recipe and get a
finite held-out ELBO that beats their untrained one (tiny widths, short synthetic sequences)."""
import dataclasses
import math

import pytest

import fastlv.data as D
from bench import table5
from fastlv import train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_WIDTHS = dict(d_emb=8, d_rnn=16, d_mlp=8, d_latent=4)
TINY_DATA = dict(n_utterances=30, min_seconds=0.05, max_seconds=0.1)  # utterances of 4-8 frames
TINY_ENTRIES = [dataclasses.replace(entry, frames=2) for entry in table5.ENTRIES]  # flat: T = 400


def untrained_elbo(entry, held_out):
    model = table5.build(entry, full=False, widths=TINY_WIDTHS)
    return train.evaluate(model, held_out, train.Processes(), batch_size=16)["elbo_per_sequence"]


def test_train_steps_improve_the_held_out_elbo():
    cells = table5.train_and_evaluate("synthetic", steps=10, batch=8, entries=TINY_ENTRIES, widths=TINY_WIDTHS,
                                      **TINY_DATA)
    held_out = D.load("synthetic", table5.HELD_OUT, **TINY_DATA)
    assert list(cells) == [entry.name for entry in TINY_ENTRIES]
    for entry in TINY_ENTRIES:
        elbo = cells[entry.name][table5.ELBO_COLUMN]
        assert math.isfinite(elbo) and cells[entry.name]["train s"] > 0
        assert elbo > untrained_elbo(entry, held_out), entry.name
