"""Fused autograd ops (torch.library custom ops ``fastlv::*``) and their pure-PyTorch references."""
from fastlv.ops.gated_conv import gated_causal_conv1d, gated_causal_conv1d_ref
from fastlv.ops.gmm import diag_gmm_log_prob, diag_gmm_log_prob_ref, gmm_log_prob, gmm_log_prob_ref

__all__ = ["gmm_log_prob", "gmm_log_prob_ref", "diag_gmm_log_prob", "diag_gmm_log_prob_ref",
           "gated_causal_conv1d", "gated_causal_conv1d_ref"]
