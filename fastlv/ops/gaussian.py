"""Diagonal-Gaussian latent variables: the per-step work of every stochastic layer in the papers.

Every latent model fastlv covers (simplified SRNN and SRNN-flat, Dai et al. 2019 Sec. 3; SRNN,
Fraccaro et al. 2016; Z-Forcing, Goyal et al. 2017 Eq. 5-7; VRNN and SIS-RNN, Hajiramezani et al.
2020 Eq. 11-12; STCN, Aksan & Hilliges 2019 Eq. 10-15) builds a diagonal-Gaussian prior p and
posterior q per step, draws z = mu_q + sigma_q * eps and adds KL(q || p) to the loss. Eager PyTorch
spends ~10 kernels and as many temporaries on it; these ops do it in one pass forward and one backward.

- :func:`gaussian_kl`: analytic KL(q || p) (p = N(0, I) when not given), per dimension or summed over
  the last dimension, with optional free bits, mask and reduction.
- :func:`gaussian_rsample`: reparameterized sample, with eps given or drawn in the kernel.
- :func:`gaussian_sample_kl`: the fused step -> (z, kl), optionally with the precision-weighted
  posterior of STCN/LVAE (``posterior="precision_weighted"``).
- :func:`gaussian_log_prob`: log N(z; mu, exp(logvar)) (importance-weighted and semi-implicit bounds).
- :func:`precision_weighted`: the STCN posterior update (Eq. 11) on its own, in variance form.

Parameters are means and log-variances. ``mu_min/mu_max/logvar_min/logvar_max`` clamp every mean and
log-variance (q and p) with zero gradient outside, as the re-examination code does with [-8, 8]
(reference-facts.md); STCN's sigma clip [1e-3, 5] is ``logvar_min=2*log(1e-3), logvar_max=2*log(5)``.
Math is in fp32 for fp16/bf16 inputs (exp(logvar_q - logvar_p) reaches e^16 under the [-8, 8] clamp).

Noise. When eps is not given, the kernel draws it with the counter-based generator of
csrc/common/philox.h (Philox4x32-10 + Box-Muller, one definition for the C++, CUDA, Triton and
reference kernels, so every backend draws the same eps up to float rounding). Its 63-bit seed is drawn
from ``generator`` (default: torch's default generator of the device), so ``torch.manual_seed``
reproduces the samples and successive calls differ. Where the backward gets eps is a per-device choice:
- GPU (and every torch.compile graph): the backward regenerates eps from the seed. The kernels are
  bandwidth bound there, so regenerating is free, and it saves keeping an extra [..., D] tensor per call
  alive until the backward (32 MB for a whole flat-SRNN sequence [32, 1000, 256]).
- CPU, eager: the forward keeps the eps it draws and the backward reads it. On the CPU the generator is
  compute bound: ~1 ns per normal on 2 cores, as much as the rest of the backward. Eager PyTorch code
  keeps its eps too, so the memory is the same as the code it replaces.
- Recovering eps as (z - mu) / sigma from the saved output was rejected: it loses precision when
  |mu| >> sigma, badly so for fp16 z.

Dispatch. fastlv::gaussian_sample_kl is a ``torch.library.custom_op``: torch.compile, opcheck and the ref
and triton backends use it. Its Python autograd costs ~0.3 ms per forward+backward on 2 CPU cores
(torch 2.13), as much as the kernels themselves at the speech shape [32, 40, 256]. So in eager mode on the
cpp and cuda backends, the public functions call its kernel op fastlv_C::gaussian_sample_kl directly.
That op has its autograd registered in C++, which cuts the total overhead of a forward+backward from
~610 to ~340 us. torch.library also re-fills the schema arguments on every call, at a cost quadratic in
their number, so the op takes its options as two lists (see its definition).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from fastlv._backend import eager_fastlv_c, run_kernel
from fastlv.ops._common import (broadcast_shape, check_tensors, clamp_bounds, expand_to, no_double_backward,
                                reduce)

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
POSTERIORS = ("standard", "precision_weighted")

# ---------------------------------------------------------------------------------------------------
# Reference generator: the definition of csrc/common/philox.h in PyTorch (int64 tensors hold uint32).

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
NORMALS_PER_BLOCK, COUNTERS_PER_BLOCK = 64, 16


def _mul_hi_lo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of a * m (a < 2^32): the int64 product wraps, its bits are still right."""
    product = a * m
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x32_10(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int, k1: int) -> tuple[Tensor, ...]:
    """Philox4x32-10 (Salmon et al. 2011) of counters (c0..c3) under key (k0, k1); int64 tensors
    holding uint32 values."""
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(c0, _PHILOX_M0)
        hi1, lo1 = _mul_hi_lo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def _uniform(bits: Tensor) -> Tensor:
    """(2 (x >> 9) + 1) 2^-24 in (0, 1), exact in fp32."""
    return ((bits >> 9) * 2 + 1).to(torch.float32) * 2.0**-24


