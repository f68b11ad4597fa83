// CPU kernels of the masked linear layer y = act(x @ (W ⊙ M)^T + b) (fastlv_C::masked_linear and its
// backward), the layer of MADE (Germain et al. 2015) and of the masked low-level model of Dai et al.
// 2019, Sec. 5.2.
//
// A MADE mask keeps W[o, i] iff degree_out[o] >= degree_in[i] (> for the output layer): once the rows
// are sorted by how many inputs they see and the columns by how many outputs see them, every row sees
// a prefix of the columns, so the mask is block lower-triangular and about half of it is zero. The
// kernels find that order and the blocks from the mask itself (MaskPlan, cached per mask) and call
// ATen GEMMs only on the blocks the mask keeps:
//   forward   per block of output rows, y[:, rows] = x[:, cols] @ Wm[rows, cols]^T over the column
//             ranges those rows see (one range, the prefix, for a MADE mask);
//   grad_x    per block of input columns, gx[:, cols] = gz[:, rows] @ Wm[rows, cols] over the row
//             ranges that see them;
//   grad_W    per row block and column range, gW[rows, cols] = gz[:, rows]^T @ x[:, cols].
// Wm = W where the mask keeps, exactly 0 elsewhere, so masked entries inside the diagonal blocks
// contribute nothing; gW is set to exactly 0 outside the mask. Any 0/1 pattern is handled correctly;
// only the speed depends on the pattern being (close to) triangular.
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

#include "common/checks.h"
#include "common/masked_linear_math.h"
#include "cpu/vec_math.h"

namespace fastlv {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

constexpr int64_t kBlock = 64;     // output rows (forward, grad_W) or input columns (grad_x) per block
constexpr int64_t kMinGap = 64;    // zero gaps narrower than this stay inside one GEMM range
// Rows of x per parallel chunk, at most: MKL's GEMMs lose efficiency below a few hundred rows, so a
// chunk is as large as possible while every thread gets one.
constexpr int64_t kChunkRows = 1024;

struct Range {
  int64_t begin, end;
  bool operator==(const Range& o) const { return begin == o.begin && end == o.end; }
};

// A block of lines (output rows, or input columns) and the ranges of the other axis it needs.
struct Span {
  Range block;
  std::vector<Range> ranges;
};

// The mask in a permuted order where it is (for MADE masks) block lower-triangular, and its blocks.
struct MaskPlan {
  int64_t out_features = 0, in_features = 0;
  std::vector<int64_t> row_perm, col_perm;  // permuted position -> original index; empty: identity
  std::vector<uint8_t> keep;                // [out, in] in permuted order, 1 where W is kept
  std::vector<Span> row_spans;              // blocks of output rows with the input ranges they see
  std::vector<Span> col_spans;              // blocks of input columns with the output ranges seeing them

  int64_t row(int64_t r) const { return row_perm.empty() ? r : row_perm[r]; }
  int64_t col(int64_t c) const { return col_perm.empty() ? c : col_perm[c]; }
};

// Blocks of kBlock lines; line l's entries are keep[l * line_stride + j * elem_stride], j < length.
// A block's ranges cover every j where one of its lines keeps an entry; blocks with identical ranges
// next to each other are merged (a dense mask gives one span: one GEMM).
std::vector<Span> block_spans(const uint8_t* keep, int64_t lines, int64_t length, int64_t line_stride,
                              int64_t elem_stride) {
  std::vector<Span> spans;
  std::vector<uint8_t> seen(length);
  for (int64_t b0 = 0; b0 < lines; b0 += kBlock) {
    const int64_t b1 = std::min(lines, b0 + kBlock);
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t l = b0; l < b1; ++l)
      for (int64_t j = 0; j < length; ++j) seen[j] |= keep[l * line_stride + j * elem_stride];
    std::vector<Range> ranges;
    for (int64_t j = 0; j < length; ++j) {
      if (!seen[j]) continue;
      if (!ranges.empty() && j - ranges.back().end < kMinGap) {
        ranges.back().end = j + 1;
      } else {
        ranges.push_back({j, j + 1});
      }
    }
    if (!spans.empty() && spans.back().ranges == ranges) {
      spans.back().block.end = b1;
    } else {
      spans.push_back({{b0, b1}, std::move(ranges)});
    }
  }
  return spans;
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
  plan->keep.resize(out * in);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) plan->keep[r * in + c] = k[plan->row(r) * in + plan->col(c)];
  plan->row_spans = block_spans(plan->keep.data(), out, in, in, 1);
  plan->col_spans = block_spans(plan->keep.data(), in, out, 1, in);
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

