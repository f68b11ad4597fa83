"""Misuse of every op raises an exception that names the offending argument, from the public Python
functions and from the C++ kernels called directly (torch.ops.fastlv_C.*), never a crash or an
out-of-bounds read. The checks already in tests/test_<op>.py are not repeated here.

Mixed devices use the ``meta`` device as the second device. Through the dispatcher a meta argument
routes the whole call to the Meta backend, which fastlv_C does not implement (a clean error); the C++
CPU kernel's own device checks are reached by redispatching to the CPU key directly.
"""
import re

import pytest
import torch

from fastlv.ops import (diag_gmm_log_prob, gated_causal_conv1d, gaussian_kl, gaussian_log_prob, gaussian_rsample,
                        gaussian_sample_kl, gmm_log_prob, masked_linear, precision_weighted)

INF = float("inf")
CPU_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def r(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype).to(device)


def meta(*shape):
    return torch.empty(*shape, device="meta")


def cpu_kernel(name):
    """The C++ CPU kernel of fastlv_C::<name>, whatever the devices of its arguments."""
    op = getattr(torch.ops.fastlv_C, name).default
    return lambda *args: op.redispatch(CPU_KEY, *args)


# ---------------------------------------------------------------------------------------------- Python

PYTHON_MISUSE = {
    # mixtures
    "gmm: no components": (lambda: gmm_log_prob(r(4), r(4, 0), r(4, 0), r(4, 0)), ValueError, "K >= 1"),
    "gmm: integer logits": (lambda: gmm_log_prob(r(4), torch.ones(4, 3, dtype=torch.long), r(4, 3), r(4, 3)),
                            TypeError, "logits must be a floating-point"),
    "gmm: x on meta": (lambda: gmm_log_prob(meta(4), r(4, 3), r(4, 3), r(4, 3)), ValueError, "logits is on cpu"),
    "gmm: mask of the wrong shape": (lambda: diag_gmm_log_prob(r(4, 2), r(4, 3), r(4, 3, 2), r(4, 3, 2),
                                                               mask=torch.ones(5)), ValueError, "mask of shape"),
    "diag gmm: no components": (lambda: diag_gmm_log_prob(r(4, 2), r(4, 0), r(4, 0, 2), r(4, 0, 2)), ValueError,
                                "K >= 1"),
    "diag gmm: x without D": (lambda: diag_gmm_log_prob(r(()), r(3), r(3, 1), r(3, 1)), ValueError,
                              "x must have at least 1"),
    "diag gmm: wrong K": (lambda: diag_gmm_log_prob(r(4, 2), r(4, 3), r(4, 4, 2), r(4, 4, 2)), ValueError, r"\[K, D\]"),
    "diag gmm: mu on meta": (lambda: diag_gmm_log_prob(r(4, 2), r(4, 3), meta(4, 3, 2), r(4, 3, 2)), ValueError,
                             "mu is on meta"),
    # Gaussians
    "kl: prior on meta": (lambda: gaussian_kl(r(3, 2), r(3, 2), meta(3, 2), r(3, 2)), ValueError, "mu_p is on meta"),
    "kl: integer logvar": (lambda: gaussian_kl(r(3, 2), torch.zeros(3, 2, dtype=torch.int32)), TypeError,
                           "logvar_q must be a floating-point"),
    "kl: mask of the wrong shape": (lambda: gaussian_kl(r(3, 2), r(3, 2), mask=torch.ones(4)), ValueError,
                                    "mask of shape"),
    "kl: unknown reduction": (lambda: gaussian_kl(r(3, 2), r(3, 2), reduction="max"), ValueError, "reduction"),
    "rsample: eps of the wrong shape": (lambda: gaussian_rsample(r(3, 2), r(3, 2), r(3, 4)), ValueError,
                                        r"eps \(3, 4\)"),
    "rsample: no latent dim": (lambda: gaussian_rsample(r(()), r(())), ValueError, "trailing latent dimension"),
    "rsample: logvar float64": (lambda: gaussian_rsample(r(3, 2), r(3, 2, dtype=torch.float64)), TypeError,
                                "logvar_q has dtype torch.float64"),
    "rsample: generator of another device": (lambda: gaussian_rsample(meta(3, 2), meta(3, 2),
                                                                      generator=torch.Generator()),
                                             ValueError, "generator is on cpu"),
    "sample_kl: eps on meta": (lambda: gaussian_sample_kl(r(3, 2), r(3, 2), eps=meta(3, 2)), ValueError,
                               "eps is on meta"),
    "sample_kl: mask of the wrong shape": (lambda: gaussian_sample_kl(r(3, 2), r(3, 2), mask=torch.ones(2, 2)),
                                           ValueError, "mask of shape"),
    "log_prob: integer mu": (lambda: gaussian_log_prob(r(3, 2), torch.ones(3, 2, dtype=torch.long), r(3, 2)),
                             TypeError, "mu must be a floating-point"),
    "log_prob: logvar on meta": (lambda: gaussian_log_prob(r(3, 2), r(3, 2), meta(3, 2)), ValueError,
                                 "logvar is on meta"),
    "log_prob: no latent dim": (lambda: gaussian_log_prob(r(()), r(()), r(())), ValueError,
                                "trailing latent dimension"),
    "precision_weighted: mismatched shapes": (lambda: precision_weighted(r(3, 2), r(3, 2), r(4, 2), r(3, 2)),
                                              ValueError, r"mu_b \(4, 2\)"),
    "precision_weighted: integer var": (lambda: precision_weighted(r(2), torch.ones(2, dtype=torch.long), r(2), r(2)),
                                        TypeError, "var_a must be a floating-point"),
    "precision_weighted: float64 mu_b": (lambda: precision_weighted(r(2), r(2), r(2, dtype=torch.float64), r(2)),
                                         TypeError, "mu_b has dtype torch.float64"),
    # gated convolution
    "conv: negative dilation": (lambda: gated_causal_conv1d(r(1, 2, 5), r(4, 2, 2), r(4), -2), ValueError,
                                "dilation must be an int >= 1"),
    "conv: float dilation": (lambda: gated_causal_conv1d(r(1, 2, 5), r(4, 2, 2), r(4), 1.5), ValueError, "dilation"),
    "conv: bool dilation": (lambda: gated_causal_conv1d(r(1, 2, 5), r(4, 2, 2), r(4), True), ValueError, "dilation"),
    "conv: no output channels": (lambda: gated_causal_conv1d(r(1, 2, 5), r(0, 2, 2), r(0)), ValueError,
                                 "weight must have shape"),
    "conv: cond on meta": (lambda: gated_causal_conv1d(r(1, 2, 5), r(4, 2, 2), r(4), 1, meta(1, 4, 5)), ValueError,
                           "cond is on meta"),
    "conv: bias on meta": (lambda: gated_causal_conv1d(r(1, 2, 5), r(4, 2, 2), meta(4)), ValueError, "bias is on meta"),
    "conv: 2-D cond": (lambda: gated_causal_conv1d(r(1, 2, 5), r(4, 2, 2), r(4), 1, r(4, 5)), ValueError,
                       "cond must be 3-D"),
    "conv: integer weight": (lambda: gated_causal_conv1d(r(1, 2, 5), torch.ones(4, 2, 2, dtype=torch.long), r(4)),
                             TypeError, "weight must be a floating-point"),
    # masked linear
    "masked_linear: mask on meta": (lambda: masked_linear(r(3, 4), r(5, 4), meta(5, 4)), ValueError, "mask is on meta"),
    "masked_linear: weight on meta": (lambda: masked_linear(r(3, 4), meta(5, 4), torch.ones(5, 4)), ValueError,
                                      "weight is on meta"),
    "masked_linear: 1-D weight": (lambda: masked_linear(r(3, 4), r(4), torch.ones(4)), ValueError,
                                  "weight must be 2-D"),
    "masked_linear: 0-d x": (lambda: masked_linear(r(()), r(5, 4), torch.ones(5, 4)), ValueError, "x must end in"),
    "masked_linear: integer x": (lambda: masked_linear(torch.ones(3, 4, dtype=torch.long), r(5, 4), torch.ones(5, 4)),
                                 TypeError, "x must be a floating-point"),
    "masked_linear: float64 bias": (lambda: masked_linear(r(3, 4), r(5, 4), torch.ones(5, 4),
                                                          r(5, dtype=torch.float64)),
                                    TypeError, "bias has dtype torch.float64"),
}


