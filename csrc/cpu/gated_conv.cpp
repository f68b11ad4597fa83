// CPU kernels of the gated dilated causal convolution (fastlv_C::gated_causal_conv1d and its backward),
// the convolution of every WaveNet block of STCN (Sec. 2.1, Appendix 7.1).
//
// Layout: the kernels work on time-major [T, B, C] matrices, so that a shift by s steps in time is a
// shift by s * B rows of the flattened [T * B, C] matrix and never crosses into another sequence. The
// causal convolution with k taps is then k GEMMs over row ranges of one matrix, with no padded copy:
//   pre[r] = sum_j x[r - s_j * B] @ W_j^T   (rows r >= s_j * B),  s_j = (k - 1 - j) * dilation,
// where W_j = weight[:, :, j] stacks the filter rows (first C_out) and gate rows (last C_out), so both
// convolutions are one GEMM. Inputs of any strides are accepted; a [B, C, T] tensor whose memory is
// time-major (x.permute(2, 0, 1) contiguous) is used without a copy, and the output has that memory.
//
// Row panels: the elementwise work is fused with the GEMMs that produce or consume it. Each parallel
// task takes a panel of kPanelRows rows, runs its GEMMs single-threaded (at::cpu:: GEMMs: no dispatcher, so
// no autograd check in worker threads; MKL is single-threaded inside at::parallel_for)
// and applies the elementwise pass while the panel is in cache, so pre / d_pre cross memory once.
// Forward: per panel, the k tap GEMMs, then bias + conditioning are added into the pre-activations
// (kept for the backward) and the gate is applied. Saving pre ([T, B, 2 C_out]) instead of recomputing it
// costs memory but saves the forward GEMMs again (a third of the backward's FLOPs).
// Backward: per panel, d_pre and its bias partial sums, then d_x = d_pre @ W_{k-1} (the unshifted tap);
// then whole-matrix GEMMs for the shifted taps' d_x (their rows cross panels) and for every d_W (long
// reductions over all rows, which MKL runs best as one call).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/gated_conv_checks.h"
#include "common/gated_conv_math.h"
#include "cpu/buffers.h"
#include "cpu/vec_math.h"

namespace fastlv {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// Rows per parallel task: a panel's pre-activations (1024 x 2 C_out) and inputs stay in cache between its
// GEMMs and its elementwise pass, and the panel GEMMs are still large enough for MKL's full rate.
constexpr int64_t kPanelRows = 1024;

int64_t panel_count(int64_t rows) { return (rows + kPanelRows - 1) / kPanelRows; }

// Adds bias (+ this row's conditioning) into the pre-activations of `rows` rows starting at row r0 and
// writes the gated output. cond is null, [B, 2C] (global) or [T * B, 2C] (local).
template <typename scalar_t>
void gate_rows(scalar_t* pre, const scalar_t* bias, const scalar_t* cond, bool cond_local, int64_t r0,
               int64_t r1, int64_t B, int64_t C, scalar_t* out) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  for (int64_t r = r0; r < r1; ++r) {
    scalar_t* f_row = pre + r * 2 * C;  // filter pre-activations, then the gate ones
    const scalar_t* c_row = cond == nullptr ? nullptr : cond + (cond_local ? r : r % B) * 2 * C;
    for (int64_t c = 0; c < C; c += W) {
      const int64_t n = std::min(W, C - c);
      V f = V::loadu(f_row + c, n) + V::loadu(bias + c, n);
      V g = V::loadu(f_row + C + c, n) + V::loadu(bias + C + c, n);
      if (c_row != nullptr) {
        f += V::loadu(c_row + c, n);
        g += V::loadu(c_row + C + c, n);
      }
      f.store(f_row + c, n);
      g.store(f_row + C + c, n);
      gate_forward(f, g).store(out + r * C + c, n);
    }
  }
}

