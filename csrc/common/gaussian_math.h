// Per-dimension math of the diagonal-Gaussian latent ops, shared by every kernel (CPU, CUDA).
// Templates over T = float, double or at::vec::Vectorized<float|double>; lv = log-variance.
//
// Fused latent step of one dimension (fastlv_C::gaussian_sample_kl):
//   clamp mu_q, lv_q, mu_p, lv_p to [mu_lo, mu_hi] / [lv_lo, lv_hi] (gradient 0 outside);
//   optionally replace q by the precision-weighted combination of q (the approximate likelihood) and
//   p (STCN Eq. 11; LVAE): var_q = 1 / (1/var_q + 1/var_p), mu_q = var_q (mu_q / var_q + mu_p / var_p);
//   z  = mu_q + exp(lv_q / 2) eps                            (reparameterized sample);
//   kl = (exp(lv_q - lv_p) + (mu_q - mu_p)^2 exp(-lv_p) - 1 - (lv_q - lv_p)) / 2
//        (mu_p = lv_p = 0 without a prior), then max(kl, free_bits)    (Kingma et al. 2016 free bits).
// Gradients:
//   dz/dmu_q = 1, dz/dlv_q = exp(lv_q / 2) eps / 2,
//   dkl/dmu_q = (mu_q - mu_p) exp(-lv_p) = -dkl/dmu_p,  dkl/dlv_q = (exp(lv_q - lv_p) - 1) / 2,
//   dkl/dlv_p = -dkl/dlv_q - (mu_q - mu_p) dkl/dmu_q / 2,  all 0 where kl < free_bits.
#pragma once
#include <type_traits>

#include "common/math.h"

namespace fastlv {

// The four parameters of one dimension (inputs, or their gradients).
template <typename T>
struct LatentParams {
  T mu_q, lv_q, mu_p, lv_p;
};

// Clamp bounds of the means and log-variances (+-inf: no clamp) and the free-bits floor (-inf: none).
template <typename T>
struct LatentBounds {
  T mu_lo, mu_hi, lv_lo, lv_hi, free_bits;
};

// Precision-weighted posterior (STCN Eq. 11) in log-variance form, stable for any lv:
//   lv_q = lv_hat + lv_p - logaddexp(lv_hat, lv_p) = min - log(1 + exp(min - max)),
//   share = var_q / var_hat = var_p / (var_hat + var_p)   (the weight of mu_hat),
//   mu_q  = mu_p + share (mu_hat - mu_p).
template <typename T>
FASTLV_HD void precision_weighted_posterior(T mu_hat, T lv_hat, T mu_p, T lv_p, T& mu_q, T& lv_q, T& share) {
  const T lo = min_of(lv_hat, lv_p), hi = max_of(lv_hat, lv_p);
  lv_q = lo - log_of(T(1) + exp_of(lo - hi));
  share = exp_of(lv_q - lv_hat);
  mu_q = mu_p + share * (mu_hat - mu_p);
}

// Chain rule through precision_weighted_posterior: adds the gradients w.r.t. mu_hat, lv_hat, mu_p, lv_p
// given those w.r.t. mu_q (g_mu) and lv_q (g_lv). With s = share: dlv_q/dlv_hat = s,
// dlv_q/dlv_p = 1 - s, ds/dlv_hat = -s (1 - s) = -ds/dlv_p.
template <typename T>
FASTLV_HD void precision_weighted_posterior_grads(T g_mu, T g_lv, T mu_hat, T mu_p, T share,
                                                  LatentParams<T>& grads) {
  const T rest = T(1) - share;
  const T d_share = g_mu * (mu_hat - mu_p) * share * rest;
  grads.mu_q = g_mu * share;
  grads.lv_q = g_lv * share - d_share;
  grads.mu_p = grads.mu_p + g_mu * rest;
  grads.lv_p = grads.lv_p + g_lv * rest + d_share;
}

// The step of one dimension, forward (z, kl) or backward (gradients); the kernels pick the parts they
// need at compile time: kPrior (else p = N(0, I)), kPrecisionWeighted, kSample, kKL.
template <bool kPrior, bool kPrecisionWeighted, bool kSample, bool kKL, typename T>
struct LatentStep {
  LatentParams<T> raw;    // inputs as given (for the clamp masks)
  T mu_q, lv_q, mu_p, lv_p;  // clamped, after the precision weighting
  T mu_hat, share;        // precision weighting: clamped mu_q input and the weight of mu_hat
  T sigma_eps;            // exp(lv_q / 2) eps
  T diff, inv_var_p, var_ratio;  // mu_q - mu_p, exp(-lv_p), exp(lv_q - lv_p)
  T kl_raw, kl;           // before and after the free-bits floor

