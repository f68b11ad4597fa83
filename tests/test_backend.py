"""Backend selection: reporting, forcing, clear errors, and the reference fallback."""
import os
import subprocess
import sys

import pytest
import torch

import fastlv
from fastlv._backend import select
from fastlv.ops import gmm_log_prob


def test_backends_report_every_backend():
    report = fastlv.backends("cpu")
    assert set(report) == {"ref", "cpp", "triton", "cuda"}
    assert report["ref"] == "available" and report["cpp"] == "available"
    assert "CUDA" in report["cuda"] or "cuda" in report["cuda"] or report["cuda"] == "available"


def test_default_selection_per_device():
    assert select(torch.device("cpu")) == "cpp"
    with fastlv.use_backend("ref"):
        assert select(torch.device("cpu")) == "ref"
    assert select(torch.device("cpu")) == "cpp"


def test_forcing_an_unavailable_backend_is_an_error():
    x = torch.randn(3)
    p = torch.randn(3, 2)
    if fastlv.backends("cpu")["cuda"] != "available":
        with fastlv.use_backend("cuda"), pytest.raises(fastlv.BackendUnavailable, match="cuda"):
            gmm_log_prob(x, p, p, p)
    with pytest.raises(ValueError, match="unknown backend"):
        with fastlv.use_backend("fast"):
            pass


def test_env_variable_forces_backend(monkeypatch):
    monkeypatch.setenv("FASTLV_BACKEND", "ref")
    assert select(torch.device("cpu")) == "ref"
    monkeypatch.setenv("FASTLV_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTLV_BACKEND"):
        select(torch.device("cpu"))


def test_falls_back_to_reference_without_extension():
    code = (
        "import sys, warnings; sys.modules['fastlv._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always'); import fastlv\n"
        "assert any('falls back' in str(m.message) for m in w), w\n"
        "import torch; r = fastlv.backends('cpu'); assert 'failed to load' in r['cpp'], r\n"
        "from fastlv._backend import select; assert select(torch.device('cpu')) == 'ref'\n"
        "x = torch.randn(4); p = torch.randn(4, 3).requires_grad_()\n"
        "fastlv.ops.gmm_log_prob(x, p, p, p).sum().backward(); assert p.grad is not None\n"
        "print('ok')\n")
    env = dict(os.environ, FASTLV_BACKEND="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
