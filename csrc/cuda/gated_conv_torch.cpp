// CUDA implementations of fastlv_C::gated_causal_conv1d and its backward (schemas in
// csrc/cpu/gated_conv.cpp): argument checks, time-major contiguous inputs, output allocation, then the
// launchers of csrc/cuda/gated_conv.cu on the current stream. Outputs have the CPU op's shapes and memory
// layouts (out and d_x: [B, C, T] views of time-major memory; pre and d_pre: [T, B, 2C]).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "cuda/gated_conv.cuh"

namespace fastlv {
namespace {

// [B, C, T] (any strides) -> contiguous [T * B, C].
at::Tensor time_major(const at::Tensor& t) {
  return t.permute({2, 0, 1}).contiguous().view({t.size(2) * t.size(0), t.size(1)});
}

void check_conv_args(const at::Tensor& x, const at::Tensor& weight, int64_t dilation) {
  check_float(x, "x");
  check_same(weight, x, "weight", "x");
  TORCH_CHECK(x.dim() == 3, "fastlv: x must have shape [B, C_in, T], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) % 2 == 0 && weight.size(1) == x.size(1) && weight.size(2) >= 1,
              "fastlv: weight must have shape [2 * C_out, C_in, k] with C_in = ", x.size(1), " and k >= 1, got ",
              weight.sizes());
  TORCH_CHECK(dilation >= 1, "fastlv: dilation must be >= 1, got ", dilation);
}

std::tuple<at::Tensor, at::Tensor> gated_causal_conv1d_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                            const at::Tensor& bias, int64_t dilation,
                                                            const c10::optional<at::Tensor>& cond) {
  check_conv_args(x, weight, dilation);
  const int64_t B = x.size(0), C_in = x.size(1), T = x.size(2), C2 = weight.size(0), C = C2 / 2, k = weight.size(2);
  check_same(bias, x, "bias", "x");
  check_shape(bias, {C2}, "bias");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const bool has_cond = cond.has_value() && cond->defined();
  bool cond_local = false;
  at::Tensor cond_rows;
  if (has_cond) {
    check_same(*cond, x, "cond", "x");
    TORCH_CHECK(cond->dim() == 3 && cond->size(0) == B && cond->size(1) == C2 &&
                    (cond->size(2) == T || cond->size(2) == 1),
                "fastlv: cond must have shape [B, 2 * C_out, T] (local) or [B, 2 * C_out, 1] (global), got ",
                cond->sizes());
    cond_local = cond->size(2) == T && T != 1;
    cond_rows = cond_local ? time_major(*cond) : cond->select(2, 0).contiguous();
  }
  const at::Tensor x_rows = time_major(x), w_taps = weight.permute({2, 0, 1}).contiguous();
  const at::Tensor bias_c = bias.contiguous();
  at::Tensor out = at::empty({T, B, C}, x.options()), pre = at::empty({T, B, C2}, x.options());
  gated_conv_forward_cuda(launcher_dtype(x, "gated_causal_conv1d"), x_rows.const_data_ptr(), w_taps.const_data_ptr(),
                          bias_c.const_data_ptr(), has_cond ? cond_rows.const_data_ptr() : nullptr, cond_local,
                          T * B, B, C_in, C, k, dilation, out.mutable_data_ptr(), pre.mutable_data_ptr(),
                          c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out.permute({1, 2, 0}), pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_causal_conv1d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& pre,
    int64_t dilation) {
  check_conv_args(x, weight, dilation);
  const int64_t B = x.size(0), C_in = x.size(1), T = x.size(2), C2 = weight.size(0), C = C2 / 2, k = weight.size(2);
  check_same(pre, x, "pre", "x");
  check_shape(pre, {T, B, C2}, "pre");
  TORCH_CHECK(grad.device() == x.device(), "fastlv: grad is on ", grad.device(), " but x is on ", x.device());
  check_shape(grad, {B, C, T}, "grad");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor grad_rows = time_major(grad.to(x.scalar_type())), pre_c = pre.contiguous();
  const at::Tensor x_rows = time_major(x), w_taps = weight.permute({2, 0, 1}).contiguous();
  at::Tensor d_pre = at::empty({T, B, C2}, x.options()), d_x = at::zeros({T, B, C_in}, x.options());
  at::Tensor d_w_taps = at::zeros({k, C2, C_in}, x.options()), d_bias = at::zeros({C2}, x.options());
  gated_conv_backward_cuda(launcher_dtype(x, "gated_causal_conv1d"), grad_rows.const_data_ptr(), pre_c.const_data_ptr(),
                           x_rows.const_data_ptr(), w_taps.const_data_ptr(), T * B, B, C_in, C, k, dilation,
                           d_pre.mutable_data_ptr(), d_x.mutable_data_ptr(), d_w_taps.mutable_data_ptr(),
                           d_bias.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {d_x.permute({1, 2, 0}), d_w_taps.permute({1, 2, 0}).contiguous(), d_bias, d_pre};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlv_C, CUDA, m) {
  m.impl("gated_causal_conv1d", &gated_causal_conv1d_cuda);
  m.impl("gated_causal_conv1d_backward", &gated_causal_conv1d_backward_cuda);
}

}  // namespace fastlv