// Wm in permuted order: W[row(r), col(c)] where kept, exactly 0 elsewhere.
template <typename scalar_t>
at::Tensor masked_weight(const at::Tensor& weight, const MaskPlan& plan) {
  const int64_t out = plan.out_features, in = plan.in_features;
  at::Tensor wm = at::empty({out, in}, weight.options());
  const scalar_t* w = weight.data_ptr<scalar_t>();
  scalar_t* dst = wm.data_ptr<scalar_t>();
  at::parallel_for(0, out, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* src = w + plan.row(r) * in;
      const uint8_t* keep = plan.keep.data() + r * in;
      scalar_t* row = dst + r * in;
      if (plan.col_perm.empty()) {
        for (int64_t c = 0; c < in; ++c) row[c] = keep[c] ? src[c] : scalar_t(0);
      } else {
        for (int64_t c = 0; c < in; ++c) row[c] = keep[c] ? src[plan.col_perm[c]] : scalar_t(0);
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

// out[rows n0..n1, block] (= or +=) a[n0..n1, range] @ b(range, block) over the span's ranges, where
// b(range, block) is given by `rhs`; 0 when the span has no range.
template <typename Rhs>
void span_gemms(at::Tensor out_rows, const at::Tensor& a_rows, const Span& span, Rhs rhs) {
  at::Tensor out = out_rows.narrow(1, span.block.begin, span.block.end - span.block.begin);
  if (span.ranges.empty()) {
    out.zero_();
    return;
  }
  for (size_t i = 0; i < span.ranges.size(); ++i) {
    const Range& range = span.ranges[i];
    const at::Tensor a = a_rows.narrow(1, range.begin, range.end - range.begin);
    if (i == 0) {
      at::mm_out(out, a, rhs(range, span.block));
    } else {
      out.addmm_(a, rhs(range, span.block));
    }
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
      for (const Span& span : plan.row_spans) {
        span_gemms(y_rows, x_rows, span, [&](Range in_range, Range out_block) {
          return wm.narrow(0, out_block.begin, out_block.end - out_block.begin)
              .narrow(1, in_range.begin, in_range.end - in_range.begin)
              .t();
        });
      }
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
        if (!gz_is_grad) {
          for (int64_t r = 0; r < out; ++r) {
            const int64_t o = plan.row(r);
            gz_row[r] = activation_grad(g[n * out + o], output != nullptr ? output[n * out + o] : scalar_t(0), act);
          }
        }
        for (int64_t r = 0; r < out; r += V::size()) {
          const int64_t count = std::min<int64_t>(V::size(), out - r);
          (V::loadu(partial + r, count) + V::loadu(gz_row + r, count)).store(partial + r, count);
        }
      }
      const at::Tensor gx_rows = gxp.narrow(0, chunk.begin, chunk.end - chunk.begin);
      const at::Tensor gz_rows = gz.narrow(0, chunk.begin, chunk.end - chunk.begin);
      for (const Span& span : plan.col_spans) {
        span_gemms(gx_rows, gz_rows, span, [&](Range out_range, Range in_block) {
          return wm.narrow(0, out_range.begin, out_range.end - out_range.begin)
              .narrow(1, in_block.begin, in_block.end - in_block.begin);
        });
      }
      if (!plan.col_perm.empty()) {
        for (int64_t n = chunk.begin; n < chunk.end; ++n)
          for (int64_t col = 0; col < in; ++col) gx_data[n * in + plan.col_perm[col]] = gxp_data[n * in + col];
      }
    }
  });
  const at::Tensor bias_sums = bias_partials.sum(0);  // permuted order
  const scalar_t* sums = bias_sums.data_ptr<scalar_t>();
  for (int64_t r = 0; r < out; ++r) grad_b.data_ptr<scalar_t>()[plan.row(r)] = sums[r];

  // Pass 2: grad_W blocks, gW[rows, cols] = gz[:, rows]^T @ x[:, cols], one GEMM per span range (K = N),
  // spread over the threads by cost (largest first, each to the least loaded thread).
  std::vector<std::pair<Range, Range>> tasks;  // (output rows, input columns), permuted order
  for (const Span& span : plan.row_spans)
    for (const Range& range : span.ranges) tasks.push_back({span.block, range});
  const auto cost = [](const std::pair<Range, Range>& t) {
    return (t.first.end - t.first.begin) * (t.second.end - t.second.begin);
  };
  std::sort(tasks.begin(), tasks.end(), [&](const auto& a, const auto& b) { return cost(a) > cost(b); });
  const int64_t threads = at::get_num_threads();
  std::vector<std::vector<int64_t>> assigned(threads);
  std::vector<int64_t> load(threads, 0);
  for (int64_t t = 0; t < int64_t(tasks.size()); ++t) {
    const int64_t least = std::min_element(load.begin(), load.end()) - load.begin();
    assigned[least].push_back(t);
    load[least] += cost(tasks[t]);
  }
  at::Tensor gwp = (plan.row_perm.empty() && plan.col_perm.empty()) ? grad_w : at::empty_like(grad_w);
  at::parallel_for(0, threads, 1, [&](int64_t i0, int64_t i1) {
    at::AutoDispatchBelowADInplaceOrView guard;
    for (int64_t i = i0; i < i1; ++i) {
      for (const int64_t t : assigned[i]) {
        const auto& [out_rows, in_cols] = tasks[t];
        at::Tensor block = gwp.narrow(0, out_rows.begin, out_rows.end - out_rows.begin)
                               .narrow(1, in_cols.begin, in_cols.end - in_cols.begin);
        at::mm_out(block, gz.narrow(1, out_rows.begin, out_rows.end - out_rows.begin).t(),
                   xp.narrow(1, in_cols.begin, in_cols.end - in_cols.begin));
      }
    }
  });
  // Exactly 0 outside the mask (also where no GEMM wrote), back in the original order.
  const scalar_t* gwp_data = gwp.data_ptr<scalar_t>();
  scalar_t* gw_data = grad_w.data_ptr<scalar_t>();
  at::parallel_for(0, out, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* keep = plan.keep.data() + r * in;
      const scalar_t* src = gwp_data + r * in;
      scalar_t* dst = gw_data + plan.row(r) * in;
      for (int64_t c = 0; c < in; ++c) dst[plan.col(c)] = keep[c] ? src[c] : scalar_t(0);
    }
  });
}

