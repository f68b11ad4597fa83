// Per-element math of the gated activation unit of WaveNet / STCN (STCN Sec. 2.1; van den Oord et al.
// 2016), shared by the CPU (at::vec) and CUDA kernels of fastlv_C::gated_causal_conv1d.
//
//   out = tanh(f) * sigmoid(g),  f, g = filter and gate pre-activations (conv + bias + conditioning).
// With t = tanh(f), s = sigmoid(g) and the incoming gradient go:
//   d f = go * s * (1 - t^2),  d g = go * t * s * (1 - s).
// tanh is written as 2 sigmoid(2 f) - 1 so that only the exp_of hook of common/math.h is needed; both
// saturate correctly (exp overflow to +inf gives sigmoid = 0).
#pragma once
#include "common/math.h"

namespace fastlv {

template <typename T>
FASTLV_HD T sigmoid_of(T v) {
  return T(1) / (T(1) + exp_of(T(0) - v));
}

template <typename T>
FASTLV_HD T tanh_of_sigmoid(T v) {
  return T(2) * sigmoid_of(T(2) * v) - T(1);
}

template <typename T>
FASTLV_HD T gate_forward(T f, T g) {
  return tanh_of_sigmoid(f) * sigmoid_of(g);
}

template <typename T>
FASTLV_HD void gate_backward(T grad, T f, T g, T& d_f, T& d_g) {
  const T t = tanh_of_sigmoid(f), s = sigmoid_of(g), gs = grad * s;
  d_f = gs * (T(1) - t * t);
  d_g = gs * t * (T(1) - s);
}

}  // namespace fastlv
