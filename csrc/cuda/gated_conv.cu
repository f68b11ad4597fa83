// CUDA kernels of the gated dilated causal convolution (fastlv_C::gated_causal_conv1d and its backward).
// Straightforward shared-memory tiled GEMMs (kTile x kTile threads, one output element each) over the
// time-major rows described in gated_conv.cuh; the gate math is csrc/common/gated_conv_math.h, shared with
// the CPU kernels.
//   forward:  one kernel, filter and gate accumulated together over taps and C_in, then the gate epilogue.
//   backward: d_pre (elementwise), d_x (taps x 2C reduction), d_W (rows reduction, grid z = tap), d_bias.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/gated_conv_math.h"
#include "cuda/convert.cuh"
#include "cuda/gated_conv.cuh"

namespace fastlv {
namespace {

constexpr int kTile = 16;
constexpr int kThreadsPerBlock = 256;

// Block (blockIdx.x: rows, blockIdx.y: channels): out[r, c], pre[r, c] and pre[r, C + c].
template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                               const T* __restrict__ cond, bool cond_local, int64_t R, int64_t B, int64_t C_in,
                               int64_t C, int64_t k, int64_t dilation, T* __restrict__ out, T* __restrict__ pre) {
  using A = acc_t<T>;
  __shared__ A x_tile[kTile][kTile + 1], wf_tile[kTile][kTile + 1], wg_tile[kTile][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t r = int64_t(blockIdx.x) * kTile + ty, c = int64_t(blockIdx.y) * kTile + tx;
  const int64_t r_load = int64_t(blockIdx.x) * kTile + ty;  // this thread loads x row r_load, column tx
  const int64_t c_load = int64_t(blockIdx.y) * kTile + ty;  // and weight row c_load (+ C), column tx
  A acc_f = 0, acc_g = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t src = r_load - (k - 1 - j) * dilation * B;
    const T* w_tap = w + j * 2 * C * C_in;
    for (int64_t i0 = 0; i0 < C_in; i0 += kTile) {
      const int64_t i = i0 + tx;
      x_tile[ty][tx] = load_or_zero(x, src * C_in + i, r_load < R && src >= 0 && i < C_in);
      wf_tile[ty][tx] = load_or_zero(w_tap, c_load * C_in + i, c_load < C && i < C_in);
      wg_tile[ty][tx] = load_or_zero(w_tap, (C + c_load) * C_in + i, c_load < C && i < C_in);
      __syncthreads();
      for (int q = 0; q < kTile; ++q) {
        acc_f += x_tile[ty][q] * wf_tile[tx][q];
        acc_g += x_tile[ty][q] * wg_tile[tx][q];
      }
      __syncthreads();
    }
  }
  if (r >= R || c >= C) return;
  A f = acc_f + to_acc(bias[c]), g = acc_g + to_acc(bias[C + c]);
  if (cond != nullptr) {
    const T* cond_row = cond + (cond_local ? r : r % B) * 2 * C;
    f += to_acc(cond_row[c]);
    g += to_acc(cond_row[C + c]);
  }
  pre[r * 2 * C + c] = from_acc<T>(f);
  pre[r * 2 * C + C + c] = from_acc<T>(g);
  out[r * C + c] = from_acc<T>(gate_forward(f, g));
}

template <typename T>
__global__ void gate_backward_kernel(const T* __restrict__ grad, const T* __restrict__ pre, int64_t R, int64_t C,
                                     T* __restrict__ d_pre) {
  using A = acc_t<T>;
  for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < R * C; n += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = n / C, c = n % C;
    A d_f, d_g;
    gate_backward(to_acc(grad[n]), to_acc(pre[r * 2 * C + c]), to_acc(pre[r * 2 * C + C + c]), d_f, d_g);
    d_pre[r * 2 * C + c] = from_acc<T>(d_f);
    d_pre[r * 2 * C + C + c] = from_acc<T>(d_g);
  }
}

// d_x[r, i] = sum_j sum_o d_pre[r + s_j B, o] W_j[o, i] (rows r + s_j B < R).
template <typename T>
__global__ void input_grad_kernel(const T* __restrict__ d_pre, const T* __restrict__ w, int64_t R, int64_t B,
                                  int64_t C_in, int64_t C2, int64_t k, int64_t dilation, T* __restrict__ d_x) {
  using A = acc_t<T>;
  __shared__ A d_tile[kTile][kTile + 1], w_tile[kTile][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t r = int64_t(blockIdx.x) * kTile + ty, i = int64_t(blockIdx.y) * kTile + tx;
  A acc = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t dst = r + (k - 1 - j) * dilation * B;
    const T* w_tap = w + j * C2 * C_in;
    for (int64_t o0 = 0; o0 < C2; o0 += kTile) {
      d_tile[ty][tx] = load_or_zero(d_pre, dst * C2 + o0 + tx, r < R && dst < R && o0 + tx < C2);
      w_tile[ty][tx] = load_or_zero(w_tap, (o0 + ty) * C_in + i, o0 + ty < C2 && i < C_in);
      __syncthreads();
      for (int q = 0; q < kTile; ++q) acc += d_tile[ty][q] * w_tile[q][tx];
      __syncthreads();
    }
  }
  if (r < R && i < C_in) d_x[r * C_in + i] = from_acc<T>(acc);
}

