// CUDA kernels of the masked linear layer y = act(x @ (W ⊙ M)^T + b) (fastlv_C::masked_linear and its
// backward), the layer of MADE (Germain et al. 2015). Straightforward shared-memory tiled GEMMs (kTile x kTile
// threads, one output element each) that skip the kTile x kTile weight tiles the mask removes entirely (the
// `occupied` table of masked_linear.cuh; a MADE mask in degree order is lower-triangular, about half of its
// tiles are empty). W ⊙ M is a masked read of W: removed weights are never read (inf / nan there is harmless).
// The epilogue math (activation and its gradient) is csrc/common/masked_linear_math.h, shared with the CPU.
//   forward: per [rows, outputs] tile, sum over the kept input tiles, then bias + activation.
//   grad_x:  per [rows, inputs] tile, gz @ (W ⊙ M) over the kept output tiles, gz = grad ⊙ act'(output).
//   grad_W:  per weight tile, gz^T @ x over the rows if the tile is kept, 0 where the mask is 0.
//   grad_b:  column sums of gz.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/masked_linear_math.h"
#include "cuda/convert.cuh"
#include "cuda/masked_linear.cuh"

namespace fastlv {
namespace {

constexpr int kTile = static_cast<int>(kMaskedLinearTile);
constexpr int kThreadsPerBlock = 256;

// W[i] where the mask keeps it, else 0 without reading W.
template <typename T>
__device__ __forceinline__ acc_t<T> kept_weight(const T* w, const uint8_t* keep, int64_t i, bool ok) {
  return (ok && keep[i] != 0) ? to_acc(w[i]) : acc_t<T>(0);
}

// gz[i] = grad[i] * act'(pre-activation), relu' read from the output (null without an activation).
template <typename T>
__device__ __forceinline__ acc_t<T> pre_activation_grad(const T* grad, const T* output, int64_t i, bool ok,
                                                        Activation act) {
  using A = acc_t<T>;
  if (!ok) return A(0);
  return activation_grad(to_acc(grad[i]), output != nullptr ? to_acc(output[i]) : A(0), act);
}

// Block (blockIdx.x: rows, blockIdx.y: outputs); thread (ty, tx) computes y[r, o].
template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const uint8_t* __restrict__ keep,
                               const uint8_t* __restrict__ occupied, int64_t in_tiles, const T* __restrict__ bias,
                               Activation act, int64_t N, int64_t in, int64_t out, T* __restrict__ y) {
  using A = acc_t<T>;
  __shared__ A x_tile[kTile][kTile + 1], w_tile[kTile][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t r = int64_t(blockIdx.x) * kTile + ty, o = int64_t(blockIdx.y) * kTile + tx;
  const int64_t o_load = int64_t(blockIdx.y) * kTile + ty;  // this thread loads weight row o_load, column tx
  A acc = 0;
  for (int64_t t = 0; t * kTile < in; ++t) {
    if (occupied[blockIdx.y * in_tiles + t] == 0) continue;  // the same for the whole block
    const int64_t i = t * kTile + tx;
    x_tile[ty][tx] = load_or_zero(x, r * in + i, r < N && i < in);
    w_tile[ty][tx] = kept_weight(w, keep, o_load * in + i, o_load < out && i < in);
    __syncthreads();
    for (int q = 0; q < kTile; ++q) acc += x_tile[ty][q] * w_tile[tx][q];
    __syncthreads();
  }
  if (r >= N || o >= out) return;
  if (bias != nullptr) acc += to_acc(bias[o]);
  y[r * out + o] = from_acc<T>(activate(acc, act));
}

// Block (blockIdx.x: rows, blockIdx.y: inputs); grad_x[r, i] = sum_o gz[r, o] (W ⊙ M)[o, i].
template <typename T>
__global__ void input_grad_kernel(const T* __restrict__ grad, const T* __restrict__ output, const T* __restrict__ w,
                                  const uint8_t* __restrict__ keep, const uint8_t* __restrict__ occupied,
                                  int64_t in_tiles, Activation act, int64_t N, int64_t in, int64_t out,
                                  T* __restrict__ grad_x) {
  using A = acc_t<T>;
  __shared__ A g_tile[kTile][kTile + 1], w_tile[kTile][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t r = int64_t(blockIdx.x) * kTile + ty, i = int64_t(blockIdx.y) * kTile + tx;
  A acc = 0;
  for (int64_t t = 0; t * kTile < out; ++t) {
    if (occupied[t * in_tiles + blockIdx.y] == 0) continue;
    const int64_t o0 = t * kTile;
    g_tile[ty][tx] = pre_activation_grad(grad, output, r * out + o0 + tx, r < N && o0 + tx < out, act);
    w_tile[ty][tx] = kept_weight(w, keep, (o0 + ty) * in + i, o0 + ty < out && i < in);
    __syncthreads();
    for (int q = 0; q < kTile; ++q) acc += g_tile[ty][q] * w_tile[q][tx];
    __syncthreads();
  }
  if (r < N && i < in) grad_x[r * in + i] = from_acc<T>(acc);
}

// Block (blockIdx.x: outputs, blockIdx.y: inputs); grad_w[o, i] = sum_r gz[r, o] x[r, i] where kept, else 0.
template <typename T>
__global__ void weight_grad_kernel(const T* __restrict__ grad, const T* __restrict__ output, const T* __restrict__ x,
                                   const uint8_t* __restrict__ keep, const uint8_t* __restrict__ occupied,
                                   int64_t in_tiles, Activation act, int64_t N, int64_t in, int64_t out,
                                   T* __restrict__ grad_w) {
  using A = acc_t<T>;
  __shared__ A g_tile[kTile][kTile + 1], x_tile[kTile][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t o = int64_t(blockIdx.x) * kTile + ty, i = int64_t(blockIdx.y) * kTile + tx;
  const int64_t o_load = int64_t(blockIdx.x) * kTile + tx;  // g_tile[q][tx] = gz[r0 + q, o_load]
  A acc = 0;
  if (occupied[blockIdx.x * in_tiles + blockIdx.y] != 0) {  // empty tiles: grad_w is 0 there
    for (int64_t r0 = 0; r0 < N; r0 += kTile) {
      const int64_t r = r0 + ty;
      g_tile[ty][tx] = pre_activation_grad(grad, output, r * out + o_load, r < N && o_load < out, act);
      x_tile[ty][tx] = load_or_zero(x, r * in + i, r < N && i < in);
      __syncthreads();
      for (int q = 0; q < kTile; ++q) acc += g_tile[q][ty] * x_tile[q][tx];
      __syncthreads();
    }
  }
  if (o < out && i < in) grad_w[o * in + i] = keep[o * in + i] != 0 ? from_acc<T>(acc) : from_acc<T>(A(0));
}

// grad_b[o] = sum_r gz[r, o]: one thread per column (adjacent threads read adjacent columns).
template <typename T>
__global__ void bias_grad_kernel(const T* __restrict__ grad, const T* __restrict__ output, Activation act, int64_t N,
                                 int64_t out, T* __restrict__ grad_b) {
  const int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= out) return;
  acc_t<T> sum = 0;
  for (int64_t r = 0; r < N; ++r) sum += pre_activation_grad(grad, output, r * out + o, true, act);
  grad_b[o] = from_acc<T>(sum);
}

unsigned tiles(int64_t n) { return static_cast<unsigned>((n + kTile - 1) / kTile); }

}  // namespace

void masked_linear_forward_cuda(DType dtype, const void* x, const void* weight, const uint8_t* keep,
                                const uint8_t* occupied, int64_t in_tiles, const void* bias, Activation act,
                                int64_t N, int64_t in, int64_t out, void* y, cudaStream_t stream) {
  if (N == 0 || out == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward_kernel<T><<<dim3(tiles(N), tiles(out)), dim3(kTile, kTile), 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(weight), keep, occupied, in_tiles,
        static_cast<const T*>(bias), act, N, in, out, static_cast<T*>(y));
  });
}

