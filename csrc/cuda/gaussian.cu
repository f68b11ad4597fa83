// CUDA kernels of the diagonal-Gaussian latent ops (fastlv_C::gaussian_sample_kl, gaussian_log_prob,
// precision_weighted and their backward ops). Per-dimension math: csrc/common/gaussian_math.h; noise:
// csrc/common/philox.h (the same normals as the CPU, Triton and reference kernels for the same seed).
//
// Row ops ([N, D] rows): one warp per row, lanes over D (a warp reads 32 consecutive values), the row sum
// of the KL / log-density by warp shuffles. Each element computes its own Philox call and keeps one of
// its four normals (integer work is free in these bandwidth-bound kernels); the backward regenerates
// the normals from the seed, read from device memory (no host sync). Math in fp32 for fp32/fp16/bf16
// inputs, in fp64 for fp64 inputs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/gaussian_math.h"
#include "common/philox.h"
#include "cuda/convert.cuh"
#include "cuda/gaussian.cuh"

namespace fastlv {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr unsigned kFullWarp = 0xffffffffu;

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// Row n = one warp; a warp past the last row returns as a whole, so the full-warp shuffles stay valid.
__device__ __forceinline__ int64_t warp_row() {
  return int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
}

unsigned blocks_for(int64_t threads) {
  return static_cast<unsigned>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

// The parameters of element i, in the accumulation type.
template <bool kPrior, typename T, typename A = acc_t<T>>
__device__ __forceinline__ LatentParams<A> load_params(const T* mu_q, const T* lv_q, const T* mu_p, const T* lv_p,
                                                       int64_t i) {
  return {to_acc(mu_q[i]), to_acc(lv_q[i]), kPrior ? to_acc(mu_p[i]) : A(0), kPrior ? to_acc(lv_p[i]) : A(0)};
}

template <typename T, bool kSample, typename A = acc_t<T>>
__device__ __forceinline__ A load_noise(const T* eps, int64_t seed, int64_t i) {
  if (!kSample) return A(0);
  return eps != nullptr ? to_acc(eps[i]) : A(standard_normal(seed, i));
}

template <typename A>
__device__ __forceinline__ LatentBounds<A> bounds_of(const LatentLaunch& c) {
  return {A(c.mu_lo), A(c.mu_hi), A(c.lv_lo), A(c.lv_hi), A(c.free_bits)};
}

template <typename T, bool kPrior, bool kPW, bool kSample, bool kKL>
__global__ void sample_kl_forward_kernel(LatentLaunch c, T* __restrict__ z, T* __restrict__ kl) {
  using A = acc_t<T>;
  const int64_t n = warp_row();
  const int lane = threadIdx.x % kWarpSize;
  if (n >= c.N) return;
  const T *mu_q = static_cast<const T*>(c.mu_q), *lv_q = static_cast<const T*>(c.lv_q);
  const T *mu_p = static_cast<const T*>(c.mu_p), *lv_p = static_cast<const T*>(c.lv_p);
  const T* eps = static_cast<const T*>(c.eps);
  const int64_t seed = kSample && eps == nullptr ? *c.seed : 0;
  const LatentBounds<A> b = bounds_of<A>(c);
  A sum = 0;
  for (int64_t d = lane; d < c.D; d += kWarpSize) {
    const int64_t i = n * c.D + d;
    const LatentStep<kPrior, kPW, kSample, kKL, A> step(load_params<kPrior>(mu_q, lv_q, mu_p, lv_p, i),
                                                        load_noise<T, kSample>(eps, seed, i), b);
    if (kSample) z[i] = from_acc<T>(step.z());
    if (kKL) {
      if (c.elementwise) {
        kl[i] = from_acc<T>(step.kl);
      } else {
        sum += step.kl;
      }
    }
  }
  if (kKL && !c.elementwise) {
    sum = warp_sum(sum);
    if (lane == 0) kl[n] = from_acc<T>(sum);
  }
}

template <typename T, bool kPrior, bool kPW, bool kSample, bool kKL>
__global__ void sample_kl_backward_kernel(LatentLaunch c, const T* __restrict__ grad_z,
                                          const T* __restrict__ grad_kl, T* __restrict__ d_mu_q,
                                          T* __restrict__ d_lv_q, T* __restrict__ d_mu_p, T* __restrict__ d_lv_p) {
  using A = acc_t<T>;
  const int64_t n = warp_row();
  const int lane = threadIdx.x % kWarpSize;
  if (n >= c.N) return;
  const T *mu_q = static_cast<const T*>(c.mu_q), *lv_q = static_cast<const T*>(c.lv_q);
  const T *mu_p = static_cast<const T*>(c.mu_p), *lv_p = static_cast<const T*>(c.lv_p);
  const T* eps = static_cast<const T*>(c.eps);
  const int64_t seed = kSample && eps == nullptr ? *c.seed : 0;
  const LatentBounds<A> b = bounds_of<A>(c);
  const A g_kl_row = kKL && !c.elementwise ? to_acc(grad_kl[n]) : A(0);
  for (int64_t d = lane; d < c.D; d += kWarpSize) {
    const int64_t i = n * c.D + d;
    const LatentStep<kPrior, kPW, kSample, kKL, A> step(load_params<kPrior>(mu_q, lv_q, mu_p, lv_p, i),
                                                        load_noise<T, kSample>(eps, seed, i), b);
    const A g_z = kSample ? to_acc(grad_z[i]) : A(0);
    const A g_kl = kKL && c.elementwise ? to_acc(grad_kl[i]) : g_kl_row;
    const LatentParams<A> g = step.grads(g_z, g_kl, b);
    d_mu_q[i] = from_acc<T>(g.mu_q);
    d_lv_q[i] = from_acc<T>(g.lv_q);
    if (kPrior) {
      d_mu_p[i] = from_acc<T>(g.mu_p);
      d_lv_p[i] = from_acc<T>(g.lv_p);
    }
  }
}

template <typename T>
__global__ void log_prob_forward_kernel(const T* __restrict__ x, const T* __restrict__ mu, const T* __restrict__ lv,
                                        int64_t N, int64_t D, bool elementwise, float mu_lo, float mu_hi,
                                        float lv_lo, float lv_hi, T* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t n = warp_row();
  const int lane = threadIdx.x % kWarpSize;
  if (n >= N) return;
  A sum = 0;
  for (int64_t d = lane; d < D; d += kWarpSize) {
    const int64_t i = n * D + d;
    A scaled_diff;
    const A term = gaussian_log_prob_term(to_acc(x[i]), clamp_of(to_acc(mu[i]), A(mu_lo), A(mu_hi)),
                                          clamp_of(to_acc(lv[i]), A(lv_lo), A(lv_hi)), scaled_diff);
    if (elementwise) {
      out[i] = from_acc<T>(term);
    } else {
      sum += term;
    }
  }
  if (!elementwise) {
    sum = warp_sum(sum);
    if (lane == 0) out[n] = from_acc<T>(sum);
  }
}

template <typename T>
__global__ void log_prob_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                         const T* __restrict__ mu, const T* __restrict__ lv, int64_t N, int64_t D,
                                         bool elementwise, float mu_lo, float mu_hi, float lv_lo, float lv_hi,
                                         T* __restrict__ d_x, T* __restrict__ d_mu, T* __restrict__ d_lv) {
  using A = acc_t<T>;
  const int64_t n = warp_row();
  const int lane = threadIdx.x % kWarpSize;
  if (n >= N) return;
  const A g_row = elementwise ? A(0) : to_acc(grad[n]);
  for (int64_t d = lane; d < D; d += kWarpSize) {
    const int64_t i = n * D + d;
    const A x_i = to_acc(x[i]), mu_raw = to_acc(mu[i]), lv_raw = to_acc(lv[i]);
    const A mu_c = clamp_of(mu_raw, A(mu_lo), A(mu_hi));
    A scaled_diff, dx, dmu, dlv;
    gaussian_log_prob_term(x_i, mu_c, clamp_of(lv_raw, A(lv_lo), A(lv_hi)), scaled_diff);
    gaussian_log_prob_grads(elementwise ? to_acc(grad[i]) : g_row, x_i, mu_c, scaled_diff, dx, dmu, dlv);
    d_x[i] = from_acc<T>(dx);
    d_mu[i] = from_acc<T>(where_in_range(mu_raw, A(mu_lo), A(mu_hi), dmu));
    d_lv[i] = from_acc<T>(where_in_range(lv_raw, A(lv_lo), A(lv_hi), dlv));
  }
}

template <typename T>
__global__ void precision_weighted_forward_kernel(const T* __restrict__ mu_a, const T* __restrict__ var_a,
                                                  const T* __restrict__ mu_b, const T* __restrict__ var_b,
                                                  int64_t numel, T* __restrict__ mu, T* __restrict__ var) {
  using A = acc_t<T>;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= numel) return;
  A m, v;
  precision_weighted_combine(to_acc(mu_a[i]), to_acc(var_a[i]), to_acc(mu_b[i]), to_acc(var_b[i]), m, v);
  mu[i] = from_acc<T>(m);
  var[i] = from_acc<T>(v);
}

