// CUDA implementations of the fastlv_C Gaussian-mixture ops (schemas in csrc/cpu/gmm.cpp): argument
// checks, contiguous inputs, output allocation, then the launchers of csrc/cuda/gmm.cu on the current
// stream of the inputs' device. The backward ops ignore lse_components and lse_logits: the kernels recompute
// them in fp32 (the saved ones are rounded to the input dtype).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "cuda/gmm.cuh"

namespace fastlv {
namespace {

// The incoming gradient of log_prob: the batch shape, on x's device; converted to x's dtype.
at::Tensor grad_for(const at::Tensor& grad, const at::Tensor& x, at::IntArrayRef batch_shape) {
  TORCH_CHECK(grad.device() == x.device(), "fastlv: grad is on ", grad.device(), " but x is on ", x.device());
  check_shape(grad, batch_shape, "grad");
  return grad.contiguous().to(x.scalar_type());
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> gmm_log_prob_cuda(const at::Tensor& x, const at::Tensor& logits,
                                                     const at::Tensor& mu, const at::Tensor& log_sigma,
                                                     double lo, double hi) {
  check_gmm_inputs(x, logits, mu, log_sigma, /*full_frame=*/false);
  const c10::cuda::CUDAGuard device_guard(x.device());
  auto xc = x.contiguous(), lc = logits.contiguous(), mc = mu.contiguous(), sc = log_sigma.contiguous();
  auto log_prob = at::empty_like(xc), lse_components = at::empty_like(xc), lse_logits = at::empty_like(xc);
  gmm_forward_cuda(launcher_dtype(x, "gmm_log_prob"), xc.const_data_ptr(), lc.const_data_ptr(), mc.const_data_ptr(),
                   sc.const_data_ptr(), xc.numel(), logits.size(-1), float(lo), float(hi),
                   log_prob.mutable_data_ptr(), lse_components.mutable_data_ptr(), lse_logits.mutable_data_ptr(),
                   c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {log_prob, lse_components, lse_logits};
}

Grads gmm_log_prob_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& logits,
                                 const at::Tensor& mu, const at::Tensor& log_sigma, const at::Tensor& /*lse_components*/,
                                 const at::Tensor& /*lse_logits*/, double lo, double hi) {
  check_gmm_inputs(x, logits, mu, log_sigma, /*full_frame=*/false);
  const c10::cuda::CUDAGuard device_guard(x.device());
  auto gc = grad_for(grad, x, x.sizes()), xc = x.contiguous(), lc = logits.contiguous();
  auto mc = mu.contiguous(), sc = log_sigma.contiguous();
  auto d_x = at::empty_like(xc), d_logits = at::empty_like(lc), d_mu = at::empty_like(mc);
  auto d_log_sigma = at::empty_like(sc);
  gmm_backward_cuda(launcher_dtype(x, "gmm_log_prob"), gc.const_data_ptr(), xc.const_data_ptr(), lc.const_data_ptr(),
                    mc.const_data_ptr(), sc.const_data_ptr(), xc.numel(), logits.size(-1), float(lo), float(hi),
                    d_x.mutable_data_ptr(), d_logits.mutable_data_ptr(), d_mu.mutable_data_ptr(),
                    d_log_sigma.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {d_x, d_logits, d_mu, d_log_sigma};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> diag_gmm_log_prob_cuda(const at::Tensor& x, const at::Tensor& logits,
                                                          const at::Tensor& mu, const at::Tensor& log_sigma,
                                                          double lo, double hi) {
  check_gmm_inputs(x, logits, mu, log_sigma, /*full_frame=*/true);
  const c10::cuda::CUDAGuard device_guard(x.device());
  auto xc = x.contiguous(), lc = logits.contiguous(), mc = mu.contiguous(), sc = log_sigma.contiguous();
  const int64_t K = logits.size(-1), D = x.size(-1), N = lc.numel() / K;  // N frames, also when D == 0
  auto log_prob = at::empty(lc.sizes().slice(0, lc.dim() - 1), lc.options());
  auto lse_components = at::empty_like(log_prob), lse_logits = at::empty_like(log_prob);
  diag_gmm_forward_cuda(launcher_dtype(x, "gmm_log_prob"), xc.const_data_ptr(), lc.const_data_ptr(), mc.const_data_ptr(),
                        sc.const_data_ptr(), N, K, D, float(lo), float(hi), log_prob.mutable_data_ptr(),
                        lse_components.mutable_data_ptr(), lse_logits.mutable_data_ptr(),
                        c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {log_prob, lse_components, lse_logits};
}

Grads diag_gmm_log_prob_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& logits,
                                      const at::Tensor& mu, const at::Tensor& log_sigma,
                                      const at::Tensor& /*lse_components*/, const at::Tensor& /*lse_logits*/,
                                      double lo, double hi) {
  check_gmm_inputs(x, logits, mu, log_sigma, /*full_frame=*/true);
  const int64_t K = logits.size(-1), D = x.size(-1), N = logits.numel() / K;
  TORCH_CHECK(K <= kDiagGmmMaxComponents, "fastlv: the CUDA diag_gmm_log_prob backward supports at most ",
              kDiagGmmMaxComponents, " components, got K = ", K);
  const c10::cuda::CUDAGuard device_guard(x.device());
  auto gc = grad_for(grad, x, logits.sizes().slice(0, logits.dim() - 1)), xc = x.contiguous();
  auto lc = logits.contiguous(), mc = mu.contiguous(), sc = log_sigma.contiguous();
  auto d_x = at::empty_like(xc), d_logits = at::empty_like(lc), d_mu = at::empty_like(mc);
  auto d_log_sigma = at::empty_like(sc);
  diag_gmm_backward_cuda(launcher_dtype(x, "gmm_log_prob"), gc.const_data_ptr(), xc.const_data_ptr(), lc.const_data_ptr(),
                         mc.const_data_ptr(), sc.const_data_ptr(), N, K, D, float(lo), float(hi),
                         d_x.mutable_data_ptr(), d_logits.mutable_data_ptr(), d_mu.mutable_data_ptr(),
                         d_log_sigma.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {d_x, d_logits, d_mu, d_log_sigma};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlv_C, CUDA, m) {
  m.impl("gmm_log_prob", &gmm_log_prob_cuda);
  m.impl("gmm_log_prob_backward", &gmm_log_prob_backward_cuda);
  m.impl("diag_gmm_log_prob", &diag_gmm_log_prob_cuda);
  m.impl("diag_gmm_log_prob_backward", &diag_gmm_log_prob_backward_cuda);
}

}  // namespace fastlv