void masked_linear_backward_cuda(DType dtype, const void* grad, const void* output, const void* x,
                                 const void* weight, const uint8_t* keep, const uint8_t* occupied, int64_t in_tiles,
                                 Activation act, int64_t N, int64_t in, int64_t out, void* grad_x, void* grad_w,
                                 void* grad_b, cudaStream_t stream) {
  if (N == 0 || out == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *g = static_cast<const T*>(grad), *y = static_cast<const T*>(output);
    bias_grad_kernel<T><<<static_cast<unsigned>((out + kThreadsPerBlock - 1) / kThreadsPerBlock), kThreadsPerBlock,
                          0, stream>>>(g, y, act, N, out, static_cast<T*>(grad_b));
    if (in == 0) return;
    input_grad_kernel<T><<<dim3(tiles(N), tiles(in)), dim3(kTile, kTile), 0, stream>>>(
        g, y, static_cast<const T*>(weight), keep, occupied, in_tiles, act, N, in, out, static_cast<T*>(grad_x));
    weight_grad_kernel<T><<<dim3(tiles(out), tiles(in)), dim3(kTile, kTile), 0, stream>>>(
        g, y, static_cast<const T*>(x), keep, occupied, in_tiles, act, N, in, out, static_cast<T*>(grad_w));
  });
}

}  // namespace fastlv
