// CPU kernels of the stochastic LSTM loop (fastlv_C::stochastic_lstm and its backward): the recurrence of
// Z-Forcing (Goyal et al. 2017, Eq. 4-7) and of the VRNN, where z_t feeds the LSTM, so the loop cannot be
// batched over time. fastlv.nn.models.common.StochasticLSTM computes everything that does not depend on z
// for the whole sequence first (pre); what remains, per step t, is
//   s_t      = pre_t + h_{t-1} W_state                   [B, 2M + 4H]: prior | posterior layer 1 | gates
//   u_t[j]   = clamp(leaky_relu(s_t[:, jM:(j+1)M], 1/3), -3, 3)       j = 0 prior, 1 posterior
//   o_t[j]   = b_out[j] + u_t[j] W_out[j]                 [B, 2L]: (mean, log-variance)
//   p_t, q_t = clamp(o_t[0], -c, c), clamp(o_t[1], -c, c)
//   z_t      = mu_q + exp(logvar_q / 2) eps_t
//   gates_t  = s_t[:, 2M:] + z_t W_latent (kept in s_t);  c_t, h_t = LSTM cell(gates_t, c_{t-1})
// Here each step is a few ATen GEMMs plus fused vector loops, in one C++ loop: as PyTorch ops, the ~15
// small ops of a step cost more in dispatch and autograd than in arithmetic at the papers' batch of 32.
// The backward runs the loop in reverse with only the products that carry gradients between steps
// (to z_t, u_t and h_{t-1}); each weight gradient is then one GEMM over all steps.
// Layout: time-major [N, B, ...] (N steps), u and o as [2, N, B, ...], so that the rows of one step are
// one contiguous matrix. (In a batch-major layout, a step's rows are N times the width apart, often a
// multiple of 4 KB - 1000 steps of 640 floats are - so that all of them map to the same cache sets.)
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "common/stochastic_lstm_math.h"
#include "cpu/buffers.h"
#include "cpu/vec_math.h"

