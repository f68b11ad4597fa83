// CPU kernels of the Gaussian-mixture log-likelihood (fastlv_C::gmm_log_prob, diag_gmm_log_prob).
//
// Per-element mixture (x [N], params [N, K]): K is small (1..64), so a vector holds W = 16 (fp32,
// AVX-512) or 8 (AVX2) elements and the kernel loops over k, taking component k of the W elements
// (see Block); every input is read from memory once. Full-frame mixture (x [N, D],
// params [N, K, D]): vectorized over D, one frame per task; the backward re-reads the frame's
// [K, D] parameters from cache after computing the responsibilities.
// Forward saves only the two log-normalizers per element (logsumexp_k a_k and logsumexp_k logit_k,
// not their rounded difference log p: at |log p| ~ 1e5 that loses the responsibilities' precision);
// the backward recomputes the rest.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorUtils.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/gmm_math.h"
#include "cpu/buffers.h"
#include "cpu/vec_math.h"

namespace fastlv {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// A block is W = Vec::size() consecutive elements; the forward needs component k of all of them as one
// vector. With AVX-512 that is one strided gather (element stride K), fast on Intel cores. Elsewhere
// gathers are slow (Zen 3's 8-lane vgatherdps took ~35 cycles, half the forward's time), so the block's
// [W, K] parameters are first transposed into [K, W] scratch (8 x 8 tiles on AVX2) and read from there.
template <typename scalar_t>
struct Block {
  using V = Vec<scalar_t>;
  using Index = Vec<at::vec::int_same_size_t<scalar_t>>;
  static constexpr int64_t W = V::size();
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kGather = true;
#else
  static constexpr bool kGather = false;
#endif
  int64_t K;
  Index stride;  // [0, K, 2K, ...]
  bool contiguous;  // K == 1: a plain vector load
  explicit Block(int64_t K) : K(K), stride(Index::arange(0, K)), contiguous(K == 1) {}