// d_pre of rows [r0, r1) from the incoming gradient [rows, C] and the saved pre-activations; adds the
// column sums of d_pre into bias_partial [2C].
template <typename scalar_t>
void gate_backward_rows(const scalar_t* grad, const scalar_t* pre, int64_t r0, int64_t r1, int64_t C,
                        scalar_t* d_pre, scalar_t* bias_partial) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* p = pre + r * 2 * C;
    scalar_t* d = d_pre + r * 2 * C;
    for (int64_t c = 0; c < C; c += W) {
      const int64_t n = std::min(W, C - c);
      V d_f, d_g;
      gate_backward(V::loadu(grad + r * C + c, n), V::loadu(p + c, n), V::loadu(p + C + c, n), d_f, d_g);
      d_f.store(d + c, n);
      d_g.store(d + C + c, n);
      (V::loadu(bias_partial + c, n) + d_f).store(bias_partial + c, n);
      (V::loadu(bias_partial + C + c, n) + d_g).store(bias_partial + C + c, n);
    }
  }
}

// Time shift of tap j: tap k - 1 reads step t, tap j reads step t - (k - 1 - j) * dilation.
int64_t tap_shift(int64_t j, int64_t k, int64_t dilation) { return (k - 1 - j) * dilation; }

std::tuple<at::Tensor, at::Tensor> gated_causal_conv1d_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                           const at::Tensor& bias, int64_t dilation,
                                                           const c10::optional<at::Tensor>& cond) {
  check_conv_forward_args(x, weight, bias, dilation, cond);
  const int64_t B = x.size(0), T = x.size(2), C2 = weight.size(0), C = C2 / 2, k = weight.size(2);
  const int64_t rows = T * B;
  const CondRows cond_rows = cond_rows_of(cond, T);
  const at::Tensor x_rows = time_major(x);                           // [T * B, C_in]
  const at::Tensor w_taps = weight.permute({2, 0, 1}).contiguous();  // [k, 2C, C_in]
  const at::Tensor bias_c = bias.contiguous();
  at::Tensor pre = empty_buffer({T, B, C2}, x.options());
  at::Tensor out = empty_buffer({T, B, C}, x.options());
  at::Tensor pre_rows = pre.view({rows, C2});
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_causal_conv1d_cpu", [&] {
    scalar_t* pre_p = pre.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    const scalar_t* bias_p = bias_c.data_ptr<scalar_t>();
    const scalar_t* cond_p = cond_rows.rows.defined() ? cond_rows.rows.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, panel_count(rows), 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r0 = p * kPanelRows, r1 = std::min(rows, r0 + kPanelRows);
        at::Tensor pre_panel = pre_rows.narrow(0, r0, r1 - r0);
        at::cpu::mm_out(pre_panel, x_rows.narrow(0, r0, r1 - r0), w_taps[k - 1].t());
        for (int64_t j = 0; j < k - 1; ++j) {
          // Tap j adds x row r - shift into pre row r for r >= shift (earlier rows see the zero padding).
          const int64_t shift = tap_shift(j, k, dilation) * B, lo = std::max(r0, shift);
          if (lo >= r1) continue;
          at::Tensor pre_tap = pre_rows.narrow(0, lo, r1 - lo);
          at::cpu::addmm_(pre_tap, x_rows.narrow(0, lo - shift, r1 - lo), w_taps[j].t());
        }
        gate_rows(pre_p, bias_p, cond_p, cond_rows.local, r0, r1, B, C, out_p);
      }
    });
  });
  return {out.permute({1, 2, 0}), pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_causal_conv1d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& pre,
    int64_t dilation) {
  check_conv_backward_args(grad, x, weight, pre, dilation);
  const int64_t B = x.size(0), C_in = x.size(1), T = x.size(2), C2 = weight.size(0), C = C2 / 2,
                k = weight.size(2);
  const int64_t rows = T * B, panels = panel_count(rows);
  const at::Tensor grad_rows = time_major(grad.to(x.scalar_type()));  // [T * B, C]
  const at::Tensor pre_c = pre.contiguous();
  const at::Tensor x_rows = time_major(x);                           // [T * B, C_in]
  const at::Tensor w_taps = weight.permute({2, 0, 1}).contiguous();  // [k, 2C, C_in]
  at::Tensor d_pre = empty_buffer({T, B, C2}, x.options());
  at::Tensor d_pre_rows = d_pre.view({rows, C2});
  at::Tensor d_x = empty_buffer({T, B, C_in}, x.options());
  at::Tensor d_x_rows = d_x.view({rows, C_in});
  // The bias gradient sums d_pre over rows: one partial sum per panel, added up at the end.
  at::Tensor bias_partial = at::zeros({panels, C2}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_causal_conv1d_backward_cpu", [&] {
    const scalar_t* g_p = grad_rows.data_ptr<scalar_t>();
    const scalar_t* pre_p = pre_c.data_ptr<scalar_t>();
    scalar_t* d_p = d_pre.data_ptr<scalar_t>();
    scalar_t* partial_p = bias_partial.data_ptr<scalar_t>();
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r0 = p * kPanelRows, r1 = std::min(rows, r0 + kPanelRows);
        gate_backward_rows(g_p, pre_p, r0, r1, C, d_p, partial_p + p * C2);
        at::Tensor d_x_panel = d_x_rows.narrow(0, r0, r1 - r0);
        at::cpu::mm_out(d_x_panel, d_pre_rows.narrow(0, r0, r1 - r0), w_taps[k - 1]);  // unshifted tap
      }
    });
  });
  at::Tensor d_w_taps = at::empty({k, C2, C_in}, x.options());
  for (int64_t j = 0; j < k; ++j) {
    const int64_t s = tap_shift(j, k, dilation);
    at::Tensor d_w = d_w_taps[j];
    if (s >= T) {
      d_w.zero_();
      continue;
    }
    const int64_t n = (T - s) * B;  // output rows that see tap j: d_pre rows [s B, T B), x rows [0, n)
    at::mm_out(d_w, d_pre_rows.narrow(0, s * B, n).t(), x_rows.narrow(0, 0, n));
    if (j < k - 1) d_x_rows.narrow(0, 0, n).addmm_(d_pre_rows.narrow(0, s * B, n), w_taps[j]);
  }
  return {d_x.permute({1, 2, 0}), d_w_taps.permute({1, 2, 0}).contiguous(), bias_partial.sum(0), d_pre};
}

