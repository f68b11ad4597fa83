// CPU kernels of the masked linear layer y = act(x @ (W ⊙ M)^T + b) (fastlv_C::masked_linear and its
// backward), the layer of MADE (Germain et al. 2015) and of the masked low-level model of Dai et al.
// 2019, Sec. 5.2.
//
// A MADE mask keeps W[o, i] iff degree_out[o] >= degree_in[i] (> for the output layer): once the rows
// are sorted by how many inputs they see and the columns by how many outputs see them, every row sees
// a prefix of the columns, so the mask is a staircase and about half of it is zero. The kernels find
// that order from the mask itself (MaskPlan, cached per mask) and run their own register-tiled GEMMs
// (gemm_tile: 6 rows x 2 vectors of C per tile) that skip what the staircase masks:
//   forward   y = x @ Wm^T:  a tile of 16 outputs sums over the inputs its rows keep (their hull);
//   grad_x    gx = gz @ Wm:  a tile of 16 inputs sums over the outputs that keep them;
//   grad_W    gW = gz^T @ x: only tiles holding kept entries are computed (K = the rows of x).
// With 16-wide tiles a staircase costs about 1/2 + 16/(2 * width) of the dense FLOPs (0.52 at 512).
// Wm = W where the mask keeps, exactly 0 elsewhere (packed per tile), so masked entries inside a tile
// contribute nothing; gW is set to exactly 0 outside the mask. Any 0/1 pattern is handled correctly;
// only the speed depends on the pattern being (close to) a staircase.
// MKL's GEMMs on row panels of the staircase (the previous kernels) reached 1.1-1.3x the dense masked
// GEMM: a panel GEMM is slower per FLOP than one dense GEMM, and 4 panels still compute 5/8 of it.
// Forward and grad_x run over blocks of x's rows in parallel, with bias + activation (forward) and the
// activation gradient + bias gradient (backward) fused into a pass over the block while it is in cache.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/sum.h>
#include <c10/core/StorageImpl.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "common/masked_linear_checks.h"
#include "common/masked_linear_math.h"
#include "cpu/buffers.h"
#include "cpu/kernel_op.h"
#include "cpu/vec_math.h"

namespace fastlv {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;
}  // namespace

// Vector forms of the hook of masked_linear_math.h (comparisons give all-ones lanes where true).
template <>
inline Vec<float> where_positive(Vec<float> x, Vec<float> v) {
  return (x > Vec<float>(0)) & v;
}
template <>
inline Vec<double> where_positive(Vec<double> x, Vec<double> v) {
  return (x > Vec<double>(0)) & v;
}

namespace {

// The GEMMs run on tiles of kTileRows rows x kTileCols<scalar_t> columns (two vectors): 6 x 2 accumulator
// vectors, the two vectors of B and a broadcast of A fit AVX2's 16 registers.
constexpr int kTileRows = 6;
template <typename scalar_t>
constexpr int64_t kTileCols = 2 * Vec<scalar_t>::size();
// Rows of A per cache block of the forward and grad_x GEMMs (a block of x or gz stays in L2 while every
// column tile of the weight runs over it); a multiple of kTileRows.
constexpr int64_t kRowBlock = 96;
// K per pass of those GEMMs over a block: 96 x 512 floats of A (192 KB) stay in L2. The MADE output
// layer's grad_x has K = 3000 (a 1.1 MB block of gz, re-read from L3 for every tile of columns).
constexpr int64_t kDepthChunk = 512;
// K per block of grad_W's GEMM (K = the rows of x): a tile's operand strips, kDepthBlock x (6 + 16) floats,
// stay in L1.
constexpr int64_t kDepthBlock = 128;
// scratch_buffer slots of the temporaries.
constexpr int kWeightSlot = 0, kInputSlot = 1, kGradSlot = 2, kBiasSlot = 3, kGradInSlot = 4;

struct Range {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};

// Smallest range holding the ranges items[first, last) (ends clipped to items.size()); {0, 0} when all
// are empty.
Range hull(const std::vector<Range>& items, int64_t first, int64_t last) {
  Range h{INT64_MAX, 0};
  for (int64_t i = first; i < std::min<int64_t>(last, items.size()); ++i) {
    if (items[i].size() <= 0) continue;
    h = {std::min(h.begin, items[i].begin), std::max(h.end, items[i].end)};
  }
  return h.size() > 0 ? h : Range{0, 0};
}

// The mask in a permuted order where it is (for MADE masks) a staircase.
struct MaskPlan {
  int64_t out_features = 0, in_features = 0;
  std::vector<int64_t> row_perm, col_perm;  // permuted position -> original index; empty: identity
  std::vector<std::vector<Range>> runs;     // per row: the kept columns as maximal runs (permuted order)
  std::vector<Range> row_cols;              // per row: the hull of its kept columns
  std::vector<Range> col_rows;              // per column: the hull of the rows that keep it