  // The block's [W, K] parameters as load() reads them: in place, or transposed into scratch [K, W].
  const scalar_t* prepare(const scalar_t* params, scalar_t* scratch) const {
    if (kGather || contiguous) return params;
    if constexpr (std::is_same_v<scalar_t, float> && W == 8) {
      if (K >= W) {  // 8 x 8 tiles; a last partial one is shifted back to end at K (overlapping the previous)
        for (int64_t k = 0; k < K; k += W) {
          const int64_t first = std::min(k, K - W);
          at::vec::transpose_mxn<float, 8, 8>(params + first, K, scratch + first * W, W);
        }
        return scratch;
      }
    }
    at::vec::transpose_mxn<scalar_t>(params, K, scratch, W, W, K);  // scalar, for K < 8 and other types
    return scratch;
  }
  V load(const scalar_t* prepared, int64_t k) const {
    if (contiguous) return V::loadu(prepared);
    if constexpr (kGather) return at::vec::gather<sizeof(scalar_t)>(prepared + k, stride);
    return V::loadu(prepared + k * W);
  }
};

// Parameters [N, K] whose rows are ld >= K apart (ld > K: e.g. logits, mu and log_sigma unbound from
// one [..., 3, K] tensor, as a network's output layer gives them), read in place.
template <typename scalar_t>
struct ParamRows {
  const scalar_t* data;
  int64_t ld;
  const scalar_t* row(int64_t n) const { return data + n * ld; }
  // Copies rows [n0, n0 + count) into dst, contiguous [count, K].
  void copy_rows(int64_t n0, int64_t count, int64_t K, scalar_t* dst) const {
    for (int64_t n = 0; n < count; ++n) std::copy(row(n0 + n), row(n0 + n) + K, dst + n * K);
  }
  // Rows [n0, n0 + count) as a contiguous [count, K] array: in place, or copied into scratch.
  const scalar_t* contiguous_rows(int64_t n0, int64_t count, int64_t K, scalar_t* scratch) const {
    if (ld == K) return row(n0);
    copy_rows(n0, count, K, scratch);
    return scratch;
  }
};

// Rows [n0, n0 + count) of p in a contiguous [W, K] scratch array, zero past row count.
template <typename scalar_t>
const scalar_t* pad_block(ParamRows<scalar_t> p, int64_t n0, int64_t count, int64_t K, scalar_t* scratch) {
  p.copy_rows(n0, count, K, scratch);
  std::fill(scratch + count * K, scratch + Vec<scalar_t>::size() * K, scalar_t(0));
  return scratch;
}

constexpr int64_t kBlocksPerTask = 16;  // grain of at::parallel_for, in blocks of W elements

template <typename scalar_t>
void gmm_forward_kernel(const scalar_t* x, ParamRows<scalar_t> logits, ParamRows<scalar_t> mu,
                        ParamRows<scalar_t> log_sigma, int64_t N, int64_t K, scalar_t lo, scalar_t hi,
                        scalar_t* log_prob, scalar_t* lse_components, scalar_t* lse_logits) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  const Block<scalar_t> block(K);
  at::parallel_for(0, (N + W - 1) / W, kBlocksPerTask, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> buf(8 * K * W);  // a_k and logit_k per lane, 3 padded or gathered inputs, 3 transposed
    scalar_t *t_a = buf.data(), *t_logit = t_a + K * W, *tail = t_logit + K * W, *transposed = tail + 3 * K * W;
    const V vlo(lo), vhi(hi), neg_inf(-std::numeric_limits<scalar_t>::infinity());
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * W, count = std::min(W, N - n0);
      // A short last block, or rows apart: copied into contiguous [W, K] scratch first.
      const auto block_rows = [&](ParamRows<scalar_t> p, scalar_t* scratch) {
        return count < W ? pad_block(p, n0, count, K, scratch) : p.contiguous_rows(n0, W, K, scratch);
      };
      const scalar_t *l_in = block_rows(logits, tail), *mu_in = block_rows(mu, tail + K * W);
      const scalar_t* ls_in = block_rows(log_sigma, tail + 2 * K * W);
      l_in = block.prepare(l_in, transposed);
      mu_in = block.prepare(mu_in, transposed + K * W);
      ls_in = block.prepare(ls_in, transposed + 2 * K * W);
      const V vx = V::loadu(x + n0, count);
      V max_a = neg_inf, max_l = neg_inf;
      for (int64_t k = 0; k < K; ++k) {
        V z, inv_sigma;
        const V l = block.load(l_in, k), ls = clamp_of(block.load(ls_in, k), vlo, vhi);
        const V a = l + gaussian_log_density(vx, block.load(mu_in, k), ls, z, inv_sigma);
        a.store(t_a + k * W);
        l.store(t_logit + k * W);
        max_a = max_of(max_a, a);
        max_l = max_of(max_l, l);
      }
      V sum_a(0), sum_l(0);
      for (int64_t k = 0; k < K; ++k) {
        sum_a += exp_of(V::loadu(t_a + k * W) - max_a);
        sum_l += exp_of(V::loadu(t_logit + k * W) - max_l);
      }
      const V lse_a = logsumexp_finish(max_a, sum_a), lse_l = logsumexp_finish(max_l, sum_l);
      (lse_a - lse_l).store(log_prob + n0, count);
      lse_a.store(lse_components + n0, count);
      lse_l.store(lse_logits + n0, count);
    }
  });
}

// sum of row[0..K) with vector partial sums (a scalar chain would be latency-bound).
template <typename scalar_t>
scalar_t sum_row(const scalar_t* row, int64_t K) {
  using V = Vec<scalar_t>;
  V acc(0);
  for (int64_t k = 0; k < K; k += V::size()) acc += V::loadu(row + k, std::min<int64_t>(V::size(), K - k));
  return at::vec::vec_reduce_all<scalar_t>([](V a, V b) { return a + b; }, acc);
}

// The backward needs no reduction over k except d_x, so it runs in the native [N, K] layout: a chunk
// of elements is expanded into per-(n, k) copies of its per-element values (x, grad, the two
// log-normalizers), then every (n, k) is one lane of contiguous vector loads and stores. With one
// component the per-element arrays already are in that layout, and d_x = -d_mu.
constexpr int64_t kBackwardChunk = 64;  // elements per chunk: 64 * K values stay in L1

