// Launchers of the CUDA gated dilated causal convolution (csrc/cuda/gated_conv.cu), called by
// csrc/cuda/gated_conv_torch.cpp. No torch headers here.
//
// Time-major buffers, all contiguous, on the current device, of element type `dtype` (math in fp32, fp64
// for fp64): x_rows [R = T * B, C_in], w_taps [k, 2C, C_in] (tap j = weight[:, :, j]), bias [2C],
// cond_rows [R, 2C] (local), [B, 2C] (global) or null, pre / d_pre [R, 2C], out / grad_rows [R, C].
// Tap j of output row r reads input row r - (k - 1 - j) * dilation * B (rows < 0: the causal zero padding).
// Each launcher enqueues its kernels on `stream` and returns at once (check cudaGetLastError() after).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace fastlv {

// pre = sum_j x[r - s_j B] @ W_j^T + bias + cond; out = tanh(pre_f) * sigmoid(pre_g).
void gated_conv_forward_cuda(DType dtype, const void* x_rows, const void* w_taps, const void* bias,
                             const void* cond_rows, bool cond_local, int64_t R, int64_t B, int64_t C_in,
                             int64_t C, int64_t k, int64_t dilation, void* out, void* pre, cudaStream_t stream);

// d_pre from grad_rows and pre; d_x_rows [R, C_in], d_w_taps [k, 2C, C_in], d_bias [2C].
void gated_conv_backward_cuda(DType dtype, const void* grad_rows, const void* pre, const void* x_rows,
                              const void* w_taps, int64_t R, int64_t B, int64_t C_in, int64_t C, int64_t k,
                              int64_t dilation, void* d_pre, void* d_x_rows, void* d_w_taps, void* d_bias,
                              cudaStream_t stream);

}  // namespace fastlv