  int64_t row(int64_t r) const { return row_perm.empty() ? r : row_perm[r]; }
  int64_t col(int64_t c) const { return col_perm.empty() ? c : col_perm[c]; }
};

// Stable order of the lines by their count of kept entries; empty when that order is the identity.
std::vector<int64_t> sorted_order(const at::Tensor& counts, bool descending) {
  const at::Tensor order = at::argsort(counts, /*stable=*/true, /*dim=*/0, descending).contiguous();
  std::vector<int64_t> perm(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + order.numel());
  for (int64_t i = 0; i < int64_t(perm.size()); ++i)
    if (perm[i] != i) return perm;
  return {};
}

std::shared_ptr<const MaskPlan> build_plan(const at::Tensor& mask) {
  auto plan = std::make_shared<MaskPlan>();
  const int64_t out = mask.size(0), in = mask.size(1);
  plan->out_features = out;
  plan->in_features = in;
  const at::Tensor keep = at::ne(mask, 0);
  // Rows seeing few inputs first, columns seen by many outputs first: a MADE mask becomes a staircase.
  plan->row_perm = sorted_order(keep.sum(1), /*descending=*/false);
  plan->col_perm = sorted_order(keep.sum(0), /*descending=*/true);
  const at::Tensor keep_cpu = keep.to(at::kByte).contiguous();
  const uint8_t* k = keep_cpu.data_ptr<uint8_t>();
  plan->runs.resize(out);
  plan->row_cols.assign(out, Range{0, 0});
  plan->col_rows.assign(in, Range{0, 0});
  for (int64_t r = 0; r < out; ++r) {
    std::vector<Range>& runs = plan->runs[r];
    const uint8_t* keep_row = k + plan->row(r) * in;
    for (int64_t c = 0; c < in; ++c) {
      if (!keep_row[plan->col(c)]) continue;
      if (!runs.empty() && runs.back().end == c) {
        ++runs.back().end;
      } else {
        runs.push_back({c, c + 1});
      }
      Range& rows = plan->col_rows[c];
      rows = rows.size() > 0 ? Range{rows.begin, r + 1} : Range{r, r + 1};
    }
    if (!runs.empty()) plan->row_cols[r] = {runs.front().begin, runs.back().end};
  }
  return plan;
}

// Plans are cached per mask, because a model passes the same mask buffer at every call. The key:
// - a weak reference to the mask's storage: while it is alive no other tensor can own that memory,
//   so an entry whose storage died is dropped, never matched by a new mask at a recycled address;
// - data pointer, sizes, strides and dtype: which elements of the storage are the mask;
// - the version counter: in-place writes to the mask (or to a view of it) bump it, so an edited
//   mask gets a new plan. Inference tensors have no version counter and are never cached.
struct PlanCache {
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    const void* data;
    int64_t version;
    std::vector<int64_t> sizes, strides;
    at::ScalarType dtype;
    std::shared_ptr<const MaskPlan> plan;
  };
  static constexpr size_t kMaxEntries = 64;
  std::mutex mutex;
  std::list<Entry> entries;  // most recently used first
};