template <typename scalar_t>
void gmm_backward_kernel(const scalar_t* grad, const scalar_t* x, ParamRows<scalar_t> logits,
                         ParamRows<scalar_t> mu, ParamRows<scalar_t> log_sigma, const scalar_t* lse_components,
                         const scalar_t* lse_logits, int64_t N, int64_t K, scalar_t lo, scalar_t hi,
                         scalar_t* d_x, scalar_t* d_logits, scalar_t* d_mu, scalar_t* d_log_sigma) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  at::parallel_for(0, (N + kBackwardChunk - 1) / kBackwardChunk, 4, [&](int64_t c0, int64_t c1) {
    // Per-element values repeated K times; W spare slots at the end of each (see below). Then the
    // chunk's parameters, when their rows are apart, gathered into contiguous [kBackwardChunk, K].
    const int64_t rep_size = kBackwardChunk * K + W, chunk_size = kBackwardChunk * K;
    std::vector<scalar_t> buf((K > 1 ? 4 * rep_size : 0) + 3 * chunk_size);
    scalar_t *x_rep = buf.data(), *g_rep = x_rep + rep_size;
    scalar_t *lse_a_rep = g_rep + rep_size, *lse_l_rep = lse_a_rep + rep_size;
    scalar_t* gathered = buf.data() + (K > 1 ? 4 * rep_size : 0);
    const V vlo(lo), vhi(hi);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = c * kBackwardChunk, n1 = std::min(N, n0 + kBackwardChunk), size = (n1 - n0) * K;
      const scalar_t *xs = x + n0, *gs = grad + n0, *lse_a = lse_components + n0, *lse_l = lse_logits + n0;
      if (K > 1) {
        // Whole-vector stores: the last one of element n spills into element n + 1's slots, which
        // n + 1 then overwrites (and past the last element, into the spare slots).
        for (int64_t n = n0; n < n1; ++n) {
          const V xv(x[n]), gv(grad[n]), lse_av(lse_components[n]), lse_lv(lse_logits[n]);
          for (int64_t i = (n - n0) * K, end = i + K; i < end; i += W) {
            xv.store(x_rep + i);
            gv.store(g_rep + i);
            lse_av.store(lse_a_rep + i);
            lse_lv.store(lse_l_rep + i);
          }
        }
        xs = x_rep, gs = g_rep, lse_a = lse_a_rep, lse_l = lse_l_rep;
      }
      const scalar_t* l_in = logits.contiguous_rows(n0, n1 - n0, K, gathered);
      const scalar_t* mu_in = mu.contiguous_rows(n0, n1 - n0, K, gathered + chunk_size);
      const scalar_t* ls_in = log_sigma.contiguous_rows(n0, n1 - n0, K, gathered + 2 * chunk_size);
      const int64_t off = n0 * K;
      for (int64_t i = 0; i < size; i += W) {
        const int64_t count = std::min(W, size - i);
        V z, inv_sigma, dmu, dls;
        const V l = V::loadu(l_in + i, count), ls_raw = V::loadu(ls_in + i, count);
        const V a = l + gaussian_log_density(V::loadu(xs + i, count), V::loadu(mu_in + i, count),
                                             clamp_of(ls_raw, vlo, vhi), z, inv_sigma);
        const V g = V::loadu(gs + i, count);
        const V r = g * exp_of(a - V::loadu(lse_a + i, count));
        const V w = g * exp_of(l - V::loadu(lse_l + i, count));
        gaussian_term_grads(r, z, inv_sigma, ls_raw, vlo, vhi, dmu, dls);
        (r - w).store(d_logits + off + i, count);
        dmu.store(d_mu + off + i, count);
        dls.store(d_log_sigma + off + i, count);
        if (K == 1) (V(0) - dmu).store(d_x + n0 + i, count);
      }
      if (K > 1)
        for (int64_t n = n0; n < n1; ++n) d_x[n] = -sum_row(d_mu + n * K, K);  // d_mu re-read from L1
    }
  });
}

