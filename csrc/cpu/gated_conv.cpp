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
// Forward: k GEMMs (ATen/MKL), then one vectorized pass adds bias + conditioning into the
// pre-activations (kept for the backward) and applies the gate. Saving pre ([T, B, 2 C_out]) instead of
// recomputing it costs memory but saves the forward GEMMs again (a third of the backward's FLOPs).
// Backward: one vectorized pass gives d_pre and the bias gradient, then k GEMMs for d_x and k for d_W.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/gated_conv_math.h"
#include "cpu/vec_math.h"

namespace fastlv {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

constexpr int64_t kRowsPerTask = 16;  // grain of the elementwise passes, in rows of 2 * C_out values

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

// [B, C, T] (any strides) -> contiguous [T * B, C].
at::Tensor time_major(const at::Tensor& t) {
  return t.permute({2, 0, 1}).contiguous().view({t.size(2) * t.size(0), t.size(1)});
}

void check_conv_args(const at::Tensor& x, const at::Tensor& weight, int64_t dilation) {
  check_float(x, "x");
  check_same(weight, x, "weight", "x");
  TORCH_CHECK(x.dim() == 3, "fastlv: x must have shape [B, C_in, T], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) % 2 == 0 && weight.size(1) == x.size(1) && weight.size(2) >= 1,
              "fastlv: weight must have shape [2 * C_out, C_in, k] with C_in = ", x.size(1), " and k >= 1, got ",
              weight.sizes());
  TORCH_CHECK(dilation >= 1, "fastlv: dilation must be >= 1, got ", dilation);
}

std::tuple<at::Tensor, at::Tensor> gated_causal_conv1d_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                           const at::Tensor& bias, int64_t dilation,
                                                           const c10::optional<at::Tensor>& cond) {
  check_conv_args(x, weight, dilation);
  const int64_t B = x.size(0), T = x.size(2), C2 = weight.size(0), C = C2 / 2, k = weight.size(2);
  check_same(bias, x, "bias", "x");
  check_shape(bias, {C2}, "bias");
  at::Tensor cond_rows;  // [T * B, 2C] (local) or [B, 2C] (global)
  const bool has_cond = cond.has_value() && cond->defined();
  bool cond_local = false;
  if (has_cond) {
    check_same(*cond, x, "cond", "x");
    TORCH_CHECK(cond->dim() == 3 && cond->size(0) == B && cond->size(1) == C2 &&
                    (cond->size(2) == T || cond->size(2) == 1),
                "fastlv: cond must have shape [B, 2 * C_out, T] (local) or [B, 2 * C_out, 1] (global) = [", B,
                ", ", C2, ", ", T, " or 1], got ", cond->sizes());
    cond_local = cond->size(2) == T && T != 1;
    cond_rows = cond_local ? time_major(*cond) : cond->select(2, 0).contiguous();
  }
  const at::Tensor x_rows = time_major(x);                      // [T * B, C_in]
  const at::Tensor w_taps = weight.permute({2, 0, 1}).contiguous();  // [k, 2C, C_in]
  const at::Tensor bias_c = bias.contiguous();
  at::Tensor pre = at::empty({T, B, C2}, x.options());
  at::Tensor out = at::empty({T, B, C}, x.options());
  at::Tensor pre_rows = pre.view({T * B, C2});
  at::mm_out(pre_rows, x_rows, w_taps[k - 1].t());
  for (int64_t j = 0; j < k - 1; ++j) {
    const int64_t s = tap_shift(j, k, dilation);
    if (s >= T) continue;  // the tap only sees the zero padding
    pre_rows.narrow(0, s * B, (T - s) * B).addmm_(x_rows.narrow(0, 0, (T - s) * B), w_taps[j].t());
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_causal_conv1d_cpu", [&] {
    scalar_t* pre_p = pre.data_ptr<scalar_t>();
    scalar_t* out_p = out.data_ptr<scalar_t>();
    const scalar_t* bias_p = bias_c.data_ptr<scalar_t>();
    const scalar_t* cond_p = has_cond ? cond_rows.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, T * B, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      gate_rows(pre_p, bias_p, cond_p, cond_local, r0, r1, B, C, out_p);
    });
  });
  return {out.permute({1, 2, 0}), pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gated_causal_conv1d_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& pre,
    int64_t dilation) {
  check_conv_args(x, weight, dilation);
  const int64_t B = x.size(0), C_in = x.size(1), T = x.size(2), C2 = weight.size(0), C = C2 / 2,
                k = weight.size(2);
  check_same(pre, x, "pre", "x");
  check_shape(pre, {T, B, C2}, "pre");
  check_device(grad, x, "grad", "x");
  check_shape(grad, {B, C, T}, "grad");
  const at::Tensor grad_rows = time_major(grad.to(x.scalar_type()));  // [T * B, C]
  const at::Tensor pre_c = pre.contiguous();
  at::Tensor d_pre = at::empty({T, B, C2}, x.options());
  const int64_t rows = T * B;
  // The bias gradient sums d_pre over rows: one partial sum per chunk of rows, added up at the end.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows / kRowsPerTask, 4 * at::get_num_threads()));
  at::Tensor bias_partial = at::zeros({chunks, C2}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_causal_conv1d_backward_cpu", [&] {
    const scalar_t* g_p = grad_rows.data_ptr<scalar_t>();
    const scalar_t* pre_p = pre_c.data_ptr<scalar_t>();
    scalar_t* d_p = d_pre.data_ptr<scalar_t>();
    scalar_t* partial_p = bias_partial.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        gate_backward_rows(g_p, pre_p, rows * chunk / chunks, rows * (chunk + 1) / chunks, C, d_p,
                           partial_p + chunk * C2);
      }
    });
  });
  const at::Tensor x_rows = time_major(x);
  const at::Tensor w_taps = weight.permute({2, 0, 1}).contiguous();  // [k, 2C, C_in]
  at::Tensor d_pre_rows = d_pre.view({rows, C2});
  at::Tensor d_x = at::empty({T, B, C_in}, x.options());
  at::Tensor d_x_rows = d_x.view({rows, C_in});
  at::Tensor d_w_taps = at::empty({k, C2, C_in}, x.options());
  at::mm_out(d_x_rows, d_pre_rows, w_taps[k - 1]);
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlv_C, m) {
  m.def("gated_causal_conv1d(Tensor x, Tensor weight, Tensor bias, int dilation, Tensor? cond) "
        "-> (Tensor, Tensor)");
  m.def("gated_causal_conv1d_backward(Tensor grad, Tensor x, Tensor weight, Tensor pre, int dilation) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastlv_C, CPU, m) {
  m.impl("gated_causal_conv1d", &gated_causal_conv1d_cpu);
  m.impl("gated_causal_conv1d_backward", &gated_causal_conv1d_backward_cpu);
}

}  // namespace fastlv
