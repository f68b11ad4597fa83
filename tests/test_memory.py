"""No memory growth over many forward + backward calls of every op on tiny shapes (the C++ CPU backend).

- Kernels: 10^4 forward + backward calls of each C++ kernel (torch.ops.fastlv_C.*, called directly, ~10 us
  each) leave the resident set size (RSS, from /proc/self/statm) within 2 MiB of where it was after a
  warm-up: a leak of 200 bytes or more per call fails.
- Public ops: 10^3 calls of each public op with autograd (~1 ms each in Python dispatch, which is why
  there are fewer) leave the number of live tensors unchanged and the RSS within 4 MiB: a leaked
  autograd graph or saved tensor fails.
- masked_linear with a new mask at every call exercises the bound of its mask-plan cache.
The slacks absorb allocator and interpreter noise.
"""
import gc
import os
import warnings

import pytest
import torch

from fastlv.ops import masked_linear
from op_calls import forward_backward, op_calls

PAGE = os.sysconf("SC_PAGE_SIZE")
INF = float("inf")
K = torch.ops.fastlv_C

pytestmark = [pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)"),
              pytest.mark.usefixtures("one_thread")]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance reads __class__, which some deprecated torch objects warn on
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def rss_growth(step, calls: int, warmup: int = 300) -> int:
    for _ in range(warmup):
        step()
    before = rss_bytes()
    for _ in range(calls):
        step()
    return rss_bytes() - before


def r(*shape):
    return torch.randn(*shape)


NO_CLAMP = (-INF, INF)


def gmm_step(name, x, logits, mu, log_sigma):
    def step():
        out, lse_components, lse_logits = getattr(K, name)(x, logits, mu, log_sigma, *NO_CLAMP)
        getattr(K, name + "_backward")(torch.ones_like(out), x, logits, mu, log_sigma, lse_components, lse_logits,
                                       *NO_CLAMP)
    return step


def sample_kl_step(eps, seed):
    mu_q, lv_q, mu_p, lv_p = (r(3, 7) for _ in range(4))
    options = (True, True, True, False, 0.1, *NO_CLAMP, *NO_CLAMP)  # sample, kl, precision-weighted, free bits

    def step():
        z, kl = K.gaussian_sample_kl(mu_q, lv_q, mu_p, lv_p, eps, seed, *options)
        K.gaussian_sample_kl_backward(torch.ones_like(z), torch.ones_like(kl), mu_q, lv_q, mu_p, lv_p, eps, seed,
                                      *options)
    return step


def log_prob_step():
    x, mu, lv = r(3, 7), r(3, 7), r(3, 7)

    def step():
        out = K.gaussian_log_prob(x, mu, lv, False, *NO_CLAMP, *NO_CLAMP)
        K.gaussian_log_prob_backward(torch.ones_like(out), x, mu, lv, False, *NO_CLAMP, *NO_CLAMP)
    return step


def precision_step():
    mu_a, var_a, mu_b, var_b = r(3, 7), r(3, 7).exp(), r(3, 7), r(3, 7).exp()

    def step():
        mu, var = K.precision_weighted(mu_a, var_a, mu_b, var_b)
        K.precision_weighted_backward(torch.ones_like(mu), torch.ones_like(var), mu_a, var_a, mu_b, var_b)
    return step


def conv_step():
    x, w, b, cond = r(2, 3, 5), r(4, 3, 2), r(4), r(2, 4, 5)

    def step():
        out, pre = K.gated_causal_conv1d(x, w, b, 2, cond)
        K.gated_causal_conv1d_backward(torch.ones_like(out), x, w, pre, 2)
    return step


def linear_step():
    x, w, mask, b = r(3, 6), r(5, 6), (torch.rand(5, 6) < 0.5).float(), r(5)

    def step():
        y = K.masked_linear(x, w, mask, b, "relu")
        K.masked_linear_backward(torch.ones_like(y), x, w, mask, y, "relu")
    return step


KERNEL_STEPS = {
    "gmm_log_prob": lambda: gmm_step("gmm_log_prob", r(3, 7), r(3, 7, 4), r(3, 7, 4), r(3, 7, 4)),
    "diag_gmm_log_prob": lambda: gmm_step("diag_gmm_log_prob", r(3, 7), r(3, 4), r(3, 4, 7), r(3, 4, 7)),
    "gaussian_sample_kl eps": lambda: sample_kl_step(r(3, 7), None),
    "gaussian_sample_kl seed": lambda: sample_kl_step(None, torch.tensor(123)),
    "gaussian_log_prob": log_prob_step,
    "precision_weighted": precision_step,
    "gated_causal_conv1d": conv_step,
    "masked_linear": linear_step,
}


@pytest.mark.parametrize("name", list(KERNEL_STEPS))
def test_kernels_do_not_grow_memory(name):
    grown = rss_growth(KERNEL_STEPS[name](), 10_000)
    assert grown <= 2 * 2**20, f"{name}: RSS grew by {grown / 2**20:.2f} MiB over 10^4 calls"


@pytest.mark.parametrize("name", list(op_calls(1)))
def test_public_ops_do_not_grow_memory(name):
    inputs, fn = op_calls(1)[name]
    forward_backward(inputs, fn)
    tensors = live_tensors()
    grown = rss_growth(lambda: forward_backward(inputs, fn), 1_000, warmup=100)
    assert live_tensors() == tensors, f"{name}: tensors are kept alive across calls"
    assert grown <= 4 * 2**20, f"{name}: RSS grew by {grown / 2**20:.2f} MiB over 10^3 calls"


def test_no_memory_growth_with_a_new_mask_per_call():
    x, weight = r(2, 20), r(24, 20)

    def step():
        mask = (torch.rand(24, 20) < 0.5).float()
        y = K.masked_linear(x, weight, mask, None, "none")
        K.masked_linear_backward(torch.ones_like(y), x, weight, mask, None, "none")

    grown = rss_growth(step, 10_000)
    assert grown <= 2 * 2**20, f"masked_linear with new masks: RSS grew by {grown / 2**20:.2f} MiB"
    assert masked_linear(x, weight, torch.ones(24, 20)).shape == (2, 24)
