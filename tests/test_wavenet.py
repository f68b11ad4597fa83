"""fastlv.nn.WaveNetBlock / TCN: equality to an nn.Conv1d block, STCN's structure, causality, and
incremental generation equal to the full forward."""
import pytest
import torch
import torch.nn.functional as F

import fastlv
from fastlv.nn import TCN, WaveNetBlock


def conv1d_block(block: WaveNetBlock, x, cond=None):
    """Reference block from nn.Conv1d layers with the block's weights (left-padded causal conv)."""
    C, k, d = block.channels, block.kernel_size, block.dilation
    conv = torch.nn.Conv1d(block.in_channels, 2 * C, k, dilation=d).to(x)
    res = torch.nn.Conv1d(C, C, 1).to(x)
    with torch.no_grad():
        conv.weight.copy_(block.weight)
        conv.bias.copy_(block.bias)
        res.weight.copy_(block.res.weight[:, :, None])
        res.bias.copy_(block.res.bias)
    pre = conv(F.pad(x, ((k - 1) * d, 0)))
    if cond is not None:
        pre = pre + torch.einsum("oc,bc...->bo...", block.cond_proj.weight, cond).reshape(x.shape[0], 2 * C, -1)
    f, g = pre.chunk(2, 1)
    h = torch.tanh(f) * torch.sigmoid(g)
    y = res(h)
    inp = x if block.input_proj is None else torch.einsum("oc,bct->bot", block.input_proj.weight, x)
    skip = y if block.skip is None else F.conv1d(h, block.skip.weight[:, :, None], block.skip.bias)
    return inp + y, skip


