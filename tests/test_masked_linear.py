"""fastlv.ops.masked_linear against a dense masked GEMM, on every backend that can run here (ref, cpp,
triton under the interpreter, cuda on a GPU)."""
import pytest
import torch

import fastlv
from fastlv.nn import hidden_degrees, input_degrees, made_mask
from fastlv.ops import masked_linear, masked_linear_ref


def dense_reference(x, weight, mask, bias, activation):
    """The op's definition, in float64: act(x @ (W * M)^T + b)."""
    y = x.double() @ (weight.double() * (mask != 0).double()).t()
    if bias is not None:
        y = y + bias.double()
    return torch.relu(y) if activation == "relu" else y


def made_layer_mask(n_in, n_out, order="natural", strict=False, context=0, seed=0):
    """Mask of a MADE layer from inputs of the given order (plus context inputs of degree 0) to
    n_out sorted hidden degrees (strict: to outputs with the input degrees, n_out = n_in)."""
    degrees = input_degrees(n_in, order, torch.Generator().manual_seed(seed))
    in_degrees = torch.cat([torch.zeros(context, dtype=torch.long), degrees])
    out_degrees = degrees if strict else hidden_degrees(n_out, n_in, context > 0)
    return made_mask(in_degrees, out_degrees, strict)


def inputs(batch, n_in, n_out, dtype=torch.float32, device="cpu", seed=0, bias=True, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n_in, generator=g, dtype=dtype)
    weight = torch.randn(n_out, n_in, generator=g, dtype=dtype) / max(n_in, 1) ** 0.5
    b = torch.randn(n_out, generator=g, dtype=dtype) if bias else None
    return [t.to(device).requires_grad_(requires_grad) if t is not None else None for t in (x, weight, b)]


def weighted_grads(y, tensors):
    w = torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
    return torch.autograd.grad((y * w).sum(), [t for t in tensors if t is not None])


def assert_relu_layer_matches(x, weight, mask, bias, **tol):
    """The relu layer's output equals the dense reference and its gradients the pure-PyTorch reference's."""
    y = masked_linear(x, weight, mask, bias, "relu")
    torch.testing.assert_close(y.double(), dense_reference(x, weight, mask, bias, "relu"), **tol)
    for got, want in zip(weighted_grads(y, (x, weight, bias)),
                         weighted_grads(masked_linear_ref(x, weight, mask, bias, "relu"), (x, weight, bias))):
        torch.testing.assert_close(got, want, **tol)


MASKS = {
    "made L200->64": lambda: made_layer_mask(200, 64),
    "made 88 random->40": lambda: made_layer_mask(88, 40, order="random"),
    "output strict 3": lambda: made_layer_mask(3, 3, strict=True),
    "context 5 + L7 random": lambda: made_layer_mask(7, 13, order="random", context=5, seed=3),
    "random 0/1": lambda: torch.rand(70, 150, generator=torch.Generator().manual_seed(1)) < 0.3,
    "dense": lambda: torch.ones(33, 17),
}


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_forward_and_grads_match_dense_reference(backend, mask_name, activation):
    _, device = backend
    mask = MASKS[mask_name]().to(device)
    x, weight, bias = inputs((3, 7), mask.shape[1], mask.shape[0], device=device, requires_grad=True)
    y = masked_linear(x, weight, mask, bias, activation)
    want = dense_reference(x, weight, mask, bias, activation)
    assert y.shape == (3, 7, mask.shape[0]) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    got_grads = weighted_grads(y, (x, weight, bias))
    want_grads = weighted_grads(want, (x, weight, bias))
    for got, ref in zip(got_grads, want_grads):
        torch.testing.assert_close(got.double(), ref.double(), rtol=1e-4, atol=1e-4)
    # Masked weights get exactly zero gradient.
    assert (got_grads[1][mask == 0] == 0).all()


