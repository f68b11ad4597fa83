// CUDA kernels of the Gaussian-mixture log-likelihood (fastlv_C::gmm_log_prob, diag_gmm_log_prob and
// their backward ops). The per-component math is csrc/common/gmm_math.h, shared with the CPU kernels.
//
// Per-element mixture (x [N], params [N, K], K small): a group of G lanes handles one element, G = K
// rounded up to a power of two, at most 32. Lane j of a group takes components j, j + G, ..., so a warp
// reads consecutive memory, and the group combines its partial logsumexps with shuffles.
// Full-frame mixture (x [N, D], params [N, K, D]): one warp per frame, lanes over D, one warp sum per
// component. The backward keeps the frame's responsibilities in shared memory, then each lane takes a
// d and loops over the components, so d_x accumulates in a register.
// Math in fp32 for fp32/fp16/bf16 inputs, in fp64 for fp64 inputs. The backward recomputes both
// logsumexps rather than reading the forward's outputs, which are rounded to the input dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "common/gmm_math.h"
#include "cuda/convert.cuh"
#include "cuda/gmm.cuh"

namespace fastlv {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int64_t kMaxSharedBytes = 48 * 1024;  // without opting in to more per block

// Sum over each aligned group of `lanes` lanes (a power of two <= 32); every lane of the group gets
// the total. All lanes of the warp must call it.
template <typename A>
__device__ __forceinline__ A sum_over_lanes(A v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// Running logsumexp: the largest value seen and the sum of exp(value - largest). A value of -inf
// (a disabled component) adds nothing, so with none seen it is (-inf, 0) and finishes at -inf.
template <typename A>
struct RunningLogSumExp {
  A max = A(-INFINITY);
  A sum = A(0);

  __device__ void merge(A other_max, A other_sum) {
    if (other_max == A(-INFINITY)) return;
    if (other_max > max) {
      sum = sum * exp_of(max - other_max) + other_sum;
      max = other_max;
    } else {
      sum += other_sum * exp_of(other_max - max);
    }
  }
  __device__ void add(A v) { merge(v, A(1)); }
  // Combine over each aligned group of `lanes` lanes, as sum_over_lanes.
  __device__ void merge_over_lanes(int lanes) {
    for (int offset = lanes / 2; offset > 0; offset /= 2)
      merge(__shfl_xor_sync(kFullWarp, max, offset), __shfl_xor_sync(kFullWarp, sum, offset));
  }
  __device__ A finish() const { return logsumexp_finish(max, sum); }
};

// One component of a per-element mixture (flat index i into [N, K]) at x: its log-joint
// a = logit + log N(x; mu, sigma), and what the backward needs.
template <typename A>
struct Component {
  A logit, a, z, inv_sigma, log_sigma_raw;
};

template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ Component<A> load_component(const T* logits, const T* mu, const T* log_sigma,
                                                       int64_t i, A x, A lo, A hi) {
  Component<A> c;
  c.logit = to_acc(logits[i]);
  c.log_sigma_raw = to_acc(log_sigma[i]);
  c.a = c.logit + gaussian_log_density(x, to_acc(mu[i]), clamp_of(c.log_sigma_raw, lo, hi), c.z, c.inv_sigma);
  return c;
}

// logsumexp_k a_k and logsumexp_k logit_k of element n, for every lane of its group of G. Lanes with
// n >= N (the tail of the last block) only take part in the shuffles.
template <int G, typename T, typename A = acc_t<T>>
__device__ void element_logsumexps(const T* x, const T* logits, const T* mu, const T* log_sigma, int64_t n,
                                   int lane, int64_t N, int64_t K, A lo, A hi, A& lse_a, A& lse_logits) {
  RunningLogSumExp<A> run_a, run_logits;
  if (n < N) {
    const A xn = to_acc(x[n]);
    for (int64_t k = lane; k < K; k += G) {
      const Component<A> c = load_component(logits, mu, log_sigma, n * K + k, xn, lo, hi);
      run_a.add(c.a);
      run_logits.add(c.logit);
    }
  }
  run_a.merge_over_lanes(G);
  run_logits.merge_over_lanes(G);
  lse_a = run_a.finish();
  lse_logits = run_logits.finish();
}

template <typename T, int G>
__global__ void gmm_forward_kernel(const T* __restrict__ x, const T* __restrict__ logits,
                                   const T* __restrict__ mu, const T* __restrict__ log_sigma, int64_t N,
                                   int64_t K, float lo, float hi, T* __restrict__ log_prob,
                                   T* __restrict__ lse_components, T* __restrict__ lse_logits) {
  using A = acc_t<T>;
  const int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / G;  // element of this lane's group
  const int lane = threadIdx.x % G;
  A lse_a, lse_l;
  element_logsumexps<G>(x, logits, mu, log_sigma, n, lane, N, K, A(lo), A(hi), lse_a, lse_l);
  if (n < N && lane == 0) {
    log_prob[n] = from_acc<T>(lse_a - lse_l);
    lse_components[n] = from_acc<T>(lse_a);
    lse_logits[n] = from_acc<T>(lse_l);
  }
}

template <typename T, int G>
__global__ void gmm_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                    const T* __restrict__ logits, const T* __restrict__ mu,
                                    const T* __restrict__ log_sigma, int64_t N, int64_t K, float lo, float hi,
                                    T* __restrict__ d_x, T* __restrict__ d_logits, T* __restrict__ d_mu,
                                    T* __restrict__ d_log_sigma) {
  using A = acc_t<T>;
  const int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / G;
  const int lane = threadIdx.x % G;
  A lse_a, lse_l;
  element_logsumexps<G>(x, logits, mu, log_sigma, n, lane, N, K, A(lo), A(hi), lse_a, lse_l);
  A dx = 0;
  if (n < N) {
    const A g = to_acc(grad[n]), xn = to_acc(x[n]);
    for (int64_t k = lane; k < K; k += G) {
      const int64_t i = n * K + k;
      const Component<A> c = load_component(logits, mu, log_sigma, i, xn, A(lo), A(hi));
      // Responsibility and mixture weight times the incoming gradient; both 0 for a -inf logit.
      const A r = g * exp_of(c.a - lse_a), w = g * exp_of(c.logit - lse_l);
      A dmu, dls;
      gaussian_term_grads(r, c.z, c.inv_sigma, c.log_sigma_raw, A(lo), A(hi), dmu, dls);
      d_logits[i] = from_acc<T>(r - w);
      d_mu[i] = from_acc<T>(dmu);
      d_log_sigma[i] = from_acc<T>(dls);
      dx -= dmu;
    }
  }
  dx = sum_over_lanes(dx, G);
  if (n < N && lane == 0) d_x[n] = from_acc<T>(dx);
}

// sum_d log N(x_d; mu_d, sigma_d) of one component of one frame (lanes over d), in every lane.
template <typename T, typename A = acc_t<T>>
__device__ A component_log_density(const T* x, const T* mu, const T* log_sigma, int64_t D, A lo, A hi,
                                   int lane) {
  A sum = 0;
  for (int64_t d = lane; d < D; d += kWarpSize) {
    A z, inv_sigma;
    sum += gaussian_log_density(to_acc(x[d]), to_acc(mu[d]), clamp_of(to_acc(log_sigma[d]), lo, hi), z,
                                inv_sigma);
  }
  return sum_over_lanes(sum, kWarpSize);
}

// Frame n = one warp. Blocks hold blockDim.x / 32 frames; a warp past the last frame returns as a
// whole (n is uniform over the warp), so the full-warp shuffles stay valid.
__device__ __forceinline__ int64_t warp_frame() {
  return int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
}

template <typename T>
__global__ void diag_gmm_forward_kernel(const T* __restrict__ x, const T* __restrict__ logits,
                                        const T* __restrict__ mu, const T* __restrict__ log_sigma, int64_t N,
                                        int64_t K, int64_t D, float lo, float hi, T* __restrict__ log_prob,
                                        T* __restrict__ lse_components, T* __restrict__ lse_logits) {
  using A = acc_t<T>;
  const int64_t n = warp_frame();
  const int lane = threadIdx.x % kWarpSize;
  if (n >= N) return;
  RunningLogSumExp<A> run_a, run_logits;  // the same in every lane
  for (int64_t k = 0; k < K; ++k) {
    const A logit = to_acc(logits[n * K + k]);
    const int64_t params = (n * K + k) * D;  // mu/log_sigma [N, K, D]
    run_a.add(logit + component_log_density(x + n * D, mu + params, log_sigma + params, D, A(lo), A(hi), lane));
    run_logits.add(logit);
  }
  if (lane == 0) {
    log_prob[n] = from_acc<T>(run_a.finish() - run_logits.finish());
    lse_components[n] = from_acc<T>(run_a.finish());
    lse_logits[n] = from_acc<T>(run_logits.finish());
  }
}

// Dynamic shared memory: blockDim.x / 32 * K values of acc_t<T>, K per frame of the block.
template <typename T>
__global__ void diag_gmm_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                         const T* __restrict__ logits, const T* __restrict__ mu,
                                         const T* __restrict__ log_sigma, int64_t N, int64_t K, int64_t D,
                                         float lo, float hi, T* __restrict__ d_x, T* __restrict__ d_logits,
                                         T* __restrict__ d_mu, T* __restrict__ d_log_sigma) {
  using A = acc_t<T>;
  extern __shared__ __align__(sizeof(double)) unsigned char shared_bytes[];
  const int64_t n = warp_frame();
  const int lane = threadIdx.x % kWarpSize;
  if (n >= N) return;
  A* r = reinterpret_cast<A*>(shared_bytes) + (threadIdx.x / kWarpSize) * K;  // this frame's [K]

  // Pass 1: component log-joints a_k (into r) and both logsumexps.
  RunningLogSumExp<A> run_a, run_logits;
  for (int64_t k = 0; k < K; ++k) {
    const A logit = to_acc(logits[n * K + k]);
    const int64_t params = (n * K + k) * D;
    const A a = logit + component_log_density(x + n * D, mu + params, log_sigma + params, D, A(lo), A(hi), lane);
    if (lane == 0) r[k] = a;
    run_a.add(a);
    run_logits.add(logit);
  }
  const A lse_a = run_a.finish(), lse_l = run_logits.finish(), g = to_acc(grad[n]);
  __syncwarp();
  // Responsibilities times the incoming gradient, in place (lanes over k); d_logit_k = r_k - w_k.
  for (int64_t k = lane; k < K; k += kWarpSize) {
    r[k] = g * exp_of(r[k] - lse_a);
    d_logits[n * K + k] = from_acc<T>(r[k] - g * exp_of(to_acc(logits[n * K + k]) - lse_l));
  }
  __syncwarp();
  // Pass 2: lanes over d, components inner (a warp reads 32 consecutive values of each [K, D] row).
  for (int64_t d = lane; d < D; d += kWarpSize) {
    const A xd = to_acc(x[n * D + d]);
    A dx = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = (n * K + k) * D + d;
      const A ls_raw = to_acc(log_sigma[i]);
      A z, inv_sigma, dmu, dls;
      gaussian_log_density(xd, to_acc(mu[i]), clamp_of(ls_raw, A(lo), A(hi)), z, inv_sigma);
      gaussian_term_grads(r[k], z, inv_sigma, ls_raw, A(lo), A(hi), dmu, dls);
      d_mu[i] = from_acc<T>(dmu);
      d_log_sigma[i] = from_acc<T>(dls);
      dx -= dmu;
    }
    d_x[n * D + d] = from_acc<T>(dx);
  }
}

