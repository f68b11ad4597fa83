// at::vec specializations of the math hooks of csrc/common/math.h, so the shared per-element formulas
// run 16 (AVX-512) or 8 (AVX2) floats at a time on the CPU.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include "common/math.h"

namespace fastlv {

using at::vec::Vectorized;

// GCC vector types as wide as one Vectorized<float> (16 lanes on AVX-512, else 8), for bit-level math on
// its lanes; vector casts between them keep the bits.
constexpr int kFloatLanes = Vectorized<float>::size();
typedef float FloatLanes __attribute__((vector_size(4 * kFloatLanes)));
typedef int32_t IntLanes __attribute__((vector_size(4 * kFloatLanes)));
typedef uint32_t UintLanes __attribute__((vector_size(4 * kFloatLanes)));

#if defined(CPU_CAPABILITY_AVX512)
inline FloatLanes lanes_of(Vectorized<float> v) { return (FloatLanes)__m512(v); }
inline Vectorized<float> vec_of(FloatLanes x) { return Vectorized<float>((__m512)x); }
#elif defined(CPU_CAPABILITY_AVX2)
inline FloatLanes lanes_of(Vectorized<float> v) { return (FloatLanes)__m256(v); }
inline Vectorized<float> vec_of(FloatLanes x) { return Vectorized<float>((__m256)x); }
#endif

// exp(x) = 2^n exp(r) for the integer-valued n = round(x / ln 2): r = x - n ln 2 in [-ln2/2, ln2/2]
// (Cody-Waite: ln 2 split in a part exact in n * ln2_hi and a correction), exp(r) by its degree-6 Taylor
// polynomial (error < r^7/7! = 1.2e-7 relative). The exp_of specializations below differ in how they
// round n and apply 2^n. (fmadd with a negated constant is the single-rounding fnmadd.)
inline Vectorized<float> exp_of_reduced(Vectorized<float> x, Vectorized<float> n) {
  using V = Vectorized<float>;
  const V r = at::vec::fmadd(n, V(-1.428606765330187e-06f), at::vec::fmadd(n, V(-0.693145751953125f), x));
  V p(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = at::vec::fmadd(p, r, V(c));
  return p;
}

#if defined(CPU_CAPABILITY_AVX512)
// 2^n applied by vscalefps: 13 instructions, ~2 ulp; the clamp maps -inf to 0 and +inf to inf, and NaN
// stays NaN (vmaxps/vminps return their second operand on NaN).
template <> inline Vectorized<float> exp_of(Vectorized<float> v) {
  const __m512 x = _mm512_min_ps(_mm512_set1_ps(89.f), _mm512_max_ps(_mm512_set1_ps(-104.f), v));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_ps(exp_of_reduced(x, n), n);
}
#elif defined(CPU_CAPABILITY_AVX2)
// 2^n built from the bits of t = x log2(e) + 1.5 * 2^23 + 127: t is rounded to an integer, so its low
// mantissa bits hold n + 127, which a left shift by 23 moves into the exponent field. 14 instructions
// (at::vec's exp_u20 and a NaN fix-up take 20), ~4 ulp. The clamp
// to [-88, 89] keeps n + 127 in [0, 255]: n = -127 gives 2^n = 0 (exp(-inf) = 0, flushing results
// below ~6e-39 to 0) and n = 128 gives inf (exp overflows from x = 88.38, 0.3 earlier than float
// does). NaN stays NaN (clamp operand order; its scale bits shift to 0 and NaN * 0 = NaN).
template <> inline Vectorized<float> exp_of(Vectorized<float> v) {
  const __m256 magic = _mm256_set1_ps(12583039.f);  // 1.5 * 2^23 + 127
  const __m256 x = _mm256_min_ps(_mm256_set1_ps(89.f), _mm256_max_ps(_mm256_set1_ps(-88.f), v));
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
  return _mm256_mul_ps(exp_of_reduced(x, n), scale);
}
#else
// exp_u20: polynomial exp accurate to ~20 ulp (2.4e-6 relative), 3x faster than Sleef's u10.
// exp_u20 does not keep NaN inputs NaN: blend them back.
template <> inline Vectorized<float> exp_of(Vectorized<float> v) {
  return Vectorized<float>::blendv(v.exp_u20(), v, v.isnan());
}
#endif
template <> inline Vectorized<double> exp_of(Vectorized<double> v) { return v.exp(); }
template <> inline Vectorized<double> log_of(Vectorized<double> v) { return v.log(); }
template <> inline Vectorized<float> sqrt_of(Vectorized<float> v) { return v.sqrt(); }
template <> inline Vectorized<double> sqrt_of(Vectorized<double> v) { return v.sqrt(); }

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// log(x) inline (at::vec's log() calls Sleef's logf out of line): x = 2^e m with m in [sqrt(1/2),
// sqrt(2)), log x = e ln 2 + log1p(f) with f = m - 1, log1p(f) = f - f^2/2 + f^3 P(f) with the degree-8 P
// of Cephes' logf, and ln 2 in two parts (e ln2_hi is exact). 0.8 ulp over the normal floats (in a float32
// emulation of these steps; the kernels' tests check it through Box-Muller and the GMM). Denormals
// are scaled by 2^23 first; log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, NaN stays NaN.
template <> inline Vectorized<float> log_of(Vectorized<float> v) {
  using V = Vectorized<float>;
  const FloatLanes x = lanes_of(v);
  const IntLanes denormal = x < 1.17549435e-38f;  // vector comparisons give -1 (true) or 0 lanes
  const IntLanes bits = (IntLanes)(denormal ? x * 8388608.f : x);
  const FloatLanes mantissa = (FloatLanes)((bits & 0x007fffff) | 0x3f800000);  // in [1, 2)
  const IntLanes halve = mantissa > 1.41421356f;
  const V f = vec_of((halve ? mantissa * 0.5f : mantissa) - 1.f), f2 = f * f;
  const V e = vec_of(__builtin_convertvector(((bits >> 23) & 0xff) - 127 - (denormal & 23) - halve, FloatLanes));
  V p(7.0376836292e-2f);
  for (const float c : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
                        -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f}) {
    p = at::vec::fmadd(p, f, V(c));
  }
  V r = at::vec::fmadd(e, V(-2.12194440e-4f), p * f * f2);  // e ln2_lo + f^3 P(f)
  r = f + at::vec::fmadd(f2, V(-0.5f), r);
  const FloatLanes result = lanes_of(at::vec::fmadd(e, V(0.693359375f), r));  // + e ln2_hi
  const FloatLanes inf = FloatLanes{} + __builtin_inff(), nan = FloatLanes{} + __builtin_nanf("");
  return vec_of(x == inf ? inf : x > 0.f ? result : x == 0.f ? -inf : nan);
}

// sin(pi v) and cos(pi v) inline (Sleef's sincos is an out-of-line call): v = n/2 + r with n = round(2v)
// and |r| <= 1/4 (exact for |v| < 2^22), sin and cos of x = pi r by their Taylor polynomials of degree 9
// and 10 (error < x^11/11! = 2e-9 at pi/4), then the quadrant n mod 4 swaps them (n odd) and flips their
// signs: sin(x + n pi/2) is -(..) when n & 2, cos(x + n pi/2) when (n + 1) & 2. ~1e-7 absolute error.
template <> inline void sincospi_of(Vectorized<float> v, Vectorized<float>& s, Vectorized<float>& c) {
  using V = Vectorized<float>;
  const V n = (v * V(2.f)).round();
  const V x = at::vec::fmadd(n, V(-0.5f), v) * V(kPi), x2 = x * x;
  V sin_x(1.f / 362880), cos_x(-1.f / 3628800);
  for (const float k : {-1.f / 5040, 1.f / 120, -1.f / 6, 1.f}) sin_x = at::vec::fmadd(sin_x, x2, V(k));
  for (const float k : {1.f / 40320, -1.f / 720, 1.f / 24, -0.5f, 1.f}) cos_x = at::vec::fmadd(cos_x, x2, V(k));
  sin_x = sin_x * x;
  const UintLanes quadrant = (UintLanes)__builtin_convertvector(lanes_of(n), IntLanes);
  const IntLanes odd = (IntLanes)(quadrant & 1u) != 0;
  const FloatLanes sin_r = lanes_of(sin_x), cos_r = lanes_of(cos_x);
  s = vec_of((FloatLanes)((UintLanes)(odd ? cos_r : sin_r) ^ ((quadrant & 2u) << 30)));
  c = vec_of((FloatLanes)((UintLanes)(odd ? sin_r : cos_r) ^ (((quadrant + 1u) & 2u) << 30)));
}
#else
template <> inline Vectorized<float> log_of(Vectorized<float> v) { return v.log(); }
template <> inline void sincospi_of(Vectorized<float> v, Vectorized<float>& s, Vectorized<float>& c) {
  const Vectorized<float> theta = v * Vectorized<float>(kPi);
  s = theta.sin();
  c = theta.cos();
}
#endif
template <> inline Vectorized<float> max_of(Vectorized<float> a, Vectorized<float> b) {
  return at::vec::maximum(a, b);
}
template <> inline Vectorized<double> max_of(Vectorized<double> a, Vectorized<double> b) {
  return at::vec::maximum(a, b);
}
template <> inline Vectorized<float> min_of(Vectorized<float> a, Vectorized<float> b) {
  return at::vec::minimum(a, b);
}
template <> inline Vectorized<double> min_of(Vectorized<double> a, Vectorized<double> b) {
  return at::vec::minimum(a, b);
}
// at::vec::clamp is min(hi, max(lo, v)) in the operand order that keeps a NaN v NaN (x86 min/max return
// their second operand when one is NaN): 2 instructions where maximum + minimum take 8.
template <> inline Vectorized<float> clamp_of(Vectorized<float> v, Vectorized<float> lo, Vectorized<float> hi) {
  return at::vec::clamp(v, lo, hi);
}
template <> inline Vectorized<double> clamp_of(Vectorized<double> v, Vectorized<double> lo, Vectorized<double> hi) {
  return at::vec::clamp(v, lo, hi);
}
// On AVX-512 the comparisons stay k-masks (3 instructions); at::vec's comparisons expand them to vectors.
template <> inline Vectorized<float> where_in_range(Vectorized<float> x, Vectorized<float> lo,
                                                    Vectorized<float> hi, Vectorized<float> v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(x, hi, _CMP_LE_OQ), v);
#else
  return (x >= lo) & (x <= hi) & v;  // comparisons give all-ones lanes where true
#endif
}
template <> inline Vectorized<double> where_in_range(Vectorized<double> x, Vectorized<double> lo,
                                                     Vectorized<double> hi, Vectorized<double> v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, lo, _CMP_GE_OQ) & _mm512_cmp_pd_mask(x, hi, _CMP_LE_OQ), v);
#else
  return (x >= lo) & (x <= hi) & v;
#endif
}

// at::vec's tanh calls Sleef (out of line, vectorized, 1 ulp).
template <> inline Vectorized<float> tanh_of(Vectorized<float> v) { return v.tanh(); }
template <> inline Vectorized<double> tanh_of(Vectorized<double> v) { return v.tanh(); }
template <> inline Vectorized<float> if_positive(Vectorized<float> x, Vectorized<float> a, Vectorized<float> b) {
  return Vectorized<float>::blendv(b, a, x > Vectorized<float>(0));
}
template <> inline Vectorized<double> if_positive(Vectorized<double> x, Vectorized<double> a,
                                                  Vectorized<double> b) {
  return Vectorized<double>::blendv(b, a, x > Vectorized<double>(0));
}

}  // namespace fastlv