// Sum over d < D of log N(x_d; mu_d, sigma_d): vector body plus a masked vector tail.
template <typename scalar_t>
scalar_t frame_log_density(const scalar_t* x, const scalar_t* mu, const scalar_t* log_sigma, int64_t D,
                           scalar_t lo, scalar_t hi) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  V acc(0), z, inv_sigma;
  for (int64_t d = 0; d < D; d += W) {
    const int64_t count = std::min(W, D - d);
    const V ls = clamp_of(V::loadu(log_sigma + d, count), V(lo), V(hi));
    const V term = gaussian_log_density(V::loadu(x + d, count), V::loadu(mu + d, count), ls, z, inv_sigma);
    acc += count == W ? term : V::set(V(0), term, count);
  }
  return at::vec::vec_reduce_all<scalar_t>([](V a, V b) { return a + b; }, acc);
}

// Component log-joints a_k = logit_k + log N(x; mu_k, sigma_k) of one frame; returns logsumexp_k a_k
// and stores logsumexp_k logit_k into *lse_l.
template <typename scalar_t>
scalar_t frame_component_logits(const scalar_t* x, const scalar_t* logits, const scalar_t* mu,
                                const scalar_t* log_sigma, int64_t K, int64_t D, scalar_t lo, scalar_t hi,
                                scalar_t* a, scalar_t* lse_l) {
  scalar_t max_a = -std::numeric_limits<scalar_t>::infinity(), max_l = max_a;
  for (int64_t k = 0; k < K; ++k) {
    a[k] = logits[k] + frame_log_density(x, mu + k * D, log_sigma + k * D, D, lo, hi);
    max_a = max_of(max_a, a[k]);
    max_l = max_of(max_l, logits[k]);
  }
  scalar_t sum_a = 0, sum_l = 0;
  for (int64_t k = 0; k < K; ++k) {
    sum_a += exp_of(a[k] - max_a);
    sum_l += exp_of(logits[k] - max_l);
  }
  *lse_l = logsumexp_finish(max_l, sum_l);
  return logsumexp_finish(max_a, sum_a);
}

template <typename scalar_t>
void diag_gmm_forward_kernel(const scalar_t* x, const scalar_t* logits, const scalar_t* mu,
                             const scalar_t* log_sigma, int64_t N, int64_t K, int64_t D, scalar_t lo,
                             scalar_t hi, scalar_t* log_prob, scalar_t* lse_components,
                             scalar_t* lse_logits) {
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<scalar_t> a(K);
    for (int64_t n = n0; n < n1; ++n) {
      lse_components[n] = frame_component_logits(x + n * D, logits + n * K, mu + n * K * D,
                                                 log_sigma + n * K * D, K, D, lo, hi, a.data(), lse_logits + n);
      log_prob[n] = lse_components[n] - lse_logits[n];
    }
  });
}

template <typename scalar_t>
void diag_gmm_backward_kernel(const scalar_t* grad, const scalar_t* x, const scalar_t* logits,
                              const scalar_t* mu, const scalar_t* log_sigma, int64_t N, int64_t K,
                              int64_t D, scalar_t lo, scalar_t hi, scalar_t* d_x, scalar_t* d_logits,
                              scalar_t* d_mu, scalar_t* d_log_sigma) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<scalar_t> a(K);
    for (int64_t n = n0; n < n1; ++n) {
      // Pass 1 recomputes the responsibilities (reads the frame from memory), pass 2 the gradients
      // (reads it again from cache: K * D values per frame).
      const scalar_t* xn = x + n * D;
      scalar_t lse_l;
      const scalar_t lse_a = frame_component_logits(xn, logits + n * K, mu + n * K * D,
                                                    log_sigma + n * K * D, K, D, lo, hi, a.data(), &lse_l);
      for (int64_t d = 0; d < D; ++d) d_x[n * D + d] = 0;
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t r = grad[n] * exp_of(a[k] - lse_a);
        d_logits[n * K + k] = r - grad[n] * exp_of(logits[n * K + k] - lse_l);
        const int64_t off = (n * K + k) * D;
        for (int64_t d = 0; d < D; d += W) {
          const int64_t count = std::min(W, D - d);
          V z, inv_sigma, dmu, dls;
          const V ls_raw = V::loadu(log_sigma + off + d, count);
          gaussian_log_density(V::loadu(xn + d, count), V::loadu(mu + off + d, count),
                               clamp_of(ls_raw, V(lo), V(hi)), z, inv_sigma);
          gaussian_term_grads(V(r), z, inv_sigma, ls_raw, V(lo), V(hi), dmu, dls);
          dmu.store(d_mu + off + d, count);
          dls.store(d_log_sigma + off + d, count);
          (V::loadu(d_x + n * D + d, count) - dmu).store(d_x + n * D + d, count);
        }
      }
    }
  });
}

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // log p, lse of a_k, lse of logits

