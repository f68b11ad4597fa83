// Launchers of the CUDA Gaussian-mixture kernels (csrc/cuda/gmm.cu), called by csrc/cuda/gmm_torch.cpp.
//
// All buffers are contiguous, on the current device, of element type `dtype` (math in fp32, fp64 for
// fp64). log_sigma is clamped to [lo, hi] (+-inf for no clamp). Each launcher enqueues its kernel on
// `stream` and returns at once (check cudaGetLastError() after); nothing is launched when N == 0.
// The backward launchers recompute both logsumexps from the inputs in fp32 rather than reading the
// forward's outputs, which are rounded to the input dtype. No torch headers here.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace fastlv {

// The full-frame backward keeps a frame's K responsibilities in shared memory (48 KiB per block).
constexpr int64_t kDiagGmmMaxComponents = 48 * 1024 / sizeof(double);

// Per-element mixture: x [N], logits/mu/log_sigma [N, K] -> log_prob [N], lse_components [N] (logsumexp_k a_k),
// lse_logits [N]
// (log p(x) and logsumexp_k logits).
void gmm_forward_cuda(DType dtype, const void* x, const void* logits, const void* mu, const void* log_sigma,
                      int64_t N, int64_t K, float lo, float hi, void* log_prob, void* lse_components, void* lse_logits,
                      cudaStream_t stream);

// Its gradients given grad [N] of log_prob: d_x [N], d_logits/d_mu/d_log_sigma [N, K].
void gmm_backward_cuda(DType dtype, const void* grad, const void* x, const void* logits, const void* mu,
                       const void* log_sigma, int64_t N, int64_t K, float lo, float hi, void* d_x,
                       void* d_logits, void* d_mu, void* d_log_sigma, cudaStream_t stream);

// Full-frame mixture of N frames: x [N, D], logits [N, K], mu/log_sigma [N, K, D] -> log_prob [N],
// lse_components [N], lse_logits [N].
void diag_gmm_forward_cuda(DType dtype, const void* x, const void* logits, const void* mu,
                           const void* log_sigma, int64_t N, int64_t K, int64_t D, float lo, float hi,
                           void* log_prob, void* lse_components, void* lse_logits, cudaStream_t stream);

// Its gradients given grad [N] of log_prob: d_x [N, D], d_logits [N, K], d_mu/d_log_sigma [N, K, D].
// Requires K <= kDiagGmmMaxComponents.
void diag_gmm_backward_cuda(DType dtype, const void* grad, const void* x, const void* logits, const void* mu,
                            const void* log_sigma, int64_t N, int64_t K, int64_t D, float lo, float hi,
                            void* d_x, void* d_logits, void* d_mu, void* d_log_sigma, cudaStream_t stream);

}  // namespace fastlv