std::shared_ptr<const MaskPlan> cached_plan(const at::Tensor& mask) {
  if (mask.is_inference() || !mask.has_storage()) return build_plan(mask);
  static PlanCache cache;
  const int64_t version = mask._version();
  const void* data = mask.data_ptr();
  const std::vector<int64_t> sizes = mask.sizes().vec(), strides = mask.strides().vec();
  const c10::StorageImpl* storage = mask.storage().unsafeGetStorageImpl();
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    for (auto it = cache.entries.begin(); it != cache.entries.end();) {
      const auto alive = it->storage.lock();
      if (!alive) {
        it = cache.entries.erase(it);
        continue;
      }
      if (alive.get() == storage && it->data == data && it->version == version && it->sizes == sizes &&
          it->strides == strides && it->dtype == mask.scalar_type()) {
        cache.entries.splice(cache.entries.begin(), cache.entries, it);
        return it->plan;
      }
      ++it;
    }
  }
  auto plan = build_plan(mask);
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.entries.push_front({mask.storage().getWeakStorageImpl(), data, version, sizes, strides,
                            mask.scalar_type(), plan});
  if (cache.entries.size() > PlanCache::kMaxEntries) cache.entries.pop_back();
  return plan;
}

// The masked weight Wm (W where the mask keeps, exactly 0 elsewhere; permuted order) as the B operand of
// a tile GEMM: tiles of kTileCols columns of B, each [K][kTileCols] contiguous, zero past B's last column.
//   transpose (forward): B = Wm^T [in, out], packed[j][c][t] = Wm[j * kTileCols + t, c];
//   else (grad_x):       B = Wm [out, in],   packed[j][r][t] = Wm[r, j * kTileCols + t].
template <typename scalar_t>
at::Tensor packed_weight(const at::Tensor& weight, const MaskPlan& plan, bool transpose) {
  constexpr int64_t TC = kTileCols<scalar_t>;
  const int64_t out = plan.out_features, in = plan.in_features;
  const int64_t cols = transpose ? out : in, depth = transpose ? in : out;  // B is [depth, cols]
  at::Tensor packed = scratch_buffer(kWeightSlot, {(cols + TC - 1) / TC, depth, TC}, weight.options()).zero_();
  const scalar_t* w = weight.data_ptr<scalar_t>();
  scalar_t* dst = packed.data_ptr<scalar_t>();
  at::parallel_for(0, out, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* src = w + plan.row(r) * in;
      for (const Range& run : plan.runs[r]) {
        for (int64_t c = run.begin; c < run.end; ++c) {
          const int64_t col = transpose ? r : c, k = transpose ? c : r;
          dst[((col / TC) * depth + k) * TC + col % TC] = src[plan.col(c)];
        }
      }
    }
  });
  return packed;
}

// Rows of x (columns in permuted order) as grad_W's B operand, packed into strips: the rows of a block of
// kDepthBlock rows, restricted to a tile of kTileCols columns, are contiguous ([kDepthBlock][kTileCols]),
// zero past the last column. A tile of grad_W then reads its K block of B sequentially.
template <typename scalar_t>
void pack_input_strips(const scalar_t* x, const MaskPlan& plan, Range rows, scalar_t* dst) {
  constexpr int64_t TC = kTileCols<scalar_t>;
  const int64_t in = plan.in_features, tiles = (in + TC - 1) / TC;
  for (int64_t n = rows.begin; n < rows.end; ++n) {
    // strip (n / kDepthBlock, tile j) starts at ((n / kDepthBlock) * tiles + j) * kDepthBlock * TC
    scalar_t* row = dst + ((n / kDepthBlock) * tiles * kDepthBlock + n % kDepthBlock) * TC;
    const scalar_t* src = x + n * in;
    for (int64_t j = 0; j < tiles; ++j, row += kDepthBlock * TC) {
      const int64_t count = std::min(TC, in - j * TC);
      for (int64_t t = 0; t < count; ++t) row[t] = src[plan.col(j * TC + t)];
      std::fill(row + count, row + TC, scalar_t(0));
    }
  }
}