// Calls f(std::integral_constant<int, G>{}) with G, the lanes per element: K rounded up to a power of
// two, at most 32.
template <typename F>
void dispatch_lanes_per_element(int64_t K, F&& f) {
  if (K <= 1) return f(std::integral_constant<int, 1>{});
  if (K <= 2) return f(std::integral_constant<int, 2>{});
  if (K <= 4) return f(std::integral_constant<int, 4>{});
  if (K <= 8) return f(std::integral_constant<int, 8>{});
  if (K <= 16) return f(std::integral_constant<int, 16>{});
  return f(std::integral_constant<int, 32>{});
}

unsigned blocks_for(int64_t threads, int64_t threads_per_block) {
  return static_cast<unsigned>((threads + threads_per_block - 1) / threads_per_block);
}

}  // namespace

void gmm_forward_cuda(DType dtype, const void* x, const void* logits, const void* mu, const void* log_sigma,
                      int64_t N, int64_t K, float lo, float hi, void* log_prob, void* lse_components, void* lse_logits,
                      cudaStream_t stream) {
  if (N == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_lanes_per_element(K, [&](auto lanes) {
      constexpr int G = decltype(lanes)::value;
      gmm_forward_kernel<T, G><<<blocks_for(N * G, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(logits), static_cast<const T*>(mu),
          static_cast<const T*>(log_sigma), N, K, lo, hi, static_cast<T*>(log_prob), static_cast<T*>(lse_components),
          static_cast<T*>(lse_logits));
    });
  });
}