namespace fastlv {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// fn(i, count) over [0, n) in vectors (count < the vector size only for the last one).
template <typename scalar_t, typename Fn>
void for_vectors(int64_t n, const Fn& fn) {
  constexpr int64_t W = Vec<scalar_t>::size();
  for (int64_t i = 0; i < n; i += W) fn(i, std::min(W, n - i));
}

struct Sizes {
  int64_t B, N, H, M, L, F;  // batch, steps, state, MLP width, latent size, 2M + 4H
  // Row b of step t in a [N, B, width] tensor.
  template <typename T>
  T* row(T* data, int64_t b, int64_t t, int64_t width) const { return data + (t * B + b) * width; }
};

Sizes check_args(const at::Tensor& pre, const at::Tensor& eps, const at::Tensor& w_state,
                 const at::Tensor& w_latent, const at::Tensor& w_out, const at::Tensor& b_out) {
  TORCH_CHECK(pre.dim() == 3 && eps.dim() == 3 && w_state.dim() == 2 && w_latent.dim() == 2 && w_out.dim() == 3 &&
                  b_out.dim() == 2,
              "fastlv: stochastic_lstm expects pre [N, B, F], eps [N, B, L], w_state [H, F], w_latent [L, 4H], "
              "w_out [2, M, 2L], b_out [2, 2L]");
  const Sizes n{pre.size(1), pre.size(0), w_state.size(0), w_out.size(1), eps.size(2), pre.size(2)};
  TORCH_CHECK(n.F == 2 * n.M + 4 * n.H && w_state.size(1) == n.F, "fastlv: stochastic_lstm: pre and w_state must ",
              "have 2M + 4H = ", 2 * n.M + 4 * n.H, " columns, got ", n.F, " and ", w_state.size(1));
  TORCH_CHECK(eps.size(0) == n.N && eps.size(1) == n.B, "fastlv: stochastic_lstm: eps must be [N, B, L] like pre");
  TORCH_CHECK(w_latent.size(0) == n.L && w_latent.size(1) == 4 * n.H, "fastlv: stochastic_lstm: w_latent must be [L, 4H]");
  TORCH_CHECK(w_out.size(0) == 2 && w_out.size(2) == 2 * n.L && b_out.size(0) == 2 && b_out.size(1) == 2 * n.L,
              "fastlv: stochastic_lstm: w_out must be [2, M, 2L] and b_out [2, 2L]");
  for (const at::Tensor* t : {&eps, &w_state, &w_latent, &w_out, &b_out}) {
    TORCH_CHECK(t->scalar_type() == pre.scalar_type(), "fastlv: stochastic_lstm: all tensors must have one dtype");
    TORCH_CHECK(t->device() == pre.device(), "fastlv: stochastic_lstm: all tensors must be on one device");
  }
  TORCH_CHECK(pre.device().is_cpu(), "fastlv: stochastic_lstm runs on CPU tensors");
  return n;
}

// The clamp of the means and log-variances as bounds (infinite without one).
template <typename scalar_t>
std::pair<Vec<scalar_t>, Vec<scalar_t>> clamp_bounds(std::optional<double> param_clamp) {
  const scalar_t c = param_clamp.has_value() ? scalar_t(*param_clamp) : std::numeric_limits<scalar_t>::infinity();
  return {Vec<scalar_t>(-c), Vec<scalar_t>(c)};
}

// The LSTM cell of step t for every row b: gate pre-activations from s (after the first 2M columns),
// c_{t-1} from c (0 at t = 0) -> c_t, h_t.
template <typename scalar_t>
void cell_forward(const Sizes& n, int64_t t, const scalar_t* s_data, scalar_t* c_data, scalar_t* h_data) {
  using V = Vec<scalar_t>;
  for (int64_t b = 0; b < n.B; ++b) {
    const scalar_t* g = n.row(s_data, b, t, n.F) + 2 * n.M;
    const scalar_t* c_before = t > 0 ? n.row(c_data, b, t - 1, n.H) : nullptr;
    scalar_t *c_row = n.row(c_data, b, t, n.H), *h_row = n.row(h_data, b, t, n.H);
    for_vectors<scalar_t>(n.H, [&](int64_t k, int64_t count) {
      V c_new, h_new;
      lstm_cell(V::loadu(g + k, count), V::loadu(g + n.H + k, count), V::loadu(g + 2 * n.H + k, count),
                V::loadu(g + 3 * n.H + k, count), c_before ? V::loadu(c_before + k, count) : V(0), c_new, h_new);
      c_new.store(c_row + k, count);
      h_new.store(h_row + k, count);
    });
  }
}

// Its backward at step t: d_h and d_c hold d loss / d h_t, c_t through the later steps (g_h is the
// gradient of the output h); writes the gate pre-activation gradients into d_s and leaves
// d loss / d c_{t-1} in d_c.
template <typename scalar_t>
void cell_backward(const Sizes& n, int64_t t, const scalar_t* s_data, const scalar_t* c_data, const scalar_t* g_h,
                   const scalar_t* d_h, scalar_t* d_c, scalar_t* d_s_data) {
  using V = Vec<scalar_t>;
  for (int64_t b = 0; b < n.B; ++b) {
    const scalar_t* g = n.row(s_data, b, t, n.F) + 2 * n.M;
    scalar_t* d_g = n.row(d_s_data, b, t, n.F) + 2 * n.M;
    const scalar_t* c_before = t > 0 ? n.row(c_data, b, t - 1, n.H) : nullptr;
    const scalar_t *c_row = n.row(c_data, b, t, n.H), *g_h_row = n.row(g_h, b, t, n.H);
    const scalar_t* d_h_row = d_h + b * n.H;
    scalar_t* d_c_row = d_c + b * n.H;
    for_vectors<scalar_t>(n.H, [&](int64_t k, int64_t count) {
      V dgi, dgf, dgg, dgo, dc_before;
      lstm_cell_grads(V::loadu(g + k, count), V::loadu(g + n.H + k, count), V::loadu(g + 2 * n.H + k, count),
                      V::loadu(g + 3 * n.H + k, count), c_before ? V::loadu(c_before + k, count) : V(0),
                      V::loadu(c_row + k, count), V::loadu(d_h_row + k, count) + V::loadu(g_h_row + k, count),
                      V::loadu(d_c_row + k, count), dgi, dgf, dgg, dgo, dc_before);
      dgi.store(d_g + k, count);
      dgf.store(d_g + n.H + k, count);
      dgg.store(d_g + 2 * n.H + k, count);
      dgo.store(d_g + 3 * n.H + k, count);
      dc_before.store(d_c_row + k, count);
    });
  }
}

// h shifted one step later: h_{t-1} at step t, 0 at step 0.
at::Tensor previous_states(const at::Tensor& h) {
  at::Tensor h_prev = empty_buffer(h.sizes(), h.options());
  const int64_t N = h.size(0);
  if (N > 0) {
    h_prev[0].zero_();
    h_prev.narrow(0, 1, N - 1).copy_(h.narrow(0, 0, N - 1));
  }
  return h_prev;
}

template <typename scalar_t>
void forward_loop(const Sizes& n, const at::Tensor& pre, const at::Tensor& eps, const at::Tensor& w_state,
                  const at::Tensor& w_latent, const at::Tensor& w_out, const at::Tensor& b_out,
                  std::optional<double> param_clamp, at::Tensor& h, at::Tensor& z, at::Tensor& q, at::Tensor& p,
                  at::Tensor& s, at::Tensor& c, at::Tensor& u, at::Tensor& o) {
  using V = Vec<scalar_t>;
  const auto [lo, hi] = clamp_bounds<scalar_t>(param_clamp);
  const at::Tensor zeros = at::zeros({n.B, n.H}, pre.options());  // h_{-1}
  const scalar_t *eps_data = eps.data_ptr<scalar_t>(), *s_data = s.data_ptr<scalar_t>();
  const scalar_t* o_data = o.data_ptr<scalar_t>();
  scalar_t* u_data = u.data_ptr<scalar_t>();
  scalar_t *c_data = c.data_ptr<scalar_t>(), *h_data = h.data_ptr<scalar_t>();
  scalar_t *z_data = z.data_ptr<scalar_t>(), *q_data = q.data_ptr<scalar_t>(), *p_data = p.data_ptr<scalar_t>();
  const int64_t u_part = n.N * n.B * n.M, o_part = n.N * n.B * 2 * n.L;  // [j] offsets in u and o
  for (int64_t t = 0; t < n.N; ++t) {
    at::Tensor s_t = s.select(0, t);
    at::addmm_out(s_t, pre.select(0, t), t > 0 ? h.select(0, t - 1) : zeros, w_state);
    for (int64_t j = 0; j < 2; ++j) {
      for (int64_t b = 0; b < n.B; ++b) {
        const scalar_t* first = n.row(s_data, b, t, n.F) + j * n.M;
        scalar_t* hidden = n.row(u_data + j * u_part, b, t, n.M);
        for_vectors<scalar_t>(n.M, [&](int64_t m, int64_t count) {
          mlp_activation(V::loadu(first + m, count)).store(hidden + m, count);
        });
      }
      at::Tensor o_t = o[j].select(0, t);
      at::addmm_out(o_t, b_out[j], u[j].select(0, t), w_out[j]);
    }
    for (int64_t b = 0; b < n.B; ++b) {
      const scalar_t *o_p = n.row(o_data, b, t, 2 * n.L), *o_q = n.row(o_data + o_part, b, t, 2 * n.L);
      scalar_t *p_row = n.row(p_data, b, t, 2 * n.L), *q_row = n.row(q_data, b, t, 2 * n.L);
      for_vectors<scalar_t>(2 * n.L, [&](int64_t i, int64_t count) {  // p_t, q_t: clamped copies of o_t
        clamp_of(V::loadu(o_p + i, count), lo, hi).store(p_row + i, count);
        clamp_of(V::loadu(o_q + i, count), lo, hi).store(q_row + i, count);
      });
      const scalar_t* eps_row = n.row(eps_data, b, t, n.L);
      scalar_t* z_row = n.row(z_data, b, t, n.L);
      for_vectors<scalar_t>(n.L, [&](int64_t l, int64_t count) {
        const V mu = V::loadu(q_row + l, count), log_var = V::loadu(q_row + n.L + l, count);
        (mu + exp_of(V(0.5) * log_var) * V::loadu(eps_row + l, count)).store(z_row + l, count);
      });
    }
    s_t.narrow(1, 2 * n.M, 4 * n.H).addmm_(z.select(0, t), w_latent);  // the gates get z_t W_latent
    cell_forward<scalar_t>(n, t, s_data, c_data, h_data);
  }
}

// (h_prev, h, z, q, p) and what the backward reads (s, c, u, o); see the top of the file.
std::vector<at::Tensor> stochastic_lstm_cpu(const at::Tensor& pre, const at::Tensor& eps_in, const at::Tensor& w_state,
                                            const at::Tensor& w_latent, const at::Tensor& w_out,
                                            const at::Tensor& b_out, std::optional<double> param_clamp) {
  const Sizes n = check_args(pre, eps_in, w_state, w_latent, w_out, b_out);
  const at::Tensor eps = eps_in.contiguous();
  const auto options = pre.options();
  at::Tensor h = empty_buffer({n.N, n.B, n.H}, options), c = empty_buffer({n.N, n.B, n.H}, options);
  at::Tensor z = empty_buffer({n.N, n.B, n.L}, options), s = empty_buffer({n.N, n.B, n.F}, options);
  at::Tensor q = empty_buffer({n.N, n.B, 2 * n.L}, options), p = empty_buffer({n.N, n.B, 2 * n.L}, options);
  at::Tensor u = empty_buffer({2, n.N, n.B, n.M}, options), o = empty_buffer({2, n.N, n.B, 2 * n.L}, options);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "stochastic_lstm_cpu", [&] {
    forward_loop<scalar_t>(n, pre, eps, w_state, w_latent, w_out, b_out, param_clamp, h, z, q, p, s, c, u, o);
  });
  return {previous_states(h), h, z, q, p, s, c, u, o};
}

