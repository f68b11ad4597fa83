// Launchers of the CUDA masked linear layer y = act(x @ (W ⊙ M)^T + b) (csrc/cuda/masked_linear.cu), called
// by csrc/cuda/masked_linear_torch.cpp. No torch headers here.
//
// Buffers, all contiguous, on the current device, of element type `dtype` (math in fp32, fp64 for fp64):
// x / grad_x [N, in], weight / grad_w [out, in], bias / grad_b [out] (bias may be null), y / grad / output
// [N, out] (output: the forward's y, read by the relu backward; null for no activation). keep [out, in] is 1
// where the mask keeps the weight, 0 elsewhere; occupied [out_tiles, in_tiles] (in_tiles >= 1) is 1 where the
// kMaskedLinearTile x kMaskedLinearTile weight tile holds a kept entry: the kernels skip the other tiles.
// Each launcher enqueues its kernels on `stream` and returns at once (check cudaGetLastError() after).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"
#include "common/masked_linear_math.h"

namespace fastlv {

constexpr int64_t kMaskedLinearTile = 16;

// y = act(x @ (W ⊙ M)^T + b); N, out > 0.
void masked_linear_forward_cuda(DType dtype, const void* x, const void* weight, const uint8_t* keep,
                                const uint8_t* occupied, int64_t in_tiles, const void* bias, Activation act,
                                int64_t N, int64_t in, int64_t out, void* y, cudaStream_t stream);

// gz = grad ⊙ act'(output); grad_x = gz @ (W ⊙ M), grad_w = (gz^T @ x) ⊙ M (exactly 0 outside the mask),
// grad_b = sum of gz over the rows; N, out > 0.
void masked_linear_backward_cuda(DType dtype, const void* grad, const void* output, const void* x,
                                 const void* weight, const uint8_t* keep, const uint8_t* occupied, int64_t in_tiles,
                                 Activation act, int64_t N, int64_t in, int64_t out, void* grad_x, void* grad_w,
                                 void* grad_b, cudaStream_t stream);

}  // namespace fastlv
