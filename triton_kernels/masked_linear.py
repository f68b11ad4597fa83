"""Triton kernels of the masked linear layer y = act(x @ (W ⊙ M)^T + b) of MADE (Germain et al. 2015), same
ops and arguments as csrc/cpu/masked_linear.cpp.

The weight is cut into [BLOCK_OUT, BLOCK_IN] tiles. The launcher computes, per tile, whether the mask keeps
any entry of it (a small int8 tensor, recomputed at every call with two torch reductions over the mask: no
cache to key or invalidate); a MADE mask is lower-triangular in degree order, so for sorted degrees about
half of the tiles are empty. Each kernel is a tiled tl.dot that skips the empty tiles:

- forward: one program per [BLOCK_M rows, BLOCK_OUT outputs] tile of y, summing x tile @ (W ⊙ M)^T tile
  over the kept input tiles, then bias + activation (none / relu) on the accumulator.
- grad_x:  one program per [BLOCK_M rows, BLOCK_IN inputs] tile, summing gz tile @ (W ⊙ M) tile over the
  kept output tiles, gz = grad ⊙ act'(output) computed on the fly (relu' from the output, as torch).
- grad_W:  one program per weight tile, gz^T @ x over the rows for kept tiles, stored as exactly 0 where
  the mask is 0 (and on empty tiles); the programs of the first input tile also sum gz over the rows,
  which is grad_b (the grid has at least one input tile, also when in_features == 0).

W ⊙ M is a masked load of W (the entries the mask removes are never read, so even inf / nan there
contribute nothing), not a product. Math in fp32 (fp64 for fp64 inputs; dots in IEEE precision, no TF32);
outputs in the input dtype.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _forward_kernel(x_ptr, w_ptr, keep_ptr, occupied_ptr, bias_ptr, y_ptr, N, IN, OUT, IN_TILES,
                    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_OUT: tl.constexpr,
                    BLOCK_IN: tl.constexpr, COMPUTE: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    out_tile = tl.program_id(1)
    outs = out_tile * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    row_ok, out_ok = rows < N, outs < OUT
    acc = tl.zeros([BLOCK_M, BLOCK_OUT], dtype=COMPUTE)
    for in_tile in range(0, tl.cdiv(IN, BLOCK_IN)):
        if tl.load(occupied_ptr + out_tile * IN_TILES + in_tile) != 0:  # skip tiles the mask removes
            ins = in_tile * BLOCK_IN + tl.arange(0, BLOCK_IN)
            in_ok = ins < IN
            a = tl.load(x_ptr + rows[:, None] * IN + ins[None, :], mask=row_ok[:, None] & in_ok[None, :], other=0.0)
            wt_at = outs[None, :] * IN + ins[:, None]  # [BLOCK_IN, BLOCK_OUT] tile of W^T
            kept = tl.load(keep_ptr + wt_at, mask=in_ok[:, None] & out_ok[None, :], other=0) != 0
            wt = tl.load(w_ptr + wt_at, mask=kept, other=0.0)
            acc += tl.dot(a.to(COMPUTE), wt.to(COMPUTE), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + outs, mask=out_ok, other=0.0).to(COMPUTE)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(y_ptr + rows[:, None] * OUT + outs[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & out_ok[None, :])


@triton.jit
def _pre_activation_grad(grad_ptr, output_ptr, at, ok, RELU: tl.constexpr, COMPUTE: tl.constexpr):
    """gz = grad ⊙ act'(pre-activation), relu' read from the output (1 where output > 0)."""
    gz = tl.load(grad_ptr + at, mask=ok, other=0.0).to(COMPUTE)
    if RELU:
        gz = tl.where(tl.load(output_ptr + at, mask=ok, other=0.0) > 0, gz, 0.0)
    return gz


@triton.jit
def _grad_x_kernel(grad_ptr, output_ptr, w_ptr, keep_ptr, occupied_ptr, gx_ptr, N, IN, OUT, IN_TILES,
                   RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
                   COMPUTE: tl.constexpr):
    """grad_x = gz @ (W ⊙ M) over the kept output tiles."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_tile = tl.program_id(1)
    ins = in_tile * BLOCK_IN + tl.arange(0, BLOCK_IN)
    row_ok, in_ok = rows < N, ins < IN
    acc = tl.zeros([BLOCK_M, BLOCK_IN], dtype=COMPUTE)
    for out_tile in range(0, tl.cdiv(OUT, BLOCK_OUT)):
        if tl.load(occupied_ptr + out_tile * IN_TILES + in_tile) != 0:
            outs = out_tile * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
            out_ok = outs < OUT
            gz = _pre_activation_grad(grad_ptr, output_ptr, rows[:, None] * OUT + outs[None, :],
                                      row_ok[:, None] & out_ok[None, :], RELU, COMPUTE)
            w_at = outs[:, None] * IN + ins[None, :]  # [BLOCK_OUT, BLOCK_IN] tile of W
            kept = tl.load(keep_ptr + w_at, mask=out_ok[:, None] & in_ok[None, :], other=0) != 0
            w = tl.load(w_ptr + w_at, mask=kept, other=0.0)
            acc += tl.dot(gz, w.to(COMPUTE), input_precision="ieee")
    tl.store(gx_ptr + rows[:, None] * IN + ins[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & in_ok[None, :])


@triton.jit
def _grad_w_kernel(grad_ptr, output_ptr, x_ptr, keep_ptr, occupied_ptr, gw_ptr, gb_ptr, N, IN, OUT, IN_TILES,
                   RELU: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, BLOCK_R: tl.constexpr,
                   COMPUTE: tl.constexpr):
    """grad_W tile = (gz^T @ x) ⊙ M over all rows (0 on empty tiles); input tile 0 also stores grad_b."""
    out_tile, in_tile = tl.program_id(0), tl.program_id(1)
    outs = out_tile * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    ins = in_tile * BLOCK_IN + tl.arange(0, BLOCK_IN)
    out_ok, in_ok = outs < OUT, ins < IN
    occupied = tl.load(occupied_ptr + out_tile * IN_TILES + in_tile) != 0
    acc = tl.zeros([BLOCK_OUT, BLOCK_IN], dtype=COMPUTE)
    bias_acc = tl.zeros([BLOCK_OUT], dtype=COMPUTE)
    if occupied | (in_tile == 0):
        for r0 in range(0, N, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
            r_ok = rs < N
            gz_t = _pre_activation_grad(grad_ptr, output_ptr, rs[None, :] * OUT + outs[:, None],
                                        out_ok[:, None] & r_ok[None, :], RELU, COMPUTE)  # [BLOCK_OUT, BLOCK_R]
            bias_acc += tl.sum(gz_t, axis=1)
            if occupied:
                a = tl.load(x_ptr + rs[:, None] * IN + ins[None, :], mask=r_ok[:, None] & in_ok[None, :], other=0.0)
                acc += tl.dot(gz_t, a.to(COMPUTE), input_precision="ieee")
    w_at = outs[:, None] * IN + ins[None, :]
    w_ok = out_ok[:, None] & in_ok[None, :]
    kept = tl.load(keep_ptr + w_at, mask=w_ok, other=0) != 0
    tl.store(gw_ptr + w_at, tl.where(kept, acc, 0.0).to(gw_ptr.dtype.element_ty), mask=w_ok)
    if in_tile == 0:
        tl.store(gb_ptr + outs, bias_acc.to(gb_ptr.dtype.element_ty), mask=out_ok)


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M = BLOCK_R, BLOCK_OUT, BLOCK_IN): rows per tile, and the weight tile on which empty tiles are
    skipped. The interpreter (CPU) pays ~10 ms per program: few large tiles."""
    return (64, 64, 64) if device.type == "cpu" else (64, 64, 32)


def _relu(activation: str) -> bool:
    if activation not in ("none", "relu"):
        raise ValueError(f"fastlv: activation must be 'none' or 'relu', got {activation!r}")
    return activation == "relu"


def _check(x, weight, mask):
    if weight.dim() != 2 or mask.shape != weight.shape or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"fastlv: masked_linear shapes do not match: x {tuple(x.shape)} [..., in], weight "
                         f"{tuple(weight.shape)} [out, in], mask {tuple(mask.shape)} [out, in]")


def _as_rows(t: torch.Tensor, features: int) -> torch.Tensor:
    """[..., features] -> contiguous [rows, features] (also for features == 0)."""
    return t.reshape(math.prod(t.shape[:-1]), features).contiguous()


def _keep_and_occupancy(mask: torch.Tensor, block_out: int, block_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep [out, in] int8, 1 where the mask is nonzero; occupied [out tiles, max(1, in tiles)] int8, 1 where
    the weight tile holds a kept entry). Zero padding to whole tiles keeps the occupancy exact."""
    out_f, in_f = mask.shape
    keep = (mask != 0).to(torch.int8).contiguous()
    out_tiles, in_tiles = triton.cdiv(out_f, block_out), max(1, triton.cdiv(in_f, block_in))
    padded = keep.new_zeros(out_tiles * block_out, in_tiles * block_in)
    padded[:out_f, :in_f] = keep
    return keep, padded.view(out_tiles, block_out, in_tiles, block_in).amax(dim=(1, 3)).contiguous()


def masked_linear(x, weight, mask, bias, activation):
    """y = act(x @ (W ⊙ M)^T + b); x [..., in], weight and mask [out, in], bias None or [out]."""
    relu = _relu(activation)
    _check(x, weight, mask)
    out_f, in_f = weight.shape
    x_rows = _as_rows(x, in_f)
    N = x_rows.shape[0]
    y = x.new_empty(N, out_f)
    if N > 0 and out_f > 0:
        block_m, block_out, block_in = _blocks(x.device)
        keep, occupied = _keep_and_occupancy(mask, block_out, block_in)
        _forward_kernel[(triton.cdiv(N, block_m), triton.cdiv(out_f, block_out))](
            x_rows, weight.contiguous(), keep, occupied, bias.contiguous() if bias is not None else x_rows, y, N,
            in_f, out_f, occupied.shape[1], HAS_BIAS=bias is not None, RELU=relu, BLOCK_M=block_m,
            BLOCK_OUT=block_out, BLOCK_IN=block_in, COMPUTE=_compute_dtype(x.dtype))
    return y.view(*x.shape[:-1], out_f)


def masked_linear_backward(grad, x, weight, mask, output, activation):
    """(grad_x [..., in], grad_weight [out, in], exactly 0 where the mask is 0, grad_bias [out])."""
    relu = _relu(activation)
    _check(x, weight, mask)
    if relu and output is None:
        raise ValueError("fastlv: the relu backward needs the output")
    out_f, in_f = weight.shape
    x_rows = _as_rows(x, in_f)
    N = x_rows.shape[0]
    grad_rows = _as_rows(grad.to(x.dtype), out_f)
    output_rows = _as_rows(output.to(x.dtype), out_f) if relu else grad_rows
    grad_x = x.new_zeros(N, in_f)
    grad_w = weight.new_zeros(out_f, in_f)
    grad_b = weight.new_zeros(out_f)
    if N > 0 and out_f > 0:
        block_m, block_out, block_in = _blocks(x.device)
        keep, occupied = _keep_and_occupancy(mask, block_out, block_in)
        w = weight.contiguous()
        compute = _compute_dtype(x.dtype)
        if in_f > 0:
            _grad_x_kernel[(triton.cdiv(N, block_m), triton.cdiv(in_f, block_in))](
                grad_rows, output_rows, w, keep, occupied, grad_x, N, in_f, out_f, occupied.shape[1], RELU=relu,
                BLOCK_M=block_m, BLOCK_OUT=block_out, BLOCK_IN=block_in, COMPUTE=compute)
        _grad_w_kernel[(occupied.shape[0], occupied.shape[1])](
            grad_rows, output_rows, x_rows, keep, occupied, grad_w, grad_b, N, in_f, out_f, occupied.shape[1],
            RELU=relu, BLOCK_OUT=block_out, BLOCK_IN=block_in, BLOCK_R=block_m, COMPUTE=compute)
    return grad_x.view(x.shape), grad_w, grad_b
