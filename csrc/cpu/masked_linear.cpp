// CPU kernels of the masked linear layer y = act(x @ (W ⊙ M)^T + b) (fastlv_C::masked_linear and its
// backward), the layer of MADE (Germain et al. 2015) and of the masked low-level model of Dai et al.
// 2019, Sec. 5.2.
//
// A MADE mask keeps W[o, i] iff degree_out[o] >= degree_in[i] (> for the output layer): once the rows
// are sorted by how many inputs they see and the columns by how many outputs see them, every row sees
// a prefix of the columns, so the mask is a staircase and about half of it is zero. The kernels find
// that order from the mask itself (MaskPlan, cached per mask), cut the rows into a few panels
// (kPanelRows) and call ATen GEMMs on each panel's columns only, the hull of what its rows keep:
//   forward   y[:, rows_p] = x[:, cols_p] @ Wm[rows_p, cols_p]^T;
//   grad_x    gx[:, cols_p] += gz[:, rows_p] @ Wm[rows_p, cols_p];
//   grad_W    gW[rows_p, cols_p] = gz[:, rows_p]^T @ x[:, cols_p].
// With P panels a staircase costs 1/2 + 1/(2P) of the dense FLOPs. Wm = W where the mask keeps, exactly
// 0 elsewhere, so masked entries inside a panel's columns contribute nothing; gW is set to exactly 0
// outside the mask. Any 0/1 pattern is handled correctly; only the speed depends on the pattern being
// (close to) a staircase.
// Forward and grad_x run over chunks of x's rows in parallel, each thread calling single-threaded
// GEMMs, with bias + activation (forward) and the activation gradient + bias gradient (backward)
// fused into a pass over the chunk while it is in cache.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/core/StorageImpl.h>
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

// Output rows per panel, about: a panel's GEMMs skip the columns none of its rows keep, so more panels
// skip more of a staircase (a fraction 1/(2P) of the dense FLOPs is left) but each GEMM gets smaller and
// packs its input again. In MKL timings of the panel GEMMs alone, ~128 rows (4 panels of a 512 layer,
// 16 of the 3000-row MADE output layer) was as fast as or faster than 64 or 256.
constexpr int64_t kPanelRows = 128;
constexpr int64_t kMaxPanels = 16;
// Rows of x per parallel chunk, at most: MKL's GEMMs lose efficiency below a few hundred rows, so a
// chunk is as large as possible while every thread gets one.
constexpr int64_t kChunkRows = 1024;

struct Range {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
  bool operator==(const Range& o) const { return begin == o.begin && end == o.end; }
};

// Consecutive output rows and the hull of the input columns they keep (both in permuted order); cols is
// empty when the rows keep nothing.
struct Panel {
  Range rows, cols;
};

// The mask in a permuted order where it is (for MADE masks) a staircase, and its row panels.
struct MaskPlan {
  int64_t out_features = 0, in_features = 0;
  std::vector<int64_t> row_perm, col_perm;  // permuted position -> original index; empty: identity
  std::vector<std::vector<Range>> runs;     // per row: the kept columns as maximal runs (permuted order)
  std::vector<Panel> panels;                // cover the rows 0..out in order
  size_t widest = 0;                        // the panel with the most columns

  int64_t row(int64_t r) const { return row_perm.empty() ? r : row_perm[r]; }
  int64_t col(int64_t c) const { return col_perm.empty() ? c : col_perm[c]; }
};

