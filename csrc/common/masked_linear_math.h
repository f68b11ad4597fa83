// Epilogue math of the masked linear layer y = act(x @ (W ⊙ M)^T + b), shared by the CPU and CUDA
// kernels: the activation applied to the pre-activation, and its gradient computed from the output
// (relu'(z) = 1 where y = relu(z) > 0, else 0, as torch's relu backward).
#pragma once
#include "common/math.h"

namespace fastlv {

enum class Activation : int { kNone = 0, kRelu = 1 };

template <typename T>
FASTLV_HD T activate(T pre_activation, Activation act) {
  return act == Activation::kRelu ? max_of(pre_activation, T(0)) : pre_activation;
}

// v where x > 0, else 0 (also where x is NaN). Scalars here; Vectorized in csrc/cpu/masked_linear.cpp.
template <typename T>
FASTLV_HD T where_positive(T x, T v) {
  return x > T(0) ? v : T(0);
}

// Gradient w.r.t. the pre-activation, given the gradient w.r.t. the output and the output.
template <typename T>
FASTLV_HD T activation_grad(T grad, T output, Activation act) {
  return act == Activation::kRelu ? where_positive(output, grad) : grad;
}

}  // namespace fastlv
