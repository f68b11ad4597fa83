"""fastlv.train and fastlv.sample: a real-speech training run, exact resume, DDP equivalence, skipped
non-finite updates, atomic checkpoints, and the sample command's files.

The small models below are also what the subprocess tests load by path (``tests.test_train:TinyRNN``).
"""
import csv
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fastlv.data as D
from fastlv import sample, train
from fastlv.nn import GMMHead, SequenceModel, SequenceOutput

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def masked_sum(values, mask):
    """Sum over the step axis (-1) of ``values`` [..., B, T], padded steps excluded."""
    return (values if mask is None else values.masked_fill(~mask, 0.0)).sum(-1)


class TinyRNN(SequenceModel):
    """Deterministic: an LSTM over the previous frames and a GMM output (an F-RNN in miniature)."""

    def __init__(self, x_dim, d_rnn=16, n_components=2):
        super().__init__()
        self.rnn = nn.LSTM(x_dim, d_rnn, batch_first=True)
        self.head = GMMHead(d_rnn, x_dim, n_components)

    def states(self, x):
        return self.rnn(F.pad(x, (0, 0, 1, 0))[:, :-1])[0]  # input at step t is frame t-1

    def forward(self, x, mask=None):
        log_px = masked_sum(self.head(self.states(x)).log_prob(x).sum(-1), mask)
        return SequenceOutput(log_px, torch.zeros_like(log_px))

    @torch.no_grad()
    def sample(self, steps, batch_size=1):
        x = torch.zeros(batch_size, 1, self.head.out_features)
        state, frames = None, []
        for _ in range(steps):
            h, state = self.rnn(x, state)
            x = self.head(h).sample()
            frames.append(x)
        return torch.cat(frames, 1)


class FaultOnceRNN(TinyRNN):
    """Its second training forward pass is altered by ``corrupt``."""

    def __init__(self, x_dim, d_rnn=16, n_components=2):
        super().__init__(x_dim, d_rnn, n_components)
        self.calls = 0

    def forward(self, x, mask=None):
        out = super().forward(x, mask)
        self.calls += self.training
        if self.training and self.calls == 2:
            self.corrupt(out)
        return out


class NaNOnceRNN(FaultOnceRNN):
    """Its second training forward pass returns a NaN log-likelihood."""

    def corrupt(self, out):
        out.log_likelihood = out.log_likelihood * math.nan


class InfGradOnceRNN(FaultOnceRNN):
    """Its second training pass has a finite loss but an infinite gradient (d sqrt(u)/du at u = 0)."""

    def corrupt(self, out):
        w = self.head.proj.weight
        out.log_likelihood = out.log_likelihood + torch.sqrt(w - w.detach()).sum()  # adds 0


# synthetic speech layout, small enough for a few CPU updates per second
SMALL_DATA = ["--data", "synthetic", "--data-args", "n_utterances=24,seq_len=10"]


SMALL_SRNN = "d_emb=8,d_rnn=8,d_mlp=8,d_latent=4"


def run_args(out, *extra, model="SimplifiedSRNN", model_args=SMALL_SRNN, steps=6):
    return ["--model", model, "--model-args", model_args, *SMALL_DATA, "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--valid-every", "3", "--log-every", "1", "--iw-k", "2", "--no-plot", *extra]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subprocess_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return env


def test_speech_training_improves_validation(tmp_path):
    if "pocketsphinx" not in D.available():
        pytest.skip(f"real speech not installed: {D.install_command('pocketsphinx')}")
    result = train.run(["--model", "SimplifiedSRNN", "--model-args", "d_emb=32,d_rnn=32,d_mlp=32,d_latent=8",
                         "--data", "pocketsphinx", "--out", str(tmp_path), "--steps", "60", "--batch-size", "8",
                         "--valid-every", "20", "--log-every", "5", "--iw-k", "4", "--lr", "3e-3"])
    valid = read_rows(tmp_path / "valid.csv")
    elbo = [float(r["elbo_per_sequence"]) for r in valid]
    assert [int(r["step"]) for r in valid] == [20, 40, 60]
    assert elbo[-1] > elbo[0] + 1000, elbo  # nats per utterance of 100s of 200-sample frames
    # the test bound is in the papers' units: a whole utterance, and the IW bound is at least the ELBO
    assert result["units"] == "nats per sequence"
    steps = int(D.load("pocketsphinx", "test").lengths.sum())
    assert result["elbo_per_sequence"] == pytest.approx(result["elbo_per_step"] * steps)
    assert result["iwae4_per_sequence"] >= result["elbo_per_sequence"] - 1.0
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "test.json").exists()
    assert len(read_rows(tmp_path / "train.csv")) == 12