// About equal panels of kPanelRows rows; neighbours with the same column hull are merged (a dense mask
// gives one panel: one GEMM per product).
std::vector<Panel> row_panels(const std::vector<std::vector<Range>>& runs, int64_t in) {
  const int64_t out = runs.size();
  const int64_t count = std::clamp<int64_t>((out + kPanelRows / 2) / kPanelRows, 1, kMaxPanels);
  std::vector<Panel> panels;
  for (int64_t p = 0; p < count; ++p) {
    const Range rows{out * p / count, out * (p + 1) / count};
    Range cols{in, 0};  // first kept column, last + 1
    for (int64_t r = rows.begin; r < rows.end; ++r) {
      if (runs[r].empty()) continue;
      cols = {std::min(cols.begin, runs[r].front().begin), std::max(cols.end, runs[r].back().end)};
    }
    if (cols.size() <= 0) cols = {0, 0};
    if (!panels.empty() && panels.back().cols == cols) {
      panels.back().rows.end = rows.end;
    } else {
      panels.push_back({rows, cols});
    }
  }
  return panels;
}

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
    }
  }
  plan->panels = row_panels(plan->runs, in);
  for (size_t p = 0; p < plan->panels.size(); ++p)
    if (plan->panels[p].cols.size() > plan->panels[plan->widest].cols.size()) plan->widest = p;
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

// Wm in permuted order, within each panel's columns (the GEMMs read nothing else): W[row(r), col(c)]
// where kept, exactly 0 elsewhere.
template <typename scalar_t>
at::Tensor masked_weight(const at::Tensor& weight, const MaskPlan& plan) {
  const int64_t in = plan.in_features;
  at::Tensor wm = at::empty({plan.out_features, in}, weight.options());
  const scalar_t* w = weight.data_ptr<scalar_t>();
  scalar_t* dst = wm.data_ptr<scalar_t>();
  at::parallel_for(0, int64_t(plan.panels.size()), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Range cols = plan.panels[p].cols;
      for (int64_t r = plan.panels[p].rows.begin; r < plan.panels[p].rows.end; ++r) {
        const scalar_t* src = w + plan.row(r) * in;
        scalar_t* row = dst + r * in;
        int64_t c = cols.begin;  // written up to here
        for (const Range& run : plan.runs[r]) {
          std::fill(row + c, row + run.begin, scalar_t(0));
          if (plan.col_perm.empty()) {
            std::copy(src + run.begin, src + run.end, row + run.begin);
          } else {
            for (int64_t j = run.begin; j < run.end; ++j) row[j] = src[plan.col_perm[j]];
          }
          c = run.end;
        }
        std::fill(row + c, row + cols.end, scalar_t(0));
      }
    }
  });
  return wm;
}

// x with its columns in permuted order (x itself when the column order is the identity).
template <typename scalar_t>
at::Tensor permuted_columns(const at::Tensor& x, const MaskPlan& plan) {
  if (plan.col_perm.empty()) return x;
  const int64_t N = x.size(0), in = plan.in_features;
  at::Tensor xp = at::empty_like(x);
  const scalar_t* src = x.data_ptr<scalar_t>();
  scalar_t* dst = xp.data_ptr<scalar_t>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t c = 0; c < in; ++c) dst[n * in + c] = src[n * in + plan.col_perm[c]];
  });
  return xp;
}

// Rows of x per parallel chunk: at most kChunkRows, and a multiple of the thread count of chunks.
int64_t chunk_rows(int64_t N) {
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = threads * std::max<int64_t>(1, (N + threads * kChunkRows - 1) / (threads * kChunkRows));
  return std::max<int64_t>(1, (N + chunks - 1) / chunks);
}

// A block of the permuted masked weight: rows x cols.
at::Tensor block_of(const at::Tensor& wm, Range rows, Range cols) {
  return wm.narrow(0, rows.begin, rows.size()).narrow(1, cols.begin, cols.size());
}

// Forward GEMMs of some rows of x: y[:, rows_p] = x[:, cols_p] @ Wm[rows_p, cols_p]^T per panel p (the
// columns outside cols_p are masked for all of rows_p), 0 for a panel that keeps nothing.
void forward_gemms(at::Tensor y_rows, const at::Tensor& x_rows, const at::Tensor& wm, const MaskPlan& plan) {
  for (const Panel& panel : plan.panels) {
    at::Tensor y_block = y_rows.narrow(1, panel.rows.begin, panel.rows.size());
    if (panel.cols.size() == 0) {
      y_block.zero_();
    } else {
      at::mm_out(y_block, x_rows.narrow(1, panel.cols.begin, panel.cols.size()),
                 block_of(wm, panel.rows, panel.cols).t());
    }
  }
}