// x with its columns in permuted order (x itself when the column order is the identity).
template <typename scalar_t>
at::Tensor permuted_columns(const at::Tensor& x, const MaskPlan& plan) {
  if (plan.col_perm.empty()) return x;
  at::Tensor xp = at::empty_like(x);
  const int64_t in = plan.in_features;
  const scalar_t* src = x.data_ptr<scalar_t>();
  scalar_t* dst = xp.data_ptr<scalar_t>();
  at::parallel_for(0, x.size(0), 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t c = 0; c < in; ++c) dst[n * in + c] = src[n * in + plan.col_perm[c]];
  });
  return xp;
}

// One tile of C = A B: c[i, 0:width] = sum over k < depth of A(i, k) B(k, 0:width) for the rows
// i < rows <= kTileRows, where A(i, k) = a[i * a_row + k * a_k] and B(k, :) = b[k * b_k + 0:kTileCols]
// (a packed tile of the weight, or a strip of x); depth 0 writes zeros, and with accumulate c += instead.
// The 12 accumulators are named variables: GCC 12 keeps an array of them in registers but also stores it
// to the stack at every k. Missing rows repeat the last row's A (computed, not stored).
template <typename scalar_t>
void gemm_tile(const scalar_t* a, int64_t a_row, int64_t a_k, int64_t rows, const scalar_t* b, int64_t b_k,
               int64_t depth, scalar_t* c, int64_t ldc, int64_t width, bool accumulate = false) {
  static_assert(kTileRows == 6, "the accumulators below are 6 rows x 2 vectors");
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  const scalar_t* a_rows[kTileRows];
  for (int64_t i = 0; i < kTileRows; ++i) a_rows[i] = a + std::min(i, rows - 1) * a_row;
  const scalar_t *a0 = a_rows[0], *a1 = a_rows[1], *a2 = a_rows[2], *a3 = a_rows[3], *a4 = a_rows[4],
                 *a5 = a_rows[5];
  V c00(0), c01(0), c10(0), c11(0), c20(0), c21(0), c30(0), c31(0), c40(0), c41(0), c50(0), c51(0);
  for (int64_t k = 0; k < depth; ++k, b += b_k) {
    const int64_t a_at = k * a_k;
    const V b0 = V::loadu(b), b1 = V::loadu(b + W);
    const auto row_step = [&](const scalar_t* a_i, V& lo, V& hi) {  // one row: its 2 accumulators
      const V a_ik(a_i[a_at]);
      lo = at::vec::fmadd(a_ik, b0, lo);
      hi = at::vec::fmadd(a_ik, b1, hi);
    };
    row_step(a0, c00, c01);
    row_step(a1, c10, c11);
    row_step(a2, c20, c21);
    row_step(a3, c30, c31);
    row_step(a4, c40, c41);
    row_step(a5, c50, c51);
  }
  const V tile[kTileRows][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int64_t i = 0; i < rows; ++i) {
    scalar_t* row = c + i * ldc;
    const int64_t lo = std::min(width, W), hi = width - lo;
    (accumulate ? tile[i][0] + V::loadu(row, lo) : tile[i][0]).store(row, lo);
    if (hi > 0) (accumulate ? tile[i][1] + V::loadu(row + W, hi) : tile[i][1]).store(row + W, hi);
  }
}

// The K range each column tile of B needs: the hull of what its columns keep (lines[c] = the kept K of
// B's column c), so the masked rest of the staircase is skipped.
template <typename scalar_t>
std::vector<Range> tile_depths(const std::vector<Range>& lines) {
  constexpr int64_t TC = kTileCols<scalar_t>;
  std::vector<Range> depths;
  for (int64_t j = 0; j * TC < int64_t(lines.size()); ++j) depths.push_back(hull(lines, j * TC, (j + 1) * TC));
  return depths;
}

