"""Fused autograd ops (torch.library custom ops ``fastlv::*``) and their pure-PyTorch references."""
from fastlv.ops.gaussian import (gaussian_kl, gaussian_kl_ref, gaussian_log_prob, gaussian_log_prob_ref,
                                 gaussian_rsample, gaussian_rsample_ref, gaussian_sample_kl, gaussian_sample_kl_ref,
                                 precision_weighted, precision_weighted_ref)
from fastlv.ops.gmm import diag_gmm_log_prob, diag_gmm_log_prob_ref, gmm_log_prob, gmm_log_prob_ref
from fastlv.ops.masked_linear import masked_linear, masked_linear_ref

__all__ = ["gmm_log_prob", "gmm_log_prob_ref", "diag_gmm_log_prob", "diag_gmm_log_prob_ref",
           "gaussian_kl", "gaussian_kl_ref", "gaussian_rsample", "gaussian_rsample_ref",
           "gaussian_sample_kl", "gaussian_sample_kl_ref", "gaussian_log_prob", "gaussian_log_prob_ref",
           "precision_weighted", "precision_weighted_ref", "masked_linear", "masked_linear_ref"]