@pytest.mark.parametrize("skip_channels,in_channels,cond", [(None, 6, None), (5, 4, "local"), (None, 6, "global")])
def test_block_matches_conv1d_block(backend, skip_channels, in_channels, cond):
    _, device = backend
    torch.manual_seed(0)
    block = WaveNetBlock(in_channels, 6, 2, 4, skip_channels=skip_channels, cond_channels=3 if cond else None).to(device)
    x = torch.randn(2, in_channels, 30, device=device)
    c = None if cond is None else torch.randn(2, 3, 30, device=device) if cond == "local" else torch.randn(2, 3, device=device)
    residual, skip = block(x, c)
    want_residual, want_skip = conv1d_block(block, x, c)
    assert residual.shape == (2, 6, 30) and skip.shape == (2, skip_channels or 6, 30)
    torch.testing.assert_close(residual, want_residual, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(skip, want_skip, rtol=1e-5, atol=1e-5)


def functional_block(block: WaveNetBlock, x, cond):
    """conv1d_block with the block's own parameters (F.conv1d), so that autograd reaches them."""
    k, d = block.kernel_size, block.dilation
    pre = F.conv1d(F.pad(x, ((k - 1) * d, 0)), block.weight, block.bias, dilation=d)
    pre = pre + F.conv1d(cond, block.cond_proj.weight[:, :, None])
    f, g = pre.chunk(2, 1)
    h = torch.tanh(f) * torch.sigmoid(g)
    y = F.conv1d(h, block.res.weight[:, :, None], block.res.bias)
    inp = x if block.input_proj is None else F.conv1d(x, block.input_proj.weight[:, :, None])
    return inp + y, y if block.skip is None else F.conv1d(h, block.skip.weight[:, :, None], block.skip.bias)


@pytest.mark.parametrize("skip_channels,in_channels", [(None, 6), (5, 4), (6, 6)])
@pytest.mark.parametrize("used", ["both", "residual", "skip"])
def test_block_gradients_match_conv1d_block(backend, skip_channels, in_channels, used):
    """Gradients of x and every parameter (the residual/skip 1x1 convolutions have their own backward),
    also when only one of the two outputs reaches the loss."""
    _, device = backend
    torch.manual_seed(0)
    block = WaveNetBlock(in_channels, 6, 2, 4, skip_channels=skip_channels, cond_channels=3).to(device, torch.float64)
    x = torch.randn(2, in_channels, 30, device=device, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 3, 30, device=device, dtype=torch.float64)
    leaves = [x, *block.parameters()]

    def loss(outputs):
        weights = [torch.linspace(0.5, 1.5, o.numel(), device=device, dtype=o.dtype).view_as(o) for o in outputs]
        return sum((outputs[i] * weights[i]).sum() for i in {"both": (0, 1), "residual": (0,), "skip": (1,)}[used])

    got = torch.autograd.grad(loss(block(x, c)), leaves, allow_unused=True)
    want = torch.autograd.grad(loss(functional_block(block, x, c)), leaves, allow_unused=True)
    for (name, _), a, b in zip([("x", x), *block.named_parameters()], got, want):
        assert (a is None) == (b is None), name  # unused skip (or residual) convolution: no gradient
        if a is not None:
            torch.testing.assert_close(a, b, msg=name)


def test_tcn_structure_and_levels():
    tcn = TCN(3, 8, levels=5, blocks_per_level=5)  # STCN speech: 25 blocks, dilations 1..16 per level
    assert [b.dilation for b in tcn.blocks] == [1, 2, 4, 8, 16] * 5
    assert tcn.receptive_field == 1 + 5 * 31
    out = tcn(torch.randn(2, 3, 20))
    assert len(out.levels) == 5 and all(d.shape == (2, 8, 20) for d in out.levels) and out.skip is None
    # d^l is the output of the last block of level l.
    x = torch.randn(1, 3, 12)
    h = x
    levels = []
    for i, block in enumerate(tcn.blocks):
        h, _ = block(h)
        if i % 5 == 4:
            levels.append(h)
    for got, want in zip(tcn(x).levels, levels):
        torch.testing.assert_close(got, want)


def test_tcn_causality_and_training():
    torch.manual_seed(0)
    tcn = TCN(3, 8, levels=2, blocks_per_level=3, skip_channels=4)
    x = torch.randn(2, 3, 30, requires_grad=True)
    out = tcn(x)
    (g,) = torch.autograd.grad(out.levels[-1][:, :, 17].sum() + out.skip[:, :, 17].sum(), x)
    assert (g[:, :, 18:] == 0).all() and (g[:, :, :18] != 0).any()
    opt = torch.optim.Adam(tcn.parameters(), lr=1e-2)
    target = torch.randn(2, 8, 30)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = (tcn(x.detach()).levels[-1] - target).square().mean()
        loss.backward()
        first = first if first is not None else loss.item()
        opt.step()
    assert loss.item() < 0.7 * first
    assert all(p.grad is not None for n, p in tcn.named_parameters() if ".skip." not in n)  # skips: unused here


@pytest.mark.parametrize("backend", ["cpp", "ref"])  # the fused C++ step (wavenet_block_step), torch ops
@pytest.mark.parametrize("kernel_size,skip_channels,cond", [(2, None, None), (3, 5, "local"), (2, 5, "global")])
def test_incremental_generation_matches_full_forward(kernel_size, skip_channels, cond, backend):
    torch.manual_seed(0)
    steps = 300
    tcn = TCN(3, 8, levels=3, blocks_per_level=4, kernel_size=kernel_size, skip_channels=skip_channels,
              cond_channels=2 if cond else None).double().eval()
    x = torch.randn(2, 3, steps, dtype=torch.float64)
    c = {None: None, "local": torch.randn(2, 2, steps, dtype=torch.float64),
         "global": torch.randn(2, 2, dtype=torch.float64)}[cond]
    with torch.no_grad(), fastlv.use_backend(backend):
        full = tcn(x, c)
        state = tcn.init_state(2)
        for t in range(steps):
            c_t = None if c is None else c[:, :, t] if cond == "local" else c
            step = tcn.step(x[:, :, t], state, c_t)
            for got, want in zip(step.levels, full.levels):
                torch.testing.assert_close(got, want[:, :, t], rtol=1e-10, atol=1e-10)
            if skip_channels:
                torch.testing.assert_close(step.skip, full.skip[:, :, t], rtol=1e-10, atol=1e-10)
    assert tcn.receptive_field < steps  # the queues wrapped around


def test_incremental_generation_float32_autoregressive():
    """Feed each step's output back as the next input (sampling), then check against the full forward."""
    torch.manual_seed(0)
    tcn = TCN(4, 4, levels=2, blocks_per_level=3).eval()
    with torch.no_grad():
        state = tcn.init_state(1)
        x_t = torch.randn(1, 4)
        inputs = []
        for _ in range(40):
            inputs.append(x_t)
            x_t = torch.tanh(tcn.step(x_t, state).levels[-1])
        full = tcn(torch.stack(inputs, -1)).levels[-1]
    torch.testing.assert_close(torch.tanh(full[:, :, -1]), x_t, rtol=1e-5, atol=1e-5)


def test_fused_step_errors():
    block = WaveNetBlock(4, 4, 2, 2)
    queue = block.init_queue(2)
    x = torch.randn(2, 4)

    def step(write_row=0, res_weight_t=queue.res_weight_t, inp=x):
        return torch.ops.fastlv_C.wavenet_block_step(x, queue.buffer, [0], write_row, queue.stacked_weight,
                                                     block.bias, None, inp, res_weight_t, block.res.bias, None, None)
    assert step()[0].shape == (2, 4)
    with pytest.raises(RuntimeError, match="write_row 2 is outside the buffer"):
        step(write_row=2)
    with pytest.raises(RuntimeError, match="res_weight_t must be contiguous"):
        step(res_weight_t=queue.res_weight_t.t())
    with pytest.raises(RuntimeError, match=r"inp must have shape \[2, 4\]"):
        step(inp=x[:1])


def test_block_compiles_fullgraph():
    torch.manual_seed(0)
    block = WaveNetBlock(4, 4, 2, 2, skip_channels=3)
    x = torch.randn(2, 4, 16, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x), block(x)):
        torch.testing.assert_close(got, want)
    (g1,) = torch.autograd.grad(sum(o.sum() for o in compiled(x)), x)
    (g2,) = torch.autograd.grad(sum(o.sum() for o in block(x)), x)
    torch.testing.assert_close(g1, g2)


def test_block_errors():
    block = WaveNetBlock(4, 4)
    with pytest.raises(ValueError, match="cond_channels"):
        block(torch.randn(1, 4, 5), torch.randn(1, 2))
    with pytest.raises(ValueError, match="weight must have shape"):
        block(torch.randn(1, 3, 5))
