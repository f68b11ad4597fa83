"""fastlv.ops.gated_causal_conv1d against a left-padded nn.Conv1d reference, on every backend that can run
here (ref, cpp, triton under the interpreter, cuda on a GPU)."""
import pytest
import torch
import torch.nn.functional as F

from fastlv.ops import gated_causal_conv1d, gated_causal_conv1d_ref


def conv_inputs(B, C_in, C_out, T, k, cond=None, dtype=torch.float32, device="cpu", seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C_in, T, generator=g, dtype=dtype)
    weight = torch.randn(2 * C_out, C_in, k, generator=g, dtype=dtype) / (C_in * k) ** 0.5
    bias = torch.randn(2 * C_out, generator=g, dtype=dtype) * 0.1
    c = None
    if cond is not None:
        c = torch.randn(B, 2 * C_out, T if cond == "local" else 1, generator=g, dtype=dtype)
    return [None if t is None else t.to(device).requires_grad_(requires_grad) for t in (x, weight, bias, c)]


def module_reference(x, weight, bias, dilation):
    """The oracle: an nn.Conv1d on the input left-padded by (k - 1) * dilation, then the gate."""
    conv = torch.nn.Conv1d(weight.shape[1], weight.shape[0], weight.shape[2], dilation=dilation).to(x)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    f, g = conv(F.pad(x, ((weight.shape[2] - 1) * dilation, 0))).chunk(2, 1)
    return torch.tanh(f) * torch.sigmoid(g)


def grads(fn, inputs, *args):
    out = fn(*inputs[:3], *args, inputs[3]) if len(inputs) == 4 else fn(*inputs, *args)
    weights = torch.linspace(0.5, 1.5, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    leaves = [t for t in inputs if t is not None]
    return out, torch.autograd.grad((out * weights).sum(), leaves)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("dilation", [1, 4, 64, 512])
def test_matches_conv1d_reference(backend, k, dilation):
    _, device = backend
    x, weight, bias, _ = conv_inputs(2, 5, 6, 70, k, device=device)  # T < receptive field for dilation >= 64
    out = gated_causal_conv1d(x, weight, bias, dilation)
    assert out.shape == (2, 6, 70) and out.dtype == torch.float32
    torch.testing.assert_close(out, module_reference(x, weight, bias, dilation), rtol=1e-5, atol=1e-5)
    _, got = grads(gated_causal_conv1d, [x, weight, bias, None], dilation)
    _, want = grads(gated_causal_conv1d_ref, [x, weight, bias, None], dilation)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 500])