// C[rows, :] = A[rows, :] B for a block of A's rows (A row-major with row stride lda, C [.., cols] with
// row stride cols), tile by tile of B's columns, each tile over its K range only, in chunks of
// kDepthChunk of K (the first chunk writes C, also zeros where a tile's range starts later).
template <typename scalar_t>
void block_gemm(const scalar_t* a, int64_t lda, const at::Tensor& b_packed, const std::vector<Range>& depths,
                scalar_t* c, int64_t cols, Range rows) {
  constexpr int64_t TC = kTileCols<scalar_t>;
  const int64_t K = b_packed.size(1);
  const scalar_t* b = b_packed.data_ptr<scalar_t>();
  for (int64_t chunk = 0; chunk == 0 || chunk < K; chunk += kDepthChunk) {
    for (int64_t j = 0; j < int64_t(depths.size()); ++j) {
      const Range k{std::max(depths[j].begin, chunk), std::min(depths[j].end, chunk + kDepthChunk)};
      if (chunk > 0 && k.size() <= 0) continue;
      for (int64_t m = rows.begin; m < rows.end; m += kTileRows)
        gemm_tile<scalar_t>(a + m * lda + k.begin, lda, 1, std::min<int64_t>(kTileRows, rows.end - m),
                            b + (j * K + k.begin) * TC, TC, std::max<int64_t>(k.size(), 0), c + m * cols + j * TC,
                            cols, std::min(TC, cols - j * TC), /*accumulate=*/chunk > 0);
    }
  }
}

// dst[0:n) += src[0:n)
template <typename scalar_t>
void add_row(scalar_t* dst, const scalar_t* src, int64_t n) {
  using V = Vec<scalar_t>;
  for (int64_t i = 0; i < n; i += V::size()) {
    const int64_t count = std::min<int64_t>(V::size(), n - i);
    (V::loadu(dst + i, count) + V::loadu(src + i, count)).store(dst + i, count);
  }
}

