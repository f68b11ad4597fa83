"""Masked linear layer y = act(x @ (W ⊙ M)^T + b): the layer of MADE (Germain et al. 2015) and of the
causally masked low-level model of the hierarchical RNN/SRNN (Dai et al. 2019, Sec. 5.2).

A MADE mask is block lower-triangular once its rows and columns are sorted by degree, so a dense
GEMM on the masked weight spends about half its FLOPs on zeros. The kernels (selected by
``fastlv._backend``: C++ CPU csrc/cpu/masked_linear.cpp, CUDA csrc/cuda/masked_linear.cu, Triton
triton_kernels/masked_linear.py) compute only the blocks the mask keeps, with bias and activation fused:
the C++ kernels find the block structure from the mask and cache it per mask tensor; the CUDA and Triton
kernels skip the weight tiles the mask empties, from a tile-occupancy table recomputed at every call.
The pure-PyTorch references below are the oracle. Masked weights contribute exactly nothing (a masked entry is never read, so even
an inf there is harmless) and receive exactly zero gradient.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlv._backend import eager_fastlv_c, run_kernel
from fastlv.ops._common import check_tensors, no_double_backward

ACTIVATIONS = ("none", "relu")


def _masked_weight(weight: Tensor, mask: Tensor) -> Tensor:
    """W where the mask is nonzero, exactly 0 elsewhere."""
    return torch.where(mask != 0, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def _activate(y: Tensor, activation: str) -> Tensor:
    return torch.relu(y) if activation == "relu" else y


def _masked_linear_kernel_ref(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor],
                              activation: str) -> Tensor:
    """Reference kernel (positional signature of the C++ op): a dense GEMM on the masked weight."""
    return _activate(F.linear(x, _masked_weight(weight, mask), bias), activation)


def _masked_linear_backward_ref(grad: Tensor, x: Tensor, weight: Tensor, mask: Tensor, output: Optional[Tensor],
                                activation: str) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias): gz = grad ⊙ act'(output); grad_x = gz @ Wm,
    grad_weight = (gz^T @ x) ⊙ M, grad_bias = sum of gz over the batch."""
    out_features, in_features = weight.shape
    if activation == "relu":
        grad = torch.where(output > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    rows = math.prod(x.shape[:-1])
    gz = grad.reshape(rows, out_features).to(x.dtype)
    x2 = x.reshape(rows, in_features)
    grad_x = (gz @ _masked_weight(weight, mask)).reshape(x.shape)
    grad_weight = _masked_weight(gz.t() @ x2, mask)
    return grad_x, grad_weight, gz.sum(0)


def masked_linear_ref(x: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None,
                      activation: str | None = None) -> Tensor:
    """Pure-PyTorch reference of :func:`masked_linear` (same arguments)."""
    return _masked_linear_kernel_ref(x, weight, mask, bias, _activation_name(activation))


@torch.library.custom_op("fastlv::masked_linear", mutates_args=())
def _masked_linear_op(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor], activation: str) -> Tensor:
    return run_kernel("masked_linear", _masked_linear_kernel_ref, x.device, x, weight, mask, bias, activation)


@_masked_linear_op.register_fake
def _(x, weight, mask, bias, activation):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("fastlv::masked_linear_backward", mutates_args=())
def _masked_linear_backward_op(grad: Tensor, x: Tensor, weight: Tensor, mask: Tensor, output: Optional[Tensor],
                               activation: str) -> tuple[Tensor, Tensor, Tensor]:
    return run_kernel("masked_linear_backward", _masked_linear_backward_ref, x.device, grad, x, weight, mask,
                      output, activation)


@_masked_linear_backward_op.register_fake
def _(grad, x, weight, mask, output, activation):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[:1])


def _setup_context(ctx, inputs, output):
    x, weight, mask, bias, activation = inputs
    # relu's gradient is read from the output; without an activation nothing of size [..., out] is kept.
    ctx.save_for_backward(x, weight, mask, output if activation == "relu" else None)
    ctx.activation, ctx.has_bias = activation, bias is not None


def _backward(ctx, grad):
    x, weight, mask, output = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = _masked_linear_backward_op(grad, x, weight, mask, output, ctx.activation)
    return grad_x, grad_weight, None, grad_bias if ctx.has_bias else None, None


_masked_linear_op.register_autograd(_backward, setup_context=_setup_context)
_masked_linear_backward_op.register_autograd(no_double_backward("fastlv::masked_linear"))


def _activation_name(activation: str | None) -> str:
    name = "none" if activation is None else activation
    if name not in ACTIVATIONS:
        raise ValueError(f"fastlv: activation must be None or one of {ACTIVATIONS}, got {activation!r}")
    return name


def masked_linear(x: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None,
                  activation: str | None = None) -> Tensor:
    """y = act(x @ (W ⊙ M)^T + b), computing only the blocks of W that the mask keeps.

    Args:
        x: ``[..., in]``.
        weight: ``[out, in]``.
        mask: ``[out, in]``, any dtype; nonzero entries keep the weight (0/1 in MADE), zero entries
            remove it exactly (their weights are never read and get zero gradient). Its block
            structure is found and cached per mask tensor (keyed by its storage, shape and version
            counter): pass the same mask buffer at every call. In-place edits are seen through the
            version counter, except edits through ``.data`` or shared memory outside torch.
        bias: optional ``[out]``.
        activation: ``None`` / ``"none"`` or ``"relu"``, fused with the bias.

    Returns ``[..., out]``. fp32/fp64 on CPU; fp32/fp16/bf16/fp64 on GPU. Differentiable w.r.t. x,
    weight and bias (first order).
    """
    check_tensors(x=x, weight=weight, bias=bias)
    if not isinstance(mask, Tensor):
        raise TypeError(f"fastlv: mask must be a torch.Tensor, got {type(mask).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"fastlv: weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"fastlv: mask is on {mask.device} but weight is on {weight.device}")
    if mask.shape != weight.shape:
        raise ValueError(f"fastlv: mask must have the shape of weight {tuple(weight.shape)}, got {tuple(mask.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"fastlv: x must end in in_features = {weight.shape[1]} (weight is [out, in]), "
                         f"got shape {tuple(x.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"fastlv: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    args = (x, weight, mask, bias, _activation_name(activation))
    if eager_fastlv_c(x.device):  # the kernel op, with its autograd in C++ (csrc/cpu/masked_linear.cpp)
        return torch.ops.fastlv_C.masked_linear(*args)
    return _masked_linear_op(*args)
