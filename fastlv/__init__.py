"""fastlv: fused kernels for latent-variable sequence models.

``fastlv.ops`` holds the fused autograd ops (each with a pure-PyTorch ``*_ref`` oracle),
``fastlv.nn`` the modules and models built on them. ``fastlv.backends()`` tells which kernel
backends can run here and why not; ``fastlv.use_backend(name)`` / ``FASTLV_BACKEND`` force one.
"""
from fastlv._backend import BACKENDS, BackendUnavailable, backends, use_backend
from fastlv import ops, nn

__version__ = "0.1.0"
__all__ = ["BACKENDS", "BackendUnavailable", "backends", "use_backend", "ops", "nn"]