def standard_normal_ref(seed: Tensor, numel: int) -> Tensor:
    """Normals 0..numel-1 of the stream of ``seed`` (an int64 tensor), float32, as the kernels draw them:
    normal 64 b + 16 j + l is output j of Philox counter 16 b + l (layout in csrc/common/philox.h)."""
    seed = int(seed)
    blocks = -(-numel // NORMALS_PER_BLOCK)
    counters = torch.arange(blocks * COUNTERS_PER_BLOCK, dtype=torch.int64)
    zero = torch.zeros_like(counters)
    x = philox4x32_10(counters & _MASK32, counters >> 32, zero, zero, seed & _MASK32, (seed >> 32) & _MASK32)
    pi = torch.tensor(math.pi, dtype=torch.float32)
    normals = []
    for first, second in ((x[0], x[1]), (x[2], x[3])):  # Box-Muller on the pairs (x0, x1), (x2, x3)
        radius = torch.sqrt(-2.0 * torch.log(_uniform(first)))
        theta = pi * (2.0 * _uniform(second) - 1.0)
        normals += [radius * torch.cos(theta), radius * torch.sin(theta)]
    # [blocks, j, l] -> flat index 64 b + 16 j + l
    return torch.stack([n.view(blocks, COUNTERS_PER_BLOCK) for n in normals], 1).reshape(-1)[:numel]


# ---------------------------------------------------------------------------------------------------
# Reference kernels: the positional signatures of the C++ ops (fastlv_C::*), in plain PyTorch.

def _upcast(t: Tensor | None) -> Tensor | None:
    """Math in fp32 for half inputs."""
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def _clamped(mu_q, logvar_q, mu_p, logvar_p, mu_min, mu_max, logvar_min, logvar_max):
    """The four parameters in compute precision, clamped; the prior N(0, I) as zeros when absent."""
    mu_q = _upcast(mu_q).clamp(mu_min, mu_max)
    logvar_q = _upcast(logvar_q).clamp(logvar_min, logvar_max)
    if mu_p is None:
        zero = torch.zeros((), dtype=mu_q.dtype, device=mu_q.device)
        return mu_q, logvar_q, zero, zero
    return mu_q, logvar_q, _upcast(mu_p).clamp(mu_min, mu_max), _upcast(logvar_p).clamp(logvar_min, logvar_max)


def _noise(eps, seed, like: Tensor) -> Tensor:
    if eps is None:
        eps = standard_normal_ref(seed, like.numel()).view(like.shape).to(like.device)
    return eps.to(like.dtype)


def _kl_per_dim(mu_q, logvar_q, mu_p, logvar_p):
    return 0.5 * (torch.exp(logvar_q - logvar_p) + (mu_q - mu_p) ** 2 * torch.exp(-logvar_p) - 1
                  - (logvar_q - logvar_p))


def _sample_kl_ref(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted, elementwise,
                   free_bits, mu_min, mu_max, logvar_min, logvar_max):
    """(z, kl) of fastlv_C::gaussian_sample_kl, differentiable (empty [0] tensors for the parts not
    asked for). Written from the definitions (STCN Eq. 11 in its precision form), independently of the
    stable forms of csrc/common/gaussian_math.h."""
    dtype, empty = mu_q.dtype, mu_q.new_empty(0)
    mu_q, logvar_q, mu_p, logvar_p = _clamped(mu_q, logvar_q, mu_p, logvar_p, mu_min, mu_max, logvar_min, logvar_max)
    if precision_weighted:  # precisions add, means are precision-weighted
        logvar_new = -torch.logaddexp(-logvar_q, -logvar_p)
        mu_q = (mu_q * torch.exp(-logvar_q) + mu_p * torch.exp(-logvar_p)) * torch.exp(logvar_new)
        logvar_q = logvar_new
    z = (mu_q + torch.exp(0.5 * logvar_q) * _noise(eps, seed, mu_q)).to(dtype).contiguous() if sample else empty
    if not kl:
        return z, empty
    per_dim = _kl_per_dim(mu_q, logvar_q, mu_p, logvar_p)
    floored = (per_dim < free_bits) & ~per_dim.isnan()  # a NaN KL stays NaN
    per_dim = torch.where(floored, torch.full_like(per_dim, free_bits), per_dim)
    return z, (per_dim if elementwise else per_dim.sum(-1)).to(dtype).contiguous()


def _inside(raw: Tensor, lo: float, hi: float, grad: Tensor) -> Tensor:
    """grad where lo <= raw <= hi, else 0 (gradient of a clamp)."""
    return torch.where((raw >= lo) & (raw <= hi), grad, torch.zeros_like(grad))


def _sample_kl_backward_ref(grad_z, grad_kl, mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl,
                            precision_weighted, elementwise, free_bits, mu_min, mu_max, logvar_min, logvar_max):
    """Gradients [d_mu_q, d_logvar_q(, d_mu_p, d_logvar_p)] of fastlv_C::gaussian_sample_kl, with the formulas
    of csrc/common/gaussian_math.h written in PyTorch."""
    raw = (mu_q, logvar_q, mu_p, logvar_p)
    mu_q, logvar_q, mu_p, logvar_p = _clamped(*raw, mu_min, mu_max, logvar_min, logvar_max)
    if precision_weighted:
        mu_hat, logvar_hat = mu_q, logvar_q
        logvar_q = -torch.logaddexp(-logvar_hat, -logvar_p)
        share = torch.exp(logvar_q - logvar_hat)  # var_q / var_hat: the weight of mu_hat
        mu_q = mu_p + share * (mu_hat - mu_p)
    g_mu_q = g_logvar_q = g_mu_p = g_logvar_p = torch.zeros_like(mu_q)
    if sample:  # z = mu_q + exp(logvar_q / 2) eps
        g_mu_q = _upcast(grad_z)
        g_logvar_q = 0.5 * g_mu_q * torch.exp(0.5 * logvar_q) * _noise(eps, seed, mu_q)
    if kl:
        g = _upcast(grad_kl) if elementwise else _upcast(grad_kl).unsqueeze(-1)
        g = torch.where(_kl_per_dim(mu_q, logvar_q, mu_p, logvar_p) >= free_bits, g, torch.zeros_like(g))
        diff = mu_q - mu_p
        d_mu = g * diff * torch.exp(-logvar_p)
        d_logvar = 0.5 * g * (torch.exp(logvar_q - logvar_p) - 1)
        g_mu_q, g_logvar_q = g_mu_q + d_mu, g_logvar_q + d_logvar
        g_mu_p, g_logvar_p = -d_mu, -d_logvar - 0.5 * diff * d_mu
    if precision_weighted:  # chain rule through the combination
        rest = 1 - share
        d_share = g_mu_q * (mu_hat - mu_p) * share * rest
        g_mu_p, g_logvar_p = g_mu_p + g_mu_q * rest, g_logvar_p + g_logvar_q * rest + d_share
        g_mu_q, g_logvar_q = g_mu_q * share, g_logvar_q * share - d_share
    grads = [(g_mu_q, mu_min, mu_max), (g_logvar_q, logvar_min, logvar_max)]
    if raw[2] is not None:
        grads += [(g_mu_p, mu_min, mu_max), (g_logvar_p, logvar_min, logvar_max)]
    shape, dtype = raw[0].shape, raw[0].dtype
    return [_inside(_upcast(r), lo, hi, g.expand(shape)).to(dtype).contiguous() for r, (g, lo, hi) in zip(raw, grads)]


def _log_prob_ref(x, mu, logvar, elementwise, mu_min, mu_max, logvar_min, logvar_max):
    """log N(x; mu, exp(logvar)) of fastlv_C::gaussian_log_prob, differentiable."""
    dtype = x.dtype
    x, mu, logvar = _upcast(x), _upcast(mu).clamp(mu_min, mu_max), _upcast(logvar).clamp(logvar_min, logvar_max)
    terms = -0.5 * ((x - mu) ** 2 * torch.exp(-logvar) + logvar) - HALF_LOG_2PI
    return (terms if elementwise else terms.sum(-1)).to(dtype).contiguous()


def _log_prob_backward_ref(grad, x, mu, logvar, elementwise, mu_min, mu_max, logvar_min, logvar_max):
    """(d_x, d_mu, d_logvar) of fastlv_C::gaussian_log_prob (formulas of gaussian_math.h)."""
    dtype, raw_mu, raw_logvar = x.dtype, _upcast(mu), _upcast(logvar)
    x, mu, logvar = _upcast(x), raw_mu.clamp(mu_min, mu_max), raw_logvar.clamp(logvar_min, logvar_max)
    g = _upcast(grad) if elementwise else _upcast(grad).unsqueeze(-1)
    d_mu = g * (x - mu) * torch.exp(-logvar)
    d_logvar = 0.5 * (d_mu * (x - mu) - g)
    grads = (-d_mu, _inside(raw_mu, mu_min, mu_max, d_mu), _inside(raw_logvar, logvar_min, logvar_max, d_logvar))
    return tuple(t.to(dtype).contiguous() for t in grads)


def _precision_weighted_ref(mu_a, var_a, mu_b, var_b):
    """(mu, var) of fastlv_C::precision_weighted, differentiable: STCN Eq. 11 with numerator and
    denominator multiplied by var_a var_b, so that it stays defined when one variance of the pair is 0
    (as written, 1/var_a = inf gives mu = 0 * inf = NaN)."""
    dtype = mu_a.dtype
    mu_a, var_a, mu_b, var_b = (_upcast(t) for t in (mu_a, var_a, mu_b, var_b))
    var = var_a * (var_b / (var_a + var_b))
    mu = (mu_a * var_b + mu_b * var_a) / (var_a + var_b)
    return mu.to(dtype).contiguous(), var.to(dtype).contiguous()


def _precision_weighted_backward_ref(grad_mu, grad_var, mu_a, var_a, mu_b, var_b):
    """(d_mu_a, d_var_a, d_mu_b, d_var_b) of fastlv_C::precision_weighted (formulas of gaussian_math.h)."""
    dtype = mu_a.dtype
    grad_mu, grad_var, mu_a, var_a, mu_b, var_b = (_upcast(t) for t in (grad_mu, grad_var, mu_a, var_a, mu_b, var_b))
    inv_sum = 1 / (var_a + var_b)
    w_a, w_b = var_b * inv_sum, var_a * inv_sum
    g_diff = grad_mu * (mu_a - mu_b) * inv_sum
    grads = (grad_mu * w_a, w_a * (grad_var * w_a - g_diff), grad_mu * w_b, w_b * (grad_var * w_b + g_diff))
    return tuple(t.to(dtype).contiguous() for t in grads)


# ---------------------------------------------------------------------------------------------------
# Custom ops

# fastlv::gaussian_sample_kl takes its options as two lists, modes = [sample, kl, precision_weighted,
# elementwise] and limits = [free_bits, mu_min, mu_max, logvar_min, logvar_max], rather than as nine
# scalars: torch.library's autograd wrapper re-fills the schema arguments on every call at a cost
# quadratic in their number (108 us at 15 arguments, 41 us at 8, measured with torch 2.13).

@torch.library.custom_op("fastlv::gaussian_sample_kl", mutates_args=())
def _sample_kl_op(mu_q: Tensor, logvar_q: Tensor, mu_p: Optional[Tensor], logvar_p: Optional[Tensor],
                  eps: Optional[Tensor], seed: Optional[Tensor], modes: list[bool],
                  limits: list[float]) -> tuple[Tensor, Tensor]:
    return run_kernel("gaussian_sample_kl", _sample_kl_ref, mu_q.device, mu_q, logvar_q, mu_p, logvar_p, eps, seed,
                      *modes, *limits)


@_sample_kl_op.register_fake
def _(mu_q, logvar_q, mu_p, logvar_p, eps, seed, modes, limits):
    sample, kl, _, elementwise = modes
    z = mu_q.new_empty(mu_q.shape if sample else (0,))
    kl_shape = (mu_q.shape if elementwise else mu_q.shape[:-1]) if kl else (0,)
    return z, mu_q.new_empty(kl_shape)


@torch.library.custom_op("fastlv::gaussian_sample_kl_backward", mutates_args=())
def _sample_kl_backward_op(grad_z: Optional[Tensor], grad_kl: Optional[Tensor], mu_q: Tensor, logvar_q: Tensor,
                           mu_p: Optional[Tensor], logvar_p: Optional[Tensor], eps: Optional[Tensor],
                           seed: Optional[Tensor], modes: list[bool], limits: list[float]) -> list[Tensor]:
    return run_kernel("gaussian_sample_kl_backward", _sample_kl_backward_ref, mu_q.device, grad_z, grad_kl, mu_q,
                      logvar_q, mu_p, logvar_p, eps, seed, *modes, *limits)


@_sample_kl_backward_op.register_fake
def _(grad_z, grad_kl, mu_q, logvar_q, mu_p, *rest):
    return [mu_q.new_empty(mu_q.shape) for _ in range(2 if mu_p is None else 4)]


def _sample_kl_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])  # mu_q, logvar_q, mu_p, logvar_p, eps, seed (None where absent)
    ctx.modes, ctx.limits = inputs[6:]


