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

#include "common/gated_conv_checks.h"
#include "cuda/gated_conv.cuh"

namespace fastlv {
namespace {

std::tuple<at::Tensor, at::Tensor> gated_causal_conv1d_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                            const at::Tensor& bias, int64_t dilation,
                                                            const c10::optional<at::Tensor>& cond) {
  check_conv_forward_args(x, weight, bias, dilation, cond);
  const int64_t B = x.size(0), C_in = x.size(1), T = x.size(2), C2 = weight.size(0), C = C2 / 2, k = weight.size(2);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const CondRows cond_rows = cond_rows_of(cond, T);
  const at::Tensor x_rows = time_major(x), w_taps = weight.permute({2, 0, 1}).contiguous();
  const at::Tensor bias_c = bias.contiguous();
  at::Tensor out = at::empty({T, B, C}, x.options()), pre = at::empty({T, B, C2}, x.options());
  gated_conv_forward_cuda(launcher_dtype(x, "gated_causal_conv1d"), x_rows.const_data_ptr(), w_taps.const_data_ptr(),
                          bias_c.const_data_ptr(), cond_rows.rows.defined() ? cond_rows.rows.const_data_ptr() : nullptr,
                          cond_rows.local, T * B, B, C_in, C, k, dilation, out.mutable_data_ptr(),
                          pre.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out.permute({1, 2, 0}), pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_causal_conv1d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& pre,
    int64_t dilation) {
  check_conv_backward_args(grad, x, weight, pre, dilation);
  const int64_t B = x.size(0), C_in = x.size(1), T = x.size(2), C2 = weight.size(0), C = C2 / 2, k = weight.size(2);
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
