// CUDA implementations of fastlv_C::masked_linear and its backward (schemas in csrc/cpu/masked_linear.cpp):
// argument checks, contiguous [rows, features] views, the keep mask and the tile occupancy (ATen ops, at
// every call: a pass over the mask, no cache), output allocation, then the launchers of
// csrc/cuda/masked_linear.cu on the current stream. Outputs have the CPU op's shapes.
#include <ATen/core/Tensor.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/masked_linear_checks.h"
#include "cuda/masked_linear.cuh"

namespace fastlv {
namespace {

// keep [out, in] uint8 (1 where the mask is nonzero) and occupied [out_tiles, max(1, in_tiles)] uint8 (1 where
// the kMaskedLinearTile-square weight tile holds a kept entry); zero padding to whole tiles keeps it exact.
std::tuple<at::Tensor, at::Tensor> keep_and_occupancy(const at::Tensor& mask) {
  const int64_t out = mask.size(0), in = mask.size(1), tile = kMaskedLinearTile;
  const int64_t out_tiles = (out + tile - 1) / tile, in_tiles = std::max<int64_t>(1, (in + tile - 1) / tile);
  const at::Tensor keep = at::ne(mask, 0).to(at::kByte).contiguous();
  const at::Tensor occupied = at::constant_pad_nd(keep, {0, in_tiles * tile - in, 0, out_tiles * tile - out}, 0)
                                  .view({out_tiles, tile, in_tiles, tile})
                                  .amax({1, 3})
                                  .contiguous();
  return {keep, occupied};
}

at::Tensor masked_linear_op_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                                 const std::optional<at::Tensor>& bias, c10::string_view activation) {
  check_masked_linear_args(x, weight, mask, bias);
  const Activation act = parse_activation(activation);
  const DType dtype = launcher_dtype(x, "masked_linear");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t out = weight.size(0), in = weight.size(1);
  const at::Tensor x2 = as_matrix(x, in), wc = weight.contiguous();
  at::Tensor y = at::empty({x2.size(0), out}, x.options());
  if (x2.size(0) > 0 && out > 0) {
    const auto [keep, occupied] = keep_and_occupancy(mask);
    const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
    masked_linear_forward_cuda(dtype, x2.const_data_ptr(), wc.const_data_ptr(), keep.const_data_ptr<uint8_t>(),
                               occupied.const_data_ptr<uint8_t>(), occupied.size(1),
                               bc.defined() ? bc.const_data_ptr() : nullptr, act, x2.size(0), in, out,
                               y.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return y.view(output_shape(x, out));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_op_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
    const std::optional<at::Tensor>& output, c10::string_view activation) {
  check_masked_linear_args(x, weight, mask, std::nullopt);
  const Activation act = parse_activation(activation);
  const DType dtype = launcher_dtype(x, "masked_linear");
  const int64_t out = weight.size(0), in = weight.size(1);
  check_masked_linear_grad_args(grad, x, weight, output, act);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor x2 = as_matrix(x, in), wc = weight.contiguous();
  const at::Tensor g2 = as_matrix(grad.to(x.scalar_type()), out);
  // relu' is read from the output; without an activation the kernels get no output.
  const at::Tensor out2 = act == Activation::kRelu ? as_matrix(output->to(x.scalar_type()), out) : at::Tensor();
  at::Tensor grad_x = at::zeros_like(x2), grad_w = at::zeros_like(wc), grad_b = at::zeros({out}, x.options());
  if (x2.size(0) > 0 && out > 0) {
    const auto [keep, occupied] = keep_and_occupancy(mask);
    masked_linear_backward_cuda(dtype, g2.const_data_ptr(), out2.defined() ? out2.const_data_ptr() : nullptr,
                                x2.const_data_ptr(), wc.const_data_ptr(), keep.const_data_ptr<uint8_t>(),
                                occupied.const_data_ptr<uint8_t>(), occupied.size(1), act, x2.size(0), in, out,
                                grad_x.mutable_data_ptr(), grad_w.mutable_data_ptr(), grad_b.mutable_data_ptr(),
                                c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_x.view(x.sizes()), grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlv_C, CUDA, m) {
  m.impl("masked_linear", &masked_linear_op_cuda);
  m.impl("masked_linear_backward", &masked_linear_backward_op_cuda);
}

}  // namespace fastlv
