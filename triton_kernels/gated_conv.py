"""Triton kernels of the gated dilated causal convolution (same ops and arguments as csrc/cpu/gated_conv.cpp).

Time-major layout as in the C++ kernels: x is read as rows [T * B, C_in], the pre-activations are
[T * B, 2 C_out]; tap j of output row r reads input row r - s_j * B, s_j = (k - 1 - j) * dilation, and rows
before 0 are the causal zero padding (masked loads, no padded copy). Each kernel is a tiled tl.dot:

- forward: one program per [BLOCK_M rows, BLOCK_N channels] tile accumulates the filter and the gate
  pre-activations over taps and C_in, adds bias + conditioning, stores them (for the backward) and the
  gated output (math of csrc/common/gated_conv_math.h; tanh written as 2 sigmoid(2x) - 1).
- backward: d_pre (elementwise), d_x = sum_j d_pre[r + s_j B] @ W_j, d_W_j = sum_r d_pre[r]^T x[r - s_j B];
  the bias gradient is the column sum of d_pre (a torch reduction in the launcher).

Math in fp32 (fp64 for fp64 inputs; dots in IEEE precision, no TF32); outputs in the input dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _gated_conv_forward_kernel(x_ptr, w_ptr, bias_ptr, cond_ptr, out_ptr, pre_ptr, R, B, C_in, C, k, dilation,
                               HAS_COND: tl.constexpr, COND_LOCAL: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < R, cols < C
    acc_f = tl.zeros([BLOCK_M, BLOCK_N], dtype=COMPUTE)
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=COMPUTE)
    for j in range(k):
        src = rows - (k - 1 - j) * dilation * B  # input row of tap j; < 0 is the causal zero padding
        src_ok = row_ok & (src >= 0)
        w_tap = w_ptr + j * 2 * C * C_in  # W_j [2C, C_in]
        for c0 in range(0, C_in, BLOCK_K):
            ks = c0 + tl.arange(0, BLOCK_K)
            k_ok = ks < C_in
            a = tl.load(x_ptr + src[:, None] * C_in + ks[None, :], mask=src_ok[:, None] & k_ok[None, :], other=0.0)
            w_mask = k_ok[:, None] & col_ok[None, :]
            w_f = tl.load(w_tap + cols[None, :] * C_in + ks[:, None], mask=w_mask, other=0.0)  # W_f^T tile
            w_g = tl.load(w_tap + (C + cols[None, :]) * C_in + ks[:, None], mask=w_mask, other=0.0)
            a = a.to(COMPUTE)
            acc_f += tl.dot(a, w_f.to(COMPUTE), input_precision="ieee")
            acc_g += tl.dot(a, w_g.to(COMPUTE), input_precision="ieee")
    f = acc_f + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(COMPUTE)[None, :]
    g = acc_g + tl.load(bias_ptr + C + cols, mask=col_ok, other=0.0).to(COMPUTE)[None, :]
    tile_ok = row_ok[:, None] & col_ok[None, :]
    if HAS_COND:
        cond_rows = rows if COND_LOCAL else rows % B  # [T * B, 2C] local, [B, 2C] global
        cond_at = cond_ptr + cond_rows[:, None] * 2 * C + cols[None, :]
        f += tl.load(cond_at, mask=tile_ok, other=0.0).to(COMPUTE)
        g += tl.load(cond_at + C, mask=tile_ok, other=0.0).to(COMPUTE)
    pre_at = pre_ptr + rows[:, None] * 2 * C + cols[None, :]
    tl.store(pre_at, f.to(pre_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(pre_at + C, g.to(pre_ptr.dtype.element_ty), mask=tile_ok)
    out = (2.0 * _sigmoid(2.0 * f) - 1.0) * _sigmoid(g)
    tl.store(out_ptr + rows[:, None] * C + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _gate_backward_kernel(grad_ptr, pre_ptr, d_pre_ptr, R, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          COMPUTE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    tile_ok = (rows < R)[:, None] & (cols < C)[None, :]
    pre_at = pre_ptr + rows[:, None] * 2 * C + cols[None, :]
    f = tl.load(pre_at, mask=tile_ok, other=0.0).to(COMPUTE)
    g = tl.load(pre_at + C, mask=tile_ok, other=0.0).to(COMPUTE)
    grad = tl.load(grad_ptr + rows[:, None] * C + cols[None, :], mask=tile_ok, other=0.0).to(COMPUTE)
    t = 2.0 * _sigmoid(2.0 * f) - 1.0
    s = _sigmoid(g)
    gs = grad * s
    d_at = d_pre_ptr + rows[:, None] * 2 * C + cols[None, :]
    tl.store(d_at, (gs * (1.0 - t * t)).to(d_pre_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(d_at + C, (gs * t * (1.0 - s)).to(d_pre_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _input_grad_kernel(d_pre_ptr, w_ptr, d_x_ptr, R, B, C_in, C2, k, dilation, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    """d_x[r] = sum_j d_pre[r + s_j B] @ W_j over the output rows that exist (< R)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < R, cols < C_in
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=COMPUTE)
    for j in range(k):
        dst = rows + (k - 1 - j) * dilation * B  # output row that read row r through tap j
        dst_ok = row_ok & (dst < R)
        w_tap = w_ptr + j * C2 * C_in
        for o0 in range(0, C2, BLOCK_K):
            os = o0 + tl.arange(0, BLOCK_K)
            o_ok = os < C2
            a = tl.load(d_pre_ptr + dst[:, None] * C2 + os[None, :], mask=dst_ok[:, None] & o_ok[None, :], other=0.0)
            w = tl.load(w_tap + os[:, None] * C_in + cols[None, :], mask=o_ok[:, None] & col_ok[None, :], other=0.0)
            acc += tl.dot(a.to(COMPUTE), w.to(COMPUTE), input_precision="ieee")
    tl.store(d_x_ptr + rows[:, None] * C_in + cols[None, :], acc.to(d_x_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _weight_grad_kernel(d_pre_ptr, x_ptr, d_w_ptr, R, B, C_in, C2, k, dilation, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    """d_W_j[o, i] = sum_r d_pre[r, o] x[r - s_j B, i]; program axis 2 is the tap j."""
    outs = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.program_id(2)
    out_ok, col_ok = outs < C2, cols < C_in
    shift = (k - 1 - j) * dilation * B
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=COMPUTE)
    for r0 in range(0, R, BLOCK_K):
        rs = r0 + tl.arange(0, BLOCK_K).to(tl.int64)
        r_ok = (rs < R) & (rs >= shift)
        a = tl.load(d_pre_ptr + rs[None, :] * C2 + outs[:, None], mask=out_ok[:, None] & r_ok[None, :], other=0.0)
        b = tl.load(x_ptr + (rs - shift)[:, None] * C_in + cols[None, :], mask=r_ok[:, None] & col_ok[None, :],
                    other=0.0)
        acc += tl.dot(a.to(COMPUTE), b.to(COMPUTE), input_precision="ieee")
    tl.store(d_w_ptr + j * C2 * C_in + outs[:, None] * C_in + cols[None, :], acc.to(d_w_ptr.dtype.element_ty),
             mask=out_ok[:, None] & col_ok[None, :])


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K). The interpreter (CPU) pays ~10 ms per program: few large tiles."""
    return (64, 64, 64) if device.type == "cpu" else (64, 64, 32)


def _time_major_rows(t: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> contiguous [T * B, C]."""
    return t.permute(2, 0, 1).reshape(t.shape[2] * t.shape[0], t.shape[1]).contiguous()


def _check(x, weight, dilation):
    if x.dim() != 3 or weight.dim() != 3 or weight.shape[0] % 2 or weight.shape[1] != x.shape[1] or dilation < 1:
        raise ValueError(f"fastlv: gated conv shapes do not match: x {tuple(x.shape)} [B, C_in, T], weight "
                         f"{tuple(weight.shape)} [2 C_out, C_in, k], dilation {dilation} >= 1")


def gated_causal_conv1d(x, weight, bias, dilation, cond):
    """x [B, C_in, T], weight [2C, C_in, k], bias [2C], cond None / [B, 2C, T] / [B, 2C, 1]
    -> (out [B, C, T] with time-major memory, pre [T, B, 2C])."""
    _check(x, weight, dilation)
    B, C_in, T = x.shape
    C2, _, k = weight.shape
    C, R = C2 // 2, T * B
    x_rows = _time_major_rows(x)
    w_taps = weight.permute(2, 0, 1).contiguous()  # [k, 2C, C_in]
    cond_local = cond is not None and cond.shape[2] == T and T != 1
    cond_rows = None if cond is None else _time_major_rows(cond) if cond_local else cond[:, :, 0].contiguous()
    out = x.new_empty(T, B, C)
    pre = x.new_empty(T, B, C2)
    if R > 0 and C > 0:
        block_m, block_n, block_k = _blocks(x.device)
        _gated_conv_forward_kernel[(triton.cdiv(R, block_m), triton.cdiv(C, block_n))](
            x_rows, w_taps, bias.contiguous(), cond_rows if cond is not None else x_rows, out, pre, R, B, C_in, C, k,
            dilation, HAS_COND=cond is not None, COND_LOCAL=cond_local, BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_K=block_k, COMPUTE=_compute_dtype(x.dtype))
    return out.permute(1, 2, 0), pre


def gated_causal_conv1d_backward(grad, x, weight, pre, dilation):
    """Gradients (d_x [B, C_in, T] time-major memory, d_weight, d_bias, d_pre [T, B, 2C]) given grad [B, C, T]."""
    _check(x, weight, dilation)
    B, C_in, T = x.shape
    C2, _, k = weight.shape
    C, R = C2 // 2, T * B
    if tuple(pre.shape) != (T, B, C2) or tuple(grad.shape) != (B, C, T):
        raise ValueError(f"fastlv: pre must be [T, B, 2C] = {(T, B, C2)} and grad [B, C, T] = {(B, C, T)}, got "
                         f"{tuple(pre.shape)} and {tuple(grad.shape)}")
    grad_rows = _time_major_rows(grad.to(x.dtype))
    pre = pre.contiguous()
    x_rows = _time_major_rows(x)
    w_taps = weight.permute(2, 0, 1).contiguous()
    d_pre = torch.empty_like(pre)  # every element written when R, C > 0
    d_x = x.new_zeros(T, B, C_in)
    d_w_taps = x.new_zeros(k, C2, C_in)
    block_m, block_n, block_k = _blocks(x.device)
    compute = _compute_dtype(x.dtype)
    if R > 0 and C > 0:
        _gate_backward_kernel[(triton.cdiv(R, block_m), triton.cdiv(C, block_n))](
            grad_rows, pre, d_pre, R, C, BLOCK_M=block_m, BLOCK_N=block_n, COMPUTE=compute)
        if C_in > 0:
            _input_grad_kernel[(triton.cdiv(R, block_m), triton.cdiv(C_in, block_n))](
                d_pre, w_taps, d_x, R, B, C_in, C2, k, dilation, BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_K=block_k, COMPUTE=compute)
            _weight_grad_kernel[(triton.cdiv(C2, block_m), triton.cdiv(C_in, block_n), k)](
                d_pre, x_rows, d_w_taps, R, B, C_in, C2, k, dilation, BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_K=block_k, COMPUTE=compute)
    d_bias = d_pre.sum((0, 1))
    return d_x.permute(1, 2, 0), d_w_taps.permute(1, 2, 0).contiguous(), d_bias, d_pre