@pytest.mark.parametrize("case", list(PYTHON_MISUSE))
def test_python_misuse_names_the_argument(case):
    call, error, message = PYTHON_MISUSE[case]
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------------------------------------- C++

B = -INF, INF  # no clamp
LATENT = (True, True, False, False, -INF, *B, *B)  # sample, kl, precision_weighted, elementwise, free bits, bounds
GRAD = r(4)


def gmm_backward(grad=GRAD, lse=r(4), lse_logits=r(4)):
    return cpu_kernel("gmm_log_prob_backward")(grad, r(4), r(4, 3), r(4, 3), r(4, 3), lse, lse_logits, *B)


def diag_backward(grad=GRAD, lse=r(4), lse_logits=r(4)):
    return cpu_kernel("diag_gmm_log_prob_backward")(grad, r(4, 2), r(4, 3), r(4, 3, 2), r(4, 3, 2), lse, lse_logits, *B)


def sample_kl(mu_q=None, mu_p=None, eps=None, options=LATENT):
    mu_q = r(4, 3) if mu_q is None else mu_q
    return cpu_kernel("gaussian_sample_kl")(mu_q, torch.randn_like(mu_q), mu_p, None if mu_p is None else r(4, 3),
                                            r(4, 3) if eps is None else eps, None, *options)