  FASTLV_HD LatentStep(const LatentParams<T>& in, T eps, const LatentBounds<T>& b) : raw(in) {
    mu_q = clamp_of(in.mu_q, b.mu_lo, b.mu_hi);
    lv_q = clamp_of(in.lv_q, b.lv_lo, b.lv_hi);
    if constexpr (kPrior) {
      mu_p = clamp_of(in.mu_p, b.mu_lo, b.mu_hi);
      lv_p = clamp_of(in.lv_p, b.lv_lo, b.lv_hi);
    } else {
      mu_p = T(0);
      lv_p = T(0);
    }
    if constexpr (kPrecisionWeighted) {
      mu_hat = mu_q;
      precision_weighted_posterior(mu_hat, lv_q, mu_p, lv_p, mu_q, lv_q, share);
    }
    if constexpr (kSample) sigma_eps = exp_of(T(0.5) * lv_q) * eps;
    if constexpr (kKL) {
      diff = mu_q - mu_p;
      if constexpr (kPrior) {
        inv_var_p = exp_of(-lv_p);
        var_ratio = exp_of(lv_q - lv_p);
      } else {
        inv_var_p = T(1);
        var_ratio = exp_of(lv_q);
      }
      kl_raw = T(0.5) * (var_ratio + diff * diff * inv_var_p - T(1) - (lv_q - lv_p));
      kl = max_of(kl_raw, b.free_bits);
    }
  }

  FASTLV_HD T z() const { return mu_q + sigma_eps; }

