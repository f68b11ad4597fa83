"""Triton kernels of the diagonal-Gaussian latent ops (same ops and positional arguments as
csrc/cpu/gaussian.cpp: gaussian_sample_kl, gaussian_log_prob, precision_weighted and their backward).

Inputs are [N, D] rows (batch flattened, D = latent dimension). One program takes BLOCK_N rows and loops
over D in BLOCK_D chunks, so a row's KL / log-density sum stays in registers. The per-dimension math is
that of csrc/common/gaussian_math.h, in fp32 (fp64 for fp64 inputs); outputs are in the input dtype.
The noise, when eps is not given, is the counter-based generator of csrc/common/philox.h: Triton's
tl.randint4x is Philox4x32-10 with the same key/counter convention, so every backend draws the same eps.
Each element computes its whole Philox call and keeps one output (4x redundant integer work, free in a
bandwidth-bound kernel); the backward regenerates it from the seed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PI = tl.constexpr(3.14159265358979323846)
HALF_LOG_2PI = tl.constexpr(0.91893853320467274178)  # 0.5 * log(2 * pi)


@triton.jit
def _uniform(bits):
    """(2 (x >> 9) + 1) 2^-24 in (0, 1) from uint32 bits, exact in fp32 (uniform_from_bits)."""
    return ((bits >> 9) * 2 + 1).to(tl.int32).to(tl.float32) * 5.9604644775390625e-8


@triton.jit
def _standard_normal(seed, index):
    """Normal `index` (int64) of the stream of `seed` (standard_normal in csrc/common/philox.h): output
    j = (index % 64) // 16 of Philox counter 16 (index // 64) + index % 16, by Box-Muller."""
    within = index % 64
    j = within // 16
    x0, x1, x2, x3 = tl.randint4x(seed, (index // 64) * 16 + within % 16)
    radius = tl.sqrt(-2.0 * tl.log(_uniform(tl.where(j < 2, x0, x2))))
    theta = PI * (2.0 * _uniform(tl.where(j < 2, x1, x3)) - 1.0)
    return tl.where(j % 2 == 0, radius * tl.cos(theta), radius * tl.sin(theta))


@triton.jit
def _load(ptr, offsets, mask, COMPUTE: tl.constexpr):
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(COMPUTE)


@triton.jit
def _clamp(v, lo, hi):
    return tl.minimum(tl.maximum(v, lo, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN


@triton.jit
def _inside(raw, lo, hi, grad):
    """grad where lo <= raw <= hi, else 0 (gradient of a clamp)."""
    return tl.where((raw >= lo) & (raw <= hi), grad, 0.0)


@triton.jit
def _latent_step(mu_q_ptr, lv_q_ptr, mu_p_ptr, lv_p_ptr, eps_ptr, seed_ptr, offsets, ok, mu_lo, mu_hi, lv_lo, lv_hi,
                 free_bits, PRIOR: tl.constexpr, PW: tl.constexpr, SAMPLE: tl.constexpr, KL: tl.constexpr,
                 DRAW: tl.constexpr, COMPUTE: tl.constexpr):
    """LatentStep of csrc/common/gaussian_math.h on a tile: loads and clamps the parameters, applies the
    precision weighting, and returns what the forward and backward need."""
    mu_q_raw = _load(mu_q_ptr, offsets, ok, COMPUTE)
    lv_q_raw = _load(lv_q_ptr, offsets, ok, COMPUTE)
    mu_q = _clamp(mu_q_raw, mu_lo, mu_hi)
    lv_q = _clamp(lv_q_raw, lv_lo, lv_hi)
    mu_p_raw = tl.zeros_like(mu_q)  # without a prior: N(0, I), unclamped
    lv_p_raw = tl.zeros_like(mu_q)
    mu_p = mu_p_raw
    lv_p = lv_p_raw
    if PRIOR:
        mu_p_raw = _load(mu_p_ptr, offsets, ok, COMPUTE)
        lv_p_raw = _load(lv_p_ptr, offsets, ok, COMPUTE)
        mu_p = _clamp(mu_p_raw, mu_lo, mu_hi)
        lv_p = _clamp(lv_p_raw, lv_lo, lv_hi)
    mu_hat = mu_q
    share = tl.full(mu_q.shape, 1.0, COMPUTE)
    if PW:  # lv_q = min - log(1 + exp(min - max)); share = var_q / var_hat
        lv_hat = lv_q
        lo = tl.minimum(lv_hat, lv_p, propagate_nan=tl.PropagateNan.ALL)
        lv_q = lo - tl.log(1.0 + tl.exp(lo - tl.maximum(lv_hat, lv_p, propagate_nan=tl.PropagateNan.ALL)))
        share = tl.exp(lv_q - lv_hat)
        mu_q = mu_p + share * (mu_hat - mu_p)
    sigma_eps = tl.zeros_like(mu_q)
    if SAMPLE:
        if DRAW:
            eps = _standard_normal(tl.load(seed_ptr), offsets).to(COMPUTE)
        else:
            eps = _load(eps_ptr, offsets, ok, COMPUTE)
        sigma_eps = tl.exp(0.5 * lv_q) * eps
    diff = mu_q - mu_p
    inv_var_p = tl.exp(-lv_p)
    var_ratio = tl.exp(lv_q - lv_p)
    kl_raw = tl.zeros_like(mu_q)
    if KL:
        kl_raw = 0.5 * (var_ratio + diff * diff * inv_var_p - 1.0 - (lv_q - lv_p))
    kl = tl.maximum(kl_raw, free_bits, propagate_nan=tl.PropagateNan.ALL)
    return (mu_q_raw, lv_q_raw, mu_p_raw, lv_p_raw, mu_q, mu_p, mu_hat, share, sigma_eps, diff, inv_var_p, var_ratio,
            kl_raw, kl)


@triton.jit
def _sample_kl_forward_kernel(mu_q_ptr, lv_q_ptr, mu_p_ptr, lv_p_ptr, eps_ptr, seed_ptr, z_ptr, kl_ptr, N, D,
                              free_bits, mu_lo, mu_hi, lv_lo, lv_hi, PRIOR: tl.constexpr, PW: tl.constexpr,
                              SAMPLE: tl.constexpr, KL: tl.constexpr, DRAW: tl.constexpr,
                              ELEMENTWISE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                              COMPUTE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # int64: N * D can exceed 2^31
    row_ok = rows < N
    kl_sum = tl.zeros([BLOCK_N], dtype=COMPUTE)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols < D)[None, :]
        offsets = rows[:, None] * D + cols[None, :]
        (_, _, _, _, mu_q, _, _, _, sigma_eps, _, _, _, _, kl) = _latent_step(
            mu_q_ptr, lv_q_ptr, mu_p_ptr, lv_p_ptr, eps_ptr, seed_ptr, offsets, ok, mu_lo, mu_hi, lv_lo, lv_hi,
            free_bits, PRIOR, PW, SAMPLE, KL, DRAW, COMPUTE)
        if SAMPLE:
            tl.store(z_ptr + offsets, (mu_q + sigma_eps).to(z_ptr.dtype.element_ty), mask=ok)
        if KL:
            if ELEMENTWISE:
                tl.store(kl_ptr + offsets, kl.to(kl_ptr.dtype.element_ty), mask=ok)
            else:
                kl_sum += tl.sum(tl.where(ok, kl, 0.0), axis=1)
    if KL and not ELEMENTWISE:
        tl.store(kl_ptr + rows, kl_sum.to(kl_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _sample_kl_backward_kernel(grad_z_ptr, grad_kl_ptr, mu_q_ptr, lv_q_ptr, mu_p_ptr, lv_p_ptr, eps_ptr, seed_ptr,
                               d_mu_q_ptr, d_lv_q_ptr, d_mu_p_ptr, d_lv_p_ptr, N, D, free_bits, mu_lo, mu_hi,
                               lv_lo, lv_hi, PRIOR: tl.constexpr, PW: tl.constexpr, SAMPLE: tl.constexpr,
                               KL: tl.constexpr, DRAW: tl.constexpr, ELEMENTWISE: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    if KL and not ELEMENTWISE:
        g_kl_row = tl.load(grad_kl_ptr + rows, mask=row_ok, other=0.0).to(COMPUTE)
    out_ty = d_mu_q_ptr.dtype.element_ty
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols < D)[None, :]
        offsets = rows[:, None] * D + cols[None, :]
        (mu_q_raw, lv_q_raw, mu_p_raw, lv_p_raw, mu_q, mu_p, mu_hat, share, sigma_eps, diff, inv_var_p, var_ratio,
         kl_raw, _) = _latent_step(mu_q_ptr, lv_q_ptr, mu_p_ptr, lv_p_ptr, eps_ptr, seed_ptr, offsets, ok, mu_lo,
                                   mu_hi, lv_lo, lv_hi, free_bits, PRIOR, PW, SAMPLE, KL, DRAW, COMPUTE)
        g_mu_q = tl.zeros_like(mu_q)
        g_lv_q = tl.zeros_like(mu_q)
        g_mu_p = tl.zeros_like(mu_q)
        g_lv_p = tl.zeros_like(mu_q)
        if SAMPLE:
            g_mu_q = _load(grad_z_ptr, offsets, ok, COMPUTE)
            g_lv_q = 0.5 * g_mu_q * sigma_eps
        if KL:
            if ELEMENTWISE:
                g_kl = _load(grad_kl_ptr, offsets, ok, COMPUTE)
            else:
                g_kl = tl.broadcast_to(g_kl_row[:, None], [BLOCK_N, BLOCK_D])
            g_kl = tl.where(kl_raw >= free_bits, g_kl, 0.0)  # 0 below the free-bits floor
            d_mu = g_kl * diff * inv_var_p
            d_lv = 0.5 * g_kl * (var_ratio - 1.0)
            g_mu_q += d_mu
            g_lv_q += d_lv
            g_mu_p = -d_mu
            g_lv_p = -d_lv - 0.5 * diff * d_mu
        if PW:  # chain rule through the precision weighting
            rest = 1.0 - share
            d_share = g_mu_q * (mu_hat - mu_p) * share * rest
            g_mu_p += g_mu_q * rest
            g_lv_p += g_lv_q * rest + d_share
            g_mu_q = g_mu_q * share
            g_lv_q = g_lv_q * share - d_share
        tl.store(d_mu_q_ptr + offsets, _inside(mu_q_raw, mu_lo, mu_hi, g_mu_q).to(out_ty), mask=ok)
        tl.store(d_lv_q_ptr + offsets, _inside(lv_q_raw, lv_lo, lv_hi, g_lv_q).to(out_ty), mask=ok)
        if PRIOR:
            tl.store(d_mu_p_ptr + offsets, _inside(mu_p_raw, mu_lo, mu_hi, g_mu_p).to(out_ty), mask=ok)
            tl.store(d_lv_p_ptr + offsets, _inside(lv_p_raw, lv_lo, lv_hi, g_lv_p).to(out_ty), mask=ok)


@triton.jit
def _log_prob_forward_kernel(x_ptr, mu_ptr, lv_ptr, out_ptr, N, D, mu_lo, mu_hi, lv_lo, lv_hi,
                             ELEMENTWISE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             COMPUTE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    total = tl.zeros([BLOCK_N], dtype=COMPUTE)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols < D)[None, :]
        offsets = rows[:, None] * D + cols[None, :]
        diff = _load(x_ptr, offsets, ok, COMPUTE) - _clamp(_load(mu_ptr, offsets, ok, COMPUTE), mu_lo, mu_hi)
        lv = _clamp(_load(lv_ptr, offsets, ok, COMPUTE), lv_lo, lv_hi)
        term = -0.5 * (diff * diff * tl.exp(-lv) + lv) - HALF_LOG_2PI
        if ELEMENTWISE:
            tl.store(out_ptr + offsets, term.to(out_ptr.dtype.element_ty), mask=ok)
        else:
            total += tl.sum(tl.where(ok, term, 0.0), axis=1)
    if not ELEMENTWISE:
        tl.store(out_ptr + rows, total.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _log_prob_backward_kernel(grad_ptr, x_ptr, mu_ptr, lv_ptr, d_x_ptr, d_mu_ptr, d_lv_ptr, N, D, mu_lo, mu_hi,
                              lv_lo, lv_hi, ELEMENTWISE: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    if not ELEMENTWISE:
        g_row = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(COMPUTE)
    out_ty = d_x_ptr.dtype.element_ty
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols < D)[None, :]
        offsets = rows[:, None] * D + cols[None, :]
        if ELEMENTWISE:
            g = _load(grad_ptr, offsets, ok, COMPUTE)
        else:
            g = tl.broadcast_to(g_row[:, None], [BLOCK_N, BLOCK_D])
        mu_raw = _load(mu_ptr, offsets, ok, COMPUTE)
        lv_raw = _load(lv_ptr, offsets, ok, COMPUTE)
        diff = _load(x_ptr, offsets, ok, COMPUTE) - _clamp(mu_raw, mu_lo, mu_hi)
        d_mu = g * diff * tl.exp(-_clamp(lv_raw, lv_lo, lv_hi))
        d_lv = 0.5 * (d_mu * diff - g)
        tl.store(d_x_ptr + offsets, (-d_mu).to(out_ty), mask=ok)
        tl.store(d_mu_ptr + offsets, _inside(mu_raw, mu_lo, mu_hi, d_mu).to(out_ty), mask=ok)
        tl.store(d_lv_ptr + offsets, _inside(lv_raw, lv_lo, lv_hi, d_lv).to(out_ty), mask=ok)


@triton.jit
def _precision_weighted_forward_kernel(mu_a_ptr, var_a_ptr, mu_b_ptr, var_b_ptr, mu_ptr, var_ptr, numel,
                                       BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < numel
    mu_a = _load(mu_a_ptr, offsets, ok, COMPUTE)
    var_a = _load(var_a_ptr, offsets, ok, COMPUTE)
    mu_b = _load(mu_b_ptr, offsets, ok, COMPUTE)
    var_b = _load(var_b_ptr, offsets, ok, COMPUTE)
    w_a = var_b / tl.where(ok, var_a + var_b, 1.0)  # padded lanes read var = 0: avoid 0 / 0
    tl.store(mu_ptr + offsets, (mu_b + w_a * (mu_a - mu_b)).to(mu_ptr.dtype.element_ty), mask=ok)
    tl.store(var_ptr + offsets, (var_a * w_a).to(var_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _precision_weighted_backward_kernel(g_mu_ptr, g_var_ptr, mu_a_ptr, var_a_ptr, mu_b_ptr, var_b_ptr, d_mu_a_ptr,
                                        d_var_a_ptr, d_mu_b_ptr, d_var_b_ptr, numel, BLOCK: tl.constexpr,
                                        COMPUTE: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < numel
    g_mu = _load(g_mu_ptr, offsets, ok, COMPUTE)
    g_var = _load(g_var_ptr, offsets, ok, COMPUTE)
    var_a = _load(var_a_ptr, offsets, ok, COMPUTE)
    var_b = _load(var_b_ptr, offsets, ok, COMPUTE)
    # Padded lanes read var = 0: give them a sum of 1 so nothing divides by 0 (they are never stored).
    inv_sum = 1.0 / tl.where(ok, var_a + var_b, 1.0)
    w_a = var_b * inv_sum
    w_b = var_a * inv_sum
    g_diff = g_mu * (_load(mu_a_ptr, offsets, ok, COMPUTE) - _load(mu_b_ptr, offsets, ok, COMPUTE)) * inv_sum
    out_ty = d_mu_a_ptr.dtype.element_ty
    tl.store(d_mu_a_ptr + offsets, (g_mu * w_a).to(out_ty), mask=ok)
    tl.store(d_var_a_ptr + offsets, (w_a * (g_var * w_a - g_diff)).to(out_ty), mask=ok)
    tl.store(d_mu_b_ptr + offsets, (g_mu * w_b).to(out_ty), mask=ok)
    tl.store(d_var_b_ptr + offsets, (w_b * (g_var * w_b + g_diff)).to(out_ty), mask=ok)


# ---- launchers ----

def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(N, D) of a [..., D] tensor; N also right when D == 0."""
    D = t.shape[-1]
    N = 1
    for s in t.shape[:-1]:
        N *= s
    return N, D


def _row_blocks(D: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D) of a tile: D padded to a power of two (chunked beyond the tile), rows filling it.
    The interpreter pays ~10 ms per program, so it gets few large tiles; a GPU gets 1024 elements (the
    backward keeps ~20 tiles live in registers)."""
    tile = 8192 if device.type == "cpu" else 1024
    block_d = min(max(16, triton.next_power_of_2(max(D, 1))), tile)
    return max(1, tile // block_d), block_d


def _check_same_shape(reference_name: str, reference: torch.Tensor, **tensors: torch.Tensor | None):
    """The kernels index flat buffers: refuse mismatched shapes rather than read out of bounds."""
    for name, t in tensors.items():
        if t is not None and t.shape != reference.shape:
            raise ValueError(f"fastlv: {name} {tuple(t.shape)} must have the shape of {reference_name} "
                             f"{tuple(reference.shape)}")


def _latent_call(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted):
    """Checks of gaussian_sample_kl(_backward); returns the contiguous tensors (absent ones -> mu_q, never
    read) and DRAW."""
    if mu_q.dim() == 0:
        raise ValueError("fastlv: mu_q must have a trailing latent dimension")
    _check_same_shape("mu_q", mu_q, logvar_q=logvar_q, mu_p=mu_p, logvar_p=logvar_p, eps=eps)
    if (mu_p is None) != (logvar_p is None):
        raise ValueError("fastlv: mu_p and logvar_p must be given together")
    if precision_weighted and (mu_p is None or not (sample and kl)):
        raise ValueError("fastlv: the precision-weighted posterior needs a prior, sample and kl")
    if not (sample or kl) or (sample and not kl and mu_p is not None):
        raise ValueError(f"fastlv: gaussian_sample_kl does not support sample={sample} kl={kl} with"
                         f"{'' if mu_p is not None else 'out'} a prior")
    draw = sample and eps is None
    if sample and (eps is None) == (seed is None):
        raise ValueError("fastlv: sampling needs exactly one of eps and seed")
    mu_q = mu_q.contiguous()
    present = [t.contiguous() if t is not None else mu_q for t in (logvar_q, mu_p, logvar_p, eps)]
    seed = seed if draw else mu_q
    return mu_q, *present, seed, draw


def gaussian_sample_kl(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted, elementwise,
                       free_bits, mu_min, mu_max, logvar_min, logvar_max):
    """(z [..., D] or [0], kl [...] / [..., D] or [0]) of the fused latent step (csrc/cpu/gaussian.cpp)."""
    prior = mu_p is not None
    mu_q, logvar_q, mu_p, logvar_p, eps, seed, draw = _latent_call(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample,
                                                                   kl, precision_weighted)
    N, D = _rows(mu_q)
    z = torch.empty_like(mu_q) if sample else mu_q.new_empty(0)
    kl_out = (torch.empty_like(mu_q) if elementwise else mu_q.new_empty(mu_q.shape[:-1])) if kl else mu_q.new_empty(0)
    if N > 0:
        block_n, block_d = _row_blocks(D, mu_q.device)
        _sample_kl_forward_kernel[(triton.cdiv(N, block_n),)](
            mu_q, logvar_q, mu_p, logvar_p, eps, seed, z, kl_out, N, D, free_bits, mu_min, mu_max, logvar_min,
            logvar_max, PRIOR=prior, PW=precision_weighted, SAMPLE=sample, KL=kl, DRAW=draw,
            ELEMENTWISE=elementwise, BLOCK_N=block_n, BLOCK_D=block_d, COMPUTE=_compute_dtype(mu_q.dtype))
    return z, kl_out


def gaussian_sample_kl_backward(grad_z, grad_kl, mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl,
                                precision_weighted, elementwise, free_bits, mu_min, mu_max, logvar_min, logvar_max):
    """[d_mu_q, d_logvar_q(, d_mu_p, d_logvar_p)] of gaussian_sample_kl given grad_z (when sampling) and
    grad_kl (when computing the KL); the noise is regenerated from the seed."""
    prior = mu_p is not None
    if (grad_z is not None) != sample or (grad_kl is not None) != kl:
        raise ValueError("fastlv: grad_z / grad_kl must be given exactly for the outputs computed")
    mu_q, logvar_q, mu_p, logvar_p, eps, seed, draw = _latent_call(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample,
                                                                   kl, precision_weighted)
    _check_same_shape("mu_q", mu_q, grad_z=grad_z)
    if kl:
        kl_shape = mu_q.shape if elementwise else mu_q.shape[:-1]
        if grad_kl.shape != kl_shape:
            raise ValueError(f"fastlv: grad_kl {tuple(grad_kl.shape)} must have shape {tuple(kl_shape)}")
    grad_z = grad_z.contiguous() if sample else mu_q
    grad_kl = grad_kl.contiguous() if kl else mu_q
    N, D = _rows(mu_q)
    grads = [torch.empty_like(mu_q) for _ in range(4 if prior else 2)]
    d_mu_p, d_logvar_p = (grads[2], grads[3]) if prior else (grads[0], grads[1])  # never written without a prior
    if N > 0 and D > 0:
        block_n, block_d = _row_blocks(D, mu_q.device)
        _sample_kl_backward_kernel[(triton.cdiv(N, block_n),)](
            grad_z, grad_kl, mu_q, logvar_q, mu_p, logvar_p, eps, seed, grads[0], grads[1], d_mu_p, d_logvar_p, N, D,
            free_bits, mu_min, mu_max, logvar_min, logvar_max, PRIOR=prior, PW=precision_weighted, SAMPLE=sample,
            KL=kl, DRAW=draw, ELEMENTWISE=elementwise, BLOCK_N=block_n, BLOCK_D=block_d,
            COMPUTE=_compute_dtype(mu_q.dtype))
    return grads


def _log_prob_call(x, mu, logvar):
    if x.dim() == 0:
        raise ValueError("fastlv: x must have a trailing latent dimension")
    _check_same_shape("x", x, mu=mu, logvar=logvar)
    return x.contiguous(), mu.contiguous(), logvar.contiguous()


def gaussian_log_prob(x, mu, logvar, elementwise, mu_min, mu_max, logvar_min, logvar_max):
    """log N(x; mu, exp(logvar)), [...] summed over D or [..., D] elementwise."""
    x, mu, logvar = _log_prob_call(x, mu, logvar)
    N, D = _rows(x)
    out = torch.empty_like(x) if elementwise else x.new_empty(x.shape[:-1])
    if N > 0:
        block_n, block_d = _row_blocks(D, x.device)
        _log_prob_forward_kernel[(triton.cdiv(N, block_n),)](
            x, mu, logvar, out, N, D, mu_min, mu_max, logvar_min, logvar_max, ELEMENTWISE=elementwise,
            BLOCK_N=block_n, BLOCK_D=block_d, COMPUTE=_compute_dtype(x.dtype))
    return out


def gaussian_log_prob_backward(grad, x, mu, logvar, elementwise, mu_min, mu_max, logvar_min, logvar_max):
    """(d_x, d_mu, d_logvar) of gaussian_log_prob given grad of its output."""
    x, mu, logvar = _log_prob_call(x, mu, logvar)
    expected = x.shape if elementwise else x.shape[:-1]
    if grad.shape != expected:
        raise ValueError(f"fastlv: grad {tuple(grad.shape)} must have shape {tuple(expected)}")
    grad = grad.contiguous()
    N, D = _rows(x)
    d_x, d_mu, d_logvar = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    if N > 0 and D > 0:
        block_n, block_d = _row_blocks(D, x.device)
        _log_prob_backward_kernel[(triton.cdiv(N, block_n),)](
            grad, x, mu, logvar, d_x, d_mu, d_logvar, N, D, mu_min, mu_max, logvar_min, logvar_max,
            ELEMENTWISE=elementwise, BLOCK_N=block_n, BLOCK_D=block_d, COMPUTE=_compute_dtype(x.dtype))
    return d_x, d_mu, d_logvar


def _element_block(device: torch.device) -> int:
    return 8192 if device.type == "cpu" else 1024


def precision_weighted(mu_a, var_a, mu_b, var_b):
    """(mu, var) of the precision-weighted combination (STCN Eq. 11), elementwise."""
    _check_same_shape("mu_a", mu_a, var_a=var_a, mu_b=mu_b, var_b=var_b)
    mu_a, var_a, mu_b, var_b = (t.contiguous() for t in (mu_a, var_a, mu_b, var_b))
    mu, var = torch.empty_like(mu_a), torch.empty_like(mu_a)
    if mu_a.numel() > 0:
        block = _element_block(mu_a.device)
        _precision_weighted_forward_kernel[(triton.cdiv(mu_a.numel(), block),)](
            mu_a, var_a, mu_b, var_b, mu, var, mu_a.numel(), BLOCK=block, COMPUTE=_compute_dtype(mu_a.dtype))
    return mu, var


def precision_weighted_backward(grad_mu, grad_var, mu_a, var_a, mu_b, var_b):
    """(d_mu_a, d_var_a, d_mu_b, d_var_b) of precision_weighted."""
    _check_same_shape("mu_a", mu_a, grad_mu=grad_mu, grad_var=grad_var, var_a=var_a, mu_b=mu_b, var_b=var_b)
    grad_mu, grad_var, mu_a, var_a, mu_b, var_b = (t.contiguous() for t in (grad_mu, grad_var, mu_a, var_a, mu_b,
                                                                            var_b))
    grads = [torch.empty_like(mu_a) for _ in range(4)]
    if mu_a.numel() > 0:
        block = _element_block(mu_a.device)
        _precision_weighted_backward_kernel[(triton.cdiv(mu_a.numel(), block),)](
            grad_mu, grad_var, mu_a, var_a, mu_b, var_b, *grads, mu_a.numel(), BLOCK=block,
            COMPUTE=_compute_dtype(mu_a.dtype))
    return tuple(grads)