// Calls block_fn(thread, rows) on blocks of at most kRowBlock of the rows [0, N), in parallel: thread t
// of T takes the tiles of kTileRows rows [t * tiles / T, (t + 1) * tiles / T). (at::parallel_for over
// the blocks gave the thread holding the short last block less work: 608 against 672 of 1280 rows.)
template <typename F>
void for_row_blocks(int64_t N, const F& block_fn) {
  const int64_t threads = at::get_num_threads(), tiles = (N + kTileRows - 1) / kTileRows;
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t end = std::min(N, (t + 1) * tiles / threads * kTileRows);
      for (int64_t row = std::min(N, t * tiles / threads * kTileRows); row < end; row += kRowBlock)
        block_fn(t, Range{row, std::min(end, row + kRowBlock)});
    }
  });
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight, const scalar_t* bias, Activation act,
                    const MaskPlan& plan, at::Tensor& y) {
  using V = Vec<scalar_t>;
  const int64_t N = x.size(0), out = plan.out_features, in = plan.in_features;
  const at::Tensor wm_t = packed_weight<scalar_t>(weight, plan, /*transpose=*/true);
  const at::Tensor xp = permuted_columns<scalar_t>(x, plan);
  const std::vector<Range> depths = tile_depths<scalar_t>(plan.row_cols);  // tile of outputs -> its inputs
  // GEMM results in permuted row order; y itself when the row order is the identity.
  at::Tensor yp = plan.row_perm.empty() ? y : at::empty_like(y);
  const scalar_t* x_data = xp.data_ptr<scalar_t>();
  scalar_t *y_data = y.data_ptr<scalar_t>(), *yp_data = yp.data_ptr<scalar_t>();
  for_row_blocks(N, [&](int64_t, Range rows) {
    block_gemm<scalar_t>(x_data, in, wm_t, depths, yp_data, out, rows);
    // Epilogue: y = act(y + b), in place, or scattered back to the original row order.
    for (int64_t n = rows.begin; n < rows.end; ++n) {
      scalar_t* y_row = y_data + n * out;
      if (plan.row_perm.empty()) {
        for (int64_t o = 0; o < out; o += V::size()) {
          const int64_t count = std::min<int64_t>(V::size(), out - o);
          V v = V::loadu(y_row + o, count);
          if (bias != nullptr) v = v + V::loadu(bias + o, count);
          activate(v, act).store(y_row + o, count);
        }
      } else {
        const scalar_t* yp_row = yp_data + n * out;
        for (int64_t r = 0; r < out; ++r) {
          const int64_t o = plan.row_perm[r];
          y_row[o] = activate(yp_row[r] + (bias != nullptr ? bias[o] : scalar_t(0)), act);
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                     const scalar_t* output, Activation act, const MaskPlan& plan, at::Tensor& grad_x,
                     at::Tensor& grad_w, at::Tensor& grad_b) {
  using V = Vec<scalar_t>;
  constexpr int64_t TC = kTileCols<scalar_t>;
  const int64_t N = x.size(0), out = plan.out_features, in = plan.in_features;
  const at::Tensor wm = packed_weight<scalar_t>(weight, plan, /*transpose=*/false);
  const std::vector<Range> depths = tile_depths<scalar_t>(plan.col_rows);  // tile of inputs -> its outputs
  // grad_W's operands: gz = d loss / d pre-activation in permuted row order, rows ld apart, and x packed
  // into strips (pack_input_strips). gz's rows are an odd number of cache lines apart, so that the column
  // strips grad_W reads (kDepthBlock rows) spread over all L1 sets (rows 2 KB apart share 2 of its 64).
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  const int64_t ld = ((out + kLine - 1) / kLine | 1) * kLine, in_tiles = (in + TC - 1) / TC;
  const at::Tensor gz = scratch_buffer(kGradSlot, {N, ld}, grad.options());
  const int64_t depth_blocks = (N + kDepthBlock - 1) / kDepthBlock;
  const at::Tensor x_strips = scratch_buffer(kInputSlot, {depth_blocks, in_tiles, kDepthBlock, TC}, x.options());
  at::Tensor gxp = plan.col_perm.empty() ? grad_x : at::empty_like(grad_x);
  // Column sums of gz per tile of kTileRows rows (a tile never straddles two threads' rows), added up in
  // a fixed order below: grad_b has the same bits for any thread count.
  const int64_t row_tiles = (N + kTileRows - 1) / kTileRows;
  const at::Tensor bias_partials = scratch_buffer(kBiasSlot, {row_tiles, out}, grad.options());
  const scalar_t* g = grad.data_ptr<scalar_t>();
  const bool grad_by_column = grad.stride(1) == 1;  // else 0: one value per row
  scalar_t *gz_data = gz.data_ptr<scalar_t>(), *partials = bias_partials.data_ptr<scalar_t>();
  scalar_t *gx_data = grad_x.data_ptr<scalar_t>(), *gxp_data = gxp.data_ptr<scalar_t>();
  scalar_t* xs = x_strips.data_ptr<scalar_t>();

  // Pass 1, per block of rows: gz (activation gradient, permuted), its column sums, grad_x, x strips.
  for_row_blocks(N, [&](int64_t, Range rows) {
    for (int64_t n = rows.begin; n < rows.end; ++n) {
      scalar_t* partial = partials + n / kTileRows * out;
      scalar_t* gz_row = gz_data + n * ld;
      const scalar_t *g_row = g + n * grad.stride(0), *out_row = output != nullptr ? output + n * out : nullptr;
      if (plan.row_perm.empty()) {
        for (int64_t r = 0; r < out; r += V::size()) {
          const int64_t count = std::min<int64_t>(V::size(), out - r);
          const V o = out_row != nullptr ? V::loadu(out_row + r, count) : V(0);
          const V g_r = grad_by_column ? V::loadu(g_row + r, count) : V(g_row[0]);
          activation_grad(g_r, o, act).store(gz_row + r, count);
        }
      } else {
        for (int64_t r = 0; r < out; ++r) {
          const int64_t o = plan.row_perm[r];
          gz_row[r] = activation_grad(g_row[o * grad.stride(1)], out_row != nullptr ? out_row[o] : scalar_t(0), act);
        }
      }
      if (n % kTileRows == 0) {
        std::copy(gz_row, gz_row + out, partial);
      } else {
        add_row(partial, gz_row, out);
      }
    }
    // gx[rows] = gz[rows] @ Wm
    block_gemm<scalar_t>(gz_data, ld, wm, depths, gxp_data, in, rows);
    if (!plan.col_perm.empty()) {
      for (int64_t n = rows.begin; n < rows.end; ++n)
        for (int64_t col = 0; col < in; ++col) gx_data[n * in + plan.col_perm[col]] = gxp_data[n * in + col];
    }
    pack_input_strips(x.data_ptr<scalar_t>(), plan, rows, xs);  // grad_W's B operand
  });
  std::vector<scalar_t> sums(partials, partials + out);  // permuted order
  for (int64_t tile = 1; tile < row_tiles; ++tile) add_row(sums.data(), partials + tile * out, out);
  for (int64_t r = 0; r < out; ++r) grad_b.data_ptr<scalar_t>()[plan.row(r)] = sums[r];

  // Pass 2: grad_W = gz^T @ x (K = N) on the tiles of kTileRows rows x kTileCols columns that hold kept
  // entries: A(r, n) = gz[n, r], B = x strips. K runs in blocks of kDepthBlock, so a tile's two operand
  // strips stay in L1. The staircase makes later rows costlier, so threads take every threads-th tile
  // row. Then each thread sets its rows to exactly 0 outside the mask (also where no GEMM wrote), in the
  // original order.
  at::Tensor gwp = (plan.row_perm.empty() && plan.col_perm.empty()) ? grad_w : at::empty_like(grad_w);
  scalar_t *gwp_data = gwp.data_ptr<scalar_t>(), *gw_data = grad_w.data_ptr<scalar_t>();
  auto finish_row = [&](int64_t r) {
    const scalar_t* src = gwp_data + r * in;
    scalar_t* dst = gw_data + plan.row(r) * in;
    if (gwp_data == gw_data) {  // in place: zero what lies between the runs
      int64_t c = 0;
      for (const Range& run : plan.runs[r]) {
        std::fill(dst + c, dst + run.begin, scalar_t(0));
        c = run.end;
      }
      std::fill(dst + c, dst + in, scalar_t(0));
    } else {  // scatter the runs back to the original column order
      std::fill(dst, dst + in, scalar_t(0));
      for (const Range& run : plan.runs[r])
        for (int64_t j = run.begin; j < run.end; ++j) dst[plan.col(j)] = src[j];
    }
  };
  const int64_t threads = at::get_num_threads(), tile_rows = (out + kTileRows - 1) / kTileRows;
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t k = 0; k < N; k += kDepthBlock) {
        const int64_t depth = std::min(kDepthBlock, N - k);
        for (int64_t i = t; i < tile_rows; i += threads) {
          const Range rows{i * kTileRows, std::min(out, (i + 1) * kTileRows)};
          const Range cols = hull(plan.row_cols, rows.begin, rows.end);
          for (int64_t j = cols.begin / TC; j * TC < cols.end; ++j)
            gemm_tile<scalar_t>(gz_data + k * ld + rows.begin, 1, ld, rows.size(),
                                xs + (k / kDepthBlock * in_tiles + j) * kDepthBlock * TC, TC, depth,
                                gwp_data + rows.begin * in + j * TC, in, std::min(TC, in - j * TC), k > 0);
        }
      }
      for (int64_t r = t * kTileRows; r < out; r += threads * kTileRows)
        for (int64_t row = r; row < std::min(out, r + kTileRows); ++row) finish_row(row);
    }
  });
}

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const std::optional<at::Tensor>& bias, c10::string_view activation) {
  check_masked_linear_args(x, weight, mask, bias);
  const Activation act = parse_activation(activation);
  const int64_t out = weight.size(0), in = weight.size(1);
  const at::Tensor x2 = as_matrix(x, in), wc = weight.contiguous();
  at::Tensor y = at::empty({x2.size(0), out}, x.options());
  if (x2.size(0) > 0 && out > 0) {
    const auto plan = cached_plan(mask);
    const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_linear_cpu", [&] {
      forward_kernel<scalar_t>(x2, wc, bc.defined() ? bc.data_ptr<scalar_t>() : nullptr, act, *plan, y);
    });
  }
  return y.view(output_shape(x, out));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
    const std::optional<at::Tensor>& output, c10::string_view activation) {
  check_masked_linear_args(x, weight, mask, std::nullopt);
  const Activation act = parse_activation(activation);
  check_masked_linear_grad_args(grad, x, weight, output, act);
  const int64_t out = weight.size(0), in = weight.size(1);
  const at::Tensor x2 = as_matrix(x, in), wc = weight.contiguous();
  // The kernel reads the gradient's rows with any stride and its columns with stride 1 or 0, so the
  // gradient of a sum or mean (one value expanded, strides 0) is read in place; other layouts are copied
  // into a kept buffer.
  const at::Tensor g_view = grad.to(x.scalar_type()).reshape({x2.size(0), out});
  const at::Tensor g2 = g_view.stride(1) == 1 || g_view.stride(1) == 0
                            ? g_view
                            : scratch_buffer(kGradInSlot, g_view.sizes(), g_view.options()).copy_(g_view);
  const at::Tensor out2 = output.has_value() ? as_matrix(output->to(x.scalar_type()), out)
                                             : at::Tensor();
  at::Tensor grad_x = at::empty_like(x2), grad_w = at::empty_like(wc), grad_b = at::empty({out}, x.options());
  if (x2.size(0) > 0 && out > 0) {
    const auto plan = cached_plan(mask);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_linear_backward_cpu", [&] {
      backward_kernel<scalar_t>(g2, x2, wc, out2.defined() ? out2.data_ptr<scalar_t>() : nullptr, act, *plan,
                                grad_x, grad_w, grad_b);
    });
  } else {  // no rows or no outputs: nothing flows back
    grad_x.zero_();
    grad_w.zero_();
    grad_b.zero_();
  }
  return {grad_x.view(x.sizes()), grad_w, grad_b};
}

