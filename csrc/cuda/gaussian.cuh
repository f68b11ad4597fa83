// Launchers of the CUDA diagonal-Gaussian latent kernels (csrc/cuda/gaussian.cu), called by
// csrc/cuda/gaussian_torch.cpp.
//
// All buffers are contiguous [N, D] rows (or [N] per-row values), on the current device, of element
// type `dtype` (math in fp32, fp64 for fp64). Bounds are +-inf where there is no clamp / no free bits.
// Each launcher enqueues its kernel on `stream` and returns at once (check cudaGetLastError() after);
// nothing is launched when there is nothing to compute. No torch headers here.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace fastlv {

// One call of the fused latent step (fastlv_C::gaussian_sample_kl): mu_q, lv_q [N, D]; mu_p, lv_p
// [N, D] or null (prior N(0, I)); eps [N, D], or null to draw normals from *seed (a device int64) with
// the generator of csrc/common/philox.h.
struct LatentLaunch {
  DType dtype;
  const void *mu_q, *lv_q, *mu_p, *lv_p, *eps;
  const int64_t* seed;
  int64_t N, D;
  bool precision_weighted, sample, kl, elementwise;
  float free_bits, mu_lo, mu_hi, lv_lo, lv_hi;
};

// z [N, D] (when sampling) and kl [N] or [N, D] (elementwise). Returns false, launching nothing, for a
// combination of options the op does not support (dispatch_latent_step in csrc/common/gaussian_math.h).
bool launch_gaussian_sample_kl_forward(const LatentLaunch& call, void* z, void* kl, cudaStream_t stream);

// Gradients w.r.t. mu_q, lv_q (and mu_p, lv_p with a prior) given grad_z [N, D] (when sampling) and
// grad_kl [N] / [N, D] (when computing the KL); the noise is regenerated from the seed.
bool launch_gaussian_sample_kl_backward(const LatentLaunch& call, const void* grad_z, const void* grad_kl,
                                      void* d_mu_q, void* d_lv_q, void* d_mu_p, void* d_lv_p, cudaStream_t stream);

// log N(x; mu, exp(lv)) of [N, D] rows -> out [N] (summed over D) or [N, D] (elementwise).
void launch_gaussian_log_prob_forward(DType dtype, const void* x, const void* mu, const void* lv, int64_t N, int64_t D,
                                   bool elementwise, float mu_lo, float mu_hi, float lv_lo, float lv_hi, void* out,
                                   cudaStream_t stream);

// Its gradients d_x, d_mu, d_lv [N, D] given grad [N] / [N, D].
void launch_gaussian_log_prob_backward(DType dtype, const void* grad, const void* x, const void* mu, const void* lv,
                                    int64_t N, int64_t D, bool elementwise, float mu_lo, float mu_hi, float lv_lo,
                                    float lv_hi, void* d_x, void* d_mu, void* d_lv, cudaStream_t stream);

// Precision-weighted combination (STCN Eq. 11) of numel elements -> mu, var.
void launch_precision_weighted_forward(DType dtype, const void* mu_a, const void* var_a, const void* mu_b,
                                     const void* var_b, int64_t numel, void* mu, void* var, cudaStream_t stream);

// Its gradients given grad_mu, grad_var.
void launch_precision_weighted_backward(DType dtype, const void* grad_mu, const void* grad_var, const void* mu_a,
                                      const void* var_a, const void* mu_b, const void* var_b, int64_t numel,
                                      void* d_mu_a, void* d_var_a, void* d_mu_b, void* d_var_b, cudaStream_t stream);

}  // namespace fastlv