def test_many_row_panels(backend, dilation):
    """T * B = 2400 time-major rows: the C++ kernel splits them into row panels of 1024 run in parallel
    (with their own GEMMs), and dilation 500 shifts by 1500 rows, across panels."""
    name, device = backend
    if device.type == "cpu" and name == "triton":
        pytest.skip("too many program instances for the interpreter; the panels are a C++ CPU detail")
    inputs = conv_inputs(3, 5, 4, 800, 2, cond="local", dtype=torch.float64, device=device)
    out, got = grads(gated_causal_conv1d, inputs, dilation)
    ref, want = grads(gated_causal_conv1d_ref, inputs, dilation)
    torch.testing.assert_close(out, ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cond", ["local", "global"])
def test_conditioning_and_batch_one(backend, cond):
    _, device = backend
    inputs = conv_inputs(1, 4, 5, 33, 2, cond=cond, device=device)
    out, got = grads(gated_causal_conv1d, inputs, 3)
    ref, want = grads(gated_causal_conv1d_ref, inputs, 3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert got[3].shape == inputs[3].shape
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_kernel_width_four_and_odd_sizes(backend):
    _, device = backend
    inputs = conv_inputs(3, 17, 19, 29, 4, cond="local", device=device)
    out, got = grads(gated_causal_conv1d, inputs, 5)
    ref, want = grads(gated_causal_conv1d_ref, inputs, 5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_causality(backend):
    _, device = backend
    x, weight, bias, _ = conv_inputs(2, 4, 4, 40, 2, device=device, requires_grad=False)
    t = 23
    changed = x.clone()
    changed[:, :, t + 1:] = torch.randn_like(changed[:, :, t + 1:]) * 10
    a, b = gated_causal_conv1d(x, weight, bias, 2), gated_causal_conv1d(changed, weight, bias, 2)
    assert torch.equal(a[:, :, :t + 1], b[:, :, :t + 1]) and not torch.equal(a, b)
    x.requires_grad_()
    (g,) = torch.autograd.grad(gated_causal_conv1d(x, weight, bias, 2)[:, :, t].sum(), x)
    assert (g[:, :, t + 1:] == 0).all() and (g[:, :, t] != 0).any() and (g[:, :, t - 2] != 0).any()
    assert (g[:, :, t - 1] == 0).all()  # dilation 2, k = 2: step t reads t and t - 2 only


def test_memory_layouts(backend):
    """Contiguous [B, C, T], time-major memory and strided views give the same values; the output has
    time-major memory."""
    _, device = backend
    x, weight, bias, _ = conv_inputs(3, 6, 4, 25, 2, device=device, requires_grad=False)
    want = gated_causal_conv1d_ref(x, weight, bias, 3)
    time_major = x.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    strided = torch.cat([x, x], 2)[:, :, ::2][:, :, :25]
    strided_x = torch.stack([x, x], -1)[..., 0]
    for inp in (x, time_major, strided_x):
        out = gated_causal_conv1d(inp, weight, bias, 3)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        assert out.permute(2, 0, 1).is_contiguous()
    torch.testing.assert_close(gated_causal_conv1d(strided, weight.transpose(0, 1).contiguous().transpose(0, 1),
                                                   bias, 3), gated_causal_conv1d_ref(strided, weight, bias, 3),
                               rtol=1e-5, atol=1e-5)


def test_empty_inputs(backend):
    _, device = backend
    for B, T in ((0, 5), (2, 0)):
        x, weight, bias, _ = conv_inputs(B, 3, 4, T, 2, device=device)
        out = gated_causal_conv1d(x, weight, bias, 1)
        assert out.shape == (B, 4, T)
        gx, gw, gb = torch.autograd.grad(out.sum(), [x, weight, bias])
        assert gx.shape == x.shape and (gw == 0).all() and (gb == 0).all()


def test_extreme_values_saturate(backend):
    _, device = backend
    x, weight, bias, _ = conv_inputs(2, 3, 4, 16, 2, device=device, requires_grad=False)
    x = (x * 1e4).requires_grad_()
    out = gated_causal_conv1d(x, weight, bias, 1)
    want = gated_causal_conv1d_ref(x.detach().double(), weight.double(), bias.double(), 1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all()


def test_gradcheck_float64(backend):
    name, device = backend
    if device.type == "cpu" and name == "triton":
        pytest.skip("gradcheck runs the interpreter hundreds of times; fp64 grads are checked against the reference")
    for cond in ("local", "global"):
        x, weight, bias, c = conv_inputs(2, 3, 2, 9, 2, cond=cond, dtype=torch.float64, device=device)
        assert torch.autograd.gradcheck(lambda *t: gated_causal_conv1d(t[0], t[1], t[2], 2, t[3]), (x, weight, bias, c))
    x, weight, bias, _ = conv_inputs(1, 2, 3, 7, 3, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda *t: gated_causal_conv1d(*t, 4), (x, weight, bias))


def test_opcheck():
    op = torch.ops.fastlv.gated_causal_conv1d
    for cond in (None, "local", "global"):
        x, weight, bias, c = conv_inputs(2, 3, 4, 11, 2, cond=cond)
        torch.library.opcheck(op, (x, weight, bias, 3, c))
    x, weight, bias, _ = conv_inputs(1, 2, 2, 6, 3, dtype=torch.float64)
    torch.library.opcheck(op, (x, weight, bias, 8, None))


def test_torch_compile_fullgraph():
    inputs = conv_inputs(2, 4, 3, 20, 2, cond="local")

    def loss(x, weight, bias, cond):
        return gated_causal_conv1d(x, weight, bias, 2, cond).square().mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs), loss(*inputs))
    for a, b in zip(torch.autograd.grad(compiled(*inputs), inputs), torch.autograd.grad(loss(*inputs), inputs)):
        torch.testing.assert_close(a, b)


def test_double_backward_raises():
    x, weight, bias, _ = conv_inputs(1, 2, 2, 5, 2, dtype=torch.float64)
    (gx,) = torch.autograd.grad(gated_causal_conv1d(x, weight, bias, 1).sum(), x, create_graph=True)
    with pytest.raises((NotImplementedError, RuntimeError), match="double backward"):
        gx.sum().backward()


def test_errors_name_the_argument():
    x, weight, bias, c = conv_inputs(2, 3, 4, 10, 2, cond="local", requires_grad=False)
    with pytest.raises(ValueError, match="x must have shape"):
        gated_causal_conv1d(x[0], weight, bias)
    with pytest.raises(ValueError, match="weight must have shape"):
        gated_causal_conv1d(x, weight[:, :2], bias)
    with pytest.raises(ValueError, match="weight must have shape"):
        gated_causal_conv1d(x, weight[:7], bias[:7])
    with pytest.raises(ValueError, match="bias must have shape"):
        gated_causal_conv1d(x, weight, bias[:4])
    with pytest.raises(ValueError, match="dilation"):
        gated_causal_conv1d(x, weight, bias, 0)
    with pytest.raises(ValueError, match="cond"):
        gated_causal_conv1d(x, weight, bias, 1, c[:, :4])
    with pytest.raises(TypeError, match="weight has dtype torch.float64"):
        gated_causal_conv1d(x, weight.double(), bias)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        gated_causal_conv1d(x.long(), weight, bias)


def test_cpp_kernel_checks_arguments():
    x, weight, bias, c = conv_inputs(2, 3, 4, 10, 2, cond="local", requires_grad=False)
    op = torch.ops.fastlv_C.gated_causal_conv1d
    with pytest.raises(RuntimeError, match="weight must have shape"):
        op(x, weight[:, :2], bias, 1, None)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        op(x, weight, bias[:3], 1, None)
    with pytest.raises(RuntimeError, match="cond must have shape"):
        op(x, weight, bias, 1, c[:, :, :4])
    with pytest.raises(RuntimeError, match="dilation must be >= 1"):
        op(x, weight, bias, 0, None)
    out, pre = op(x, weight, bias, 1, None)
    with pytest.raises(RuntimeError, match="pre must have shape"):
        torch.ops.fastlv_C.gated_causal_conv1d_backward(out, x, weight, pre[:3], 1)
