"""`pytest bench/ --benchmark-only`: fastlv's providers under pytest-benchmark, each op next to its eager
reference and torch.compile of it (the same shapes as `python -m bench`). Not part of the test suite
(`pytest tests`): speeds are measured here, never asserted."""
import pytest
import torch

import fastlv
from bench import gaussian, gmm, table5
from bench.common import forward_backward_pass
from fastlv.ops import gaussian_sample_kl, gmm_log_prob, gmm_log_prob_ref

pytest.importorskip("pytest_benchmark")

PROVIDERS = ["eager", "compile", "fastlv"]


def provider_fn(provider, fused, reference):
    return {"eager": reference, "compile": torch.compile(reference), "fastlv": fused}[provider]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(gmm.SHAPES))
def test_gmm_log_prob(benchmark, shape, provider):
    benchmark.group = f"gmm_log_prob fwd+bwd {shape}"
    inputs = gmm.make_inputs(*gmm.SHAPES[shape])
    benchmark(forward_backward_pass, provider_fn(provider, gmm_log_prob, gmm_log_prob_ref), inputs)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(gaussian.SHAPES))
def test_gaussian_sample_kl(benchmark, shape, provider):
    benchmark.group = f"gaussian sample+KL fwd+bwd {shape}"
    inputs = gaussian.make_inputs(*gaussian.SHAPES[shape])
    benchmark(forward_backward_pass, provider_fn(provider, gaussian_sample_kl, gaussian.eager_sample_kl), inputs)


@pytest.mark.parametrize("backend", [None, "ref"], ids=["fastlv-ops", "ref-ops"])
@pytest.mark.parametrize("entry", table5.ENTRIES[:2], ids=lambda e: e.name)
def test_table5_training_step(benchmark, entry, backend):
    benchmark.group = f"table5 training step (quick widths) {entry.name}"
    model = table5.build(entry, full=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(32, entry.frames, 200)

    def step():
        with fastlv.use_backend(backend):
            table5.training_step(model, optimizer, x)
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
