"""Triton kernels of fastlv, installed as ``fastlv.triton_kernels``.

Each launcher has the name and positional arguments of the C++ op ``torch.ops.fastlv_C.<name>``;
fastlv._backend calls them for the triton backend (a GPU, or TRITON_INTERPRET=1 on the CPU).
"""
from .gated_conv import gated_causal_conv1d, gated_causal_conv1d_backward  # noqa: F401
from .gaussian import (gaussian_log_prob, gaussian_log_prob_backward, gaussian_sample_kl,  # noqa: F401
                       gaussian_sample_kl_backward, precision_weighted, precision_weighted_backward)
from .gmm import diag_gmm_log_prob, diag_gmm_log_prob_backward, gmm_log_prob, gmm_log_prob_backward  # noqa: F401
from .masked_linear import masked_linear, masked_linear_backward  # noqa: F401
