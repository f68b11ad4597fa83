// Per-element formulas of the stochastic LSTM loop (csrc/cpu/stochastic_lstm.cpp), over T = float,
// double or at::vec::Vectorized<float|double> (the hooks of common/math.h and cpu/vec_math.h). Each
// matches the PyTorch op sequence of fastlv.nn.models.common.StochasticLSTM, gradients included.
#pragma once
#include "common/math.h"

namespace fastlv {

constexpr double kMlpSlope = 1.0 / 3.0;  // leaky_relu slope of the prior/posterior MLPs
constexpr double kMlpBound = 3.0;        // their hidden units are clamped to [-3, 3]

template <typename T>
FASTLV_HD T sigmoid_of(T x) {
  return T(1) / (T(1) + exp_of(T(0) - x));
}

// clamp(leaky_relu(x, 1/3), -3, 3); max(x, x/3) is leaky_relu for a slope below 1.
template <typename T>
FASTLV_HD T mlp_activation(T x) {
  return clamp_of(max_of(x, x * T(kMlpSlope)), T(-kMlpBound), T(kMlpBound));
}

// Its gradient: 0 outside the clamp (inclusive bounds, as torch.clamp), else the leaky_relu slope
// (1 for x > 0, 1/3 otherwise, as torch's leaky_relu backward).
template <typename T>
FASTLV_HD T mlp_activation_grad(T x, T grad) {
  const T inner = if_positive(x, grad, grad * T(kMlpSlope));
  return where_in_range(max_of(x, x * T(kMlpSlope)), T(-kMlpBound), T(kMlpBound), inner);
}

// LSTM cell in PyTorch's gate order (i, f, g, o): c = sigmoid(f) c_prev + sigmoid(i) tanh(g),
// h = sigmoid(o) tanh(c).
template <typename T>
FASTLV_HD void lstm_cell(T gi, T gf, T gg, T go, T c_prev, T& c, T& h) {
  c = sigmoid_of(gf) * c_prev + sigmoid_of(gi) * tanh_of(gg);
  h = sigmoid_of(go) * tanh_of(c);
}

// Its backward from the pre-activations (the gates are recomputed): dh and dc are the gradients
// w.r.t. h and c from the later steps; returns the pre-activation gradients and d c_prev.
template <typename T>
FASTLV_HD void lstm_cell_grads(T gi, T gf, T gg, T go, T c_prev, T c, T dh, T dc, T& dgi, T& dgf, T& dgg,
                               T& dgo, T& dc_prev) {
  const T i = sigmoid_of(gi), f = sigmoid_of(gf), g = tanh_of(gg), o = sigmoid_of(go), tc = tanh_of(c);
  dgo = dh * tc * o * (T(1) - o);
  dc = dc + dh * o * (T(1) - tc * tc);
  dgi = dc * g * i * (T(1) - i);
  dgg = dc * i * (T(1) - g * g);
  dgf = dc * c_prev * f * (T(1) - f);
  dc_prev = dc * f;
}

}  // namespace fastlv
