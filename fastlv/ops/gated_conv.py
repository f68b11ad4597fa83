"""Gated dilated causal convolution: the convolution of every WaveNet block in STCN.

    out = tanh(W_f * x + b_f + cond_f) ⊙ sigmoid(W_g * x + b_g + cond_g)

with ``*`` a causal dilated 1-D convolution of kernel width k: output step t sees inputs
t - (k - 1 - j) * dilation, j = 0..k-1, and zeros before the start (STCN Sec. 2.1, Eq. 2, filter width 2;
Appendix 7.1; the gated activation unit of WaveNet, van den Oord et al. 2016). The filter and gate weights
are stacked in one ``[2 C_out, C_in, k]`` tensor, so both convolutions are one GEMM per tap.

Memory layout: the kernels compute on time-major ``[T, B, C]`` memory, where a causal shift is a row
offset of one matrix (no padded copies, one large GEMM per tap). Inputs of any strides are accepted; a
``[B, C, T]`` tensor with time-major memory (``x.permute(2, 0, 1).is_contiguous()``) is read without a
copy, and the output has that memory layout (call ``.contiguous()`` for ``[B, C, T]`` memory). Stacking
blocks therefore never transposes (see :class:`fastlv.nn.TCN`).

Kernels (selected by ``fastlv._backend``): C++ CPU (csrc/cpu/gated_conv.cpp, MKL GEMMs over row panels,
each fused with its vectorized gate pass), CUDA (csrc/cuda/gated_conv.cu), Triton
(triton_kernels/gated_conv.py) and the pure-PyTorch references below. The forward saves the
pre-activations ``[T, B, 2 C_out]`` for the backward: recomputing them would repeat the forward GEMMs,
a third of the backward's FLOPs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlv._backend import run_kernel
from fastlv.ops._common import broadcast_shape, check_tensors, no_double_backward


def tap_shift(j: int, k: int, dilation: int) -> int:
    """Steps back in time read by tap j of a width-k causal convolution."""
    return (k - 1 - j) * dilation


def _time_major_memory(t: Tensor) -> Tensor:
    """The same [B, C, T] values with time-major memory (strides of a contiguous [T, B, C])."""
    return t.permute(2, 0, 1).contiguous().permute(1, 2, 0)


def _causal_conv(x: Tensor, weight: Tensor, bias: Tensor, dilation: int) -> Tensor:
    """Causal dilated conv1d by left zero-padding. One extra padded step (its output dropped) keeps
    F.conv1d valid for T = 0. Without input channels the convolution is the bias alone (F.conv1d gets the
    output shape wrong for an empty batch with C_in = 0)."""
    B, C_in, T = x.shape
    if C_in == 0:
        return bias.view(1, -1, 1).expand(B, -1, T).clone()
    k = weight.shape[-1]
    pre = F.conv1d(F.pad(x, (tap_shift(0, k, dilation) + 1, 0)), weight, bias, dilation=dilation)
    return pre[:, :, 1:]


def _gate_backward(grad: Tensor, pre: Tensor) -> Tensor:
    """d pre [..., 2C] of out = tanh(f) * sigmoid(g) (formulas of csrc/common/gated_conv_math.h)."""
    f, g = pre.chunk(2, -1)
    t, s = torch.tanh(f), torch.sigmoid(g)
    return torch.cat([grad * s * (1 - t * t), grad * t * s * (1 - s)], -1)


def _forward_ref(x: Tensor, weight: Tensor, bias: Tensor, dilation: int, cond: Tensor | None
                 ) -> tuple[Tensor, Tensor]:
    """Reference kernel of the op: (out [B, C_out, T] with time-major memory, pre [T, B, 2 C_out])."""
    pre = _causal_conv(x, weight, bias, dilation)
    if cond is not None:
        pre = pre + cond
    f, g = pre.chunk(2, 1)
    return _time_major_memory(torch.tanh(f) * torch.sigmoid(g)), pre.permute(2, 0, 1).contiguous()


def _backward_ref(grad: Tensor, x: Tensor, weight: Tensor, pre: Tensor, dilation: int
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference backward: (d_x, d_weight, d_bias, d_pre) with the shifted-matrix formulas of the kernels.
    In time-major rows, tap j of output step t reads input step t - s_j, so
    d_W[:, :, j] = sum_t d_pre[t]^T x[t - s_j] and d_x[t - s_j] += d_pre[t] W[:, :, j]."""
    T, k = x.shape[2], weight.shape[2]
    d_pre = _gate_backward(grad.permute(2, 0, 1).to(pre.dtype), pre)  # [T, B, 2C]
    x_tm = x.permute(2, 0, 1)  # [T, B, C_in]
    d_x = torch.zeros_like(x_tm, memory_format=torch.contiguous_format)
    d_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device)
    for j in range(k):
        s = tap_shift(j, k, dilation)
        if s >= T:
            continue
        d_weight[:, :, j] = torch.einsum("tbo,tbi->oi", d_pre[s:], x_tm[:T - s])
        d_x[:T - s] += d_pre[s:] @ weight[:, :, j]
    return d_x.permute(1, 2, 0), d_weight, d_pre.sum((0, 1)), d_pre


