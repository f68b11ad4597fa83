// CPU kernels of the diagonal-Gaussian latent ops (fastlv_C::gaussian_sample_kl, gaussian_log_prob,
// precision_weighted and their backward ops).
//
// Inputs are [N, D] rows (D = the latent dimension). One task takes a range of rows; a row is one
// vectorized pass over D (the per-dimension math of csrc/common/gaussian_math.h, at::vec lanes), so
// every input is read once and the KL row sum stays in a register. The backward recomputes the step
// from the inputs: nothing but the outputs exists after the forward.
// Noise: when eps is not given, the row's normals are generated into a per-task buffer (L1) just before
// the pass, with the counter-based generator of csrc/common/philox.h: Philox runs on uint32 lanes of
// one native vector (a GCC vector; vpmuludq products on x86), Box-Muller on at::vec. The backward
// kernel regenerates the same normals from the seed when it is given no eps; the C++ autograd below
// instead keeps the eps the forward draws (fastlv/ops/gaussian.py, "Noise").
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/gaussian_checks.h"
#include "common/gaussian_math.h"
#include "common/philox.h"
#include "cpu/buffers.h"
#include "cpu/kernel_op.h"
#include "cpu/vec_math.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte GCC vectors are passed only between inlined functions

namespace fastlv {

// Philox lanes (one per counter of a block): one native vector (UintLanes of cpu/vec_math.h), 16 lanes
// on AVX-512, else 8 (GCC splits wider vectors through the stack on AVX2, 2x slower).
using PhiloxLanes = UintLanes;
constexpr int kPhiloxLanes = kFloatLanes;
typedef uint64_t WideLanes __attribute__((vector_size(4 * kPhiloxLanes)));

// mul_hi_lo on the lanes. A 64-bit product per pair of lanes: even lanes multiply as the low halves of
// 64-bit lanes, odd lanes as the high halves, then the halves of the products interleave back. On x86
// that is vpmuludq (one uop; GCC would emit 3-uop 64-bit multiplies for the generic code below); the
// blend masks select the odd 32-bit lanes.
template <>
inline void mul_hi_lo<PhiloxLanes>(PhiloxLanes a, uint32_t b, PhiloxLanes& hi, PhiloxLanes& lo) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i va = (__m512i)a, vb = _mm512_set1_epi32(int32_t(b));
  const __m512i even = _mm512_mul_epu32(va, vb), odd = _mm512_mul_epu32(_mm512_srli_epi64(va, 32), vb);
  hi = (PhiloxLanes)_mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = (PhiloxLanes)_mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i va = (__m256i)a, vb = _mm256_set1_epi32(int32_t(b));
  const __m256i even = _mm256_mul_epu32(va, vb), odd = _mm256_mul_epu32(_mm256_srli_epi64(va, 32), vb);
  hi = (PhiloxLanes)_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = (PhiloxLanes)_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
#else
  const WideLanes wide = (WideLanes)a, low_half = WideLanes{} + 0xffffffffull;  // vector casts keep the bits
  const WideLanes even = (wide & low_half) * uint64_t(b), odd = (wide >> 32) * uint64_t(b);
  hi = (PhiloxLanes)((even >> 32) | (odd & ~low_half));
  lo = a * b;
#endif
}

namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

PhiloxLanes lane_index() {
  PhiloxLanes index = {};
  for (int l = 0; l < kPhiloxLanes; ++l) index[l] = l;
  return index;
}

// uniform_from_bits of csrc/common/philox.h on the lanes.
void store_uniforms(PhiloxLanes bits, float* out) {
  const PhiloxLanes k = (bits >> 9) * 2u + 1u;  // < 2^24: exact as int32 and as float
  const FloatLanes u = __builtin_convertvector((IntLanes)k, FloatLanes) *
                       5.9604644775390625e-8f;
  std::memcpy(out, &u, sizeof(u));
}