def test_resume_reproduces_uninterrupted_run(tmp_path):
    train.run(run_args(tmp_path / "full"))
    train.run(run_args(tmp_path / "split", "--stop-at", "4"))
    assert train.load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 4
    train.run(run_args(tmp_path / "split", "--resume"))
    full = train.load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    split = train.load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for name, value in full["model"].items():
        assert torch.equal(value, split["model"][name]), name
    for a, b in zip(full["optimizer"]["state"].values(), split["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["order"] == split["order"] and full["step"] == split["step"] == 6
    assert read_rows(tmp_path / "full" / "train.csv") == [
        {**r, "steps_per_s": f["steps_per_s"]} for r, f in
        zip(read_rows(tmp_path / "split" / "train.csv"), read_rows(tmp_path / "full" / "train.csv"))]
    with pytest.raises(ValueError, match="--batch-size"):
        train.run(run_args(tmp_path / "split", "--resume", "--batch-size", "2"))


def test_ddp_two_processes_equal_single_process(tmp_path):
    args = run_args(tmp_path / "single", model="tests.test_train:TinyRNN", model_args="d_rnn=8", steps=3)
    train.run(args)
    ddp_args = run_args(tmp_path / "ddp", model="tests.test_train:TinyRNN", model_args="d_rnn=8", steps=3)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "fastlv.train", *ddp_args, "--device", "cpu"],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = read_rows(tmp_path / "single" / "train.csv"), read_rows(tmp_path / "ddp" / "train.csv")
    assert len(single) == len(ddp) == 3
    for s, d in zip(single, ddp):
        for key in ("loss", "nll", "grad_norm"):
            assert float(d[key]) == pytest.approx(float(s[key]), rel=1e-5), (key, s, d)
    a = train.load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    b = train.load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert len(b["rng"]) == 2  # the random state of each process
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-6)