void gmm_backward_cuda(DType dtype, const void* grad, const void* x, const void* logits, const void* mu,
                       const void* log_sigma, int64_t N, int64_t K, float lo, float hi, void* d_x,
                       void* d_logits, void* d_mu, void* d_log_sigma, cudaStream_t stream) {
  if (N == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_lanes_per_element(K, [&](auto lanes) {
      constexpr int G = decltype(lanes)::value;
      gmm_backward_kernel<T, G><<<blocks_for(N * G, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(
          static_cast<const T*>(grad), static_cast<const T*>(x), static_cast<const T*>(logits),
          static_cast<const T*>(mu), static_cast<const T*>(log_sigma), N, K, lo, hi, static_cast<T*>(d_x),
          static_cast<T*>(d_logits), static_cast<T*>(d_mu), static_cast<T*>(d_log_sigma));
    });
  });
}

void diag_gmm_forward_cuda(DType dtype, const void* x, const void* logits, const void* mu,
                           const void* log_sigma, int64_t N, int64_t K, int64_t D, float lo, float hi,
                           void* log_prob, void* lse_components, void* lse_logits, cudaStream_t stream) {
  if (N == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    diag_gmm_forward_kernel<T><<<blocks_for(N * kWarpSize, kThreadsPerBlock), kThreadsPerBlock, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(logits), static_cast<const T*>(mu),
        static_cast<const T*>(log_sigma), N, K, D, lo, hi, static_cast<T*>(log_prob), static_cast<T*>(lse_components),
          static_cast<T*>(lse_logits));
  });
}

void diag_gmm_backward_cuda(DType dtype, const void* grad, const void* x, const void* logits, const void* mu,
                            const void* log_sigma, int64_t N, int64_t K, int64_t D, float lo, float hi,
                            void* d_x, void* d_logits, void* d_mu, void* d_log_sigma, cudaStream_t stream) {
  if (N == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    // Up to 8 frames (warps) per block, fewer when their responsibilities would not fit in shared memory.
    const int64_t frames_per_block =
        std::min<int64_t>(kThreadsPerBlock / kWarpSize, kMaxSharedBytes / (K * int64_t(sizeof(A))));
    const size_t shared_bytes = frames_per_block * K * sizeof(A);
    diag_gmm_backward_kernel<T><<<blocks_for(N, frames_per_block), frames_per_block * kWarpSize, shared_bytes,
                                  stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(x), static_cast<const T*>(logits),
        static_cast<const T*>(mu), static_cast<const T*>(log_sigma), N, K, D, lo, hi, static_cast<T*>(d_x),
        static_cast<T*>(d_logits), static_cast<T*>(d_mu), static_cast<T*>(d_log_sigma));
  });
}

}  // namespace fastlv