Activation parse_activation(c10::string_view activation) {
  if (activation == "none") return Activation::kNone;
  if (activation == "relu") return Activation::kRelu;
  TORCH_CHECK(false, "fastlv: activation must be 'none' or 'relu', got '", std::string(activation), "'");
}

void check_masked_linear_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                              const std::optional<at::Tensor>& bias) {
  check_float(x, "x");
  check_same(weight, x, "weight", "x");
  TORCH_CHECK(weight.dim() == 2, "fastlv: weight must be 2-D [out, in], got shape ", weight.sizes());
  TORCH_CHECK(mask.device() == weight.device(), "fastlv: mask is on ", mask.device(), " but weight is on ",
              weight.device());
  check_shape(mask, weight.sizes(), "mask");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "fastlv: x must end in in_features = ",
              weight.size(1), " (weight is [out, in]), got shape ", x.sizes());
  if (bias.has_value()) {
    check_same(*bias, x, "bias", "x");
    check_shape(*bias, {weight.size(0)}, "bias");
  }
}

// x as a [rows, in] matrix (also when in == 0, where reshape(-1, in) is ambiguous).
at::Tensor as_matrix(const at::Tensor& x, int64_t in) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return x.reshape({rows, in}).contiguous();
}

std::vector<int64_t> output_shape(const at::Tensor& x, int64_t out) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  return shape;
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
  const int64_t out = weight.size(0), in = weight.size(1);
  check_device(grad, x, "grad", "x");
  check_shape(grad, output_shape(x, out), "grad");
  TORCH_CHECK(act == Activation::kNone || output.has_value(), "fastlv: the relu backward needs the output");
  if (output.has_value()) {
    check_device(*output, x, "output", "x");
    check_shape(*output, output_shape(x, out), "output");
  }
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