def ddp_gradient_worker(rank, world, port, batch, out):
    """One process of a gloo job: a plain-SGD (lr 1) update of train_step on this rank's half of the batch,
    so the weight change is minus the all-reduced gradient."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    procs = train.setup_processes("cpu")
    torch.manual_seed(0)
    model = TinyRNN(batch.shape[-1], d_rnn=8)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stats, _ = train.train_step(DistributedDataParallel(model), optimizer, batch.chunk(world)[rank], None, 1.0, 1.0,
                                0.0, procs)
    torch.save({"grads": [b - p.detach() for b, p in zip(before, model.parameters())], "loss": stats["loss"]},
               out / f"{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_gradients_equal_single_process(tmp_path):
    batch = torch.randn(4, 6, 5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(ddp_gradient_worker, args=(2, port, batch, tmp_path), nprocs=2)
    torch.manual_seed(0)
    model = TinyRNN(5, d_rnn=8)
    loss = model(batch).loss()
    loss.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert result["loss"] == pytest.approx(loss.item(), rel=1e-6)  # averaged over the processes
        for p, g in zip(model.parameters(), result["grads"]):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_nonfinite_loss_skips_the_update(tmp_path, capsys):
    torch.manual_seed(0)
    model = NaNOnceRNN(3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2, 5, 3)
    _, applied = train.train_step(model, optimizer, x, None, 1.0, 1.0, 0.5, train.Processes())
    assert applied
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adam_step = optimizer.state[model.head.proj.weight]["step"].clone()
    stats, applied = train.train_step(model, optimizer, x, None, 1.0, 1.0, 0.5, train.Processes())
    assert not applied and math.isnan(stats["loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(optimizer.state[model.head.proj.weight]["step"], adam_step)
    # through the command line: the NaN update is counted and the weights stay finite
    train.run(run_args(tmp_path, model="tests.test_train:NaNOnceRNN", model_args="d_rnn=8", steps=4))
    rows = read_rows(tmp_path / "train.csv")
    assert [int(r["skipped"]) for r in rows] == [0, 1, 1, 1]
    assert math.isnan(float(rows[1]["loss"])) and math.isfinite(float(rows[2]["loss"]))
    state = train.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["skipped"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert "skipped" not in progress[0] and all("skipped 1" in line for line in progress[1:])


def test_nonfinite_gradient_with_finite_loss_skips_the_update():
    torch.manual_seed(0)
    model = InfGradOnceRNN(3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2, 5, 3)
    assert train.train_step(model, optimizer, x, None, 1.0, 1.0, 0.5, train.Processes())[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats, applied = train.train_step(model, optimizer, x, None, 1.0, 1.0, 0.5, train.Processes())
    assert not applied and math.isfinite(stats["loss"]) and not math.isfinite(stats["grad_norm"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    stats, applied = train.train_step(model, optimizer, x, None, 1.0, 1.0, 0.5, train.Processes())
    assert applied and all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_survives_a_kill_during_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    script = textwrap.dedent(f"""
        import sys, time, torch
        from fastlv import train
        train.save_checkpoint({str(path)!r}, {{"step": 1, "w": torch.ones(3)}})

        def slow_save(state, f):  # writes half a checkpoint, then hangs until killed
            f.write(b"PK" + b"x" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

        train.torch.save = slow_save
        train.save_checkpoint({str(path)!r}, {{"step": 2, "w": torch.zeros(3)}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(list(tmp_path.glob(".checkpoint.pt.*.tmp"))) == 1  # the half-written temporary file
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = train.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_training_killed_during_a_checkpoint_save_keeps_the_previous_one(tmp_path):
    """The real training command, killed while it writes its second checkpoint (step 6): checkpoint.pt
    is still the complete step-3 checkpoint, loads with weights_only=True and resumes."""
    out = tmp_path / "run"
    args = run_args(out, "--checkpoint-every", "3", "--valid-every", "100", steps=6)
    script = textwrap.dedent(f"""
        import time, torch
        from fastlv import train
        real_save = torch.save

        def save(state, f):  # the step-6 checkpoint: half written, then hangs until killed
            if state["step"] < 6:
                return real_save(state, f)
            f.write(b"PK" + b"x" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

        train.torch.save = save
        train.run({args!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values())
    result = train.run(run_args(out, "--checkpoint-every", "3", "--valid-every", "100", "--resume", steps=6))
    assert result["steps"] == 6


def test_sample_writes_plot_and_wav(tmp_path):
    train.run(run_args(tmp_path, steps=2))
    sample.main([str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "samples"), "--num", "2",
                 "--steps", "5", "--seed", "1"])
    assert (tmp_path / "samples" / "samples.png").stat().st_size > 0
    for i in range(2):
        with wave.open(str(tmp_path / "samples" / f"sample_{i}.wav"), "rb") as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert w.getnframes() == 5 * 200


@pytest.mark.parametrize("kind,dim", [("speech", 200), ("music", 88), ("handwriting", 3), ("digits", 1)])
def test_sample_plot_for_each_data_kind(tmp_path, kind, dim):
    steps = 784 if kind == "digits" else 30
    x = torch.rand(3, steps, dim)
    meta = {"mean": [0.0, 0.0] if kind == "handwriting" else 0.0, "std": [1.0, 1.0] if kind == "handwriting" else 1.0,
            "sample_rate": 16000}
    path = sample.plot_samples(x, kind, meta, tmp_path / "s.png")
    assert path.stat().st_size > 0


def test_schedules_and_command_line_parsing():
    assert train.cosine_lr(0, 100, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert train.cosine_lr(50, 100, 1e-3, 1e-6) == pytest.approx((1e-3 + 1e-6) / 2)
    assert train.cosine_lr(100, 100, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert [train.kl_weight(s, 0.2, 5e-5) for s in (0, 2000, 16000, 40000)] == pytest.approx([0.2, 0.3, 1.0, 1.0])
    assert train.parse_kwargs("d_rnn=64, fractions=(0.8,0.1,0.1),output=gmm,flat=True") == {
        "d_rnn": 64, "fractions": (0.8, 0.1, 0.1), "output": "gmm", "flat": True}
    with pytest.raises(ValueError, match="key=value"):
        train.parse_kwargs("d_rnn")


def test_build_model_from_names_configs_and_data():
    # the re-examination code's TIMIT F-SRNN (reference-facts.md)
    assert train.build_model("SimplifiedSRNN", {}, 200, "speech", "timit").num_parameters() == 17_525_848
    assert type(train.build_model("FRNN", {"d_rnn": 8, "d_emb": 8}, 88, "music").head).__name__ == "BernoulliHead"
    tiny = train.build_model("tests.test_train:TinyRNN", {"d_rnn": 4}, 3)
    assert tiny.head.out_features == 3  # x_dim filled from the data
    with pytest.raises(ValueError, match="frame_size=200 does not match the data's frame size 88"):
        train.build_model("SimplifiedSRNN", {}, 88, "music", "timit")
    with pytest.raises(ValueError, match="not in fastlv.nn"):
        train.build_model("NoSuchModel", {}, 88)
