// Per-component math of the Gaussian-mixture log-likelihood, shared by every kernel (CPU, CUDA).
//
//   log p(x) = logsumexp_k a_k - logsumexp_k logit_k,
//   a_k      = logit_k + log N(x; mu_k, sigma_k) = logit_k - z_k^2 / 2 - log sigma_k - log(2 pi) / 2,
//   z_k      = (x - mu_k) / sigma_k.
// With responsibilities r_k = exp(a_k - lse_a) and weights w_k = exp(logit_k - lse_logits):
//   d/dlogit_k = r_k - w_k,  d/dmu_k = r_k z_k / sigma_k,  d/dlog sigma_k = r_k (z_k^2 - 1),
//   d/dx = -sum_k d/dmu_k.
// The full-frame (diagonal) mixture sums the Gaussian term over the D dimensions of component k.
#pragma once
#include "common/math.h"

namespace fastlv {

// log N(x; mu, exp(log_sigma)); also returns z = (x - mu) / sigma and 1 / sigma for the backward.
template <typename T>
FASTLV_HD T gaussian_log_density(T x, T mu, T log_sigma, T& z, T& inv_sigma) {
  inv_sigma = exp_of(-log_sigma);
  z = (x - mu) * inv_sigma;
  return T(-0.5) * z * z - log_sigma - T(kHalfLog2Pi);
}

// Gradients of one Gaussian term. r and w are the responsibility and the mixture weight, both already
// multiplied by the incoming gradient; log_sigma_raw is the unclamped input (gradient 0 outside the clamp).
template <typename T>
FASTLV_HD void gaussian_term_grads(T r, T z, T inv_sigma, T log_sigma_raw, T lo, T hi, T& d_mu,
                                   T& d_log_sigma) {
  d_mu = r * z * inv_sigma;
  d_log_sigma = where_in_range(log_sigma_raw, lo, hi, r * (z * z - T(1)));
}

// log-sum-exp from a running maximum and the sum of exp(v - max).
template <typename T>
FASTLV_HD T logsumexp_finish(T max, T sum_exp) { return max + log_of(sum_exp); }

}  // namespace fastlv
