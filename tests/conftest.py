import os

# Without a GPU the Triton kernels run under the interpreter; it must be on before triton is imported.
try:
    import torch
    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

import fastlv


def available_backends(device="cpu"):
    return [b for b, state in fastlv.backends(device).items() if state == "available"]


@pytest.fixture(params=["ref", "cpp", "triton", "cuda"])
def backend(request):
    """Run the test once per backend; the default device of each (cuda for cuda, else CPU)."""
    device = "cuda" if request.param == "cuda" else "cpu"
    reason = fastlv.backends(device)[request.param]
    if reason != "available":
        if request.param in ("cpp", "ref") or (request.param == "triton" and not _has_cuda and _triton_installed()):
            pytest.fail(f"backend {request.param} must be available here: {reason}")
        pytest.skip(f"backend {request.param} not available: {reason}")
    with fastlv.use_backend(request.param):
        yield request.param, torch.device(device)


@pytest.fixture
def one_thread():
    """Tiny models and shapes are dispatch-bound: on the shared 2-core machine a second OpenMP thread only
    waits (measured 10-50x slower per step under load). One thread also keeps the allocator arenas fixed
    (tests/test_memory.py). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _triton_installed():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