// The 64 normals of block `block` of the stream of `key` (layout in csrc/common/philox.h).
void normal_block(uint32_t k0, uint32_t k1, int64_t block, float* out) {
  using V = Vec<float>;
  static_assert(kCountersPerBlock % kPhiloxLanes == 0);
  const PhiloxLanes lane = lane_index();
  alignas(64) float u[4][kCountersPerBlock];  // uniforms of output j of the block's counters
  const uint64_t first = uint64_t(block) * kCountersPerBlock;
  for (int l0 = 0; l0 < kCountersPerBlock; l0 += kPhiloxLanes) {
    // first is a multiple of 16: the block's counters share their high word
    PhiloxLanes c0 = lane + uint32_t(first + l0), c1 = PhiloxLanes{} + uint32_t(first >> 32), c2 = {}, c3 = {};
    philox4x32_10(c0, c1, c2, c3, k0, k1);
    store_uniforms(c0, u[0] + l0);
    store_uniforms(c1, u[1] + l0);
    store_uniforms(c2, u[2] + l0);
    store_uniforms(c3, u[3] + l0);
  }
  for (int l = 0; l < kCountersPerBlock; l += V::size()) {
    V n_cos, n_sin;
    box_muller(V::loadu(u[0] + l), V::loadu(u[1] + l), n_cos, n_sin);  // j = 0, 1
    n_cos.store(out + l);
    n_sin.store(out + kCountersPerBlock + l);
    box_muller(V::loadu(u[2] + l), V::loadu(u[3] + l), n_cos, n_sin);  // j = 2, 3
    n_cos.store(out + 2 * kCountersPerBlock + l);
    n_sin.store(out + 3 * kCountersPerBlock + l);
  }
}

// Normals [start, start + count) of the stream of `seed` into out (whole blocks, cut at the ends).
void fill_normals(int64_t seed, int64_t start, int64_t count, float* out) {
  const uint32_t k0 = uint32_t(uint64_t(seed)), k1 = uint32_t(uint64_t(seed) >> 32);
  alignas(64) float block_normals[kNormalsPerBlock];
  for (int64_t i = start, end = start + count; i < end;) {
    const int64_t offset = i % kNormalsPerBlock, take = std::min(kNormalsPerBlock - offset, end - i);
    if (take == kNormalsPerBlock) {
      normal_block(k0, k1, i / kNormalsPerBlock, out + (i - start));
    } else {
      normal_block(k0, k1, i / kNormalsPerBlock, block_normals);
      std::memcpy(out + (i - start), block_normals + offset, take * sizeof(float));
    }
    i += take;
  }
}

// One row's eps: the given tensor's row, or the row's normals drawn from the seed, into `drawn` (an
// [N, D] output: the eps the backward will read) when given, else into a per-task buffer (converted to
// scalar_t for fp64).
template <typename scalar_t>
class RowNoise {
 public:
  RowNoise(const scalar_t* eps, int64_t seed, int64_t D, bool needed, scalar_t* drawn)
      : eps_(eps), drawn_(drawn), seed_(seed), D_(D) {
    constexpr bool kFloat = std::is_same_v<scalar_t, float>;
    if (!needed || eps != nullptr) return;
    if (!kFloat || drawn == nullptr) normals_.resize(D);
    if (!kFloat && drawn == nullptr) converted_.resize(D);
  }
  const scalar_t* row(int64_t n) {
    if (eps_ != nullptr) return eps_ + n * D_;
    scalar_t* out = drawn_ != nullptr ? drawn_ + n * D_ : nullptr;
    if constexpr (std::is_same_v<scalar_t, float>) {
      float* normals = out != nullptr ? out : normals_.data();
      fill_normals(seed_, n * D_, D_, normals);
      return normals;
    } else {
      fill_normals(seed_, n * D_, D_, normals_.data());
      if (out == nullptr) out = converted_.data();
      std::copy(normals_.begin(), normals_.end(), out);
      return out;
    }
  }

 private:
  const scalar_t* eps_;
  scalar_t* drawn_;
  int64_t seed_, D_;
  std::vector<float> normals_;
  std::vector<scalar_t> converted_;
};

// Rows per parallel task: about 16K elements.
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)); }

template <typename scalar_t>
struct LatentInputs {
  const scalar_t *mu_q, *lv_q, *mu_p, *lv_p;  // [N, D]; mu_p/lv_p null without a prior
  const scalar_t* eps;                        // [N, D], or null: drawn from seed
  int64_t seed, N, D;
  bool elementwise;  // kl [N, D] instead of its row sums [N]
  LatentBounds<scalar_t> bounds;