def _sample_kl_backward(ctx, grad_z, grad_kl):
    mu_q, logvar_q, mu_p, logvar_p, eps, seed = ctx.saved_tensors
    sample, kl = ctx.modes[:2]
    grads = _sample_kl_backward_op(grad_z if sample else None, grad_kl if kl else None, mu_q, logvar_q, mu_p,
                                   logvar_p, eps, seed, ctx.modes, ctx.limits)
    prior_grads = (None, None) if mu_p is None else (grads[2], grads[3])
    return grads[0], grads[1], *prior_grads, None, None, None, None  # eps is noise: no gradient


_sample_kl_op.register_autograd(_sample_kl_backward, setup_context=_sample_kl_setup_context)
_sample_kl_backward_op.register_autograd(no_double_backward("fastlv::gaussian_sample_kl"))


@torch.library.custom_op("fastlv::gaussian_log_prob", mutates_args=())
def _log_prob_op(x: Tensor, mu: Tensor, logvar: Tensor, elementwise: bool, mu_min: float, mu_max: float,
                 logvar_min: float, logvar_max: float) -> Tensor:
    return run_kernel("gaussian_log_prob", _log_prob_ref, x.device, x, mu, logvar, elementwise, mu_min, mu_max,
                      logvar_min, logvar_max)