// grad_x GEMMs of some rows: gx[:, cols_p] += gz[:, rows_p] @ Wm[rows_p, cols_p] over the panels p (one
// GEMM as wide as the panel's columns, K = its rows). The widest panel writes (=) first and the columns
// outside it are zeroed; the others add.
void grad_x_gemms(at::Tensor gx_rows, const at::Tensor& gz_rows, const at::Tensor& wm, const MaskPlan& plan) {
  const Panel& widest = plan.panels[plan.widest];
  gx_rows.narrow(1, 0, widest.cols.begin).zero_();
  gx_rows.narrow(1, widest.cols.end, plan.in_features - widest.cols.end).zero_();
  if (widest.cols.size() == 0) return;  // no panel keeps anything
  at::Tensor gx_block = gx_rows.narrow(1, widest.cols.begin, widest.cols.size());
  at::mm_out(gx_block, gz_rows.narrow(1, widest.rows.begin, widest.rows.size()), block_of(wm, widest.rows, widest.cols));
  for (const Panel& panel : plan.panels) {
    if (&panel == &widest || panel.cols.size() == 0) continue;
    gx_rows.narrow(1, panel.cols.begin, panel.cols.size())
        .addmm_(gz_rows.narrow(1, panel.rows.begin, panel.rows.size()), block_of(wm, panel.rows, panel.cols));
  }
}