  // Dimensions [d, d + count) of row n.
  template <bool kPrior>
  LatentParams<Vec<scalar_t>> load(int64_t i, int64_t count) const {
    using V = Vec<scalar_t>;
    return {V::loadu(mu_q + i, count), V::loadu(lv_q + i, count), kPrior ? V::loadu(mu_p + i, count) : V(0),
            kPrior ? V::loadu(lv_p + i, count) : V(0)};
  }
  LatentBounds<Vec<scalar_t>> vector_bounds() const {
    using V = Vec<scalar_t>;
    return {V(bounds.mu_lo), V(bounds.mu_hi), V(bounds.lv_lo), V(bounds.lv_hi), V(bounds.free_bits)};
  }
};

template <typename scalar_t, bool kPrior, bool kPW, bool kSample, bool kKL>
void latent_forward_kernel(const LatentInputs<scalar_t>& in, scalar_t* z, scalar_t* kl, scalar_t* drawn_eps) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  const int64_t D = in.D;
  at::parallel_for(0, in.N, row_grain(D), [&](int64_t n0, int64_t n1) {
    RowNoise<scalar_t> noise(in.eps, in.seed, D, kSample, drawn_eps);
    const LatentBounds<V> bounds = in.vector_bounds();
    for (int64_t n = n0; n < n1; ++n) {
      const scalar_t* eps = kSample ? noise.row(n) : nullptr;
      V kl_sum(0);
      for (int64_t d = 0; d < D; d += W) {
        const int64_t count = std::min(W, D - d), i = n * D + d;
        const LatentStep<kPrior, kPW, kSample, kKL, V> step(in.template load<kPrior>(i, count),
                                                            kSample ? V::loadu(eps + d, count) : V(0), bounds);
        if constexpr (kSample) step.z().store(z + i, count);
        if constexpr (kKL) {
          if (in.elementwise) {
            step.kl.store(kl + i, count);
          } else {
            kl_sum += count == W ? step.kl : V::set(V(0), step.kl, count);  // padded lanes add 0
          }
        }
      }
      if (kKL && !in.elementwise) kl[n] = at::vec::vec_reduce_all<scalar_t>([](V a, V b) { return a + b; }, kl_sum);
    }
  });
}

template <typename scalar_t, bool kPrior, bool kPW, bool kSample, bool kKL>
void latent_backward_kernel(const LatentInputs<scalar_t>& in, const scalar_t* grad_z, const scalar_t* grad_kl,
                            scalar_t* d_mu_q, scalar_t* d_lv_q, scalar_t* d_mu_p, scalar_t* d_lv_p) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  const int64_t D = in.D;
  at::parallel_for(0, in.N, row_grain(D), [&](int64_t n0, int64_t n1) {
    RowNoise<scalar_t> noise(in.eps, in.seed, D, kSample, nullptr);
    const LatentBounds<V> bounds = in.vector_bounds();
    for (int64_t n = n0; n < n1; ++n) {
      const scalar_t* eps = kSample ? noise.row(n) : nullptr;
      const V g_kl_row = kKL && !in.elementwise ? V(grad_kl[n]) : V(0);
      for (int64_t d = 0; d < D; d += W) {
        const int64_t count = std::min(W, D - d), i = n * D + d;
        const LatentStep<kPrior, kPW, kSample, kKL, V> step(in.template load<kPrior>(i, count),
                                                            kSample ? V::loadu(eps + d, count) : V(0), bounds);
        const V g_z = kSample ? V::loadu(grad_z + i, count) : V(0);
        const V g_kl = kKL && in.elementwise ? V::loadu(grad_kl + i, count) : g_kl_row;
        const LatentParams<V> g = step.grads(g_z, g_kl, bounds);
        g.mu_q.store(d_mu_q + i, count);
        g.lv_q.store(d_lv_q + i, count);
        if constexpr (kPrior) {
          g.mu_p.store(d_mu_p + i, count);
          g.lv_p.store(d_lv_p + i, count);
        }
      }
    }
  });
}

template <typename scalar_t>
void log_prob_forward_kernel(const scalar_t* x, const scalar_t* mu, const scalar_t* lv, int64_t N, int64_t D,
                             bool elementwise, LatentBounds<scalar_t> b, scalar_t* out) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  at::parallel_for(0, N, row_grain(D), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      V sum(0), scaled_diff;
      for (int64_t d = 0; d < D; d += W) {
        const int64_t count = std::min(W, D - d), i = n * D + d;
        const V term = gaussian_log_prob_term(V::loadu(x + i, count),
                                              clamp_of(V::loadu(mu + i, count), V(b.mu_lo), V(b.mu_hi)),
                                              clamp_of(V::loadu(lv + i, count), V(b.lv_lo), V(b.lv_hi)), scaled_diff);
        if (elementwise) {
          term.store(out + i, count);
        } else {
          sum += count == W ? term : V::set(V(0), term, count);
        }
      }
      if (!elementwise) out[n] = at::vec::vec_reduce_all<scalar_t>([](V a, V c) { return a + c; }, sum);
    }
  });
}

