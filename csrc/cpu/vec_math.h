// at::vec specializations of the math hooks of csrc/common/math.h, so the shared per-element formulas
// run 16 (AVX-512) or 8 (AVX2) floats at a time on the CPU.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include "common/math.h"

namespace fastlv {

using at::vec::Vectorized;

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
template <> inline Vectorized<float> log_of(Vectorized<float> v) { return v.log(); }
template <> inline Vectorized<double> log_of(Vectorized<double> v) { return v.log(); }
template <> inline Vectorized<float> sqrt_of(Vectorized<float> v) { return v.sqrt(); }
template <> inline Vectorized<double> sqrt_of(Vectorized<double> v) { return v.sqrt(); }
// Sleef's sincos (the 3.5-ulp functions at::vec's sin() and cos() use) shares the range reduction.
template <> inline void sincos_of(Vectorized<float> v, Vectorized<float>& s, Vectorized<float>& c) {
#if defined(CPU_CAPABILITY_AVX512)
  const Sleef___m512_2 both = Sleef_sincosf16_u35(v);
#elif defined(CPU_CAPABILITY_AVX2)
  const Sleef___m256_2 both = Sleef_sincosf8_u35(v);
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  s = both.x;
  c = both.y;
#else
  s = v.sin();
  c = v.cos();
#endif
}
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

}  // namespace fastlv
