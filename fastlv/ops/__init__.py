"""Fused autograd ops (torch.library custom ops ``fastlv::*``) and their pure-PyTorch references."""
from fastlv.ops.gmm import diag_gmm_log_prob, diag_gmm_log_prob_ref, gmm_log_prob, gmm_log_prob_ref
from fastlv.ops.masked_linear import masked_linear, masked_linear_ref

__all__ = ["gmm_log_prob", "gmm_log_prob_ref", "diag_gmm_log_prob", "diag_gmm_log_prob_ref", "masked_linear",
           "masked_linear_ref"]