template <typename scalar_t>
void log_prob_backward_kernel(const scalar_t* grad, const scalar_t* x, const scalar_t* mu, const scalar_t* lv,
                              int64_t N, int64_t D, bool elementwise, LatentBounds<scalar_t> b, scalar_t* d_x,
                              scalar_t* d_mu, scalar_t* d_lv) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  at::parallel_for(0, N, row_grain(D), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t d = 0; d < D; d += W) {
        const int64_t count = std::min(W, D - d), i = n * D + d;
        const V x_i = V::loadu(x + i, count), mu_raw = V::loadu(mu + i, count), lv_raw = V::loadu(lv + i, count);
        const V mu_c = clamp_of(mu_raw, V(b.mu_lo), V(b.mu_hi));
        V scaled_diff, dx, dmu, dlv;
        gaussian_log_prob_term(x_i, mu_c, clamp_of(lv_raw, V(b.lv_lo), V(b.lv_hi)), scaled_diff);
        const V g = elementwise ? V::loadu(grad + i, count) : V(grad[n]);
        gaussian_log_prob_grads(g, x_i, mu_c, scaled_diff, dx, dmu, dlv);
        dx.store(d_x + i, count);
        where_in_range(mu_raw, V(b.mu_lo), V(b.mu_hi), dmu).store(d_mu + i, count);
        where_in_range(lv_raw, V(b.lv_lo), V(b.lv_hi), dlv).store(d_lv + i, count);
      }
    }
  });
}

constexpr int64_t kElementGrain = 16384;

template <typename scalar_t>
void precision_weighted_forward_kernel(const scalar_t* mu_a, const scalar_t* var_a, const scalar_t* mu_b,
                                       const scalar_t* var_b, int64_t numel, scalar_t* mu, scalar_t* var) {
  using V = Vec<scalar_t>;
  at::parallel_for(0, numel, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += V::size()) {
      const int64_t count = std::min<int64_t>(V::size(), i1 - i);
      V m, v;
      precision_weighted_combine(V::loadu(mu_a + i, count), V::loadu(var_a + i, count), V::loadu(mu_b + i, count),
                                 V::loadu(var_b + i, count), m, v);
      m.store(mu + i, count);
      v.store(var + i, count);
    }
  });
}

template <typename scalar_t>
void precision_weighted_backward_kernel(const scalar_t* g_mu, const scalar_t* g_var, const scalar_t* mu_a,
                                        const scalar_t* var_a, const scalar_t* mu_b, const scalar_t* var_b,
                                        int64_t numel, scalar_t* d_mu_a, scalar_t* d_var_a, scalar_t* d_mu_b,
                                        scalar_t* d_var_b) {
  using V = Vec<scalar_t>;
  at::parallel_for(0, numel, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += V::size()) {
      const int64_t count = std::min<int64_t>(V::size(), i1 - i);
      V dma, dva, dmb, dvb;
      precision_weighted_combine_grads(V::loadu(g_mu + i, count), V::loadu(g_var + i, count),
                                       V::loadu(mu_a + i, count), V::loadu(var_a + i, count),
                                       V::loadu(mu_b + i, count), V::loadu(var_b + i, count), dma, dva, dmb, dvb);
      dma.store(d_mu_a + i, count);
      dva.store(d_var_a + i, count);
      dmb.store(d_mu_b + i, count);
      dvb.store(d_var_b + i, count);
    }
  });
}

// ---- torch glue ----

template <typename scalar_t>
LatentInputs<scalar_t> latent_inputs(const at::Tensor& mu_q, const at::Tensor& lv_q, const OptTensor& mu_p,
                                     const OptTensor& lv_p, const OptTensor& eps, const OptTensor& seed,
                                     bool elementwise, double free_bits, double mu_min, double mu_max,
                                     double lv_min, double lv_max) {
  const auto [N, D] = rows_of(mu_q);
  return {mu_q.const_data_ptr<scalar_t>(),
          lv_q.const_data_ptr<scalar_t>(),
          mu_p ? mu_p->const_data_ptr<scalar_t>() : nullptr,
          lv_p ? lv_p->const_data_ptr<scalar_t>() : nullptr,
          eps ? eps->const_data_ptr<scalar_t>() : nullptr,
          seed ? seed->item<int64_t>() : 0,
          N,
          D,
          elementwise,
          {scalar_t(mu_min), scalar_t(mu_max), scalar_t(lv_min), scalar_t(lv_max), scalar_t(free_bits)}};
}