@_log_prob_op.register_fake
def _(x, mu, logvar, elementwise, *bounds):
    return x.new_empty(x.shape if elementwise else x.shape[:-1])


@torch.library.custom_op("fastlv::gaussian_log_prob_backward", mutates_args=())
def _log_prob_backward_op(grad: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, elementwise: bool, mu_min: float,
                          mu_max: float, logvar_min: float, logvar_max: float) -> tuple[Tensor, Tensor, Tensor]:
    return run_kernel("gaussian_log_prob_backward", _log_prob_backward_ref, x.device, grad, x, mu, logvar,
                      elementwise, mu_min, mu_max, logvar_min, logvar_max)


@_log_prob_backward_op.register_fake
def _(grad, x, mu, logvar, *options):
    return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape)


def _log_prob_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.options = inputs[3:]


def _log_prob_backward(ctx, grad):
    return (*_log_prob_backward_op(grad, *ctx.saved_tensors, *ctx.options),) + (None,) * len(ctx.options)


_log_prob_op.register_autograd(_log_prob_backward, setup_context=_log_prob_setup_context)
_log_prob_backward_op.register_autograd(no_double_backward("fastlv::gaussian_log_prob"))


@torch.library.custom_op("fastlv::precision_weighted", mutates_args=())
def _precision_weighted_op(mu_a: Tensor, var_a: Tensor, mu_b: Tensor, var_b: Tensor) -> tuple[Tensor, Tensor]:
    return run_kernel("precision_weighted", _precision_weighted_ref, mu_a.device, mu_a, var_a, mu_b, var_b)