template <typename T>
__global__ void precision_weighted_backward_kernel(const T* __restrict__ g_mu, const T* __restrict__ g_var,
                                                   const T* __restrict__ mu_a, const T* __restrict__ var_a,
                                                   const T* __restrict__ mu_b, const T* __restrict__ var_b,
                                                   int64_t numel, T* __restrict__ d_mu_a, T* __restrict__ d_var_a,
                                                   T* __restrict__ d_mu_b, T* __restrict__ d_var_b) {
  using A = acc_t<T>;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= numel) return;
  A dma, dva, dmb, dvb;
  precision_weighted_combine_grads(to_acc(g_mu[i]), to_acc(g_var[i]), to_acc(mu_a[i]), to_acc(var_a[i]),
                                   to_acc(mu_b[i]), to_acc(var_b[i]), dma, dva, dmb, dvb);
  d_mu_a[i] = from_acc<T>(dma);
  d_var_a[i] = from_acc<T>(dva);
  d_mu_b[i] = from_acc<T>(dmb);
  d_var_b[i] = from_acc<T>(dvb);
}

}  // namespace

bool launch_gaussian_sample_kl_forward(const LatentLaunch& call, void* z, void* kl, cudaStream_t stream) {
  bool supported = true;
  dispatch_dtype(call.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    supported = dispatch_latent_step(call.mu_p != nullptr, call.precision_weighted, call.sample, call.kl,
                                     [&](auto prior, auto pw, auto sample, auto with_kl) {
      if (call.N == 0) return;
      sample_kl_forward_kernel<T, prior, pw, sample, with_kl><<<blocks_for(call.N * kWarpSize), kThreadsPerBlock, 0,
                                                                stream>>>(call, static_cast<T*>(z),
                                                                          static_cast<T*>(kl));
    });
  });
  return supported;
}

