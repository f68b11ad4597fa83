// Scalar/vector math hooks shared by the CPU (at::vec) and CUDA kernels.
// The per-element formulas in csrc/common/*_math.h are templates over T = float, double (CPU scalar
// tails, CUDA) or at::vec::Vectorized<float|double> (CPU); the CPU kernels specialize these hooks for
// the vector types in csrc/cpu/vec_math.h. No torch headers here: nvcc compiles this file too.
#pragma once
#include <math.h>

#if defined(__CUDACC__)
#define FASTLV_HD __host__ __device__ __forceinline__
#else
#define FASTLV_HD inline
#endif

namespace fastlv {

constexpr double kHalfLog2Pi = 0.91893853320467274178;  // 0.5 * log(2 * pi)
constexpr float kPi = 3.14159265358979323846f;

template <typename T> FASTLV_HD T exp_of(T v);
template <typename T> FASTLV_HD T log_of(T v);
template <typename T> FASTLV_HD T sqrt_of(T v);
// s = sin(pi v), c = cos(pi v), with one range reduction (the angle in half turns: exact reduction).
template <typename T> FASTLV_HD void sincospi_of(T v, T& s, T& c);
template <typename T> FASTLV_HD T max_of(T a, T b);
template <typename T> FASTLV_HD T min_of(T a, T b);
// v where lo <= x <= hi, else 0 (gradient of a clamp).
template <typename T> FASTLV_HD T where_in_range(T x, T lo, T hi, T v);
template <typename T> FASTLV_HD T tanh_of(T v);
// a where x > 0, else b (also where x is NaN).
template <typename T> FASTLV_HD T if_positive(T x, T a, T b);

template <> FASTLV_HD float exp_of<float>(float v) { return expf(v); }
template <> FASTLV_HD double exp_of<double>(double v) { return exp(v); }
template <> FASTLV_HD float log_of<float>(float v) { return logf(v); }
template <> FASTLV_HD double log_of<double>(double v) { return log(v); }
template <> FASTLV_HD float sqrt_of<float>(float v) { return sqrtf(v); }
template <> FASTLV_HD double sqrt_of<double>(double v) { return sqrt(v); }
template <> FASTLV_HD void sincospi_of<float>(float v, float& s, float& c) {
#if defined(__CUDA_ARCH__)
  sincospif(v, &s, &c);
#else
  s = sinf(kPi * v);
  c = cosf(kPi * v);
#endif
}
// max_of / min_of propagate NaN (as at::vec::maximum and torch.maximum do): a NaN input must not be
// clamped into range or floored by free bits.
template <> FASTLV_HD float max_of<float>(float a, float b) { return (a > b || a != a) ? a : b; }
template <> FASTLV_HD double max_of<double>(double a, double b) { return (a > b || a != a) ? a : b; }
template <> FASTLV_HD float min_of<float>(float a, float b) { return (a < b || a != a) ? a : b; }
template <> FASTLV_HD double min_of<double>(double a, double b) { return (a < b || a != a) ? a : b; }
template <> FASTLV_HD float where_in_range<float>(float x, float lo, float hi, float v) {
  return (x >= lo && x <= hi) ? v : 0.0f;
}
template <> FASTLV_HD double where_in_range<double>(double x, double lo, double hi, double v) {
  return (x >= lo && x <= hi) ? v : 0.0;
}

template <> FASTLV_HD float tanh_of<float>(float v) { return tanhf(v); }
template <> FASTLV_HD double tanh_of<double>(double v) { return tanh(v); }
template <> FASTLV_HD float if_positive<float>(float x, float a, float b) { return x > 0.0f ? a : b; }
template <> FASTLV_HD double if_positive<double>(double x, double a, double b) { return x > 0.0 ? a : b; }
template <typename T> FASTLV_HD T clamp_of(T v, T lo, T hi) { return min_of(max_of(v, lo), hi); }

}  // namespace fastlv