// The forward; with keep_eps, the eps it draws (when sampling without a given eps) is returned as a third
// tensor, else that one is undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_kl_forward_cpu(
    const at::Tensor& mu_q, const at::Tensor& logvar_q, const OptTensor& mu_p, const OptTensor& logvar_p,
    const OptTensor& eps, const OptTensor& seed, bool sample, bool kl, bool precision_weighted, bool elementwise,
    double free_bits, double mu_min, double mu_max, double logvar_min, double logvar_max, bool keep_eps) {
  check_latent_args(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted);
  const auto mqc = mu_q.contiguous(), lqc = logvar_q.contiguous();
  const auto mpc = contiguous(mu_p), lpc = contiguous(logvar_p), ec = sample ? contiguous(eps) : std::nullopt;
  auto z = sample ? empty_buffer_like(mqc) : at::empty({0}, mu_q.options());
  auto kl_out = kl_output(mqc, kl, elementwise);
  const at::Tensor drawn_eps = keep_eps && sample && !eps ? empty_buffer_like(mqc) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(mu_q.scalar_type(), "gaussian_sample_kl_cpu", [&] {
    const auto in = latent_inputs<scalar_t>(mqc, lqc, mpc, lpc, ec, sample ? seed : std::nullopt, elementwise,
                                            free_bits, mu_min, mu_max, logvar_min, logvar_max);
    const bool supported = dispatch_latent_step(mu_p.has_value(), precision_weighted, sample, kl,
                                                [&](auto prior, auto pw, auto samp, auto with_kl) {
      latent_forward_kernel<scalar_t, prior, pw, samp, with_kl>(
          in, sample ? z.mutable_data_ptr<scalar_t>() : nullptr, kl ? kl_out.mutable_data_ptr<scalar_t>() : nullptr,
          drawn_eps.defined() ? drawn_eps.mutable_data_ptr<scalar_t>() : nullptr);
    });
    TORCH_CHECK(supported, "fastlv: gaussian_sample_kl does not support sample=", sample, " kl=", kl,
                " with", mu_p ? "" : "out", " a prior");
  });
  return {z, kl_out, drawn_eps};
}

std::tuple<at::Tensor, at::Tensor> gaussian_sample_kl_cpu(
    const at::Tensor& mu_q, const at::Tensor& logvar_q, const OptTensor& mu_p, const OptTensor& logvar_p,
    const OptTensor& eps, const OptTensor& seed, bool sample, bool kl, bool precision_weighted, bool elementwise,
    double free_bits, double mu_min, double mu_max, double logvar_min, double logvar_max) {
  auto [z, kl_out, unused] = sample_kl_forward_cpu(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl,
                                                   precision_weighted, elementwise, free_bits, mu_min, mu_max,
                                                   logvar_min, logvar_max, /*keep_eps=*/false);
  return {z, kl_out};
}