// ---- one generation step of a WaveNet block (fastlv.nn.WaveNetBlock.step) ----
// For a small batch a step is a chain of vector-matrix products, where ATen's GEMM costs 15-35 us each
// (MKL at one row) and the Python around them ~100 us per block. This kernel is the block's whole step,
// per batch row b:
//   pre = bias (+ pre_add) + sum_j tap_j W_j   (tap j < k-1: buffer row read_rows[j]; tap k-1: x_t)
//   h = tanh(f) sigmoid(g) for pre = [f, g],  y = h W_res^T + b_res,  residual = inp + y,
//   skip = h W_skip^T + b_skip, or y without a skip convolution,
// then x_t goes to buffer row write_row (after the reads: it can be the oldest tap's row; -1: none).
// The weights come transposed, [inputs, outputs] row-major: each product is one pass over them.

// out[o] += sum_i v[i] w[i, o]; four rows of w per pass over out (out stays in L1).
template <typename scalar_t>
void add_vector_matrix(const scalar_t* v, const scalar_t* w, int64_t n_in, int64_t n_out, scalar_t* out) {
  using V = Vec<scalar_t>;
  int64_t i = 0;
  for (; i + 4 <= n_in; i += 4) {
    const V a0(v[i]), a1(v[i + 1]), a2(v[i + 2]), a3(v[i + 3]);
    const scalar_t* r = w + i * n_out;
    for (int64_t o = 0; o < n_out; o += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), n_out - o);
      V acc = at::vec::fmadd(a0, V::loadu(r + o, n), V::loadu(out + o, n));
      acc = at::vec::fmadd(a1, V::loadu(r + n_out + o, n), acc);
      acc = at::vec::fmadd(a2, V::loadu(r + 2 * n_out + o, n), acc);
      at::vec::fmadd(a3, V::loadu(r + 3 * n_out + o, n), acc).store(out + o, n);
    }
  }
  for (; i < n_in; ++i) {
    const V a(v[i]);
    for (int64_t o = 0; o < n_out; o += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), n_out - o);
      at::vec::fmadd(a, V::loadu(w + i * n_out + o, n), V::loadu(out + o, n)).store(out + o, n);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> wavenet_block_step_cpu(
    const at::Tensor& x_t, at::Tensor& buffer, at::IntArrayRef read_rows, int64_t write_row,
    const at::Tensor& stacked_weight, const at::Tensor& bias, const c10::optional<at::Tensor>& pre_add,
    const at::Tensor& inp, const at::Tensor& res_weight_t, const at::Tensor& res_bias,
    const c10::optional<at::Tensor>& skip_weight_t, const c10::optional<at::Tensor>& skip_bias) {
  check_step_args(x_t, buffer, read_rows, write_row, stacked_weight, bias, pre_add, inp, res_weight_t, res_bias,
                  skip_weight_t, skip_bias);
  const int64_t B = x_t.size(0), C_in = x_t.size(1), C2 = bias.size(0), C = C2 / 2;
  const int64_t taps = int64_t(read_rows.size()) + 1;
  const at::Tensor x_c = x_t.contiguous(), inp_c = inp.contiguous();
  const c10::optional<at::Tensor> pre_add_c = pre_add ? c10::optional<at::Tensor>(pre_add->contiguous()) : c10::nullopt;
  at::Tensor residual = at::empty({B, C}, x_t.options());
  at::Tensor skip = at::empty({B, skip_weight_t ? skip_weight_t->size(1) : C}, x_t.options());
  AT_DISPATCH_FLOATING_TYPES(x_t.scalar_type(), "wavenet_block_step_cpu", [&] {
    using V = Vec<scalar_t>;
    std::vector<scalar_t> pre(C2), h(C);
    scalar_t* buf = buffer.data_ptr<scalar_t>();
    const scalar_t* w = stacked_weight.const_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* x_row = x_c.const_data_ptr<scalar_t>() + b * C_in;
      std::copy_n(bias.const_data_ptr<scalar_t>(), C2, pre.data());
      if (pre_add_c) {
        const scalar_t* add = pre_add_c->const_data_ptr<scalar_t>() + b * C2;
        for (int64_t o = 0; o < C2; ++o) pre[o] += add[o];
      }
      for (int64_t j = 0; j < taps; ++j) {
        const scalar_t* tap = j < taps - 1 ? buf + (read_rows[j] * B + b) * C_in : x_row;
        add_vector_matrix(tap, w + j * C_in * C2, C_in, C2, pre.data());
      }
      for (int64_t c = 0; c < C; c += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), C - c);
        gate_forward(V::loadu(pre.data() + c, n), V::loadu(pre.data() + C + c, n)).store(h.data() + c, n);
      }
      scalar_t* y = residual.data_ptr<scalar_t>() + b * C;  // y first, then inp is added
      std::copy_n(res_bias.const_data_ptr<scalar_t>(), C, y);
      add_vector_matrix(h.data(), res_weight_t.const_data_ptr<scalar_t>(), C, C, y);
      scalar_t* skip_row = skip.data_ptr<scalar_t>() + b * skip.size(1);
      if (skip_weight_t) {
        std::copy_n(skip_bias->const_data_ptr<scalar_t>(), skip.size(1), skip_row);
        add_vector_matrix(h.data(), skip_weight_t->const_data_ptr<scalar_t>(), C, skip.size(1), skip_row);
      } else {
        std::copy_n(y, C, skip_row);
      }
      const scalar_t* inp_row = inp_c.const_data_ptr<scalar_t>() + b * C;
      for (int64_t c = 0; c < C; ++c) y[c] += inp_row[c];
      if (write_row >= 0) std::copy_n(x_row, C_in, buf + (write_row * B + b) * C_in);
    }
  });
  return {residual, skip};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlv_C, m) {
  m.def("gated_causal_conv1d(Tensor x, Tensor weight, Tensor bias, int dilation, Tensor? cond) "
        "-> (Tensor, Tensor)");
  m.def("wavenet_block_step(Tensor x_t, Tensor(a!) buffer, int[] read_rows, int write_row, Tensor stacked_weight, "
        "Tensor bias, Tensor? pre_add, Tensor inp, Tensor res_weight_t, Tensor res_bias, Tensor? skip_weight_t, "
        "Tensor? skip_bias) -> (Tensor, Tensor)");
  m.def("gated_causal_conv1d_backward(Tensor grad, Tensor x, Tensor weight, Tensor pre, int dilation) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastlv_C, CPU, m) {
  m.impl("gated_causal_conv1d", &gated_causal_conv1d_cpu);
  m.impl("gated_causal_conv1d_backward", &gated_causal_conv1d_backward_cpu);
  m.impl("wavenet_block_step", &wavenet_block_step_cpu);
}

}  // namespace fastlv