def sample_kl_backward(grad_z=r(4, 3), grad_kl=r(4), options=LATENT):
    return cpu_kernel("gaussian_sample_kl_backward")(grad_z, grad_kl, r(4, 3), r(4, 3), None, None, r(4, 3), None,
                                                     *options)


def conv_backward(grad=r(2, 2, 5), pre=r(5, 2, 4), dilation=1):
    return cpu_kernel("gated_causal_conv1d_backward")(grad, r(2, 3, 5), r(4, 3, 2), pre, dilation)


def linear_backward(grad=r(3, 5), output=r(3, 5), activation="relu"):
    return cpu_kernel("masked_linear_backward")(grad, r(3, 4), r(5, 4), torch.ones(5, 4), output, activation)


CPP_MISUSE = {
    # mixtures: the saved log-normalizers index one entry per output element
    "gmm backward: short lse_components": (lambda: gmm_backward(lse=r(2)), "lse_components must have shape"),
    "gmm backward: lse_logits on meta": (lambda: gmm_backward(lse_logits=meta(4)), "lse_logits is on meta"),
    "gmm backward: grad on meta": (lambda: gmm_backward(grad=meta(4)), "grad is on meta"),
    "gmm backward: grad of the wrong shape": (lambda: gmm_backward(grad=r(5)), "grad must have shape"),
    "gmm: mu on meta": (lambda: cpu_kernel("gmm_log_prob")(r(4), r(4, 3), meta(4, 3), r(4, 3), *B), "mu is on meta"),
    "gmm: 0-d logits": (lambda: cpu_kernel("gmm_log_prob")(r(()), r(()), r(()), r(()), *B),
                        "logits must have a trailing component dimension"),
    "gmm: no components": (lambda: cpu_kernel("gmm_log_prob")(r(4), r(4, 0), r(4, 0), r(4, 0), *B), "K >= 1"),
    "diag gmm: 0-d x": (lambda: cpu_kernel("diag_gmm_log_prob")(r(()), r(3), r(3, 1), r(3, 1), *B),
                        "x must have a trailing data dimension"),
    "diag gmm: logits of another batch": (lambda: cpu_kernel("diag_gmm_log_prob")(
        r(4, 2), r(5, 3), r(4, 3, 2), r(4, 3, 2), *B), "logits must have shape"),
    "diag gmm backward: short lse_logits": (lambda: diag_backward(lse_logits=r(3)), "lse_logits must have shape"),
    "diag gmm backward: grad on meta": (lambda: diag_backward(grad=meta(4)), "grad is on meta"),
    # Gaussians
    "sample_kl: 0-d mu_q": (lambda: sample_kl(mu_q=r(())), "mu_q must have a trailing latent dimension"),
    "sample_kl: eps on meta": (lambda: sample_kl(eps=meta(4, 3)), "eps is on meta"),
    "sample_kl: integer eps": (lambda: sample_kl(eps=torch.zeros(4, 3, dtype=torch.long)), "eps has dtype"),
    "sample_kl: neither sample nor kl": (lambda: sample_kl(eps=r(4, 3), options=(False, False, *LATENT[2:])),
                                         "needs sample or kl"),
    "sample_kl: precision weighting without prior": (lambda: sample_kl(options=(True, True, True, *LATENT[3:])),
                                                     "needs a prior"),
    "sample_kl: mu_p without logvar_p": (lambda: cpu_kernel("gaussian_sample_kl")(r(4, 3), r(4, 3), r(4, 3), None,
                                                                                  r(4, 3), None, *LATENT),
                                         "given together"),
    "sample_kl backward: grad_z of the wrong shape": (lambda: sample_kl_backward(grad_z=r(4, 2)),
                                                      "grad_z must have shape"),
    "sample_kl backward: grad_kl of the wrong shape": (lambda: sample_kl_backward(grad_kl=r(3)),
                                                       "grad_kl must have shape"),
    "sample_kl backward: grad_z on meta": (lambda: sample_kl_backward(grad_z=meta(4, 3)), "grad_z is on meta"),
    "sample_kl backward: grad_kl on meta": (lambda: sample_kl_backward(grad_kl=meta(4)), "grad_kl is on meta"),
    "sample_kl backward: missing grad_z": (lambda: sample_kl_backward(grad_z=None), "grad_z must be given"),
    "log_prob: 0-d x": (lambda: cpu_kernel("gaussian_log_prob")(r(()), r(()), r(()), False, *B, *B),
                        "x must have a trailing latent dimension"),
    "log_prob: integer logvar": (lambda: cpu_kernel("gaussian_log_prob")(
        r(3, 2), r(3, 2), torch.ones(3, 2, dtype=torch.long), False, *B, *B), "logvar has dtype"),
    "log_prob backward: grad of the wrong shape": (lambda: cpu_kernel("gaussian_log_prob_backward")(
        r(3, 2), r(3, 2), r(3, 2), r(3, 2), False, *B, *B), "grad must have shape"),
    "log_prob backward: grad on meta": (lambda: cpu_kernel("gaussian_log_prob_backward")(
        meta(3), r(3, 2), r(3, 2), r(3, 2), False, *B, *B), "grad is on meta"),
    "precision_weighted: var_a on meta": (lambda: cpu_kernel("precision_weighted")(r(3), meta(3), r(3), r(3)),
                                          "var_a is on meta"),
    "precision_weighted backward: grad_var of the wrong shape": (lambda: cpu_kernel("precision_weighted_backward")(
        r(3), r(2), r(3), r(3), r(3), r(3)), "grad_var must have shape"),
    "precision_weighted backward: grad_mu on meta": (lambda: cpu_kernel("precision_weighted_backward")(
        meta(3), r(3), r(3), r(3), r(3), r(3)), "grad_mu is on meta"),
    # gated convolution
    "conv: 2-D x": (lambda: cpu_kernel("gated_causal_conv1d")(r(2, 3), r(4, 2, 2), r(4), 1, None), "x must have shape"),
    "conv: negative dilation": (lambda: cpu_kernel("gated_causal_conv1d")(r(1, 2, 5), r(4, 2, 2), r(4), -3, None),
                                "dilation must be >= 1"),
    "conv: weight on meta": (lambda: cpu_kernel("gated_causal_conv1d")(r(1, 2, 5), meta(4, 2, 2), r(4), 1, None),
                             "weight is on meta"),
    "conv: cond on meta": (lambda: cpu_kernel("gated_causal_conv1d")(r(1, 2, 5), r(4, 2, 2), r(4), 1, meta(1, 4, 5)),
                           "cond is on meta"),
    "conv: integer bias": (lambda: cpu_kernel("gated_causal_conv1d")(
        r(1, 2, 5), r(4, 2, 2), torch.ones(4, dtype=torch.long), 1, None), "bias has dtype"),
    "conv backward: grad of the wrong shape": (lambda: conv_backward(grad=r(2, 2, 4)), "grad must have shape"),
    "conv backward: grad on meta": (lambda: conv_backward(grad=meta(2, 2, 5)), "grad is on meta"),
    "conv backward: pre on meta": (lambda: conv_backward(pre=meta(5, 2, 4)), "pre is on meta"),
    "conv backward: negative dilation": (lambda: conv_backward(dilation=-1), "dilation must be >= 1"),
    # masked linear
    "masked_linear: mask on meta": (lambda: cpu_kernel("masked_linear")(r(3, 4), r(5, 4), meta(5, 4), None, "none"),
                                    "mask is on meta"),
    "masked_linear: 1-D weight": (lambda: cpu_kernel("masked_linear")(r(3, 4), r(4), torch.ones(4), None, "none"),
                                  "weight must be 2-D"),
    "masked_linear: bias of the wrong shape": (lambda: cpu_kernel("masked_linear")(
        r(3, 4), r(5, 4), torch.ones(5, 4), r(4), "none"), "bias must have shape"),
    "masked_linear: bias on meta": (lambda: cpu_kernel("masked_linear")(r(3, 4), r(5, 4), torch.ones(5, 4), meta(5),
                                                                        "none"), "bias is on meta"),
    "masked_linear: integer x": (lambda: cpu_kernel("masked_linear")(torch.ones(3, 4, dtype=torch.long), r(5, 4),
                                                                     torch.ones(5, 4), None, "none"),
                                 "x must be a floating-point"),
    "masked_linear backward: grad of the wrong shape": (lambda: linear_backward(grad=r(3, 4)), "grad must have shape"),
    "masked_linear backward: relu without output": (lambda: linear_backward(output=None), "needs the output"),
    "masked_linear backward: output of the wrong shape": (lambda: linear_backward(output=r(2, 5)),
                                                          "output must have shape"),
    "masked_linear backward: grad on meta": (lambda: linear_backward(grad=meta(3, 5)), "grad is on meta"),
    "masked_linear backward: output on meta": (lambda: linear_backward(output=meta(3, 5)), "output is on meta"),
}


@pytest.mark.parametrize("case", list(CPP_MISUSE))
def test_cpp_misuse_names_the_argument(case):
    call, message = CPP_MISUSE[case]
    with pytest.raises(RuntimeError, match=message):
        call()


@pytest.mark.parametrize("name, args", [
    ("gmm_log_prob", lambda: (r(4), r(4, 3), meta(4, 3), r(4, 3), *B)),
    ("gaussian_log_prob", lambda: (r(3, 2), r(3, 2), meta(3, 2), False, *B, *B)),
    ("gated_causal_conv1d", lambda: (r(1, 2, 5), r(4, 2, 2), r(4), 1, meta(1, 4, 5))),
    ("masked_linear", lambda: (r(3, 4), meta(5, 4), torch.ones(5, 4), None, "none")),
])
def test_cpp_mixed_devices_through_the_dispatcher(name, args):
    """Through the dispatcher a meta argument selects the Meta backend: a clean error naming the op."""
    with pytest.raises((NotImplementedError, RuntimeError), match=re.escape(f"fastlv_C::{name}")):
        getattr(torch.ops.fastlv_C, name)(*args())