// p [..., K] as N rows of K: in place when its batch dimensions merge into one stride ld >= K (the slices
// of a [..., 3, K] tensor do, with ld = 3K), else from a contiguous copy, which `kept` holds.
template <typename scalar_t>
ParamRows<scalar_t> param_rows(const at::Tensor& p, int64_t N, at::Tensor& kept) {
  const int64_t K = p.size(-1);
  const std::vector<int64_t> rows{N, K};
  const auto strides = at::detail::computeStride(p.sizes(), p.strides(), at::IntArrayRef(rows));
  const bool in_place = strides.has_value() && (K == 1 || (*strides)[1] == 1) && (*strides)[0] >= K;
  kept = in_place ? p : p.contiguous();
  return {kept.data_ptr<scalar_t>(), in_place ? (*strides)[0] : K};
}

Outputs gmm_log_prob_cpu(const at::Tensor& x, const at::Tensor& logits,
                                                    const at::Tensor& mu, const at::Tensor& log_sigma,
                                                    double lo, double hi) {
  check_gmm_inputs(x, logits, mu, log_sigma, /*full_frame=*/false);
  auto xc = x.contiguous();
  auto log_prob = at::empty_like(xc), lse_components = at::empty_like(xc), lse_logits = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gmm_log_prob_cpu", [&] {
    const int64_t N = xc.numel();
    at::Tensor lc, mc, sc;
    gmm_forward_kernel<scalar_t>(xc.data_ptr<scalar_t>(), param_rows<scalar_t>(logits, N, lc),
                                 param_rows<scalar_t>(mu, N, mc), param_rows<scalar_t>(log_sigma, N, sc), N,
                                 logits.size(-1), lo, hi, log_prob.data_ptr<scalar_t>(),
                                 lse_components.data_ptr<scalar_t>(), lse_logits.data_ptr<scalar_t>());
  });
  return {log_prob, lse_components, lse_logits};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_log_prob_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& logits, const at::Tensor& mu,
    const at::Tensor& log_sigma, const at::Tensor& lse_components, const at::Tensor& lse_logits, double lo,
    double hi) {
  check_gmm_inputs(x, logits, mu, log_sigma, /*full_frame=*/false);
  check_gmm_backward_inputs(grad, lse_components, lse_logits, x, x.sizes());
  auto gc = grad.contiguous().to(x.scalar_type()), xc = x.contiguous();
  auto pc = lse_components.contiguous(), ec = lse_logits.contiguous();
  auto d_x = empty_buffer_like(xc), d_logits = empty_buffer_like(logits), d_mu = empty_buffer_like(mu);
  auto d_log_sigma = empty_buffer_like(log_sigma);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gmm_log_prob_backward_cpu", [&] {
    const int64_t N = xc.numel();
    at::Tensor lc, mc, sc;
    gmm_backward_kernel<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                  param_rows<scalar_t>(logits, N, lc), param_rows<scalar_t>(mu, N, mc),
                                  param_rows<scalar_t>(log_sigma, N, sc), pc.data_ptr<scalar_t>(),
                                  ec.data_ptr<scalar_t>(), N, logits.size(-1), lo, hi, d_x.data_ptr<scalar_t>(),
                                  d_logits.data_ptr<scalar_t>(), d_mu.data_ptr<scalar_t>(),
                                  d_log_sigma.data_ptr<scalar_t>());
  });
  return {d_x, d_logits, d_mu, d_log_sigma};
}

