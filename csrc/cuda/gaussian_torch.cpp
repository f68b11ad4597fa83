// CUDA implementations of the fastlv_C Gaussian latent ops (schemas in csrc/cpu/gaussian.cpp): argument
// checks, contiguous inputs, output allocation, then the launchers of csrc/cuda/gaussian.cu on the current
// stream of the inputs' device. The seed stays on the device (the kernels read it): no host sync.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/gaussian_checks.h"
#include "cuda/gaussian.cuh"

namespace fastlv {
namespace {

const void* data_or_null(const OptTensor& t) { return t ? t->const_data_ptr() : nullptr; }

LatentLaunch latent_launch(const at::Tensor& mu_q, const at::Tensor& lv_q, const OptTensor& mu_p, const OptTensor& lv_p,
                           const OptTensor& eps, const OptTensor& seed, bool sample, bool kl, bool precision_weighted,
                           bool elementwise, double free_bits, double mu_min, double mu_max, double lv_min,
                           double lv_max) {
  const auto [N, D] = rows_of(mu_q);
  const bool draw = sample && !eps.has_value();
  return {launcher_dtype(mu_q, "the Gaussian ops"), mu_q.const_data_ptr(), lv_q.const_data_ptr(), data_or_null(mu_p), data_or_null(lv_p),
          sample ? data_or_null(eps) : nullptr, draw ? seed->const_data_ptr<int64_t>() : nullptr, N, D,
          precision_weighted, sample, kl, elementwise, float(free_bits), float(mu_min), float(mu_max),
          float(lv_min), float(lv_max)};
}

std::tuple<at::Tensor, at::Tensor> gaussian_sample_kl_cuda(
    const at::Tensor& mu_q, const at::Tensor& logvar_q, const OptTensor& mu_p, const OptTensor& logvar_p,
    const OptTensor& eps, const OptTensor& seed, bool sample, bool kl, bool precision_weighted, bool elementwise,
    double free_bits, double mu_min, double mu_max, double logvar_min, double logvar_max) {
  check_latent_args(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted);
  const c10::cuda::CUDAGuard device_guard(mu_q.device());
  const auto mqc = mu_q.contiguous(), lqc = logvar_q.contiguous();
  const auto mpc = contiguous(mu_p), lpc = contiguous(logvar_p), ec = contiguous(eps);
  auto z = sample ? at::empty_like(mqc) : at::empty({0}, mu_q.options());
  auto kl_out = kl_output(mqc, kl, elementwise);
  const LatentLaunch call = latent_launch(mqc, lqc, mpc, lpc, ec, seed, sample, kl, precision_weighted, elementwise,
                                          free_bits, mu_min, mu_max, logvar_min, logvar_max);
  const bool supported = launch_gaussian_sample_kl_forward(call, sample ? z.mutable_data_ptr() : nullptr,
                                                         kl ? kl_out.mutable_data_ptr() : nullptr,
                                                         c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(supported, "fastlv: gaussian_sample_kl does not support sample=", sample, " kl=", kl,
              " precision_weighted=", precision_weighted, " with", mu_p ? "" : "out", " a prior");
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {z, kl_out};
}

std::vector<at::Tensor> gaussian_sample_kl_backward_cuda(
    const OptTensor& grad_z, const OptTensor& grad_kl, const at::Tensor& mu_q, const at::Tensor& logvar_q,
    const OptTensor& mu_p, const OptTensor& logvar_p, const OptTensor& eps, const OptTensor& seed, bool sample,
    bool kl, bool precision_weighted, bool elementwise, double free_bits, double mu_min, double mu_max,
    double logvar_min, double logvar_max) {
  check_latent_args(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted);
  const c10::cuda::CUDAGuard device_guard(mu_q.device());
  const auto [gz, gkl] = latent_output_grads(grad_z, grad_kl, mu_q, sample, kl, elementwise);
  const auto mqc = mu_q.contiguous(), lqc = logvar_q.contiguous();
  const auto mpc = contiguous(mu_p), lpc = contiguous(logvar_p), ec = contiguous(eps);
  std::vector<at::Tensor> grads = {at::empty_like(mqc), at::empty_like(mqc)};
  if (mu_p) grads.insert(grads.end(), {at::empty_like(mqc), at::empty_like(mqc)});
  const LatentLaunch call = latent_launch(mqc, lqc, mpc, lpc, ec, seed, sample, kl, precision_weighted, elementwise,
                                          free_bits, mu_min, mu_max, logvar_min, logvar_max);
  const bool supported = launch_gaussian_sample_kl_backward(
      call, sample ? gz.const_data_ptr() : nullptr, kl ? gkl.const_data_ptr() : nullptr, grads[0].mutable_data_ptr(),
      grads[1].mutable_data_ptr(), mu_p ? grads[2].mutable_data_ptr() : nullptr,
      mu_p ? grads[3].mutable_data_ptr() : nullptr, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(supported, "fastlv: gaussian_sample_kl_backward does not support sample=", sample, " kl=", kl,
              " precision_weighted=", precision_weighted, " with", mu_p ? "" : "out", " a prior");
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

at::Tensor gaussian_log_prob_cuda(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& logvar,
                                  bool elementwise, double mu_min, double mu_max, double logvar_min,
                                  double logvar_max) {
  check_log_prob_args(x, mu, logvar);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto xc = x.contiguous(), mc = mu.contiguous(), lc = logvar.contiguous();
  auto out = kl_output(xc, true, elementwise);
  const auto [N, D] = rows_of(xc);
  launch_gaussian_log_prob_forward(launcher_dtype(x, "the Gaussian ops"), xc.const_data_ptr(), mc.const_data_ptr(), lc.const_data_ptr(), N,
                                 D, elementwise, float(mu_min), float(mu_max), float(logvar_min), float(logvar_max),
                                 out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_log_prob_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mu, const at::Tensor& logvar, bool elementwise,
    double mu_min, double mu_max, double logvar_min, double logvar_max) {
  check_log_prob_args(x, mu, logvar);
  check_device(grad, x, "grad", "x");
  check_shape(grad, row_output_shape(x, elementwise), "grad");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto gc = grad.contiguous().to(x.scalar_type()), xc = x.contiguous(), mc = mu.contiguous();
  const auto lc = logvar.contiguous();
  auto d_x = at::empty_like(xc), d_mu = at::empty_like(xc), d_logvar = at::empty_like(xc);
  const auto [N, D] = rows_of(xc);
  launch_gaussian_log_prob_backward(launcher_dtype(x, "the Gaussian ops"), gc.const_data_ptr(), xc.const_data_ptr(), mc.const_data_ptr(),
                                  lc.const_data_ptr(), N, D, elementwise, float(mu_min), float(mu_max),
                                  float(logvar_min), float(logvar_max), d_x.mutable_data_ptr(), d_mu.mutable_data_ptr(),
                                  d_logvar.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {d_x, d_mu, d_logvar};
}

std::tuple<at::Tensor, at::Tensor> precision_weighted_cuda(const at::Tensor& mu_a, const at::Tensor& var_a,
                                                           const at::Tensor& mu_b, const at::Tensor& var_b) {
  check_precision_weighted_args(mu_a, var_a, mu_b, var_b);
  const c10::cuda::CUDAGuard device_guard(mu_a.device());
  const auto mac = mu_a.contiguous(), vac = var_a.contiguous(), mbc = mu_b.contiguous(), vbc = var_b.contiguous();
  auto mu = at::empty_like(mac), var = at::empty_like(mac);
  launch_precision_weighted_forward(launcher_dtype(mu_a, "the Gaussian ops"), mac.const_data_ptr(), vac.const_data_ptr(),
                                  mbc.const_data_ptr(), vbc.const_data_ptr(), mac.numel(), mu.mutable_data_ptr(),
                                  var.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {mu, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> precision_weighted_backward_cuda(
    const at::Tensor& grad_mu, const at::Tensor& grad_var, const at::Tensor& mu_a, const at::Tensor& var_a,
    const at::Tensor& mu_b, const at::Tensor& var_b) {
  check_precision_weighted_args(mu_a, var_a, mu_b, var_b);
  check_shape(grad_mu, mu_a.sizes(), "grad_mu");
  check_shape(grad_var, mu_a.sizes(), "grad_var");
  const c10::cuda::CUDAGuard device_guard(mu_a.device());
  const auto gmc = grad_mu.contiguous().to(mu_a.scalar_type()), gvc = grad_var.contiguous().to(mu_a.scalar_type());
  const auto mac = mu_a.contiguous(), vac = var_a.contiguous(), mbc = mu_b.contiguous(), vbc = var_b.contiguous();
  auto d_mu_a = at::empty_like(mac), d_var_a = at::empty_like(mac), d_mu_b = at::empty_like(mac);
  auto d_var_b = at::empty_like(mac);
  launch_precision_weighted_backward(launcher_dtype(mu_a, "the Gaussian ops"), gmc.const_data_ptr(), gvc.const_data_ptr(),
                                   mac.const_data_ptr(), vac.const_data_ptr(), mbc.const_data_ptr(),
                                   vbc.const_data_ptr(), mac.numel(), d_mu_a.mutable_data_ptr(),
                                   d_var_a.mutable_data_ptr(), d_mu_b.mutable_data_ptr(), d_var_b.mutable_data_ptr(),
                                   c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {d_mu_a, d_var_a, d_mu_b, d_var_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlv_C, CUDA, m) {
  m.impl("gaussian_sample_kl", &gaussian_sample_kl_cuda);
  m.impl("gaussian_sample_kl_backward", &gaussian_sample_kl_backward_cuda);
  m.impl("gaussian_log_prob", &gaussian_log_prob_cuda);
  m.impl("gaussian_log_prob_backward", &gaussian_log_prob_backward_cuda);
  m.impl("precision_weighted", &precision_weighted_cuda);
  m.impl("precision_weighted_backward", &precision_weighted_backward_cuda);
}

}  // namespace fastlv