std::vector<at::Tensor> gaussian_sample_kl_backward_cpu(
    const OptTensor& grad_z, const OptTensor& grad_kl, const at::Tensor& mu_q, const at::Tensor& logvar_q,
    const OptTensor& mu_p, const OptTensor& logvar_p, const OptTensor& eps, const OptTensor& seed, bool sample,
    bool kl, bool precision_weighted, bool elementwise, double free_bits, double mu_min, double mu_max,
    double logvar_min, double logvar_max) {
  check_latent_args(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted);
  const auto [gz, gkl] = latent_output_grads(grad_z, grad_kl, mu_q, sample, kl, elementwise);
  const auto mqc = mu_q.contiguous(), lqc = logvar_q.contiguous();
  const auto mpc = contiguous(mu_p), lpc = contiguous(logvar_p), ec = sample ? contiguous(eps) : std::nullopt;
  std::vector<at::Tensor> grads = {empty_buffer_like(mqc), empty_buffer_like(lqc)};
  if (mu_p) grads.insert(grads.end(), {empty_buffer_like(mqc), empty_buffer_like(mqc)});
  AT_DISPATCH_FLOATING_TYPES(mu_q.scalar_type(), "gaussian_sample_kl_backward_cpu", [&] {
    const auto in = latent_inputs<scalar_t>(mqc, lqc, mpc, lpc, ec, sample ? seed : std::nullopt, elementwise,
                                            free_bits, mu_min, mu_max, logvar_min, logvar_max);
    const bool supported = dispatch_latent_step(mu_p.has_value(), precision_weighted, sample, kl,
                                                [&](auto prior, auto pw, auto samp, auto with_kl) {
      latent_backward_kernel<scalar_t, prior, pw, samp, with_kl>(
          in, sample ? gz.const_data_ptr<scalar_t>() : nullptr, kl ? gkl.const_data_ptr<scalar_t>() : nullptr,
          grads[0].mutable_data_ptr<scalar_t>(), grads[1].mutable_data_ptr<scalar_t>(),
          prior ? grads[2].mutable_data_ptr<scalar_t>() : nullptr,
          prior ? grads[3].mutable_data_ptr<scalar_t>() : nullptr);
    });
    TORCH_CHECK(supported, "fastlv: gaussian_sample_kl_backward does not support sample=", sample, " kl=", kl,
                " with", mu_p ? "" : "out", " a prior");
  });
  return grads;
}

at::Tensor gaussian_log_prob_cpu(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& logvar,
                                 bool elementwise, double mu_min, double mu_max, double logvar_min,
                                 double logvar_max) {
  check_log_prob_args(x, mu, logvar);
  const auto xc = x.contiguous(), mc = mu.contiguous(), lc = logvar.contiguous();
  auto out = kl_output(xc, true, elementwise);
  const auto [N, D] = rows_of(xc);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaussian_log_prob_cpu", [&] {
    log_prob_forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), mc.const_data_ptr<scalar_t>(),
                                      lc.const_data_ptr<scalar_t>(), N, D, elementwise,
                                      {scalar_t(mu_min), scalar_t(mu_max), scalar_t(logvar_min),
                                       scalar_t(logvar_max), scalar_t(0)},
                                      out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_log_prob_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mu, const at::Tensor& logvar, bool elementwise,
    double mu_min, double mu_max, double logvar_min, double logvar_max) {
  check_log_prob_args(x, mu, logvar);
  check_device(grad, x, "grad", "x");
  check_shape(grad, row_output_shape(x, elementwise), "grad");
  const auto gc = grad.contiguous().to(x.scalar_type()), xc = x.contiguous(), mc = mu.contiguous();
  const auto lc = logvar.contiguous();
  auto d_x = empty_buffer_like(xc), d_mu = empty_buffer_like(mc), d_logvar = empty_buffer_like(lc);
  const auto [N, D] = rows_of(xc);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gaussian_log_prob_backward_cpu", [&] {
    log_prob_backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                       mc.const_data_ptr<scalar_t>(), lc.const_data_ptr<scalar_t>(), N, D,
                                       elementwise,
                                       {scalar_t(mu_min), scalar_t(mu_max), scalar_t(logvar_min),
                                        scalar_t(logvar_max), scalar_t(0)},
                                       d_x.mutable_data_ptr<scalar_t>(), d_mu.mutable_data_ptr<scalar_t>(),
                                       d_logvar.mutable_data_ptr<scalar_t>());
  });
  return {d_x, d_mu, d_logvar};
}