template <typename scalar_t>
void backward_loop(const Sizes& n, const at::Tensor& grad_h_prev, const at::Tensor& grad_h, const at::Tensor& grad_z,
                   const at::Tensor& grad_q, const at::Tensor& grad_p, const at::Tensor& eps,
                   const at::Tensor& w_state, const at::Tensor& w_latent, const at::Tensor& w_out,
                   const at::Tensor& s, const at::Tensor& c, const at::Tensor& o, std::optional<double> param_clamp,
                   at::Tensor& d_s, at::Tensor& d_o, at::Tensor& d_eps) {
  using V = Vec<scalar_t>;
  const auto [lo, hi] = clamp_bounds<scalar_t>(param_clamp);
  const auto options = s.options();
  at::Tensor d_h = at::zeros({n.B, n.H}, options);  // d loss / d h_t through the steps after t
  at::Tensor d_c = at::zeros({n.B, n.H}, options);  // d loss / d c_t through the steps after t
  at::Tensor d_z = at::empty({n.B, n.L}, options), d_u = at::empty({2, n.B, n.M}, options);
  scalar_t *d_h_data = d_h.data_ptr<scalar_t>(), *d_c_data = d_c.data_ptr<scalar_t>();
  const scalar_t *d_z_data = d_z.data_ptr<scalar_t>(), *d_u_data = d_u.data_ptr<scalar_t>();
  const scalar_t *s_data = s.data_ptr<scalar_t>(), *c_data = c.data_ptr<scalar_t>(), *o_data = o.data_ptr<scalar_t>();
  const scalar_t *g_h = grad_h.data_ptr<scalar_t>(), *g_p = grad_p.data_ptr<scalar_t>();
  const scalar_t *g_q = grad_q.data_ptr<scalar_t>(), *eps_data = eps.data_ptr<scalar_t>();
  scalar_t *d_s_data = d_s.data_ptr<scalar_t>(), *d_o_data = d_o.data_ptr<scalar_t>();
  scalar_t* d_eps_data = d_eps.data_ptr<scalar_t>();
  const int64_t o_part = n.N * n.B * 2 * n.L;  // [1] offset in o and d_o
  for (int64_t t = n.N - 1; t >= 0; --t) {
    cell_backward<scalar_t>(n, t, s_data, c_data, g_h, d_h_data, d_c_data, d_s_data);
    // z_t = mu + exp(log_var / 2) eps: gradients of the raw (unclamped) o_t of both MLPs.
    at::Tensor d_s_t = d_s.select(0, t);
    at::addmm_out(d_z, grad_z.select(0, t), d_s_t.narrow(1, 2 * n.M, 4 * n.H), w_latent.t());
    for (int64_t b = 0; b < n.B; ++b) {
      const scalar_t *o_p = n.row(o_data, b, t, 2 * n.L), *o_q = n.row(o_data + o_part, b, t, 2 * n.L);
      const scalar_t *g_p_row = n.row(g_p, b, t, 2 * n.L), *g_q_row = n.row(g_q, b, t, 2 * n.L);
      scalar_t *d_o_p = n.row(d_o_data, b, t, 2 * n.L), *d_o_q = n.row(d_o_data + o_part, b, t, 2 * n.L);
      for_vectors<scalar_t>(2 * n.L, [&](int64_t i, int64_t count) {
        where_in_range(V::loadu(o_p + i, count), lo, hi, V::loadu(g_p_row + i, count)).store(d_o_p + i, count);
      });
      const scalar_t *eps_row = n.row(eps_data, b, t, n.L), *d_z_row = d_z_data + b * n.L;
      scalar_t* d_eps_row = n.row(d_eps_data, b, t, n.L);
      for_vectors<scalar_t>(n.L, [&](int64_t l, int64_t count) {
        const V mu_raw = V::loadu(o_q + l, count), log_var_raw = V::loadu(o_q + n.L + l, count);
        const V dz = V::loadu(d_z_row + l, count);
        const V sd = exp_of(V(0.5) * clamp_of(log_var_raw, lo, hi));
        const V d_log_var = dz * V::loadu(eps_row + l, count) * sd * V(0.5);
        where_in_range(mu_raw, lo, hi, V::loadu(g_q_row + l, count) + dz).store(d_o_q + l, count);
        where_in_range(log_var_raw, lo, hi, V::loadu(g_q_row + n.L + l, count) + d_log_var).store(d_o_q + n.L + l, count);
        (dz * sd).store(d_eps_row + l, count);
      });
    }
    // Both MLPs' second layers, then their hidden activations: the first 2M columns of d s_t.
    for (int64_t j = 0; j < 2; ++j) {
      at::Tensor d_u_j = d_u[j];
      at::mm_out(d_u_j, d_o[j].select(0, t), w_out[j].t());
      for (int64_t b = 0; b < n.B; ++b) {
        const scalar_t* first = n.row(s_data, b, t, n.F) + j * n.M;
        scalar_t* d_first = n.row(d_s_data, b, t, n.F) + j * n.M;
        const scalar_t* d_hidden = d_u_data + (j * n.B + b) * n.M;
        for_vectors<scalar_t>(n.M, [&](int64_t m, int64_t count) {
          mlp_activation_grad(V::loadu(first + m, count), V::loadu(d_hidden + m, count)).store(d_first + m, count);
        });
      }
    }
    // h_{t-1} feeds s_t and is output t's h_prev.
    at::addmm_out(d_h, grad_h_prev.select(0, t), d_s_t, w_state.t());
  }
}