def test_masked_weights_are_never_read(backend):
    """Masked entries contribute exactly nothing, even inf / nan (the op keeps, never multiplies)."""
    _, device = backend
    mask = made_layer_mask(20, 24).to(device)
    x, weight, bias = inputs((6,), 20, 24, device=device)
    poisoned = torch.where(mask, weight, torch.full_like(weight, float("nan")))
    torch.testing.assert_close(masked_linear(x, poisoned, mask, bias), masked_linear_ref(x, weight, mask, bias))


def test_empty_weight_tiles_are_skipped_exactly(backend):
    """A mask with whole empty 64 x 64 weight tiles (the tiles the Triton kernels skip, see
    triton_kernels/masked_linear.py), partial tiles at the edges and outputs that see no input: the same
    result as the dense reference, with nan in every removed weight, and grad_W exactly 0 outside the mask."""
    name, device = backend
    g = torch.Generator().manual_seed(7)
    mask = torch.rand(130, 150, generator=g) < 0.5
    mask[:64, 64:128] = False  # one empty interior tile
    mask[64:128, 128:] = False  # an empty partial tile at the right edge
    mask[128:] = False  # two outputs that see nothing: y = act(b)
    if name == "triton":
        from fastlv.triton_kernels.masked_linear import _keep_and_occupancy
        _, occupied = _keep_and_occupancy(mask, 64, 64)
        assert occupied.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    mask = mask.to(device)
    x, weight, bias = inputs((9,), 150, 130, device=device, requires_grad=True)
    poisoned = torch.where(mask, weight, torch.full_like(weight, float("nan"))).detach().requires_grad_()
    y = masked_linear(x, poisoned, mask, bias, "relu")
    want = dense_reference(x, weight, mask, bias, "relu")
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)
    got_grads = weighted_grads(y, (x, poisoned, bias))
    want_grads = weighted_grads(want, (x, weight, bias))
    for got, ref in zip(got_grads, want_grads):
        torch.testing.assert_close(got.double(), ref.double(), rtol=1e-4, atol=1e-4)
    assert (got_grads[1][~mask] == 0).all()


def test_autoregressive_jacobian(backend):
    """Strict MADE output mask over a random order: d y_i / d x_j == 0 exactly for deg_j >= deg_i."""
    _, device = backend
    L = 11
    degrees = input_degrees(L, "random", torch.Generator().manual_seed(5))
    mask = made_mask(degrees, degrees, strict=True).to(device)
    x, weight, bias = inputs((1,), L, L, dtype=torch.float64, device=device)
    jac = torch.autograd.functional.jacobian(lambda v: masked_linear(v, weight, mask, bias, "relu"), x)[0, :, 0]
    allowed = degrees[None, :] < degrees[:, None]
    assert (jac.cpu()[~allowed] == 0).all() and (jac.cpu()[allowed] != 0).any()


def test_gradcheck_float64(backend):
    name, device = backend
    if device.type == "cpu" and name == "triton":
        pytest.skip("gradcheck runs the interpreter hundreds of times; grads are checked against the reference")
    mask = made_layer_mask(6, 5, order="random", context=2).to(device)
    x, weight, bias = inputs((3,), 8, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: masked_linear(*t[:2], mask, t[2], "relu"), (x, weight, bias))
    assert torch.autograd.gradcheck(lambda a, w: masked_linear(a, w, mask), (x, weight))


