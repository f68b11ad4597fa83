"""The stochastic LSTM loop of Z-Forcing and the VRNN (fastlv.nn.models.common.StochasticLSTM): the C++
loop (fastlv_C::stochastic_lstm, eager mode on the cpp backend) against the PyTorch loop it replaces."""
import pytest
import torch

import fastlv
from fastlv.nn import VRNN, ZForcingSRNN
from fastlv.nn.models.common import StochasticLSTM

pytestmark = pytest.mark.usefixtures("one_thread")

D_INPUT, D_POSTERIOR = 5, 6


def loop_and_inputs(dtype, param_clamp, B=3, N=9, H=7, L=3, M=4, seed=0):
    torch.manual_seed(seed)
    loop = StochasticLSTM(D_INPUT, D_POSTERIOR, H, L, M, param_clamp=param_clamp).to(dtype)
    u = torch.randn(B, N, D_INPUT, dtype=dtype, requires_grad=True)
    a = torch.randn(B, N, D_POSTERIOR, dtype=dtype, requires_grad=True)
    eps = torch.randn(B, N, L, dtype=dtype, requires_grad=True)
    return loop, (u, a, eps)


def outputs_and_grads(loop, inputs, backend, weights=None):
    with fastlv.use_backend(backend):
        outputs = loop.unroll(*inputs)
    if weights is None:
        weights = [torch.randn_like(out) for out in outputs]
    loss = sum((out * w).sum() for out, w in zip(outputs, weights))
    grads = torch.autograd.grad(loss, [*inputs, *loop.parameters()])
    return outputs, grads, weights


# clamp 0.3 makes the means and log-variances hit the clamp (zero gradient there); None has no clamp.
@pytest.mark.parametrize("param_clamp", [8.0, 0.3, None])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("B,N,H", [(3, 9, 7), (1, 1, 16), (2, 4, 33)])
def test_cpp_loop_matches_pytorch_loop(param_clamp, dtype, tol, B, N, H):
    loop, inputs = loop_and_inputs(dtype, param_clamp, B=B, N=N, H=H)
    fused, fused_grads, weights = outputs_and_grads(loop, inputs, "cpp")
    ref, ref_grads, _ = outputs_and_grads(loop, inputs, "ref", weights)
    for got, want in zip(fused, ref):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for got, want in zip(fused_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_clamp_is_active_in_the_comparison():
    loop, inputs = loop_and_inputs(torch.float64, 0.3)
    with fastlv.use_backend("cpp"):
        _, _, _, q, p = loop.unroll(*inputs)
    assert (q.abs() == 0.3).any() and (p.abs() == 0.3).any() and (q.abs() < 0.3).any()


def graph_nodes(tensor):
    """Names of the autograd nodes behind ``tensor``."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [next_node for next_node, _ in node.next_functions]
    return {type(node).__name__ for node in seen}


def test_cpp_backend_takes_the_cpp_loop_and_ref_the_pytorch_loop():
    loop, inputs = loop_and_inputs(torch.float32, 8.0)
    with fastlv.use_backend("cpp"):
        assert "_FusedLoopBackward" in graph_nodes(loop.unroll(*inputs)[1])
    with fastlv.use_backend("ref"):
        assert "_FusedLoopBackward" not in graph_nodes(loop.unroll(*inputs)[1])


def test_gradcheck():
    loop, (u, a, eps) = loop_and_inputs(torch.float64, 0.8, B=2, N=3, H=3, L=2, M=3)
    # With 0.8 a posterior value of these inputs sits on the clamp, where its gradient is 0.

    def run(u, a, eps):
        with fastlv.use_backend("cpp"):
            return loop.unroll(u, a, eps)
    assert torch.autograd.gradcheck(run, (u, a, eps))


def test_unused_outputs_get_zero_gradient():
    loop, inputs = loop_and_inputs(torch.float64, 8.0)
    grads = {}
    for backend in ("cpp", "ref"):
        with fastlv.use_backend(backend):
            h = loop.unroll(*inputs)[1]
        grads[backend] = torch.autograd.grad(h.sum(), inputs[0])
    torch.testing.assert_close(grads["cpp"], grads["ref"])


def test_compiled_unroll_traces_the_pytorch_loop():
    loop, inputs = loop_and_inputs(torch.float32, 8.0, N=3)
    compiled = torch.compile(loop.unroll, backend="eager", fullgraph=True)
    for got, want in zip(compiled(*inputs), loop.unroll(*inputs)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("model", [ZForcingSRNN, VRNN])
def test_models_match_between_backends(model):
    torch.manual_seed(0)
    net = model(4, d_emb=8, d_rnn=12, d_latent=3, d_mlp=8).double()
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    eps = torch.randn(*net.noise_shape(x), dtype=torch.float64)
    results = {}
    for backend in ("cpp", "ref"):
        with fastlv.use_backend(backend):
            log_w = net.log_weights(x, eps=eps)
        results[backend] = (log_w, torch.autograd.grad(log_w.sum(), list(net.parameters())))
    torch.testing.assert_close(results["cpp"][0], results["ref"][0])
    for got, want in zip(results["cpp"][1], results["ref"][1]):
        torch.testing.assert_close(got, want)


def test_bad_shapes_raise_clear_errors():
    H, M, L = 4, 3, 2
    F = 2 * M + 4 * H
    good = dict(pre=torch.randn(2, 5, F), eps=torch.randn(2, 5, L), w_state=torch.randn(H, F),
                w_latent=torch.randn(L, 4 * H), w_out=torch.randn(2, M, 2 * L), b_out=torch.randn(2, 2 * L))
    bad = {"pre": torch.randn(2, 5, F + 1), "eps": torch.randn(2, 4, L), "w_latent": torch.randn(L, 4 * H + 1),
           "w_out": torch.randn(2, M, 2 * L + 2), "b_out": torch.randn(2, 2 * L, dtype=torch.float64)}
    torch.ops.fastlv_C.stochastic_lstm(*good.values(), None)
    for name, value in bad.items():
        with pytest.raises(RuntimeError, match="fastlv: stochastic_lstm"):
            torch.ops.fastlv_C.stochastic_lstm(*{**good, name: value}.values(), None)