// d_W_j[o, i] = sum_r d_pre[r, o] x[r - s_j B, i] (rows r - s_j B >= 0); blockIdx.z = j.
template <typename T>
__global__ void weight_grad_kernel(const T* __restrict__ d_pre, const T* __restrict__ x, int64_t R, int64_t B,
                                   int64_t C_in, int64_t C2, int64_t k, int64_t dilation, T* __restrict__ d_w) {
  using A = acc_t<T>;
  __shared__ A d_tile[kTile][kTile + 1], x_tile[kTile][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t j = blockIdx.z, shift = (k - 1 - j) * dilation * B;
  const int64_t o = int64_t(blockIdx.x) * kTile + ty, i = int64_t(blockIdx.y) * kTile + tx;
  const int64_t o_load = int64_t(blockIdx.x) * kTile + tx;  // d_tile[q][tx] = d_pre[r0 + q, o_load]
  A acc = 0;
  for (int64_t r0 = 0; r0 < R; r0 += kTile) {
    const int64_t r = r0 + ty;
    const bool row_ok = r < R && r >= shift;
    d_tile[ty][tx] = load_or_zero(d_pre, r * C2 + o_load, row_ok && o_load < C2);
    x_tile[ty][tx] = load_or_zero(x, (r - shift) * C_in + i, row_ok && i < C_in);
    __syncthreads();
    for (int q = 0; q < kTile; ++q) acc += d_tile[q][ty] * x_tile[q][tx];
    __syncthreads();
  }
  if (o < C2 && i < C_in) d_w[j * C2 * C_in + o * C_in + i] = from_acc<T>(acc);
}

// d_bias[o] = sum_r d_pre[r, o]: one thread per column (adjacent threads read adjacent columns).
template <typename T>
__global__ void bias_grad_kernel(const T* __restrict__ d_pre, int64_t R, int64_t C2, T* __restrict__ d_bias) {
  const int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= C2) return;
  acc_t<T> sum = 0;
  for (int64_t r = 0; r < R; ++r) sum += to_acc(d_pre[r * C2 + o]);
  d_bias[o] = from_acc<T>(sum);
}

unsigned tiles(int64_t n) { return static_cast<unsigned>((n + kTile - 1) / kTile); }

unsigned blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned>(blocks < 65535 ? blocks : 65535);  // the elementwise kernel loops past that
}

}  // namespace

void gated_conv_forward_cuda(DType dtype, const void* x_rows, const void* w_taps, const void* bias,
                             const void* cond_rows, bool cond_local, int64_t R, int64_t B, int64_t C_in,
                             int64_t C, int64_t k, int64_t dilation, void* out, void* pre, cudaStream_t stream) {
  if (R == 0 || C == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward_kernel<T><<<dim3(tiles(R), tiles(C)), dim3(kTile, kTile), 0, stream>>>(
        static_cast<const T*>(x_rows), static_cast<const T*>(w_taps), static_cast<const T*>(bias),
        static_cast<const T*>(cond_rows), cond_local, R, B, C_in, C, k, dilation, static_cast<T*>(out),
        static_cast<T*>(pre));
  });
}

void gated_conv_backward_cuda(DType dtype, const void* grad_rows, const void* pre, const void* x_rows,
                              const void* w_taps, int64_t R, int64_t B, int64_t C_in, int64_t C, int64_t k,
                              int64_t dilation, void* d_pre, void* d_x_rows, void* d_w_taps, void* d_bias,
                              cudaStream_t stream) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* d_pre_c = static_cast<const T*>(d_pre);
    if (R > 0 && C > 0) {
      gate_backward_kernel<T><<<blocks_for(R * C), kThreadsPerBlock, 0, stream>>>(
          static_cast<const T*>(grad_rows), static_cast<const T*>(pre), R, C, static_cast<T*>(d_pre));
    }
    if (C > 0) {
      bias_grad_kernel<T><<<blocks_for(2 * C), kThreadsPerBlock, 0, stream>>>(d_pre_c, R, 2 * C,
                                                                              static_cast<T*>(d_bias));
    }
    if (R > 0 && C_in > 0) {
      input_grad_kernel<T><<<dim3(tiles(R), tiles(C_in)), dim3(kTile, kTile), 0, stream>>>(
          d_pre_c, static_cast<const T*>(w_taps), R, B, C_in, 2 * C, k, dilation, static_cast<T*>(d_x_rows));
    }
    if (C > 0 && C_in > 0) {
      weight_grad_kernel<T><<<dim3(tiles(2 * C), tiles(C_in), static_cast<unsigned>(k)), dim3(kTile, kTile), 0,
                              stream>>>(d_pre_c, static_cast<const T*>(x_rows), R, B, C_in, 2 * C, k, dilation,
                                        static_cast<T*>(d_w_taps));
    }
  });
}

}  // namespace fastlv