// (d pre, d eps, d w_state, d w_latent, d w_out, d b_out).
std::vector<at::Tensor> stochastic_lstm_backward_cpu(
    const at::Tensor& grad_h_prev, const at::Tensor& grad_h, const at::Tensor& grad_z, const at::Tensor& grad_q,
    const at::Tensor& grad_p, const at::Tensor& eps, const at::Tensor& w_state, const at::Tensor& w_latent,
    const at::Tensor& w_out, const at::Tensor& h_prev, const at::Tensor& z, const at::Tensor& s, const at::Tensor& c,
    const at::Tensor& u, const at::Tensor& o, std::optional<double> param_clamp) {
  const Sizes n{s.size(1), s.size(0), w_state.size(0), w_out.size(1), eps.size(2), s.size(2)};
  const std::vector<int64_t> state{n.N, n.B, n.H}, latent{n.N, n.B, n.L}, params{n.N, n.B, 2 * n.L};
  const std::pair<const at::Tensor*, const std::vector<int64_t>*> grads[] = {
      {&grad_h_prev, &state}, {&grad_h, &state}, {&grad_z, &latent}, {&grad_q, &params}, {&grad_p, &params}};
  for (const auto& [grad, shape] : grads)
    TORCH_CHECK(grad->sizes() == at::IntArrayRef(*shape) && grad->scalar_type() == s.scalar_type(),
                "fastlv: stochastic_lstm_backward: a gradient has shape ", grad->sizes(), ", expected ",
                at::IntArrayRef(*shape));
  const auto options = s.options();
  at::Tensor d_s = empty_buffer({n.N, n.B, n.F}, options), d_o = empty_buffer({2, n.N, n.B, 2 * n.L}, options);
  at::Tensor d_eps = empty_buffer({n.N, n.B, n.L}, options);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "stochastic_lstm_backward_cpu", [&] {
    backward_loop<scalar_t>(n, grad_h_prev, grad_h.contiguous(), grad_z, grad_q.contiguous(), grad_p.contiguous(),
                            eps.contiguous(), w_state, w_latent, w_out, s, c, o, param_clamp, d_s, d_o, d_eps);
  });
  // Weight gradients: one GEMM each over all B * N rows (s_t is linear in pre_t, h_{t-1} and z_t).
  const int64_t rows = n.N * n.B;
  const at::Tensor d_s_rows = d_s.view({rows, n.F});
  const at::Tensor d_w_state = at::mm(h_prev.reshape({rows, n.H}).t(), d_s_rows);
  const at::Tensor d_w_latent = at::mm(z.reshape({rows, n.L}).t(), d_s_rows.narrow(1, 2 * n.M, 4 * n.H));
  at::Tensor d_w_out = at::empty({2, n.M, 2 * n.L}, options);
  for (int64_t j = 0; j < 2; ++j) {
    at::Tensor d_w_out_j = d_w_out[j];
    at::mm_out(d_w_out_j, u[j].reshape({rows, n.M}).t(), d_o[j].view({rows, 2 * n.L}));
  }
  const at::Tensor d_b_out = at::sum(d_o, {1, 2});
  return {d_s, d_eps, d_w_state, d_w_latent, d_w_out, d_b_out};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlv_C, m) {
  m.def("stochastic_lstm(Tensor pre, Tensor eps, Tensor w_state, Tensor w_latent, Tensor w_out, Tensor b_out, "
        "float? param_clamp) -> Tensor[]");
  m.def("stochastic_lstm_backward(Tensor grad_h_prev, Tensor grad_h, Tensor grad_z, Tensor grad_q, Tensor grad_p, "
        "Tensor eps, Tensor w_state, Tensor w_latent, Tensor w_out, Tensor h_prev, Tensor z, Tensor s, Tensor c, "
        "Tensor u, Tensor o, float? param_clamp) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(fastlv_C, CPU, m) {
  m.impl("stochastic_lstm", &stochastic_lstm_cpu);
  m.impl("stochastic_lstm_backward", &stochastic_lstm_backward_cpu);
}

}  // namespace fastlv
