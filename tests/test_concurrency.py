"""Thread safety and thread-count independence of every op on the default CPU backend (C++), plus the
reference backend for the concurrent calls.

- The same op called from several Python threads at once gives bitwise-identical results in every
  thread (the kernels keep no shared mutable state but the mutex-guarded mask-plan cache of
  masked_linear).
- Results do not depend on torch.set_num_threads beyond floating-point summation order: 1, 2 and 3
  intra-op threads agree to rtol 1e-5 / atol 1e-5 (relative to the output's scale) in float32 and
  1e-12 in float64. Shapes are large enough that at::parallel_for splits the work.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import fastlv
from op_calls import forward_backward, op_calls

THREADS, CALLS_PER_THREAD = 4, 10


@pytest.mark.parametrize("backend", ["cpp", "ref"])
@pytest.mark.parametrize("name", list(op_calls(1)))
def test_concurrent_calls_agree(backend, name):
    inputs, fn = op_calls(64)[name]

    def work(_):
        with fastlv.use_backend(backend):  # the forced backend is a context variable: set it in the thread
            return [forward_backward(inputs, fn) for _ in range(CALLS_PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for thread in pool.map(work, range(THREADS)) for r in thread]
    first = results[0]
    for result in results[1:]:
        for got, want in zip(result, first):
            assert torch.equal(got, want), f"{name}: threads disagree"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(op_calls(1)))
def test_results_do_not_depend_on_the_thread_count(name, dtype):
    inputs, fn = op_calls(4096, dtype)[name]
    threads = torch.get_num_threads()
    try:
        results = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with fastlv.use_backend("cpp"):
                results[n] = forward_backward(inputs, fn)
    finally:
        torch.set_num_threads(threads)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for n in (2, 3):
        for got, want in zip(results[n], results[1]):
            scale = want.abs().max().item() if want.numel() else 0.0
            torch.testing.assert_close(got, want, rtol=tol, atol=tol * (1 + scale))