Outputs diag_gmm_log_prob_cpu(const at::Tensor& x, const at::Tensor& logits,
                                                         const at::Tensor& mu, const at::Tensor& log_sigma,
                                                         double lo, double hi) {
  check_gmm_inputs(x, logits, mu, log_sigma, /*full_frame=*/true);
  auto xc = x.contiguous(), lc = logits.contiguous(), mc = mu.contiguous(), sc = log_sigma.contiguous();
  const int64_t D = x.size(-1), K = logits.size(-1), N = logits.numel() / K;
  auto log_prob = at::empty(lc.sizes().slice(0, lc.dim() - 1), lc.options());
  auto lse_components = at::empty_like(log_prob), lse_logits = at::empty_like(log_prob);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "diag_gmm_log_prob_cpu", [&] {
    diag_gmm_forward_kernel<scalar_t>(xc.data_ptr<scalar_t>(), lc.data_ptr<scalar_t>(),
                                      mc.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(), N, K, D, lo, hi,
                                      log_prob.data_ptr<scalar_t>(), lse_components.data_ptr<scalar_t>(),
                                 lse_logits.data_ptr<scalar_t>());
  });
  return {log_prob, lse_components, lse_logits};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> diag_gmm_log_prob_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& logits, const at::Tensor& mu,
    const at::Tensor& log_sigma, const at::Tensor& lse_components, const at::Tensor& lse_logits, double lo,
    double hi) {
  check_gmm_inputs(x, logits, mu, log_sigma, /*full_frame=*/true);
  check_gmm_backward_inputs(grad, lse_components, lse_logits, x, logits.sizes().slice(0, logits.dim() - 1));
  auto gc = grad.contiguous().to(x.scalar_type()), xc = x.contiguous(), lc = logits.contiguous();
  auto mc = mu.contiguous(), sc = log_sigma.contiguous();
  const int64_t D = x.size(-1), K = logits.size(-1), N = logits.numel() / K;
  auto d_x = empty_buffer_like(xc), d_logits = empty_buffer_like(lc), d_mu = empty_buffer_like(mc);
  auto d_log_sigma = empty_buffer_like(sc);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "diag_gmm_log_prob_backward_cpu", [&] {
    diag_gmm_backward_kernel<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                       lc.data_ptr<scalar_t>(), mc.data_ptr<scalar_t>(),
                                       sc.data_ptr<scalar_t>(), N, K, D, lo, hi, d_x.data_ptr<scalar_t>(),
                                       d_logits.data_ptr<scalar_t>(), d_mu.data_ptr<scalar_t>(),
                                       d_log_sigma.data_ptr<scalar_t>());
  });
  return {d_x, d_logits, d_mu, d_log_sigma};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlv_C, m) {
  m.def("gmm_log_prob(Tensor x, Tensor logits, Tensor mu, Tensor log_sigma, float log_sigma_min, "
        "float log_sigma_max) -> (Tensor, Tensor, Tensor)");
  m.def("gmm_log_prob_backward(Tensor grad, Tensor x, Tensor logits, Tensor mu, Tensor log_sigma, "
        "Tensor lse_components, Tensor lse_logits, float log_sigma_min, float log_sigma_max) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("diag_gmm_log_prob(Tensor x, Tensor logits, Tensor mu, Tensor log_sigma, float log_sigma_min, "
        "float log_sigma_max) -> (Tensor, Tensor, Tensor)");
  m.def("diag_gmm_log_prob_backward(Tensor grad, Tensor x, Tensor logits, Tensor mu, Tensor log_sigma, "
        "Tensor lse_components, Tensor lse_logits, float log_sigma_min, float log_sigma_max) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastlv_C, CPU, m) {
  m.impl("gmm_log_prob", &gmm_log_prob_cpu);
  m.impl("gmm_log_prob_backward", &gmm_log_prob_backward_cpu);
  m.impl("diag_gmm_log_prob", &diag_gmm_log_prob_cpu);
  m.impl("diag_gmm_log_prob_backward", &diag_gmm_log_prob_backward_cpu);
}

}  // namespace fastlv
