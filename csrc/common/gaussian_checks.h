// Argument checks, shape helpers and output allocation of the Gaussian latent ops' torch glue, shared by
// csrc/cpu/gaussian.cpp and csrc/cuda/gaussian_torch.cpp (.cpp files only: torch headers).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>
#include <utility>

#include "common/checks.h"

namespace fastlv {

using OptTensor = std::optional<at::Tensor>;

// Rows of a [..., D] tensor: (N, D); N = the product of the batch dimensions (also when D == 0).
inline std::pair<int64_t, int64_t> rows_of(const at::Tensor& t) {
  const int64_t D = t.size(-1);
  int64_t N = 1;
  for (int64_t s : t.sizes().slice(0, t.dim() - 1)) N *= s;
  return {N, D};
}

// Shape of a per-element (elementwise) or per-row (summed over the trailing dimension) output of t.
inline at::IntArrayRef row_output_shape(const at::Tensor& t, bool elementwise) {
  return elementwise ? t.sizes() : t.sizes().slice(0, t.dim() - 1);
}

// The KL (or log-density) output: per element or per row of mu_q; an empty placeholder without the KL.
inline at::Tensor kl_output(const at::Tensor& mu_q, bool kl, bool elementwise) {
  if (!kl) return at::empty({0}, mu_q.options());
  return at::empty(row_output_shape(mu_q, elementwise), mu_q.options());
}

inline OptTensor contiguous(const OptTensor& t) { return t ? OptTensor(t->contiguous()) : std::nullopt; }

// The optional inputs present together, same shape/dtype/device as mu_q; a step the kernels implement.
inline void check_latent_args(const at::Tensor& mu_q, const at::Tensor& lv_q, const OptTensor& mu_p,
                              const OptTensor& lv_p, const OptTensor& eps, const OptTensor& seed, bool sample,
                              bool kl, bool precision_weighted) {
  check_float(mu_q, "mu_q");
  TORCH_CHECK(mu_q.dim() >= 1, "fastlv: mu_q must have a trailing latent dimension");
  check_same(lv_q, mu_q, "logvar_q", "mu_q");
  check_shape(lv_q, mu_q.sizes(), "logvar_q");
  TORCH_CHECK(mu_p.has_value() == lv_p.has_value(), "fastlv: mu_p and logvar_p must be given together");
  if (mu_p) {
    check_same(*mu_p, mu_q, "mu_p", "mu_q");
    check_same(*lv_p, mu_q, "logvar_p", "mu_q");
    check_shape(*mu_p, mu_q.sizes(), "mu_p");
    check_shape(*lv_p, mu_q.sizes(), "logvar_p");
  }
  if (sample) {
    TORCH_CHECK(eps.has_value() != seed.has_value(), "fastlv: sampling needs exactly one of eps and seed");
  }
  if (eps) {
    check_same(*eps, mu_q, "eps", "mu_q");
    check_shape(*eps, mu_q.sizes(), "eps");
  }
  if (seed) {
    TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() == 1 && seed->device() == mu_q.device(),
                "fastlv: seed must be a one-element int64 tensor on ", mu_q.device(), ", got ", seed->scalar_type(),
                " ", seed->sizes(), " on ", seed->device());
  }
  TORCH_CHECK(sample || kl, "fastlv: gaussian_sample_kl needs sample or kl");
  TORCH_CHECK(!precision_weighted || mu_p.has_value(), "fastlv: the precision-weighted posterior needs a prior");
}

// The incoming gradients of gaussian_sample_kl (grad_z exactly when sampling, grad_kl exactly with the KL),
// contiguous in mu_q's dtype; undefined where not given.
inline std::pair<at::Tensor, at::Tensor> latent_output_grads(const OptTensor& grad_z, const OptTensor& grad_kl,
                                                             const at::Tensor& mu_q, bool sample, bool kl,
                                                             bool elementwise) {
  TORCH_CHECK(grad_z.has_value() == sample, "fastlv: grad_z must be given exactly when sampling");
  TORCH_CHECK(grad_kl.has_value() == kl, "fastlv: grad_kl must be given exactly when computing the KL");
  at::Tensor gz, gkl;
  if (sample) {
    check_device(*grad_z, mu_q, "grad_z", "mu_q");
    check_shape(*grad_z, mu_q.sizes(), "grad_z");
    gz = grad_z->contiguous().to(mu_q.scalar_type());
  }
  if (kl) {
    check_device(*grad_kl, mu_q, "grad_kl", "mu_q");
    check_shape(*grad_kl, row_output_shape(mu_q, elementwise), "grad_kl");
    gkl = grad_kl->contiguous().to(mu_q.scalar_type());
  }
  return {gz, gkl};
}

inline void check_log_prob_args(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& logvar) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() >= 1, "fastlv: x must have a trailing latent dimension");
  check_same(mu, x, "mu", "x");
  check_same(logvar, x, "logvar", "x");
  check_shape(mu, x.sizes(), "mu");
  check_shape(logvar, x.sizes(), "logvar");
}

inline void check_precision_weighted_args(const at::Tensor& mu_a, const at::Tensor& var_a, const at::Tensor& mu_b,
                                          const at::Tensor& var_b) {
  check_float(mu_a, "mu_a");
  check_same(var_a, mu_a, "var_a", "mu_a");
  check_same(mu_b, mu_a, "mu_b", "mu_a");
  check_same(var_b, mu_a, "var_b", "mu_a");
  check_shape(var_a, mu_a.sizes(), "var_a");
  check_shape(mu_b, mu_a.sizes(), "mu_b");
  check_shape(var_b, mu_a.sizes(), "var_b");
}

}  // namespace fastlv