@pytest.mark.parametrize("n", [88, 3, 1])
def test_odd_sizes_and_float64(backend, n):
    _, device = backend
    mask = made_layer_mask(n, 2 * n + 1, order="random", seed=n).to(device)
    x, weight, bias = inputs((5,), n, 2 * n + 1, dtype=torch.float64, device=device, requires_grad=True)
    assert_relu_layer_matches(x, weight, mask, bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_rows(backend, dtype):
    """301 rows: the C++ kernels' row blocks (96), grad_W's K blocks (128) and tiles of 6 rows all end
    partway; 45 inputs and 70 outputs end partway through a tile of columns."""
    _, device = backend
    mask = made_layer_mask(45, 70, order="random", seed=2).to(device)
    x, weight, bias = inputs((7, 43), 45, 70, dtype=dtype, device=device, requires_grad=True)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    assert_relu_layer_matches(x, weight, mask, bias, **tol)


def test_depth_over_one_chunk(backend):
    """600 inputs and 530 outputs: the C++ forward and grad_x GEMMs run K in chunks of 512, the second
    one accumulating (and tiles whose range starts in it got zeros from the first)."""
    _, device = backend
    mask = made_layer_mask(600, 530, order="random", seed=4).to(device)
    x, weight, bias = inputs((9,), 600, 530, device=device, requires_grad=True)
    assert_relu_layer_matches(x, weight, mask, bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["sum", "per row", "per column", "transposed", "contiguous"])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_incoming_gradient_layouts(backend, layout, activation):
    """The backward reads an expanded gradient (of a sum: strides 0; one value per row or per column) in
    place and copies other layouts; every layout gives the reference's gradients."""
    _, device = backend
    mask = made_layer_mask(45, 70, order="random", seed=2).to(device)
    x, weight, bias = inputs((7, 43), 45, 70, device=device, requires_grad=True)
    g = torch.randn(7 * 43, 70, generator=torch.Generator().manual_seed(5)).to(device)
    grad = {"sum": torch.tensor(0.7, device=device).expand(7, 43, 70),
            "per row": g[:, :1].expand(-1, 70).view(7, 43, 70),
            "per column": g[0].expand(7, 43, 70),
            "transposed": g.t().contiguous().t().view(7, 43, 70),
            "contiguous": g.view(7, 43, 70)}[layout]
    got = torch.autograd.grad(masked_linear(x, weight, mask, bias, activation), (x, weight, bias), grad)
    want = torch.autograd.grad(masked_linear_ref(x, weight, mask, bias, activation), (x, weight, bias), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs_and_mask_dtypes(backend):
    _, device = backend
    mask = made_layer_mask(30, 20, order="random").to(device)
    x, weight, bias = inputs((8,), 30, 20, device=device)
    x_t = x.t().contiguous().t()
    weight_t = weight.t().contiguous().t()
    want = dense_reference(x, weight, mask, bias, None)
    for m in (mask, mask.float(), mask.to(torch.int32), mask.t().contiguous().t()):
        torch.testing.assert_close(masked_linear(x_t[::1], weight_t, m, bias).double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked_linear(x[::2], weight, mask, bias).double(), want[::2], rtol=1e-5, atol=1e-5)


def test_mask_edit_in_place_is_seen(backend):
    """The block structure is cached per mask; an in-place edit bumps the version and is picked up."""
    _, device = backend
    mask = made_layer_mask(16, 16).to(device).float()
    x, weight, bias = inputs((4,), 16, 16, device=device)
    masked_linear(x, weight, mask, bias)
    mask.fill_(1.0)
    torch.testing.assert_close(masked_linear(x, weight, mask, bias).double(),
                               dense_reference(x, weight, mask, bias, None), rtol=1e-5, atol=1e-5)
    mask.zero_()
    torch.testing.assert_close(masked_linear(x, weight, mask, bias), bias.expand(4, 16))


def test_empty_inputs(backend):
    _, device = backend
    mask = made_layer_mask(5, 6).to(device)
    x, weight, bias = inputs((0,), 5, 6, device=device, requires_grad=True)
    y = masked_linear(x, weight, mask, bias, "relu")
    assert y.shape == (0, 6)
    gx, gw, gb = torch.autograd.grad(y.sum(), (x, weight, bias))
    assert gx.shape == (0, 5) and (gw == 0).all() and (gb == 0).all()
    x, weight, bias = inputs((4,), 0, 3, device=device)  # no inputs: y = act(b)
    torch.testing.assert_close(masked_linear(x, weight, torch.ones(3, 0, device=device), bias, "relu"),
                               torch.relu(bias).expand(4, 3))


def test_opcheck(backend):
    _, device = backend
    mask = made_layer_mask(9, 7, order="random").to(device)
    x, weight, bias = inputs((2, 3), 9, 7, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastlv.masked_linear.default, (x, weight, mask, bias, "relu"))
    torch.library.opcheck(torch.ops.fastlv.masked_linear.default, (x, weight, mask, None, "none"))
    y = masked_linear(x, weight, mask, bias, "relu").detach()
    torch.library.opcheck(torch.ops.fastlv.masked_linear_backward.default,
                          (torch.randn_like(y), x.detach(), weight.detach(), mask, y, "relu"))


def test_torch_compile_fullgraph(backend):
    _, device = backend
    mask = made_layer_mask(12, 10).to(device)
    x, weight, bias = inputs((4,), 12, 10, device=device, requires_grad=True)
    fn = torch.compile(lambda a, w, b: masked_linear(a, w, mask, b, "relu").sum(), fullgraph=True,
                       backend="aot_eager")
    got = torch.autograd.grad(fn(x, weight, bias), (x, weight, bias))
    want = torch.autograd.grad(masked_linear_ref(x, weight, mask, bias, "relu").sum(), (x, weight, bias))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias_on", [True, False])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_eager_path_with_cpp_autograd_matches_the_custom_op(activation, bias_on):
    """In eager mode on the cpp backend masked_linear calls fastlv_C::masked_linear, whose autograd is
    registered in C++; the custom op fastlv::masked_linear is torch.compile's path. Both run the same
    kernels: equal outputs and gradients."""
    mask = made_layer_mask(20, 30, order="random")
    x, weight, bias = inputs((3, 7), 20, 30, bias=bias_on, requires_grad=True)
    tensors = [t for t in (x, weight, bias) if t is not None]
    with fastlv.use_backend("cpp"):
        y = masked_linear(x, weight, mask, bias, activation)
        custom_y = torch.ops.fastlv.masked_linear(x, weight, mask, bias, activation or "none")
        cpp_grads, custom_grads = weighted_grads(y, tensors), weighted_grads(custom_y, tensors)
    assert "MaskedLinear" in y.grad_fn.name()  # the public op took the C++ autograd path
    assert torch.equal(y, custom_y)
    for a, b in zip(cpp_grads, custom_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["public", "custom op"])
def test_double_backward_raises(path):
    mask = made_layer_mask(4, 4)
    x, weight, bias = inputs((2,), 4, 4, dtype=torch.float64, requires_grad=True)
    op = masked_linear if path == "public" else torch.ops.fastlv.masked_linear
    y = op(x, weight, mask, bias, "none")
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        gx.sum().backward()


def test_errors_name_the_argument():
    mask = made_layer_mask(4, 3)
    x, weight, bias = inputs((2,), 4, 3)
    with pytest.raises(ValueError, match="mask must have the shape of weight"):
        masked_linear(x, weight, mask.t(), bias)
    with pytest.raises(ValueError, match="x must end in in_features = 4"):
        masked_linear(x[:, :3], weight, mask, bias)
    with pytest.raises(ValueError, match="bias must have shape"):
        masked_linear(x, weight, mask, bias[:2])
    with pytest.raises(ValueError, match="activation"):
        masked_linear(x, weight, mask, bias, "tanh")
    with pytest.raises(TypeError, match="weight has dtype"):
        masked_linear(x, weight.double(), mask, bias)
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        masked_linear(x, weight, mask.tolist(), bias)
    if fastlv.backends("cpu")["cpp"] == "available":  # the C++ op checks too, naming the argument
        with pytest.raises(RuntimeError, match="fastlv: mask must have shape"):
            torch.ops.fastlv_C.masked_linear(x, weight, mask[:2], bias, "none")
        with pytest.raises(RuntimeError, match="fastlv: activation must be"):
            torch.ops.fastlv_C.masked_linear(x, weight, mask, bias, "gelu")
        with pytest.raises(RuntimeError, match="fastlv: x must end in in_features"):
            torch.ops.fastlv_C.masked_linear(x[:, :2], weight, mask, bias, "none")
