"""Kernel selection shared by every fastlv op.

Each op has one kernel per backend under one name (e.g. ``gmm_log_prob``):

- ``cpp``:    ``torch.ops.fastlv_C.<name>`` CPU implementation (the compiled extension ``fastlv._C``)
- ``cuda``:   ``torch.ops.fastlv_C.<name>`` CUDA implementation (built when torch has CUDA)
- ``triton``: ``fastlv.triton_kernels.<name>`` (a GPU, or ``TRITON_INTERPRET=1`` on the CPU)
- ``ref``:    the op's pure-PyTorch reference, available everywhere.

Default choice per device: CPU -> cpp; CUDA -> cuda, else triton, else ref. ``FASTLV_BACKEND`` or
``fastlv.use_backend(name)`` forces one; forcing a backend that cannot run on the tensors' device is an
error (``BackendUnavailable``), never a silent fallback.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import warnings
from typing import Callable

import torch

BACKENDS = ("ref", "cpp", "triton", "cuda")


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run the op on the given device."""


def _load_extension() -> tuple[object | None, str]:
    try:
        from fastlv import _C
    except Exception as exc:  # ImportError, undefined symbols from a torch mismatch, ...
        return None, f"fastlv._C failed to load: {exc!r}"
    return _C, ""


_C, _C_ERROR = _load_extension()
if _C is None:
    warnings.warn(f"{_C_ERROR}; fastlv falls back to its pure-PyTorch reference kernels", RuntimeWarning)

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastlv_backend", default=None)


@functools.cache
def _triton_error() -> str:
    try:
        importlib.import_module("fastlv.triton_kernels")
    except Exception as exc:
        return f"triton kernels failed to import: {exc!r}"
    return ""


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str:
    """Why ``backend`` cannot run on ``device`` ('' if it can)."""
    if backend == "ref":
        return ""
    if backend == "cpp":
        if _C is None:
            return _C_ERROR
        return "" if device.type == "cpu" else f"the cpp backend runs on CPU tensors, not {device.type}"
    if backend == "cuda":
        if _C is None:
            return _C_ERROR
        if not _C.with_cuda:
            return "fastlv._C was built without CUDA (torch without CUDA, or no CUDA toolkit at build time)"
        return "" if device.type == "cuda" else f"the cuda backend runs on CUDA tensors, not {device.type}"
    if backend == "triton":
        if device.type == "cpu" and not _triton_interpreted():
            return "triton runs on CPU tensors only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return f"triton does not run on {device.type}"
        return _triton_error()
    raise ValueError(f"fastlv: unknown backend {backend!r}; choose one of {BACKENDS}")


def backends(device: str | torch.device | None = None) -> dict[str, str]:
    """Availability of each backend on ``device`` (default: CUDA if present, else CPU):
    ``{name: "available" | reason it is not}``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {b: unavailable_reason(b, device) or "available" for b in BACKENDS}


def forced_backend() -> str | None:
    name = _forced.get() or os.environ.get("FASTLV_BACKEND") or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"fastlv: FASTLV_BACKEND={name!r} is not one of {BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force ``name`` (one of ``ref, cpp, triton, cuda``; None = automatic) inside the block."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"fastlv: unknown backend {name!r}; choose one of {BACKENDS}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def select(device: torch.device) -> str:
    """The backend that runs an op on ``device`` now."""
    forced = forced_backend()
    if forced is not None:
        reason = unavailable_reason(forced, device)
        if reason:
            raise BackendUnavailable(f"fastlv: backend {forced!r} was forced but cannot run here: {reason}")
        return forced
    candidates = ("cpp",) if device.type == "cpu" else ("cuda", "triton") if device.type == "cuda" else ()
    return next((b for b in candidates if not unavailable_reason(b, device)), "ref")


def eager_fastlv_c(device: torch.device) -> bool:
    """Whether an op on ``device`` runs eagerly (not traced by torch.compile) on a compiled backend (cpp or
    cuda): there the public ops call their fastlv_C kernel op directly, whose autograd is registered in
    C++, instead of the Python custom op (~0.3 ms of autograd overhead per forward+backward)."""
    return not torch.compiler.is_compiling() and select(device) in ("cpp", "cuda")


def run_kernel(name: str, reference: Callable, device: torch.device, *args):
    """Run kernel ``name`` of the selected backend on ``args`` (``reference`` for the ref backend)."""
    backend = select(device)
    if backend == "ref":
        return reference(*args)
    if backend == "triton":
        return getattr(importlib.import_module("fastlv.triton_kernels"), name)(*args)
    return getattr(torch.ops.fastlv_C, name)(*args)
