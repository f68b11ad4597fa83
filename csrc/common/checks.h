// Argument checks for the torch glue (.cpp files only; .cu files never include torch headers).
// Messages name the argument so a misuse from C++ is as clear as from Python.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/dtype.h"

#include <vector>

namespace fastlv {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_floating_point(), "fastlv: ", name, " must be a floating-point tensor, got ",
              t.scalar_type());
}

inline void check_device(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "fastlv: ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  check_device(t, ref, name, ref_name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastlv: ", name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has dtype ", ref.scalar_type());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.sizes() == shape, "fastlv: ", name, " must have shape ", shape, ", got ", t.sizes());
}

// Inputs of a Gaussian mixture, of one device and floating dtype. Per-element: x [...],
// logits/mu/log_sigma [..., K]; full-frame: x [..., D], logits [..., K], mu/log_sigma [..., K, D]; K >= 1.
inline void check_gmm_inputs(const at::Tensor& x, const at::Tensor& logits, const at::Tensor& mu,
                             const at::Tensor& log_sigma, bool full_frame) {
  check_float(x, "x");
  check_same(logits, x, "logits", "x");
  check_same(mu, x, "mu", "x");
  check_same(log_sigma, x, "log_sigma", "x");
  TORCH_CHECK(logits.dim() >= 1, "fastlv: logits must have a trailing component dimension K");
  const int64_t K = logits.size(-1);
  TORCH_CHECK(K >= 1, "fastlv: logits must have at least one component (K >= 1)");
  std::vector<int64_t> param_shape = x.sizes().vec();
  if (full_frame) {
    TORCH_CHECK(x.dim() >= 1, "fastlv: x must have a trailing data dimension D");
    param_shape.insert(param_shape.end() - 1, K);  // [..., K, D]
    std::vector<int64_t> logits_shape(x.sizes().begin(), x.sizes().end() - 1);
    logits_shape.push_back(K);
    check_shape(logits, logits_shape, "logits");
  } else {
    param_shape.push_back(K);  // [..., K]
    check_shape(logits, param_shape, "logits");
  }
  check_shape(mu, param_shape, "mu");
  check_shape(log_sigma, param_shape, "log_sigma");
}

// The torch-free dtype enum a CUDA launcher takes; errors name the op.
inline DType launcher_dtype(const at::Tensor& t, const char* op) {
  const at::ScalarType type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, "fastlv: ",
              op, " on CUDA supports float32, float64, float16 and bfloat16, got ", type);
  return type == at::kFloat ? DType::kFloat32
         : type == at::kDouble ? DType::kFloat64
         : type == at::kHalf   ? DType::kFloat16
                               : DType::kBFloat16;
}

// The incoming gradient and the two saved log-normalizers of a mixture backward: one per output element.
inline void check_gmm_backward_inputs(const at::Tensor& grad, const at::Tensor& lse_components,
                                      const at::Tensor& lse_logits, const at::Tensor& x, at::IntArrayRef out_shape) {
  check_device(grad, x, "grad", "x");
  check_shape(grad, out_shape, "grad");
  check_same(lse_components, x, "lse_components", "x");
  check_shape(lse_components, out_shape, "lse_components");
  check_same(lse_logits, x, "lse_logits", "x");
  check_shape(lse_logits, out_shape, "lse_logits");
}

}  // namespace fastlv