@_precision_weighted_op.register_fake
def _(mu_a, var_a, mu_b, var_b):
    return mu_a.new_empty(mu_a.shape), mu_a.new_empty(mu_a.shape)


@torch.library.custom_op("fastlv::precision_weighted_backward", mutates_args=())
def _precision_weighted_backward_op(grad_mu: Tensor, grad_var: Tensor, mu_a: Tensor, var_a: Tensor, mu_b: Tensor,
                                    var_b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return run_kernel("precision_weighted_backward", _precision_weighted_backward_ref, mu_a.device, grad_mu,
                      grad_var, mu_a, var_a, mu_b, var_b)


@_precision_weighted_backward_op.register_fake
def _(grad_mu, grad_var, mu_a, *rest):
    return tuple(mu_a.new_empty(mu_a.shape) for _ in range(4))


def _precision_weighted_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _precision_weighted_backward(ctx, grad_mu, grad_var):
    return _precision_weighted_backward_op(grad_mu, grad_var, *ctx.saved_tensors)


_precision_weighted_op.register_autograd(_precision_weighted_backward, setup_context=_precision_weighted_setup_context)
_precision_weighted_backward_op.register_autograd(no_double_backward("fastlv::precision_weighted"))


# ---------------------------------------------------------------------------------------------------
# Argument handling shared by the public functions and their references

def _bounds(mu_min, mu_max, logvar_min, logvar_max) -> tuple[float, float, float, float]:
    return (*clamp_bounds(mu_min, mu_max), *clamp_bounds(logvar_min, logvar_max))


def _free_bits(free_bits: float | None) -> float:
    return -math.inf if free_bits is None else float(free_bits)


def _latent_shape(**tensors: Tensor | None) -> torch.Size:
    """Broadcast shape of the given tensors (None skipped); it needs a trailing latent dimension."""
    shapes = {name: t.shape for name, t in tensors.items() if t is not None}
    shape = broadcast_shape(**shapes)
    if len(shape) == 0:
        raise ValueError(f"fastlv: the inputs need a trailing latent dimension, got shapes "
                         f"{', '.join(f'{n} {tuple(s)}' for n, s in shapes.items())}")
    return shape


def _check_prior(mu_p: Tensor | None, logvar_p: Tensor | None):
    if (mu_p is None) != (logvar_p is None):
        raise ValueError("fastlv: give both mu_p and logvar_p, or neither (prior N(0, I))")


def _check_posterior(posterior: str, mu_p: Tensor | None) -> bool:
    if posterior not in POSTERIORS:
        raise ValueError(f"fastlv: posterior must be one of {POSTERIORS}, got {posterior!r}")
    if posterior == "precision_weighted" and mu_p is None:
        raise ValueError("fastlv: posterior='precision_weighted' needs a prior (mu_p, logvar_p)")
    return posterior == "precision_weighted"


def draw_seed(device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """A 63-bit seed (int64 0-d tensor on ``device``) from ``generator`` (default: torch's default
    generator of the device), for the in-kernel normal generator."""
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"fastlv: generator is on {generator.device} but the inputs are on {device}")
    return torch.randint(2**63 - 1, (), dtype=torch.int64, device=device, generator=generator)


def _sample_kl_args(mu_q, logvar_q, mu_p, logvar_p, eps, generator, sample, kl, precision_weighted, elementwise,
                    free_bits, bounds) -> tuple:
    """Checked and broadcast positional arguments of fastlv::gaussian_sample_kl."""
    check_tensors(mu_q=mu_q, logvar_q=logvar_q, mu_p=mu_p, logvar_p=logvar_p, eps=eps)
    _check_prior(mu_p, logvar_p)
    shape = _latent_shape(mu_q=mu_q, logvar_q=logvar_q, mu_p=mu_p, logvar_p=logvar_p, eps=eps)
    seed = draw_seed(mu_q.device, generator) if sample and eps is None else None
    return (*(expand_to(t, shape) for t in (mu_q, logvar_q, mu_p, logvar_p, eps)), seed,
            [sample, kl, precision_weighted, elementwise], [_free_bits(free_bits), *bounds])


def _flat(args: tuple) -> tuple:
    """fastlv::gaussian_sample_kl arguments as the positional arguments of the kernels (lists spread)."""
    *tensors, modes, limits = args
    return (*tensors, *modes, *limits)


def _sample_kl_cpp_autograd(*args) -> tuple[Tensor, Tensor]:
    """fastlv_C::gaussian_sample_kl on the arguments of fastlv::gaussian_sample_kl: the kernel op, whose
    autograd is registered in C++ (csrc/cpu/gaussian.cpp; on the CPU it keeps the eps it draws)."""
    return torch.ops.fastlv_C.gaussian_sample_kl(*_flat(args))


def _sample_kl(args: tuple) -> tuple[Tensor, Tensor]:
    """fastlv::gaussian_sample_kl on ``args``, or in eager mode on the compiled backends its C++ autograd
    twin: the Python custom op costs ~0.3 ms per forward+backward, as much as the kernels at the speech shape."""
    if eager_fastlv_c(args[0].device):
        return _sample_kl_cpp_autograd(*args)
    return _sample_kl_op(*args)


# ---------------------------------------------------------------------------------------------------
# Public ops

def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | None = None, logvar_p: Tensor | None = None, *,
                elementwise: bool = False, free_bits: float | None = None, mask: Tensor | None = None,
                reduction: str = "none", mu_min: float | None = None, mu_max: float | None = None,
                logvar_min: float | None = None, logvar_max: float | None = None) -> Tensor:
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) of diagonal Gaussians, analytically:

        KL_d = (exp(lv_q - lv_p) + (mu_q - mu_p)^2 exp(-lv_p) - 1 - (lv_q - lv_p)) / 2

    Args:
        mu_q, logvar_q: ``[..., D]`` posterior mean and log-variance.
        mu_p, logvar_p: prior, both or neither (then p = N(0, I)). All four broadcast together.
        elementwise: return KL_d ``[..., D]`` instead of its sum over D ``[...]`` (default).
        free_bits: floor lambda of each dimension's KL, max(KL_d, lambda), with zero gradient below it
            (free bits, Kingma et al. 2016, Eq. 15; applied per element here, where the paper floors
            the minibatch average of groups of dimensions).
        mask: optional, broadcastable to the output; 0 marks padded steps, which contribute 0.
        reduction: ``none`` (default), ``sum`` or ``mean`` over the output (``mean`` with a mask averages
            over the unmasked entries).
        mu_min, mu_max, logvar_min, logvar_max: optional clamps of all means / log-variances (module doc).

    Differentiable w.r.t. all four tensors. Accurate for |logvar| <= 80 (exp(-logvar_p) must not overflow).
    """
    args = _sample_kl_args(mu_q, logvar_q, mu_p, logvar_p, None, None, False, True, False, elementwise, free_bits,
                           _bounds(mu_min, mu_max, logvar_min, logvar_max))
    return reduce(_sample_kl(args)[1], reduction, mask)


def gaussian_rsample(mu: Tensor, logvar: Tensor, eps: Tensor | None = None,
                     generator: torch.Generator | None = None, *, mu_min: float | None = None,
                     mu_max: float | None = None, logvar_min: float | None = None,
                     logvar_max: float | None = None) -> Tensor:
    """Reparameterized sample z = mu + exp(logvar / 2) * eps (Kingma & Welling 2014).

    Args:
        mu, logvar: ``[..., D]`` mean and log-variance.
        eps: optional standard-normal noise, broadcast with mu and logvar (e.g. ``[K, ..., D]`` for K
            samples). Treated as a constant (no gradient). If not given, the kernel draws it (module doc).
        generator: the torch generator the seed is drawn from when eps is not given.
        mu_min, mu_max, logvar_min, logvar_max: optional clamps (module doc).

    Differentiable w.r.t. mu and logvar; the backward reads or regenerates eps (module doc).
    """
    args = _sample_kl_args(mu, logvar, None, None, eps, generator, True, False, False, False, None,
                           _bounds(mu_min, mu_max, logvar_min, logvar_max))
    return _sample_kl(args)[0]


def gaussian_sample_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | None = None, logvar_p: Tensor | None = None,
                       *, eps: Tensor | None = None, generator: torch.Generator | None = None,
                       posterior: str = "standard", elementwise: bool = False, free_bits: float | None = None,
                       mask: Tensor | None = None, reduction: str = "none", mu_min: float | None = None,
                       mu_max: float | None = None, logvar_min: float | None = None,
                       logvar_max: float | None = None) -> tuple[Tensor, Tensor]:
    """The fused stochastic-layer step: z ~ q by reparameterization and KL(q || p), in one pass forward
    and one backward -> ``(z [..., D], kl)``.

    ``posterior="precision_weighted"`` treats (mu_q, logvar_q) as the approximate likelihood and uses the
    precision-weighted posterior of STCN (Aksan & Hilliges 2019, Eq. 11; Sonderby et al. 2016 LVAE):
    var_q = 1 / (1/var_hat + 1/var_p), mu_q = var_q (mu_hat / var_hat + mu_p / var_p); z is drawn from it
    and the KL is against p, with gradients through the combination to both. (The STCN code returns that
    variance and then uses it as a standard deviation; this op implements the paper's math.)

    eps, generator: as in :func:`gaussian_rsample`; elementwise, free_bits, mask, reduction (applied to the
    KL only) and the clamps: as in :func:`gaussian_kl`. The KL-annealing weight is the caller's.
    """
    precision = _check_posterior(posterior, mu_p)
    args = _sample_kl_args(mu_q, logvar_q, mu_p, logvar_p, eps, generator, True, True, precision, elementwise,
                           free_bits, _bounds(mu_min, mu_max, logvar_min, logvar_max))
    z, kl = _sample_kl(args)
    return z, reduce(kl, reduction, mask)


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor, *, elementwise: bool = False,
                      mask: Tensor | None = None, reduction: str = "none", mu_min: float | None = None,
                      mu_max: float | None = None, logvar_min: float | None = None,
                      logvar_max: float | None = None) -> Tensor:
    """log N(z; mu, exp(logvar)) of a diagonal Gaussian, summed over the last dimension (default) or per
    dimension (``elementwise``): the log q(z | psi) and log p(z) terms of importance-weighted bounds and of
    the semi-implicit bound of SIS-RNN (Hajiramezani et al. 2020, Eq. 11-12; broadcast z ``[..., D]``
    against mixing samples ``[K, ..., D]``). mask, reduction and the clamps as in :func:`gaussian_kl`.
    Differentiable w.r.t. z, mu and logvar."""
    check_tensors(z=z, mu=mu, logvar=logvar)
    shape = _latent_shape(z=z, mu=mu, logvar=logvar)
    out = _log_prob_op(expand_to(z, shape), expand_to(mu, shape), expand_to(logvar, shape), elementwise,
                       *_bounds(mu_min, mu_max, logvar_min, logvar_max))
    return reduce(out, reduction, mask)


def precision_weighted(mu_a: Tensor, var_a: Tensor, mu_b: Tensor, var_b: Tensor) -> tuple[Tensor, Tensor]:
    """Precision-weighted combination of two diagonal Gaussians (STCN Eq. 11; LVAE), in variances:

        var = 1 / (1/var_a + 1/var_b),   mu = var (mu_a / var_a + mu_b / var_b)

    Returns ``(mu, var)``, a variance (the STCN code returns this variance and then uses it as a standard
    deviation; use ``var.sqrt()`` as sigma). Inputs broadcast; variances must be positive (one of each
    pair may be 0). Differentiable w.r.t. all four. Fused into the sampling step as
    ``gaussian_sample_kl(..., posterior="precision_weighted")`` (log-variance form)."""
    check_tensors(mu_a=mu_a, var_a=var_a, mu_b=mu_b, var_b=var_b)
    shape = broadcast_shape(mu_a=mu_a.shape, var_a=var_a.shape, mu_b=mu_b.shape, var_b=var_b.shape)
    return _precision_weighted_op(*(expand_to(t, shape) for t in (mu_a, var_a, mu_b, var_b)))


# ---------------------------------------------------------------------------------------------------
# Pure-PyTorch references of the public ops (same arguments; the oracle and the fallback)

def gaussian_kl_ref(mu_q, logvar_q, mu_p=None, logvar_p=None, *, elementwise=False, free_bits=None, mask=None,
                    reduction="none", mu_min=None, mu_max=None, logvar_min=None, logvar_max=None) -> Tensor:
    """Pure-PyTorch reference of :func:`gaussian_kl` (same arguments)."""
    args = _sample_kl_args(mu_q, logvar_q, mu_p, logvar_p, None, None, False, True, False, elementwise, free_bits,
                           _bounds(mu_min, mu_max, logvar_min, logvar_max))
    return reduce(_sample_kl_ref(*_flat(args))[1], reduction, mask)


def gaussian_rsample_ref(mu, logvar, eps=None, generator=None, *, mu_min=None, mu_max=None, logvar_min=None,
                         logvar_max=None) -> Tensor:
    """Pure-PyTorch reference of :func:`gaussian_rsample`: the same samples for the same generator state."""
    args = _sample_kl_args(mu, logvar, None, None, eps, generator, True, False, False, False, None,
                           _bounds(mu_min, mu_max, logvar_min, logvar_max))
    return _sample_kl_ref(*_flat(args))[0]


def gaussian_sample_kl_ref(mu_q, logvar_q, mu_p=None, logvar_p=None, *, eps=None, generator=None,
                           posterior="standard", elementwise=False, free_bits=None, mask=None, reduction="none",
                           mu_min=None, mu_max=None, logvar_min=None, logvar_max=None) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch reference of :func:`gaussian_sample_kl` (same arguments)."""
    precision = _check_posterior(posterior, mu_p)
    args = _sample_kl_args(mu_q, logvar_q, mu_p, logvar_p, eps, generator, True, True, precision, elementwise,
                           free_bits, _bounds(mu_min, mu_max, logvar_min, logvar_max))
    z, kl = _sample_kl_ref(*_flat(args))
    return z, reduce(kl, reduction, mask)


def gaussian_log_prob_ref(z, mu, logvar, *, elementwise=False, mask=None, reduction="none", mu_min=None,
                          mu_max=None, logvar_min=None, logvar_max=None) -> Tensor:
    """Pure-PyTorch reference of :func:`gaussian_log_prob` (same arguments)."""
    check_tensors(z=z, mu=mu, logvar=logvar)
    shape = _latent_shape(z=z, mu=mu, logvar=logvar)
    out = _log_prob_ref(expand_to(z, shape), expand_to(mu, shape), expand_to(logvar, shape), elementwise,
                        *_bounds(mu_min, mu_max, logvar_min, logvar_max))
    return reduce(out, reduction, mask)


def precision_weighted_ref(mu_a, var_a, mu_b, var_b) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch reference of :func:`precision_weighted`."""
    check_tensors(mu_a=mu_a, var_a=var_a, mu_b=mu_b, var_b=var_b)
    shape = broadcast_shape(mu_a=mu_a.shape, var_a=var_a.shape, mu_b=mu_b.shape, var_b=var_b.shape)
    return _precision_weighted_ref(*(expand_to(t, shape) for t in (mu_a, var_a, mu_b, var_b)))
