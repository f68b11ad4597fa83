// Counter-based standard-normal generator shared by every kernel (CPU, CUDA; Triton and the PyTorch
// reference implement the same definition), so all backends draw the same eps for the same seed.
//
// Bits: Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), the
// generator of cuRAND and of Triton's tl.randint4x: key = (seed & 0xffffffff, seed >> 32), counter =
// (c & 0xffffffff, c >> 32, 0, 0); one call gives 4 uint32 outputs x0..x3.
// Layout: normal i of a stream belongs to block b = i / 64 of 16 counters. Within a block,
// i = 64 b + 16 j + l is output j of counter c = 16 b + l, so 16 consecutive normals come from one
// output of 16 consecutive counters (one vector of Philox lanes on the CPU, contiguous stores).
// Normals: Box-Muller on the pairs (x0, x1) -> j = 0, 1 and (x2, x3) -> j = 2, 3:
//   u = (2 (x >> 9) + 1) 2^-24 in (0, 1)   (23 bits, exact in fp32),
//   r = sqrt(-2 log u_first),  theta = pi (2 u_second - 1) in (-pi, pi),
//   n_even = r cos(theta),  n_odd = r sin(theta).
// |n| <= sqrt(48 log 2) = 5.77 (the tails beyond have probability 8e-9). Backends agree up to the
// rounding of their log/sqrt/sin/cos (~1e-6 relative).
#pragma once
#include <stdint.h>

#include "common/math.h"

namespace fastlv {

constexpr int64_t kNormalsPerBlock = 64;   // normals per block of the layout above
constexpr int64_t kCountersPerBlock = 16;  // Philox counters per block
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // key increments (Weyl)

// High and low 32 bits of the 64-bit product a * b, per lane. The CPU kernel specializes it for its
// vector of lanes.
template <typename U> FASTLV_HD void mul_hi_lo(U a, uint32_t b, U& hi, U& lo);
template <> FASTLV_HD void mul_hi_lo<uint32_t>(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t product = uint64_t(a) * b;
  hi = uint32_t(product >> 32);
  lo = uint32_t(product);
#endif
}

// Philox4x32-10 of counter c (c0..c3 in place) under key (k0, k1). U is uint32_t, or a vector of
// uint32 lanes supporting ^ with a uint32_t, and the hook mul_hi_lo.
template <typename U>
FASTLV_HD void philox4x32_10(U& c0, U& c1, U& c2, U& c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    U hi0, lo0, hi1, lo1;
    mul_hi_lo(c0, kPhiloxM0, hi0, lo0);
    mul_hi_lo(c2, kPhiloxM1, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// Uniform in (0, 1) from 23 random bits: (2 (x >> 9) + 1) 2^-24, exact in fp32.
FASTLV_HD float uniform_from_bits(uint32_t x) { return float(int32_t(2 * (x >> 9) + 1)) * 5.9604644775390625e-8f; }

// Box-Muller: two standard normals from two uniforms in (0, 1).
template <typename T>
FASTLV_HD void box_muller(T u_radius, T u_angle, T& n_cos, T& n_sin) {
  const T r = sqrt_of(T(-2.0f) * log_of(u_radius));
  T sin_theta, cos_theta;  // theta = pi (2 u_angle - 1)
  sincospi_of(T(2.0f) * u_angle - T(1.0f), sin_theta, cos_theta);
  n_cos = r * cos_theta;
  n_sin = r * sin_theta;
}

// Normal number `index` of the stream of `seed` (one element; the CUDA kernels). Computes the whole
// Philox call and keeps one of its four normals.
FASTLV_HD float standard_normal(int64_t seed, int64_t index) {
  const int64_t block = index / kNormalsPerBlock, within = index % kNormalsPerBlock;
  const int64_t j = within / kCountersPerBlock;
  const uint64_t counter = uint64_t(block * kCountersPerBlock + within % kCountersPerBlock);
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  philox4x32_10(c0, c1, c2, c3, uint32_t(uint64_t(seed)), uint32_t(uint64_t(seed) >> 32));
  float n_cos, n_sin;
  box_muller(uniform_from_bits(j < 2 ? c0 : c2), uniform_from_bits(j < 2 ? c1 : c3), n_cos, n_sin);
  return (j % 2 == 0) ? n_cos : n_sin;
}

}  // namespace fastlv