@torch.library.custom_op("fastlv::gated_causal_conv1d", mutates_args=())
def _gated_conv_op(x: Tensor, weight: Tensor, bias: Tensor, dilation: int, cond: Tensor | None
                   ) -> tuple[Tensor, Tensor]:
    return run_kernel("gated_causal_conv1d", _forward_ref, x.device, x, weight, bias, dilation, cond)


@_gated_conv_op.register_fake
def _(x, weight, bias, dilation, cond):
    B, _, T = x.shape
    C2 = weight.shape[0]
    return x.new_empty(T, B, C2 // 2).permute(1, 2, 0), x.new_empty(T, B, C2)


@torch.library.custom_op("fastlv::gated_causal_conv1d_backward", mutates_args=())
def _gated_conv_backward_op(grad: Tensor, x: Tensor, weight: Tensor, pre: Tensor, dilation: int
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return run_kernel("gated_causal_conv1d_backward", _backward_ref, x.device, grad, x, weight, pre, dilation)


@_gated_conv_backward_op.register_fake
def _(grad, x, weight, pre, dilation):
    B, C_in, T = x.shape
    return (x.new_empty(T, B, C_in).permute(1, 2, 0), weight.new_empty(weight.shape),
            weight.new_empty(weight.shape[0]), pre.new_empty(pre.shape))


def _setup_context(ctx, inputs, output):
    x, weight, bias, dilation, cond = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.dilation = dilation
    # How cond broadcasts over time: None (no cond), "local" [B, 2C, T] or "global" [B, 2C, 1].
    ctx.cond_kind = None if cond is None else "local" if cond.shape[2] == x.shape[2] else "global"
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # pre gets no gradient: no [T, B, 2 C_out] zero tensor in the backward


def _backward(ctx, grad, _grad_pre):  # pre is an internal output, saved for the backward
    if grad is None:  # no gradient reached out (grads are not materialized as zeros, see _setup_context)
        return None, None, None, None, None
    x, weight, pre = ctx.saved_tensors
    d_x, d_weight, d_bias, d_pre = _gated_conv_backward_op(grad, x, weight, pre, ctx.dilation)
    d_cond = None
    if ctx.cond_kind == "local":
        d_cond = d_pre.permute(1, 2, 0)
    elif ctx.cond_kind == "global":
        d_cond = d_pre.sum(0).unsqueeze(-1)
    return d_x, d_weight, d_bias, None, d_cond


_gated_conv_op.register_autograd(_backward, setup_context=_setup_context)
_gated_conv_backward_op.register_autograd(no_double_backward("fastlv::gated_causal_conv1d"))


def _check_conv_args(x: Tensor, weight: Tensor, bias: Tensor, dilation: int, cond: Tensor | None
                     ) -> Tensor | None:
    """Validate the arguments; returns cond expanded to [B, 2 C_out, T] (local) or [B, 2 C_out, 1]."""
    check_tensors(x=x, weight=weight, bias=bias, cond=cond)
    if x.dim() != 3:
        raise ValueError(f"fastlv: x must have shape [B, C_in, T], got {tuple(x.shape)}")
    B, C_in, T = x.shape
    if (weight.dim() != 3 or weight.shape[0] % 2 or weight.shape[0] < 2 or weight.shape[1] != C_in
            or weight.shape[2] < 1):
        raise ValueError(f"fastlv: weight must have shape [2 * C_out, C_in = {C_in}, k >= 1] with C_out >= 1 "
                         f"(filter rows, then gate rows), got {tuple(weight.shape)}")
    C2 = weight.shape[0]
    if tuple(bias.shape) != (C2,):
        raise ValueError(f"fastlv: bias must have shape [2 * C_out] = [{C2}], got {tuple(bias.shape)}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"fastlv: dilation must be an int >= 1, got {dilation!r}")
    if cond is None:
        return None
    if cond.dim() != 3:
        raise ValueError(f"fastlv: cond must be 3-D, broadcastable to [B, 2 * C_out, T] = [{B}, {C2}, {T}], "
                         f"got {tuple(cond.shape)}")
    shape = broadcast_shape(cond=cond.shape, **{"[B, 2 * C_out, T]": (B, C2, T)})
    if tuple(shape) != (B, C2, T):
        raise ValueError(f"fastlv: cond must broadcast to [B, 2 * C_out, T] = [{B}, {C2}, {T}], "
                         f"got {tuple(cond.shape)}")
    return cond.expand(B, C2, T if cond.shape[2] != 1 else 1)


def gated_causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor, dilation: int = 1, cond: Tensor | None = None
                        ) -> Tensor:
    """Gated dilated causal convolution (STCN Sec. 2.1 / Appendix 7.1, WaveNet's gated activation unit).

    out = tanh(conv(x, W_f) + b_f + cond_f) * sigmoid(conv(x, W_g) + b_g + cond_g), where conv is causal:
    output step t depends on x at steps t, t - dilation, ..., t - (k - 1) * dilation (zeros before 0).

    Args:
        x: ``[B, C_in, T]``. Any strides; time-major memory (``x.permute(2, 0, 1)`` contiguous) is the
            zero-copy layout, see the module docstring.
        weight: ``[2 * C_out, C_in, k]``, filter rows first, then gate rows (an ``nn.Conv1d`` weight with
            ``2 * C_out`` output channels). Any kernel width k >= 1 (WaveNet/STCN use 2).
        bias: ``[2 * C_out]``, filter then gate.
        dilation: int >= 1.
        cond: optional conditioning added to the pre-activations before the gate, broadcastable to
            ``[B, 2 * C_out, T]`` (filter then gate channels): ``[B, 2 C_out, T]`` local, ``[B, 2 C_out, 1]``
            global. Project your conditioning features to 2 C_out channels first (a 1x1 conv / Linear).

    Returns ``[B, C_out, T]`` with time-major memory. fp32/fp64 on CPU; fp32/fp16/bf16/fp64 on GPU.
    Differentiable w.r.t. x, weight, bias and cond (first order).
    """
    cond = _check_conv_args(x, weight, bias, dilation, cond)
    return _gated_conv_op(x, weight, bias, dilation, cond)[0]


def gated_causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor, dilation: int = 1,
                            cond: Tensor | None = None) -> Tensor:
    """Pure-PyTorch reference of :func:`gated_causal_conv1d`: a left-padded ``nn.Conv1d`` and the gate
    (differentiable by autograd). Output memory is ``[B, C_out, T]`` contiguous."""
    cond = _check_conv_args(x, weight, bias, dilation, cond)
    pre = _causal_conv(x, weight, bias, dilation)
    if cond is not None:
        pre = pre + cond
    f, g = pre.chunk(2, 1)
    return torch.tanh(f) * torch.sigmoid(g)