// ---- autograd in C++ ----
// fastlv.ops.masked_linear calls fastlv_C::masked_linear directly in eager mode on the cpp and cuda
// backends, with this Autograd kernel: the Python autograd of the custom op fastlv::masked_linear (kept
// for torch.compile, the other backends and opcheck) costs ~0.3 ms per forward+backward, 5% of the layer
// at the MADE shape. Both paths run the same kernels.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The gradients as a node of their own, so that differentiating them again (create_graph=True) raises.
struct MaskedLinearBackward : torch::autograd::Function<MaskedLinearBackward> {
  static variable_list forward(AutogradContext*, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& mask, const std::optional<at::Tensor>& output,
                               const std::string& activation) {
    static const auto kernel =
        kernel_op<decltype(masked_linear_backward_cpu)>("fastlv_C::masked_linear_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto [grad_x, grad_w, grad_b] = kernel.call(grad, x, weight, mask, output, activation);
    return {grad_x, grad_w, grad_b};
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "fastlv: double backward through fastlv::masked_linear is not implemented");
  }
};

struct MaskedLinear : torch::autograd::Function<MaskedLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                            const std::optional<at::Tensor>& bias, const std::string& activation) {
    static const auto kernel = kernel_op<decltype(masked_linear_cpu)>("fastlv_C::masked_linear");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::Tensor y = kernel.call(x, weight, mask, bias, activation);
    // relu's gradient is read from the output; without an activation nothing of size [..., out] is kept.
    ctx->save_for_backward({x, weight, mask, activation == "relu" ? y : at::Tensor()});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["has_bias"] = bias.has_value();
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> output = saved[3].defined() ? std::optional(saved[3]) : std::nullopt;
    const variable_list g = MaskedLinearBackward::apply(grads[0], saved[0], saved[1], saved[2], output,
                                                        ctx->saved_data["activation"].toStringRef());
    // One per forward argument: x, weight, mask (none), bias, activation (none).
    return {g[0], g[1], at::Tensor(), ctx->saved_data["has_bias"].toBool() ? g[2] : at::Tensor(), at::Tensor()};
  }
};

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                                  const std::optional<at::Tensor>& bias, c10::string_view activation) {
  return MaskedLinear::apply(x, weight, mask, bias, std::string(activation));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlv_C, m) {
  m.def("masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias, str activation) -> Tensor");
  m.def("masked_linear_backward(Tensor grad, Tensor x, Tensor weight, Tensor mask, Tensor? output, "
        "str activation) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastlv_C, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_backward", &masked_linear_backward_cpu);
}

TORCH_LIBRARY_IMPL(fastlv_C, Autograd, m) { m.impl("masked_linear", &masked_linear_autograd); }

}  // namespace fastlv