bool launch_gaussian_sample_kl_backward(const LatentLaunch& call, const void* grad_z, const void* grad_kl,
                                      void* d_mu_q, void* d_lv_q, void* d_mu_p, void* d_lv_p, cudaStream_t stream) {
  bool supported = true;
  dispatch_dtype(call.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    supported = dispatch_latent_step(call.mu_p != nullptr, call.precision_weighted, call.sample, call.kl,
                                     [&](auto prior, auto pw, auto sample, auto with_kl) {
      if (call.N == 0 || call.D == 0) return;
      sample_kl_backward_kernel<T, prior, pw, sample, with_kl>
          <<<blocks_for(call.N * kWarpSize), kThreadsPerBlock, 0, stream>>>(
              call, static_cast<const T*>(grad_z), static_cast<const T*>(grad_kl), static_cast<T*>(d_mu_q),
              static_cast<T*>(d_lv_q), static_cast<T*>(d_mu_p), static_cast<T*>(d_lv_p));
    });
  });
  return supported;
}

void launch_gaussian_log_prob_forward(DType dtype, const void* x, const void* mu, const void* lv, int64_t N, int64_t D,
                                   bool elementwise, float mu_lo, float mu_hi, float lv_lo, float lv_hi, void* out,
                                   cudaStream_t stream) {
  if (N == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    log_prob_forward_kernel<T><<<blocks_for(N * kWarpSize), kThreadsPerBlock, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(mu), static_cast<const T*>(lv), N, D, elementwise, mu_lo,
        mu_hi, lv_lo, lv_hi, static_cast<T*>(out));
  });
}

void launch_gaussian_log_prob_backward(DType dtype, const void* grad, const void* x, const void* mu, const void* lv,
                                    int64_t N, int64_t D, bool elementwise, float mu_lo, float mu_hi, float lv_lo,
                                    float lv_hi, void* d_x, void* d_mu, void* d_lv, cudaStream_t stream) {
  if (N == 0 || D == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    log_prob_backward_kernel<T><<<blocks_for(N * kWarpSize), kThreadsPerBlock, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(x), static_cast<const T*>(mu), static_cast<const T*>(lv),
        N, D, elementwise, mu_lo, mu_hi, lv_lo, lv_hi, static_cast<T*>(d_x), static_cast<T*>(d_mu),
        static_cast<T*>(d_lv));
  });
}

void launch_precision_weighted_forward(DType dtype, const void* mu_a, const void* var_a, const void* mu_b,
                                     const void* var_b, int64_t numel, void* mu, void* var, cudaStream_t stream) {
  if (numel == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    precision_weighted_forward_kernel<T><<<blocks_for(numel), kThreadsPerBlock, 0, stream>>>(
        static_cast<const T*>(mu_a), static_cast<const T*>(var_a), static_cast<const T*>(mu_b),
        static_cast<const T*>(var_b), numel, static_cast<T*>(mu), static_cast<T*>(var));
  });
}

void launch_precision_weighted_backward(DType dtype, const void* grad_mu, const void* grad_var, const void* mu_a,
                                      const void* var_a, const void* mu_b, const void* var_b, int64_t numel,
                                      void* d_mu_a, void* d_var_a, void* d_mu_b, void* d_var_b, cudaStream_t stream) {
  if (numel == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    precision_weighted_backward_kernel<T><<<blocks_for(numel), kThreadsPerBlock, 0, stream>>>(
        static_cast<const T*>(grad_mu), static_cast<const T*>(grad_var), static_cast<const T*>(mu_a),
        static_cast<const T*>(var_a), static_cast<const T*>(mu_b), static_cast<const T*>(var_b), numel,
        static_cast<T*>(d_mu_a), static_cast<T*>(d_var_a), static_cast<T*>(d_mu_b), static_cast<T*>(d_var_b));
  });
}

}  // namespace fastlv
