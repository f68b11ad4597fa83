// Argument checks and layout helpers of the gated causal convolution's torch glue, shared by
// csrc/cpu/gated_conv.cpp and csrc/cuda/gated_conv_torch.cpp (.cpp files only: torch headers).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "common/checks.h"

namespace fastlv {

// [B, C, T] (any strides) -> contiguous [T * B, C].
inline at::Tensor time_major(const at::Tensor& t) {
  return t.permute({2, 0, 1}).contiguous().view({t.size(2) * t.size(0), t.size(1)});
}

// The conditioning as the kernels read it: rows [T * B, 2 * C_out] when local (time-major), rows [B, 2 * C_out]
// when global (also a local one with T == 1); rows undefined without conditioning.
struct CondRows {
  at::Tensor rows;
  bool local = false;
};

inline CondRows cond_rows_of(const c10::optional<at::Tensor>& cond, int64_t T) {
  if (!cond.has_value() || !cond->defined()) return {};
  const bool local = cond->size(2) == T && T != 1;
  return {local ? time_major(*cond) : cond->select(2, 0).contiguous(), local};
}

inline void check_conv_args(const at::Tensor& x, const at::Tensor& weight, int64_t dilation) {
  check_float(x, "x");
  check_same(weight, x, "weight", "x");
  TORCH_CHECK(x.dim() == 3, "fastlv: x must have shape [B, C_in, T], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) % 2 == 0 && weight.size(1) == x.size(1) && weight.size(2) >= 1,
              "fastlv: weight must have shape [2 * C_out, C_in, k] with C_in = ", x.size(1), " and k >= 1, got ",
              weight.sizes());
  TORCH_CHECK(dilation >= 1, "fastlv: dilation must be >= 1, got ", dilation);
}

// The forward's inputs: x, weight and dilation as above, bias [2 * C_out], cond (if given) local
// [B, 2 * C_out, T] or global [B, 2 * C_out, 1].
inline void check_conv_forward_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                    int64_t dilation, const c10::optional<at::Tensor>& cond) {
  check_conv_args(x, weight, dilation);
  const int64_t B = x.size(0), T = x.size(2), C2 = weight.size(0);
  check_same(bias, x, "bias", "x");
  check_shape(bias, {C2}, "bias");
  if (cond.has_value() && cond->defined()) {
    check_same(*cond, x, "cond", "x");
    TORCH_CHECK(cond->dim() == 3 && cond->size(0) == B && cond->size(1) == C2 &&
                    (cond->size(2) == T || cond->size(2) == 1),
                "fastlv: cond must have shape [B, 2 * C_out, T] (local) or [B, 2 * C_out, 1] (global) = [", B,
                ", ", C2, ", ", T, " or 1], got ", cond->sizes());
  }
}

// The backward's inputs: x, weight and dilation as above, pre [T, B, 2 * C_out], grad [B, C_out, T].
inline void check_conv_backward_args(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& pre, int64_t dilation) {
  check_conv_args(x, weight, dilation);
  const int64_t B = x.size(0), T = x.size(2), C2 = weight.size(0);
  check_same(pre, x, "pre", "x");
  check_shape(pre, {T, B, C2}, "pre");
  check_device(grad, x, "grad", "x");
  check_shape(grad, {B, C2 / 2, T}, "grad");
}

// Inputs of one generation step (fastlv_C::wavenet_block_step), all of x_t's device and dtype:
// x_t [B, C_in]; buffer [L, B, C_in] contiguous (written in place) with the read rows and write_row
// (-1: none) in range; weights transposed and contiguous: stacked_weight [(reads + 1) C_in, 2C],
// res_weight_t [C, C], skip_weight_t [C, S]; bias [2C], res_bias [C], skip_bias [S]; pre_add [B, 2C],
// inp [B, C].
inline void check_step_args(const at::Tensor& x_t, const at::Tensor& buffer, at::IntArrayRef read_rows,
                            int64_t write_row, const at::Tensor& stacked_weight, const at::Tensor& bias,
                            const c10::optional<at::Tensor>& pre_add, const at::Tensor& inp,
                            const at::Tensor& res_weight_t, const at::Tensor& res_bias,
                            const c10::optional<at::Tensor>& skip_weight_t,
                            const c10::optional<at::Tensor>& skip_bias) {
  check_float(x_t, "x_t");
  TORCH_CHECK(x_t.dim() == 2, "fastlv: x_t must be [B, C_in], got ", x_t.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) % 2 == 0, "fastlv: bias must be [2C], got ", bias.sizes());
  const int64_t B = x_t.size(0), C_in = x_t.size(1), C2 = bias.size(0), C = C2 / 2;
  const auto check = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    check_same(t, x_t, name, "x_t");
    check_shape(t, shape, name);
  };
  const auto check_contiguous = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    check(t, shape, name);
    TORCH_CHECK(t.is_contiguous(), "fastlv: ", name, " must be contiguous");
  };
  TORCH_CHECK(buffer.dim() == 3, "fastlv: buffer must be [L, B, C_in], got ", buffer.sizes());
  const int64_t L = buffer.size(0);
  check_contiguous(buffer, {L, B, C_in}, "buffer");
  for (const int64_t r : read_rows) TORCH_CHECK(0 <= r && r < L, "fastlv: read row ", r, " is outside the buffer");
  TORCH_CHECK(-1 <= write_row && write_row < L, "fastlv: write_row ", write_row, " is outside the buffer");
  check_contiguous(stacked_weight, {int64_t(read_rows.size() + 1) * C_in, C2}, "stacked_weight");
  check_contiguous(bias, {C2}, "bias");
  if (pre_add) check(*pre_add, {B, C2}, "pre_add");
  check(inp, {B, C}, "inp");
  check_contiguous(res_weight_t, {C, C}, "res_weight_t");
  check_contiguous(res_bias, {C}, "res_bias");
  TORCH_CHECK(skip_weight_t.has_value() == skip_bias.has_value(), "fastlv: give skip_weight_t and skip_bias, or neither");
  if (skip_weight_t) {
    TORCH_CHECK(skip_weight_t->dim() == 2, "fastlv: skip_weight_t must be [C, S], got ", skip_weight_t->sizes());
    check_contiguous(*skip_weight_t, {C, skip_weight_t->size(1)}, "skip_weight_t");
    check_contiguous(*skip_bias, {skip_weight_t->size(1)}, "skip_bias");
  }
}

}  // namespace fastlv
