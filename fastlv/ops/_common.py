"""Pieces every fastlv op shares: argument checks, reductions, the reference backward."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("none", "sum", "mean")
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPU_DTYPES = (torch.float32, torch.float64)


def check_tensors(**tensors: Tensor | None) -> Tensor:
    """Check that the named tensors (None entries skipped) are floating point, on one device, of one
    dtype supported there; returns the first. Errors name the offending argument."""
    named = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"fastlv: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"fastlv: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != first.device:
            raise ValueError(f"fastlv: {name} is on {t.device} but {first_name} is on {first.device}")
        if t.dtype != first.dtype:
            raise TypeError(f"fastlv: {name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}")
    allowed = CPU_DTYPES if first.device.type == "cpu" else GPU_DTYPES + (torch.float64,)
    if first.dtype not in allowed:
        raise TypeError(f"fastlv: {first_name} has dtype {first.dtype}, supported on {first.device.type}: "
                        f"{', '.join(str(d) for d in allowed)}")
    return first


def broadcast_shape(**shapes: Sequence[int]) -> torch.Size:
    """Broadcast the named shapes; the error lists them all."""
    first, *rest = shapes.values()
    if all(shape == first for shape in rest):  # the common case; torch.broadcast_shapes costs ~10 us a shape
        return torch.Size(first)
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        listed = ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())
        raise ValueError(f"fastlv: shapes do not broadcast: {listed}") from None


def expand_to(t: Tensor | None, shape: Sequence[int]) -> Tensor | None:
    """t broadcast to shape (None stays None); t itself when it has the shape already, which spares
    autograd an ExpandBackward node per input."""
    return t if t is None or t.shape == shape else t.expand(shape)


def clamp_bounds(lo: float | None, hi: float | None) -> tuple[float, float]:
    """Optional clamp bounds as floats for the kernels (no clamp = -inf / +inf)."""
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if lo > hi:
        raise ValueError(f"fastlv: clamp minimum {lo} is larger than maximum {hi}")
    return lo, hi


def reduce(values: Tensor, reduction: str, mask: Tensor | None) -> Tensor:
    """Apply an optional mask (0 = padded step, contributes 0) and a reduction over all elements.
    ``mean`` with a mask divides by the number of unmasked elements."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"fastlv: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"fastlv: mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.device != values.device:
            raise ValueError(f"fastlv: mask is on {mask.device} but the inputs are on {values.device}")
        try:
            mask = mask.expand_as(values)
        except RuntimeError:
            raise ValueError(f"fastlv: mask of shape {tuple(mask.shape)} does not broadcast to the "
                             f"output shape {tuple(values.shape)}") from None
        keep = mask != 0
        values = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    count = keep.sum() if mask is not None else values.numel()
    return values.sum() / count


def no_double_backward(op_name: str):
    """Autograd formula of a backward op: double backward is not implemented."""
    def backward(ctx, *grads):
        raise NotImplementedError(f"fastlv: double backward through {op_name} is not implemented")
    return backward
