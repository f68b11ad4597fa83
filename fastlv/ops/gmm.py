"""Gaussian-mixture log-likelihood: the output distribution of every model in the papers.

Two forms:

- ``gmm_log_prob``: a per-element mixture. Each scalar x has its own K-component mixture (Dai et al.
  2019, Sec. 4.1, Eq. 5: the factorized per-sample GMM of F-RNN/F-SRNN).
- ``diag_gmm_log_prob``: a full-frame mixture. One weight vector per frame, each component a
  diagonal Gaussian over the D dimensions of the frame (STCN, Aksan & Hilliges 2019, Appendix 7.1;
  VRNN-GMM, Chung et al. 2015).

Kernels (selected by ``fastlv._backend``): C++ CPU (csrc/cpu/gmm.cpp), CUDA (csrc/cuda/gmm.cu),
Triton (triton_kernels/gmm.py) and the pure-PyTorch references below, which are the oracle. The
forward saves only the two log-normalizers (of the components and of the weights) per frame/element;
the backward recomputes the responsibilities from the inputs, so nothing of size [..., K] is kept.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fastlv._backend import run_kernel
from fastlv.ops._common import broadcast_shape, check_tensors, clamp_bounds, expand_to, no_double_backward, reduce

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _upcast(*tensors: Tensor) -> list[Tensor]:
    """Math in fp32 for half inputs."""
    return [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]


def _component_terms(x, mu, log_sigma, lo, hi, full_frame):
    """z = (x - mu) / sigma, 1 / sigma and log N(x; mu, sigma) per component (summed over D if
    full_frame), with log_sigma clamped to [lo, hi]."""
    log_sigma = log_sigma.clamp(lo, hi)
    x = x.unsqueeze(-2) if full_frame else x.unsqueeze(-1)  # against [..., K, D] or [..., K]
    inv_sigma = torch.exp(-log_sigma)
    z = (x - mu) * inv_sigma
    log_density = -0.5 * z * z - log_sigma - HALF_LOG_2PI
    return z, inv_sigma, log_density.sum(-1) if full_frame else log_density


def _mixture_log_prob_ref(x: Tensor, logits: Tensor, mu: Tensor, log_sigma: Tensor, lo: float, hi: float,
                          full_frame: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(log p, logsumexp_k a_k, logsumexp_k logit_k) in plain PyTorch (differentiable), where
    a_k = logit_k + log N(x; mu_k, sigma_k)."""
    dtype = x.dtype
    x, logits, mu, log_sigma = _upcast(x, logits, mu, log_sigma)
    _, _, log_density = _component_terms(x, mu, log_sigma, lo, hi, full_frame)
    lse_components = torch.logsumexp(logits + log_density, -1)
    lse_logits = torch.logsumexp(logits, -1)
    return (lse_components - lse_logits).to(dtype), lse_components.to(dtype), lse_logits.to(dtype)


def _mixture_backward_ref(grad, x, logits, mu, log_sigma, lse_components, lse_logits, lo, hi, full_frame):
    """Gradients of log p w.r.t. (x, logits, mu, log_sigma), recomputed from the inputs with the
    formulas of csrc/common/gmm_math.h."""
    dtypes = [t.dtype for t in (x, logits, mu, log_sigma)]
    grad, x, logits, mu, log_sigma, lse_components, lse_logits = _upcast(grad, x, logits, mu, log_sigma,
                                                                         lse_components, lse_logits)
    z, inv_sigma, log_density = _component_terms(x, mu, log_sigma, lo, hi, full_frame)
    r = grad.unsqueeze(-1) * torch.exp(logits + log_density - lse_components.unsqueeze(-1))  # responsibilities
    w = grad.unsqueeze(-1) * torch.exp(logits - lse_logits.unsqueeze(-1))  # mixture weights
    r_term = r.unsqueeze(-1) if full_frame else r
    d_mu = r_term * z * inv_sigma
    inside = (log_sigma >= lo) & (log_sigma <= hi)
    d_log_sigma = torch.where(inside, r_term * (z * z - 1), torch.zeros_like(z))
    d_x = -d_mu.sum(-2 if full_frame else -1)
    return tuple(g.to(dt) for g, dt in zip((d_x, r - w, d_mu, d_log_sigma), dtypes))