std::tuple<at::Tensor, at::Tensor> precision_weighted_cpu(const at::Tensor& mu_a, const at::Tensor& var_a,
                                                          const at::Tensor& mu_b, const at::Tensor& var_b) {
  check_precision_weighted_args(mu_a, var_a, mu_b, var_b);
  const auto mac = mu_a.contiguous(), vac = var_a.contiguous(), mbc = mu_b.contiguous(), vbc = var_b.contiguous();
  auto mu = empty_buffer_like(mac), var = empty_buffer_like(mac);
  AT_DISPATCH_FLOATING_TYPES(mu_a.scalar_type(), "precision_weighted_cpu", [&] {
    precision_weighted_forward_kernel<scalar_t>(mac.const_data_ptr<scalar_t>(), vac.const_data_ptr<scalar_t>(),
                                                mbc.const_data_ptr<scalar_t>(), vbc.const_data_ptr<scalar_t>(),
                                                mac.numel(), mu.mutable_data_ptr<scalar_t>(),
                                                var.mutable_data_ptr<scalar_t>());
  });
  return {mu, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> precision_weighted_backward_cpu(
    const at::Tensor& grad_mu, const at::Tensor& grad_var, const at::Tensor& mu_a, const at::Tensor& var_a,
    const at::Tensor& mu_b, const at::Tensor& var_b) {
  check_precision_weighted_args(mu_a, var_a, mu_b, var_b);
  check_device(grad_mu, mu_a, "grad_mu", "mu_a");
  check_device(grad_var, mu_a, "grad_var", "mu_a");
  check_shape(grad_mu, mu_a.sizes(), "grad_mu");
  check_shape(grad_var, mu_a.sizes(), "grad_var");
  const auto gmc = grad_mu.contiguous().to(mu_a.scalar_type()), gvc = grad_var.contiguous().to(mu_a.scalar_type());
  const auto mac = mu_a.contiguous(), vac = var_a.contiguous(), mbc = mu_b.contiguous(), vbc = var_b.contiguous();
  auto d_mu_a = empty_buffer_like(mac), d_var_a = empty_buffer_like(mac), d_mu_b = empty_buffer_like(mac);
  auto d_var_b = empty_buffer_like(mac);
  AT_DISPATCH_FLOATING_TYPES(mu_a.scalar_type(), "precision_weighted_backward_cpu", [&] {
    precision_weighted_backward_kernel<scalar_t>(
        gmc.const_data_ptr<scalar_t>(), gvc.const_data_ptr<scalar_t>(), mac.const_data_ptr<scalar_t>(),
        vac.const_data_ptr<scalar_t>(), mbc.const_data_ptr<scalar_t>(), vbc.const_data_ptr<scalar_t>(), mac.numel(),
        d_mu_a.mutable_data_ptr<scalar_t>(), d_var_a.mutable_data_ptr<scalar_t>(),
        d_mu_b.mutable_data_ptr<scalar_t>(), d_var_b.mutable_data_ptr<scalar_t>());
  });
  return {d_mu_a, d_var_a, d_mu_b, d_var_b};
}

// ---- autograd in C++ ----
// fastlv.ops calls fastlv_C::gaussian_sample_kl directly in eager mode on the cpp and cuda backends, with
// this Autograd kernel: the Python autograd of the custom op fastlv::gaussian_sample_kl (kept for
// torch.compile, the other backends and opcheck) costs about as much as the kernels at the speech shape.
// Both paths run the same kernels; on the CPU this one keeps the eps the forward draws.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

OptTensor defined_or_none(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The gradients as a node of their own, so that differentiating them again (create_graph=True) raises.
struct SampleKLBackward : torch::autograd::Function<SampleKLBackward> {
  template <typename... Args>
  static variable_list forward(AutogradContext*, Args&&... args) {
    static const auto kernel =
        kernel_op<decltype(gaussian_sample_kl_backward_cpu)>("fastlv_C::gaussian_sample_kl_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return kernel.call(std::forward<Args>(args)...);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "fastlv: double backward through fastlv::gaussian_sample_kl is not implemented");
  }
};

struct SampleKL : torch::autograd::Function<SampleKL> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu_q, const at::Tensor& logvar_q,
                               const OptTensor& mu_p, const OptTensor& logvar_p, const OptTensor& eps,
                               const OptTensor& seed, bool sample, bool kl, bool precision_weighted, bool elementwise,
                               double free_bits, double mu_min, double mu_max, double logvar_min,
                               double logvar_max) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor z, kl_out, drawn_eps;
    if (mu_q.device().is_cpu()) {  // keeps the eps it draws: the backward reads it instead of regenerating
      std::tie(z, kl_out, drawn_eps) =
          sample_kl_forward_cpu(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted,
                                elementwise, free_bits, mu_min, mu_max, logvar_min, logvar_max, /*keep_eps=*/true);
    } else {
      static const auto kernel = kernel_op<decltype(gaussian_sample_kl_cpu)>("fastlv_C::gaussian_sample_kl");
      std::tie(z, kl_out) = kernel.call(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted,
                                        elementwise, free_bits, mu_min, mu_max, logvar_min, logvar_max);
    }
    const bool kept = drawn_eps.defined();
    ctx->save_for_backward({mu_q, logvar_q, mu_p.value_or(at::Tensor()), logvar_p.value_or(at::Tensor()),
                            kept ? drawn_eps : eps.value_or(at::Tensor()),
                            kept ? at::Tensor() : seed.value_or(at::Tensor())});
    ctx->saved_data["modes"] = c10::List<bool>({sample, kl, precision_weighted, elementwise});
    ctx->saved_data["limits"] = std::vector<double>{free_bits, mu_min, mu_max, logvar_min, logvar_max};
    return {z, kl_out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto modes = ctx->saved_data["modes"].toBoolList();
    const auto limits = ctx->saved_data["limits"].toDoubleVector();
    const bool sample = modes[0], kl = modes[1], has_prior = saved[2].defined();
    const variable_list input_grads = SampleKLBackward::apply(
        sample ? OptTensor(grads[0]) : std::nullopt, kl ? OptTensor(grads[1]) : std::nullopt, saved[0], saved[1],
        defined_or_none(saved[2]), defined_or_none(saved[3]), defined_or_none(saved[4]), defined_or_none(saved[5]),
        sample, kl, bool(modes[2]), bool(modes[3]), limits[0], limits[1], limits[2], limits[3], limits[4]);
    variable_list out(15);  // one per forward argument: mu_q, logvar_q, mu_p, logvar_p; none for the rest
    out[0] = input_grads[0];
    out[1] = input_grads[1];
    if (has_prior) {
      out[2] = input_grads[2];
      out[3] = input_grads[3];
    }
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> gaussian_sample_kl_autograd(
    const at::Tensor& mu_q, const at::Tensor& logvar_q, const OptTensor& mu_p, const OptTensor& logvar_p,
    const OptTensor& eps, const OptTensor& seed, bool sample, bool kl, bool precision_weighted, bool elementwise,
    double free_bits, double mu_min, double mu_max, double logvar_min, double logvar_max) {
  const variable_list out = SampleKL::apply(mu_q, logvar_q, mu_p, logvar_p, eps, seed, sample, kl, precision_weighted,
                                            elementwise, free_bits, mu_min, mu_max, logvar_min, logvar_max);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlv_C, m) {
  m.def("gaussian_sample_kl(Tensor mu_q, Tensor logvar_q, Tensor? mu_p, Tensor? logvar_p, Tensor? eps, "
        "Tensor? seed, bool sample, bool kl, bool precision_weighted, bool elementwise, float free_bits, "
        "float mu_min, float mu_max, float logvar_min, float logvar_max) -> (Tensor, Tensor)");
  m.def("gaussian_sample_kl_backward(Tensor? grad_z, Tensor? grad_kl, Tensor mu_q, Tensor logvar_q, "
        "Tensor? mu_p, Tensor? logvar_p, Tensor? eps, Tensor? seed, bool sample, bool kl, "
        "bool precision_weighted, bool elementwise, float free_bits, float mu_min, float mu_max, "
        "float logvar_min, float logvar_max) -> Tensor[]");
  m.def("gaussian_log_prob(Tensor x, Tensor mu, Tensor logvar, bool elementwise, float mu_min, float mu_max, "
        "float logvar_min, float logvar_max) -> Tensor");
  m.def("gaussian_log_prob_backward(Tensor grad, Tensor x, Tensor mu, Tensor logvar, bool elementwise, "
        "float mu_min, float mu_max, float logvar_min, float logvar_max) -> (Tensor, Tensor, Tensor)");
  m.def("precision_weighted(Tensor mu_a, Tensor var_a, Tensor mu_b, Tensor var_b) -> (Tensor, Tensor)");
  m.def("precision_weighted_backward(Tensor grad_mu, Tensor grad_var, Tensor mu_a, Tensor var_a, Tensor mu_b, "
        "Tensor var_b) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastlv_C, CPU, m) {
  m.impl("gaussian_sample_kl", &gaussian_sample_kl_cpu);
  m.impl("gaussian_sample_kl_backward", &gaussian_sample_kl_backward_cpu);
  m.impl("gaussian_log_prob", &gaussian_log_prob_cpu);
  m.impl("gaussian_log_prob_backward", &gaussian_log_prob_backward_cpu);
  m.impl("precision_weighted", &precision_weighted_cpu);
  m.impl("precision_weighted_backward", &precision_weighted_backward_cpu);
}

TORCH_LIBRARY_IMPL(fastlv_C, Autograd, m) { m.impl("gaussian_sample_kl", &gaussian_sample_kl_autograd); }

}  // namespace fastlv
