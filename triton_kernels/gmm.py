"""Triton kernels of the Gaussian-mixture log-likelihood (same ops and arguments as csrc/cpu/gmm.cpp).

Per-element mixture (x [N], logits/mu/log_sigma [N, K]): one program loads a [BLOCK_N, BLOCK_K] tile of
every parameter (BLOCK_K = K rounded up to a power of two, padded components masked to -inf) and reduces
over K in registers. Full-frame mixture (x [N, D], logits [N, K], mu/log_sigma [N, K, D]): one program
per frame, looping over D in [BLOCK_K, BLOCK_D] tiles and summing each component's log-density.

Math follows csrc/common/gmm_math.h, in fp32 (fp64 for fp64 inputs); outputs are in the input dtype.
The forward returns (log p, logsumexp(logits)). The backward recomputes everything from the inputs,
including both logsumexps: the saved ones are rounded to the input dtype (for bf16, an error of ~1% in
every responsibility), while recomputing them costs no extra memory traffic. Inputs of any batch shape
are flattened; outputs keep the batch shape.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

HALF_LOG_2PI = tl.constexpr(0.91893853320467274178)  # 0.5 * log(2 * pi)


@triton.jit
def _component_log_density(x, mu, log_sigma_raw, lo, hi):
    """log N(x; mu, exp(clamp(log_sigma_raw, lo, hi))), with z = (x - mu) / sigma and 1 / sigma for the
    backward (gaussian_log_density in gmm_math.h)."""
    log_sigma = tl.minimum(tl.maximum(log_sigma_raw, lo, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)
    inv_sigma = tl.exp(-log_sigma)
    z = (x - mu) * inv_sigma
    return -0.5 * z * z - log_sigma - HALF_LOG_2PI, z, inv_sigma


@triton.jit
def _component_grads(r, z, inv_sigma, log_sigma_raw, lo, hi):
    """(d mu, d log_sigma) of one Gaussian term given its responsibility r (times the incoming gradient);
    d log_sigma is 0 where the clamp is active (gaussian_term_grads in gmm_math.h)."""
    d_mu = r * z * inv_sigma
    d_log_sigma = tl.where((log_sigma_raw >= lo) & (log_sigma_raw <= hi), r * (z * z - 1.0), 0.0)
    return d_mu, d_log_sigma


@triton.jit
def _logsumexp(v, axis: tl.constexpr):
    """logsumexp along axis; entries of -inf (padding, disabled components) contribute 0."""
    v_max = tl.max(v, axis=axis)
    return v_max + tl.log(tl.sum(tl.exp(v - tl.expand_dims(v_max, axis)), axis=axis))


@triton.jit
def _gmm_tile(x_ptr, logits_ptr, mu_ptr, log_sigma_ptr, N, K, lo, hi,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    """Load this program's [BLOCK_N, BLOCK_K] tile and compute the component log-joints
    a_k = logit_k + log N(x; mu_k, sigma_k). Padded components get logit = a = -inf; padded rows
    (n >= N) read zeros, so everything stays finite there (they are never stored)."""
    # int64 indices: N * K can exceed 2^31.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    col_ok = cols < K
    tile_ok = row_ok[:, None] & col_ok[None, :]
    param_offsets = rows[:, None] * K + cols[None, :]  # params are [N, K] row-major
    x = tl.load(x_ptr + rows, mask=row_ok, other=0.0).to(COMPUTE)
    logit = tl.load(logits_ptr + param_offsets, mask=tile_ok, other=0.0).to(COMPUTE)
    logit = tl.where(col_ok[None, :], logit, float("-inf"))
    mu = tl.load(mu_ptr + param_offsets, mask=tile_ok, other=0.0).to(COMPUTE)
    log_sigma_raw = tl.load(log_sigma_ptr + param_offsets, mask=tile_ok, other=0.0).to(COMPUTE)
    log_density, z, inv_sigma = _component_log_density(x[:, None], mu, log_sigma_raw, lo, hi)
    return rows, row_ok, param_offsets, tile_ok, logit, logit + log_density, z, inv_sigma, log_sigma_raw


@triton.jit
def _gmm_forward_kernel(x_ptr, logits_ptr, mu_ptr, log_sigma_ptr, log_prob_ptr, lse_components_ptr, lse_logits_ptr,
                        N, K, lo, hi, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    rows, row_ok, _, _, logit, a, _, _, _ = _gmm_tile(x_ptr, logits_ptr, mu_ptr, log_sigma_ptr, N, K, lo, hi,
                                                      BLOCK_N, BLOCK_K, COMPUTE)
    lse_logits = _logsumexp(logit, 1)
    lse_components = _logsumexp(a, 1)
    tl.store(log_prob_ptr + rows, (lse_components - lse_logits).to(log_prob_ptr.dtype.element_ty), mask=row_ok)
    tl.store(lse_components_ptr + rows, lse_components.to(lse_components_ptr.dtype.element_ty), mask=row_ok)
    tl.store(lse_logits_ptr + rows, lse_logits.to(lse_logits_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _gmm_backward_kernel(grad_ptr, x_ptr, logits_ptr, mu_ptr, log_sigma_ptr,
                         d_x_ptr, d_logits_ptr, d_mu_ptr, d_log_sigma_ptr,
                         N, K, lo, hi, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    rows, row_ok, param_offsets, tile_ok, logit, a, z, inv_sigma, log_sigma_raw = _gmm_tile(
        x_ptr, logits_ptr, mu_ptr, log_sigma_ptr, N, K, lo, hi, BLOCK_N, BLOCK_K, COMPUTE)
    grad = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(COMPUTE)
    # Responsibilities r and weights w, times the incoming gradient; 0 for padded components (a = -inf).
    r = grad[:, None] * tl.exp(a - _logsumexp(a, 1)[:, None])
    w = grad[:, None] * tl.exp(logit - _logsumexp(logit, 1)[:, None])
    d_mu, d_log_sigma = _component_grads(r, z, inv_sigma, log_sigma_raw, lo, hi)
    d_x = -tl.sum(d_mu, axis=1)
    out_ty = d_x_ptr.dtype.element_ty
    tl.store(d_x_ptr + rows, d_x.to(out_ty), mask=row_ok)
    tl.store(d_logits_ptr + param_offsets, (r - w).to(out_ty), mask=tile_ok)
    tl.store(d_mu_ptr + param_offsets, d_mu.to(out_ty), mask=tile_ok)
    tl.store(d_log_sigma_ptr + param_offsets, d_log_sigma.to(out_ty), mask=tile_ok)


@triton.jit
def _frame_log_joints(x_ptr, logits_ptr, mu_ptr, log_sigma_ptr, n, K, D, lo, hi,
                      BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr):
    """Frame n's logits and component log-joints a_k = logit_k + sum_d log N(x_d; mu_kd, sigma_kd),
    both [BLOCK_K] with -inf for padded components."""
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < K
    log_density = tl.zeros([BLOCK_K], dtype=COMPUTE)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        tile_ok = k_ok[:, None] & d_ok[None, :]
        offsets = (n * K + ks[:, None]) * D + ds[None, :]  # mu/log_sigma are [N, K, D] row-major
        x = tl.load(x_ptr + n * D + ds, mask=d_ok, other=0.0).to(COMPUTE)
        mu = tl.load(mu_ptr + offsets, mask=tile_ok, other=0.0).to(COMPUTE)
        log_sigma_raw = tl.load(log_sigma_ptr + offsets, mask=tile_ok, other=0.0).to(COMPUTE)
        term, _, _ = _component_log_density(x[None, :], mu, log_sigma_raw, lo, hi)
        log_density += tl.sum(tl.where(tile_ok, term, 0.0), axis=1)
    logit = tl.load(logits_ptr + n * K + ks, mask=k_ok, other=float("-inf")).to(COMPUTE)
    return logit, logit + log_density


@triton.jit
def _diag_gmm_forward_kernel(x_ptr, logits_ptr, mu_ptr, log_sigma_ptr, log_prob_ptr, lse_components_ptr,
                             lse_logits_ptr,
                             K, D, lo, hi, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)  # one program per frame
    logit, a = _frame_log_joints(x_ptr, logits_ptr, mu_ptr, log_sigma_ptr, n, K, D, lo, hi,
                                 BLOCK_K, BLOCK_D, COMPUTE)
    lse_logits = _logsumexp(logit, 0)
    lse_components = _logsumexp(a, 0)
    tl.store(log_prob_ptr + n, (lse_components - lse_logits).to(log_prob_ptr.dtype.element_ty))
    tl.store(lse_components_ptr + n, lse_components.to(lse_components_ptr.dtype.element_ty))
    tl.store(lse_logits_ptr + n, lse_logits.to(lse_logits_ptr.dtype.element_ty))


@triton.jit
def _diag_gmm_backward_kernel(grad_ptr, x_ptr, logits_ptr, mu_ptr, log_sigma_ptr,
                              d_x_ptr, d_logits_ptr, d_mu_ptr, d_log_sigma_ptr,
                              K, D, lo, hi, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                              COMPUTE: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)  # one program per frame
    # Pass 1 recomputes the component log-joints and the responsibilities.
    logit, a = _frame_log_joints(x_ptr, logits_ptr, mu_ptr, log_sigma_ptr, n, K, D, lo, hi,
                                 BLOCK_K, BLOCK_D, COMPUTE)
    grad = tl.load(grad_ptr + n).to(COMPUTE)
    r = grad * tl.exp(a - _logsumexp(a, 0))  # 0 for padded components
    w = grad * tl.exp(logit - _logsumexp(logit, 0))
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < K
    out_ty = d_x_ptr.dtype.element_ty
    tl.store(d_logits_ptr + n * K + ks, (r - w).to(out_ty), mask=k_ok)
    # Pass 2: gradients of every [BLOCK_K, BLOCK_D] tile; d_x sums -d_mu over the components.
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        tile_ok = k_ok[:, None] & d_ok[None, :]
        offsets = (n * K + ks[:, None]) * D + ds[None, :]
        x = tl.load(x_ptr + n * D + ds, mask=d_ok, other=0.0).to(COMPUTE)
        mu = tl.load(mu_ptr + offsets, mask=tile_ok, other=0.0).to(COMPUTE)
        log_sigma_raw = tl.load(log_sigma_ptr + offsets, mask=tile_ok, other=0.0).to(COMPUTE)
        _, z, inv_sigma = _component_log_density(x[None, :], mu, log_sigma_raw, lo, hi)
        d_mu, d_log_sigma = _component_grads(r[:, None], z, inv_sigma, log_sigma_raw, lo, hi)
        tl.store(d_x_ptr + n * D + ds, (-tl.sum(d_mu, axis=0)).to(out_ty), mask=d_ok)
        tl.store(d_mu_ptr + offsets, d_mu.to(out_ty), mask=tile_ok)
        tl.store(d_log_sigma_ptr + offsets, d_log_sigma.to(out_ty), mask=tile_ok)


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _contiguous(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.contiguous() for t in tensors]


def _check_shapes(full_frame: bool, x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor,
                  log_sigma: torch.Tensor, grad: torch.Tensor | None = None) -> None:
    """The kernels index flat buffers, so wrong shapes would read out of bounds: refuse them.
    grad (of log_prob) must have the batch shape: x.shape[:-1] (full frame) or x.shape."""
    K = logits.shape[-1] if logits.dim() else 0
    batch = x.shape[:-1] if full_frame else x.shape
    params = (*batch, K, *x.shape[-1:]) if full_frame else (*batch, K)
    named = {"x": x, "logits": logits, "mu": mu, "log_sigma": log_sigma}
    expected = {"logits": (*batch, K), "mu": params, "log_sigma": params}
    if grad is not None:
        named["grad"], expected["grad"] = grad, batch
    if K < 1 or (full_frame and x.dim() == 0) or any(named[n].shape != shape for n, shape in expected.items()):
        listed = ", ".join(f"{n} {tuple(t.shape)}" for n, t in named.items())
        raise ValueError(f"fastlv: mixture shapes do not match (K >= 1 components): {listed}")


def _tile_elements(device: torch.device) -> int:
    """Elements of one [rows, components] or [components, D] tile. The interpreter (CPU) pays ~10 ms per
    program, so it gets few large tiles; on a GPU, 1024 keeps the backward's ~10 live tiles in registers
    (8 values per thread each with the default 4 warps)."""
    return 4096 if device.type == "cpu" else 1024


def _per_element_blocks(K: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): K padded to a power of two, rows filling a tile."""
    block_k = triton.next_power_of_2(K)
    return max(16, _tile_elements(device) // block_k), block_k


def _frame_blocks(K: int, D: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_D): K padded to a power of two, D chunks filling a tile."""
    block_k = triton.next_power_of_2(K)
    return block_k, max(16, min(triton.next_power_of_2(max(D, 1)), _tile_elements(device) // block_k))


def gmm_log_prob(x, logits, mu, log_sigma, log_sigma_min, log_sigma_max):
    """Per-element mixture: x [...], params [..., K] -> (log_prob, lse_components, lse_logits), each [...]."""
    _check_shapes(False, x, logits, mu, log_sigma)
    x, logits, mu, log_sigma = _contiguous(x, logits, mu, log_sigma)
    N, K = x.numel(), logits.shape[-1]
    log_prob, lse_components, lse_logits = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    if N > 0:
        block_n, block_k = _per_element_blocks(K, x.device)
        _gmm_forward_kernel[(triton.cdiv(N, block_n),)](
            x, logits, mu, log_sigma, log_prob, lse_components, lse_logits, N, K, log_sigma_min, log_sigma_max,
            BLOCK_N=block_n, BLOCK_K=block_k, COMPUTE=_compute_dtype(x.dtype))
    return log_prob, lse_components, lse_logits


def gmm_log_prob_backward(grad, x, logits, mu, log_sigma, lse_components, lse_logits, log_sigma_min,
                          log_sigma_max):
    """Gradients (d_x, d_logits, d_mu, d_log_sigma) of gmm_log_prob given grad [...] of log_prob.
    lse_components and lse_logits are unused: the kernel recomputes them in full precision (module docstring)."""
    _check_shapes(False, x, logits, mu, log_sigma, grad=grad)
    grad, x, logits, mu, log_sigma = _contiguous(grad, x, logits, mu, log_sigma)
    N, K = x.numel(), logits.shape[-1]
    d_x, d_logits, d_mu, d_log_sigma = (torch.empty_like(t) for t in (x, logits, mu, log_sigma))
    if N > 0:
        block_n, block_k = _per_element_blocks(K, x.device)
        _gmm_backward_kernel[(triton.cdiv(N, block_n),)](
            grad, x, logits, mu, log_sigma, d_x, d_logits, d_mu, d_log_sigma,
            N, K, log_sigma_min, log_sigma_max,
            BLOCK_N=block_n, BLOCK_K=block_k, COMPUTE=_compute_dtype(x.dtype))
    return d_x, d_logits, d_mu, d_log_sigma


def diag_gmm_log_prob(x, logits, mu, log_sigma, log_sigma_min, log_sigma_max):
    """Full-frame mixture: x [..., D], logits [..., K], mu/log_sigma [..., K, D]
    -> (log_prob, lse_components, lse_logits), each [...]."""
    _check_shapes(True, x, logits, mu, log_sigma)
    x, logits, mu, log_sigma = _contiguous(x, logits, mu, log_sigma)
    K, D = logits.shape[-1], x.shape[-1]
    N = logits.numel() // K  # frames (also right when D == 0)
    log_prob, lse_components, lse_logits = (x.new_empty(logits.shape[:-1]) for _ in range(3))
    if N > 0:
        block_k, block_d = _frame_blocks(K, D, x.device)
        _diag_gmm_forward_kernel[(N,)](
            x, logits, mu, log_sigma, log_prob, lse_components, lse_logits, K, D, log_sigma_min, log_sigma_max,
            BLOCK_K=block_k, BLOCK_D=block_d, COMPUTE=_compute_dtype(x.dtype))
    return log_prob, lse_components, lse_logits


def diag_gmm_log_prob_backward(grad, x, logits, mu, log_sigma, lse_components, lse_logits, log_sigma_min,
                               log_sigma_max):
    """Gradients (d_x, d_logits, d_mu, d_log_sigma) of diag_gmm_log_prob given grad [...] of log_prob.
    lse_components and lse_logits are unused: the kernel recomputes them in full precision (module docstring)."""
    _check_shapes(True, x, logits, mu, log_sigma, grad=grad)
    grad, x, logits, mu, log_sigma = _contiguous(grad, x, logits, mu, log_sigma)
    K, D = logits.shape[-1], x.shape[-1]
    N = logits.numel() // K
    d_x, d_logits, d_mu, d_log_sigma = (torch.empty_like(t) for t in (x, logits, mu, log_sigma))
    if N > 0:
        block_k, block_d = _frame_blocks(K, D, x.device)
        _diag_gmm_backward_kernel[(N,)](
            grad, x, logits, mu, log_sigma, d_x, d_logits, d_mu, d_log_sigma, K, D,
            log_sigma_min, log_sigma_max, BLOCK_K=block_k, BLOCK_D=block_d, COMPUTE=_compute_dtype(x.dtype))
    return d_x, d_logits, d_mu, d_log_sigma
