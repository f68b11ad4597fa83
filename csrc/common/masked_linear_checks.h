// Argument checks and shape helpers of the masked linear op's torch glue, shared by csrc/cpu/masked_linear.cpp
// and csrc/cuda/masked_linear_torch.cpp (.cpp files only: torch headers).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/masked_linear_math.h"

namespace fastlv {

inline Activation parse_activation(c10::string_view activation) {
  if (activation == "none") return Activation::kNone;
  if (activation == "relu") return Activation::kRelu;
  TORCH_CHECK(false, "fastlv: activation must be 'none' or 'relu', got '", std::string(activation), "'");
}

inline void check_masked_linear_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                                     const std::optional<at::Tensor>& bias) {
  check_float(x, "x");
  check_same(weight, x, "weight", "x");
  TORCH_CHECK(weight.dim() == 2, "fastlv: weight must be 2-D [out, in], got shape ", weight.sizes());
  TORCH_CHECK(mask.device() == weight.device(), "fastlv: mask is on ", mask.device(), " but weight is on ",
              weight.device());
  check_shape(mask, weight.sizes(), "mask");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "fastlv: x must end in in_features = ",
              weight.size(1), " (weight is [out, in]), got shape ", x.sizes());
  if (bias.has_value()) {
    check_same(*bias, x, "bias", "x");
    check_shape(*bias, {weight.size(0)}, "bias");
  }
}

// x's shape with the last dimension (in_features) replaced by out.
inline std::vector<int64_t> output_shape(const at::Tensor& x, int64_t out) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  return shape;
}

// The backward's incoming gradient, of the output's shape, and the output itself where relu' is read from it
// (x, weight and mask are checked by check_masked_linear_args).
inline void check_masked_linear_grad_args(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& output, Activation act) {
  const std::vector<int64_t> out_shape = output_shape(x, weight.size(0));
  check_device(grad, x, "grad", "x");
  check_shape(grad, out_shape, "grad");
  TORCH_CHECK(act == Activation::kNone || output.has_value(), "fastlv: the relu backward needs the output");
  if (output.has_value()) {
    check_device(*output, x, "output", "x");
    check_shape(*output, out_shape, "output");
  }
}

// x as a contiguous [rows, in] matrix (also when in == 0, where reshape(-1, in) is ambiguous).
inline at::Tensor as_matrix(const at::Tensor& x, int64_t in) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return x.reshape({rows, in}).contiguous();
}

}  // namespace fastlv