Range chunk_of(int64_t chunk, int64_t rows_per_chunk, int64_t N) {
  return {chunk * rows_per_chunk, std::min(N, (chunk + 1) * rows_per_chunk)};
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight, const scalar_t* bias, Activation act,
                    const MaskPlan& plan, at::Tensor& y) {
  using V = Vec<scalar_t>;
  const int64_t N = x.size(0), out = plan.out_features;
  const at::Tensor wm = masked_weight<scalar_t>(weight, plan), xp = permuted_columns<scalar_t>(x, plan);
  // GEMM results in permuted row order; y itself when the row order is the identity.
  at::Tensor yp = plan.row_perm.empty() ? y : at::empty_like(y);
  scalar_t *y_data = y.data_ptr<scalar_t>(), *yp_data = yp.data_ptr<scalar_t>();
  const int64_t rows = chunk_rows(N);
  at::parallel_for(0, (N + rows - 1) / rows, 1, [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView guard;  // worker threads: plain kernels, no autograd
    for (int64_t c = c0; c < c1; ++c) {
      const Range chunk = chunk_of(c, rows, N);
      const at::Tensor y_rows = yp.narrow(0, chunk.begin, chunk.end - chunk.begin);
      const at::Tensor x_rows = xp.narrow(0, chunk.begin, chunk.end - chunk.begin);
      forward_gemms(y_rows, x_rows, wm, plan);
      // Epilogue: y = act(y + b), in place, or scattered back to the original row order.
      for (int64_t n = chunk.begin; n < chunk.end; ++n) {
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
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                     const scalar_t* output, Activation act, const MaskPlan& plan, at::Tensor& grad_x,
                     at::Tensor& grad_w, at::Tensor& grad_b) {
  using V = Vec<scalar_t>;
  const int64_t N = x.size(0), out = plan.out_features, in = plan.in_features;
  const at::Tensor wm = masked_weight<scalar_t>(weight, plan), xp = permuted_columns<scalar_t>(x, plan);
  // gz = d loss / d pre-activation in permuted row order; grad itself when nothing changes it.
  const bool gz_is_grad = act == Activation::kNone && plan.row_perm.empty();
  const at::Tensor gz = gz_is_grad ? grad : at::empty_like(grad);
  at::Tensor gxp = plan.col_perm.empty() ? grad_x : at::empty_like(grad_x);
  const int64_t rows = chunk_rows(N), chunks = (N + rows - 1) / rows;
  at::Tensor bias_partials = at::zeros({chunks, out}, grad.options());  // per-chunk column sums of gz
  const scalar_t* g = grad.data_ptr<scalar_t>();
  scalar_t *gz_data = gz.data_ptr<scalar_t>(), *partials = bias_partials.data_ptr<scalar_t>();
  scalar_t *gx_data = grad_x.data_ptr<scalar_t>(), *gxp_data = gxp.data_ptr<scalar_t>();

  // Pass 1, per chunk of rows: gz (activation gradient, permuted), its column sums, then grad_x.
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    at::AutoDispatchBelowADInplaceOrView guard;
    for (int64_t c = c0; c < c1; ++c) {
      const Range chunk = chunk_of(c, rows, N);
      scalar_t* partial = partials + c * out;
      for (int64_t n = chunk.begin; n < chunk.end; ++n) {
        scalar_t* gz_row = gz_data + n * out;
        const scalar_t *g_row = g + n * out, *out_row = output != nullptr ? output + n * out : nullptr;
        if (!gz_is_grad && !plan.row_perm.empty()) {
          for (int64_t r = 0; r < out; ++r) {
            const int64_t o = plan.row_perm[r];
            gz_row[r] = activation_grad(g_row[o], out_row != nullptr ? out_row[o] : scalar_t(0), act);
          }
        }
        for (int64_t r = 0; r < out; r += V::size()) {
          const int64_t count = std::min<int64_t>(V::size(), out - r);
          V gz_vec = V::loadu(gz_row + r, count);
          if (!gz_is_grad && plan.row_perm.empty()) {  // relu, rows in place
            gz_vec = activation_grad(V::loadu(g_row + r, count), V::loadu(out_row + r, count), act);
            gz_vec.store(gz_row + r, count);
          }
          (V::loadu(partial + r, count) + gz_vec).store(partial + r, count);
        }
      }
      const at::Tensor gx_rows = gxp.narrow(0, chunk.begin, chunk.end - chunk.begin);
      const at::Tensor gz_rows = gz.narrow(0, chunk.begin, chunk.end - chunk.begin);
      grad_x_gemms(gx_rows, gz_rows, wm, plan);
      if (!plan.col_perm.empty()) {
        for (int64_t n = chunk.begin; n < chunk.end; ++n)
          for (int64_t col = 0; col < in; ++col) gx_data[n * in + plan.col_perm[col]] = gxp_data[n * in + col];
      }
    }
  });
  const at::Tensor bias_sums = bias_partials.sum(0);  // permuted order
  const scalar_t* sums = bias_sums.data_ptr<scalar_t>();
  for (int64_t r = 0; r < out; ++r) grad_b.data_ptr<scalar_t>()[plan.row(r)] = sums[r];

  // Pass 2: grad_W per panel, gW[rows_p, cols_p] = gz[:, rows_p]^T @ x[:, cols_p] (K = N); every thread
  // takes an equal share of every panel's rows.
  at::Tensor gwp = (plan.row_perm.empty() && plan.col_perm.empty()) ? grad_w : at::empty_like(grad_w);
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    at::AutoDispatchBelowADInplaceOrView guard;
    for (int64_t t = t0; t < t1; ++t) {
      for (const Panel& panel : plan.panels) {
        const Range rows{panel.rows.begin + panel.rows.size() * t / threads,
                         panel.rows.begin + panel.rows.size() * (t + 1) / threads};
        if (rows.size() == 0 || panel.cols.size() == 0) continue;
        at::Tensor gw_block = block_of(gwp, rows, panel.cols);
        at::mm_out(gw_block, gz.narrow(1, rows.begin, rows.size()).t(),
                   xp.narrow(1, panel.cols.begin, panel.cols.size()));
      }
    }
  });
  // Exactly 0 outside the mask (also where no GEMM wrote), back in the original order.
  const scalar_t* gwp_data = gwp.data_ptr<scalar_t>();
  scalar_t* gw_data = grad_w.data_ptr<scalar_t>();
  at::parallel_for(0, out, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
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
  const at::Tensor g2 = as_matrix(grad.to(x.scalar_type()), out);
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

}  // namespace fastlv