  // Gradients w.r.t. the raw inputs given g_z (of z) and g_kl (of kl).
  FASTLV_HD LatentParams<T> grads(T g_z, T g_kl, const LatentBounds<T>& b) const {
    T g_mu_q = T(0), g_lv_q = T(0);
    LatentParams<T> g{T(0), T(0), T(0), T(0)};
    if constexpr (kSample) {
      g_mu_q = g_z;
      g_lv_q = T(0.5) * g_z * sigma_eps;
    }
    if constexpr (kKL) {
      const T g_open = where_in_range(kl_raw, b.free_bits, T(INFINITY), g_kl);  // 0 below the free-bits floor
      const T d_mu = g_open * diff * inv_var_p, d_lv = T(0.5) * g_open * (var_ratio - T(1));
      g_mu_q = g_mu_q + d_mu;
      g_lv_q = g_lv_q + d_lv;
      if constexpr (kPrior) {
        g.mu_p = -d_mu;
        g.lv_p = -d_lv - T(0.5) * diff * d_mu;
      }
    }
    if constexpr (kPrecisionWeighted) {
      precision_weighted_posterior_grads(g_mu_q, g_lv_q, mu_hat, mu_p, share, g);
    } else {
      g.mu_q = g_mu_q;
      g.lv_q = g_lv_q;
    }
    g.mu_q = where_in_range(raw.mu_q, b.mu_lo, b.mu_hi, g.mu_q);
    g.lv_q = where_in_range(raw.lv_q, b.lv_lo, b.lv_hi, g.lv_q);
    if constexpr (kPrior) {
      g.mu_p = where_in_range(raw.mu_p, b.mu_lo, b.mu_hi, g.mu_p);
      g.lv_p = where_in_range(raw.lv_p, b.lv_lo, b.lv_hi, g.lv_p);
    }
    return g;
  }
};

// Calls f(kPrior, kPrecisionWeighted, kSample, kKL) (std::integral_constant<bool> arguments) for the
// combinations the ops use: KL with or without a prior, sample alone, sample + KL (with a prior: also
// precision-weighted). Returns false, calling nothing, for any other combination. Host code.
template <typename F>
bool dispatch_latent_step(bool prior, bool precision_weighted, bool sample, bool kl, F&& f) {
  using Yes = std::true_type;
  using No = std::false_type;
  if (precision_weighted) {
    if (!(prior && sample && kl)) return false;
    f(Yes{}, Yes{}, Yes{}, Yes{});
  } else if (sample && kl) {
    prior ? f(Yes{}, No{}, Yes{}, Yes{}) : f(No{}, No{}, Yes{}, Yes{});
  } else if (kl) {
    prior ? f(Yes{}, No{}, No{}, Yes{}) : f(No{}, No{}, No{}, Yes{});
  } else if (sample && !prior) {
    f(No{}, No{}, Yes{}, No{});
  } else {
    return false;
  }
  return true;
}

// log N(x; mu, exp(lv)) of one dimension, with d/dx, d/dmu, d/dlv (times g):
//   -((x - mu)^2 exp(-lv) + lv) / 2 - log(2 pi) / 2;  d/dx = -(x - mu) exp(-lv) = -d/dmu,
//   d/dlv = ((x - mu)^2 exp(-lv) - 1) / 2.
template <typename T>
FASTLV_HD T gaussian_log_prob_term(T x, T mu, T lv, T& scaled_diff) {
  const T diff = x - mu;
  scaled_diff = diff * exp_of(-lv);
  return T(-0.5) * (diff * scaled_diff + lv) - T(kHalfLog2Pi);
}

template <typename T>
FASTLV_HD void gaussian_log_prob_grads(T g, T x, T mu, T scaled_diff, T& d_x, T& d_mu, T& d_lv) {
  d_mu = g * scaled_diff;
  d_x = -d_mu;
  d_lv = T(0.5) * (d_mu * (x - mu) - g);
}

// Precision-weighted combination of two Gaussians in variance form (STCN Eq. 11):
//   var = var_a var_b / (var_a + var_b),  mu = mu_b + w_a (mu_a - mu_b),  w_a = var_b / (var_a + var_b).
template <typename T>
FASTLV_HD void precision_weighted_combine(T mu_a, T var_a, T mu_b, T var_b, T& mu, T& var) {
  const T w_a = var_b / (var_a + var_b);
  mu = mu_b + w_a * (mu_a - mu_b);
  var = var_a * w_a;
}

// Its gradients given g_mu, g_var (w_b = var_a / s, s = var_a + var_b):
//   dmu/dmu_a = w_a, dmu/dmu_b = w_b, dmu/dvar_a = -(mu_a - mu_b) w_a / s, dmu/dvar_b = (mu_a - mu_b) w_b / s,
//   dvar/dvar_a = w_a^2, dvar/dvar_b = w_b^2.
template <typename T>
FASTLV_HD void precision_weighted_combine_grads(T g_mu, T g_var, T mu_a, T var_a, T mu_b, T var_b, T& d_mu_a,
                                                T& d_var_a, T& d_mu_b, T& d_var_b) {
  const T inv_sum = T(1) / (var_a + var_b);
  const T w_a = var_b * inv_sum, w_b = var_a * inv_sum;
  const T g_diff = g_mu * (mu_a - mu_b) * inv_sum;
  d_mu_a = g_mu * w_a;
  d_mu_b = g_mu * w_b;
  d_var_a = w_a * (g_var * w_a - g_diff);
  d_var_b = w_b * (g_var * w_b + g_diff);
}

}  // namespace fastlv