def gmm_log_prob_ref(x: Tensor, logits: Tensor, mu: Tensor, log_sigma: Tensor, *,
                     log_sigma_min: float | None = None, log_sigma_max: float | None = None,
                     reduction: str = "none", mask: Tensor | None = None) -> Tensor:
    """Pure-PyTorch reference of :func:`gmm_log_prob` (same arguments)."""
    lo, hi = clamp_bounds(log_sigma_min, log_sigma_max)
    return reduce(_mixture_log_prob_ref(x, logits, mu, log_sigma, lo, hi, False)[0], reduction, mask)


def diag_gmm_log_prob_ref(x: Tensor, logits: Tensor, mu: Tensor, log_sigma: Tensor, *,
                          log_sigma_min: float | None = None, log_sigma_max: float | None = None,
                          reduction: str = "none", mask: Tensor | None = None) -> Tensor:
    """Pure-PyTorch reference of :func:`diag_gmm_log_prob` (same arguments)."""
    lo, hi = clamp_bounds(log_sigma_min, log_sigma_max)
    return reduce(_mixture_log_prob_ref(x, logits, mu, log_sigma, lo, hi, True)[0], reduction, mask)


def _define_mixture_op(name: str, full_frame: bool):
    """Define the custom ops ``fastlv::<name>`` -> (log p, logsumexp_k a_k, logsumexp_k logit_k) and
    ``fastlv::<name>_backward``, with fake (meta) kernels and autograd. The two log-normalizers are
    internal, non-differentiable outputs saved for the backward."""

    def forward_ref(x, logits, mu, log_sigma, lo, hi):
        return _mixture_log_prob_ref(x, logits, mu, log_sigma, lo, hi, full_frame)

    def backward_ref(*args):
        return _mixture_backward_ref(*args, full_frame)

    @torch.library.custom_op(f"fastlv::{name}", mutates_args=())
    def op(x: Tensor, logits: Tensor, mu: Tensor, log_sigma: Tensor, log_sigma_min: float,
           log_sigma_max: float) -> tuple[Tensor, Tensor, Tensor]:
        return run_kernel(name, forward_ref, x.device, x, logits, mu, log_sigma, log_sigma_min, log_sigma_max)

    @op.register_fake
    def _(x, logits, mu, log_sigma, log_sigma_min, log_sigma_max):
        out_shape = logits.shape[:-1]
        return x.new_empty(out_shape), x.new_empty(out_shape), x.new_empty(out_shape)

    @torch.library.custom_op(f"fastlv::{name}_backward", mutates_args=())
    def backward_op(grad: Tensor, x: Tensor, logits: Tensor, mu: Tensor, log_sigma: Tensor, lse_components: Tensor,
                    lse_logits: Tensor, log_sigma_min: float, log_sigma_max: float
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return run_kernel(f"{name}_backward", backward_ref, x.device, grad, x, logits, mu, log_sigma,
                          lse_components, lse_logits, log_sigma_min, log_sigma_max)

    @backward_op.register_fake
    def _(grad, x, logits, mu, log_sigma, lse_components, lse_logits, log_sigma_min, log_sigma_max):
        return torch.empty_like(x), torch.empty_like(logits), torch.empty_like(mu), torch.empty_like(log_sigma)

    def setup_context(ctx, inputs, output):
        x, logits, mu, log_sigma, lo, hi = inputs
        ctx.save_for_backward(x, logits, mu, log_sigma, *output[1:])
        ctx.bounds = (lo, hi)

    def backward(ctx, grad, _grad_lse_components, _grad_lse_logits):  # internal outputs: no gradient
        grads = backward_op(grad, *ctx.saved_tensors, *ctx.bounds)
        return (*grads, None, None)

    op.register_autograd(backward, setup_context=setup_context)
    backward_op.register_autograd(no_double_backward(f"fastlv::{name}"))
    return op


_gmm_op = _define_mixture_op("gmm_log_prob", full_frame=False)
_diag_gmm_op = _define_mixture_op("diag_gmm_log_prob", full_frame=True)


def _check_ranks(min_rank: int, **tensors: Tensor):
    for name, t in tensors.items():
        if t.dim() < min_rank:
            raise ValueError(f"fastlv: {name} must have at least {min_rank} dimension(s), got shape {tuple(t.shape)}")


def _check_components(K: int):
    if K < 1:  # a mixture of no components has no density (the reference would return NaN)
        raise ValueError("fastlv: logits must have at least one component (K >= 1), got K = 0")


def gmm_log_prob(x: Tensor, logits: Tensor, mu: Tensor, log_sigma: Tensor, *,
                 log_sigma_min: float | None = None, log_sigma_max: float | None = None,
                 reduction: str = "none", mask: Tensor | None = None) -> Tensor:
    """Log-likelihood of x under a per-element Gaussian mixture (Dai et al. 2019, Sec. 4.1, Eq. 5).

    log p(x) = logsumexp_k [log softmax(logits)_k + log N(x; mu_k, exp(log_sigma_k)^2)]

    Args:
        x: ``[...]`` values; each has its own mixture.
        logits, mu, log_sigma: ``[..., K]`` unnormalized mixture log-weights, means, log standard
            deviations. Batch dimensions broadcast against x. Logits may be -inf for unused
            components as long as one is finite.
        log_sigma_min, log_sigma_max: optional clamp of log_sigma; the gradient is zero outside.
        reduction: ``none`` (default, shape of the broadcast batch), ``sum`` or ``mean``.
        mask: optional, broadcastable to the batch; 0 marks padded steps, which contribute 0 (``mean``
            averages over the unmasked ones). Padded inputs must still be finite.

    Numerically stable for log_sigma in [-20, 20] and |x| up to 1e4. fp32/fp64 on CPU; fp32/fp16/bf16
    on GPU with fp32 math. Differentiable w.r.t. all four tensors (first order).
    """
    check_tensors(x=x, logits=logits, mu=mu, log_sigma=log_sigma)
    _check_ranks(1, logits=logits, mu=mu, log_sigma=log_sigma)
    params = broadcast_shape(logits=logits.shape, mu=mu.shape, log_sigma=log_sigma.shape)
    batch = broadcast_shape(x=x.shape, **{"mixture batch": params[:-1]})
    params = (*batch, params[-1])
    _check_components(params[-1])
    lo, hi = clamp_bounds(log_sigma_min, log_sigma_max)
    log_prob, _, _ = _gmm_op(expand_to(x, batch), expand_to(logits, params), expand_to(mu, params),
                             expand_to(log_sigma, params), lo, hi)
    return reduce(log_prob, reduction, mask)


def diag_gmm_log_prob(x: Tensor, logits: Tensor, mu: Tensor, log_sigma: Tensor, *,
                      log_sigma_min: float | None = None, log_sigma_max: float | None = None,
                      reduction: str = "none", mask: Tensor | None = None) -> Tensor:
    """Log-likelihood of frames x under a full-frame mixture of diagonal Gaussians (STCN Appendix 7.1).

    log p(x) = logsumexp_k [log softmax(logits)_k + sum_d log N(x_d; mu_kd, exp(log_sigma_kd)^2)]

    Args:
        x: ``[..., D]`` frames.
        logits: ``[..., K]`` one set of mixture log-weights per frame.
        mu, log_sigma: ``[..., K, D]``. Batch dimensions broadcast against x.
        log_sigma_min, log_sigma_max, reduction, mask: as in :func:`gmm_log_prob`; the output and
            the mask have the batch shape ``[...]``.
    """
    check_tensors(x=x, logits=logits, mu=mu, log_sigma=log_sigma)
    _check_ranks(1, x=x, logits=logits)
    _check_ranks(2, mu=mu, log_sigma=log_sigma)
    K, D = logits.shape[-1], x.shape[-1]
    _check_components(K)
    components = broadcast_shape(mu=mu.shape, log_sigma=log_sigma.shape, **{"[K, D]": (K, D)})
    if tuple(components[-2:]) != (K, D):
        raise ValueError(f"fastlv: mu and log_sigma must end in [K, D] = [{K}, {D}] (K from logits, D from x), "
                         f"got {tuple(mu.shape)} and {tuple(log_sigma.shape)}")
    batch = broadcast_shape(x=x.shape[:-1], logits=logits.shape[:-1], **{"mu/log_sigma": components[:-2]})
    lo, hi = clamp_bounds(log_sigma_min, log_sigma_max)
    log_prob, _, _ = _diag_gmm_op(expand_to(x, (*batch, D)), expand_to(logits, (*batch, K)),
                                  expand_to(mu, (*batch, K, D)), expand_to(log_sigma, (*batch, K, D)), lo, hi)
    return reduce(log_prob, reduction, mask)
