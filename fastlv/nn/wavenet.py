"""WaveNet blocks and the temporal convolutional network (TCN) of STCN, with incremental generation.

``WaveNetBlock`` (STCN Sec. 2.1, Fig. 5 left; van den Oord et al. 2016): a gated dilated causal
convolution (:func:`fastlv.ops.gated_causal_conv1d`), then 1x1 convolutions giving the residual and the
skip output. With ``skip_channels=None`` (STCN's code) there is one 1x1 convolution whose output is the
skip and is added to the input for the residual; with ``skip_channels=S`` (WaveNet) the residual and skip
1x1 convolutions are separate GEMMs on the gated activations (one custom backward for both, see
``_ResidualSkip``).

``TCN``: L levels of K blocks with dilations 1, 2, ..., 2^(K-1) in every level; the output of level l is
the representation d^l that STCN conditions latent layer l on (Sec. 2.1 Eq. 2, Appendix 7.1: speech
K = 5, L = 5, 256 or 512 channels; handwriting K = 6, L = 5).

Layout: every tensor between blocks is ``[B, C, T]`` with time-major memory, so the gated convolution
and the 1x1 convolutions are single GEMMs over ``[T * B, C]`` matrices and no block transposes.

Incremental generation (``TCN.init_state`` / ``TCN.step``): each block keeps a queue of its last
(k - 1) * dilation inputs, so one new step costs O(blocks) small GEMMs instead of re-running the stack
over the receptive field; the outputs equal the full-sequence forward's at every step. On the CPU (cpp
backend), a step of up to SMALL_STEP_ROWS (16) sequences without autograd is one C++ call per block
(fastlv_C::wavenet_block_step): there, ATen's one-row GEMMs and the Python between them cost ~160 us
per block, the fused step ~60 us (most of it the op call from Python).
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastlv._backend import select
from fastlv.ops.gated_conv import gated_causal_conv1d, tap_shift


def _time_major(t: Tensor) -> Tensor:
    """[B, C, T] -> [T, B, C] view (contiguous when t has time-major memory)."""
    return t.permute(2, 0, 1)


def _time_major_contiguous(t: Tensor) -> Tensor:
    """[B, C, T] -> contiguous [T, B, C] (no copy if t has time-major memory). From other memory it is two
    copies, [B, C, T] -> [B, T, C] (per-sequence 2-D transposes) -> [T, B, C] (moves whole C-rows): about 2.5x
    faster on the CPU than copying the 3-D permutation, whose innermost loop strides through memory."""
    if _time_major(t).is_contiguous():
        return _time_major(t)
    return t.transpose(1, 2).contiguous().transpose(0, 1).contiguous()


def _channels_first(t: Tensor) -> Tensor:
    """[T, B, C] -> [B, C, T] view."""
    return t.permute(1, 2, 0)


# Generation steps of at most this many sequences are a chain of GEMVs (one row per sequence), handled as
# such on the CPU: one thread, and the fused step below.
SMALL_STEP_ROWS = 16


@contextlib.contextmanager
def _single_threaded_if_small(x_t: Tensor):
    """One generation step of a small batch is a chain of GEMVs: on the CPU, splitting each over OpenMP
    threads costs more than the work (and stalls whenever a core is busy), so it runs on one thread."""
    if x_t.device.type != "cpu" or x_t.shape[0] > SMALL_STEP_ROWS or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fused_step(x_t: Tensor) -> bool:
    """Whether a generation step runs as fastlv_C::wavenet_block_step: on the cpp backend, up to
    SMALL_STEP_ROWS sequences (beyond, ATen's GEMMs are efficient), with autograd off (the fused step has
    no backward)."""
    return x_t.shape[0] <= SMALL_STEP_ROWS and not torch.is_grad_enabled() and select(x_t.device) == "cpp"


class WaveNetBlock(nn.Module):
    """Gated dilated causal convolution + 1x1 residual and skip convolutions.

    Args:
        in_channels: channels of the block input x.
        channels: channels of the gated convolution's output and of the residual output.
        kernel_size: width k of the causal convolution (2 in STCN and WaveNet).
        dilation: dilation of the causal convolution.
        skip_channels: None (STCN): the skip output is the 1x1 convolution that is added to the input.
            An int S (WaveNet): a separate 1x1 skip convolution with S output channels.
        cond_channels: optional conditioning features, projected (1x1, no bias) onto the filter and gate
            pre-activations: ``[B, cond_channels]`` (global) or ``[B, cond_channels, T]`` (local).

    ``forward(x [B, in_channels, T], cond=None) -> (residual [B, channels, T], skip [B, S, T])``; the
    residual is x (1x1-projected when in_channels != channels) plus the residual 1x1 convolution.
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int = 2, dilation: int = 1, *,
                 skip_channels: int | None = None, cond_channels: int | None = None):
        super().__init__()
        self.in_channels, self.channels, self.kernel_size, self.dilation = in_channels, channels, kernel_size, dilation
        self.skip_channels = skip_channels
        # The gated convolution's parameters, shaped and initialized like nn.Conv1d's; filter rows, then gate rows.
        self.weight = nn.Parameter(torch.empty(2 * channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(2 * channels))
        # 1x1 convolutions as Linear layers over time-major [T, B, C] rows: one GEMM each.
        self.res = nn.Linear(channels, channels)
        self.skip = nn.Linear(channels, skip_channels) if skip_channels else None
        self.input_proj = nn.Linear(in_channels, channels, bias=False) if in_channels != channels else None
        self.cond_proj = nn.Linear(cond_channels, 2 * channels, bias=False) if cond_channels else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv1d's initialization
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)

    @property
    def receptive_field(self) -> int:
        return tap_shift(0, self.kernel_size, self.dilation) + 1

    def _cond_term(self, cond: Tensor | None) -> Tensor | None:
        """Conditioning projected onto the 2C pre-activations: [B, 2C, 1] (global) or [B, 2C, T]."""
        if cond is None:
            return None
        if self.cond_proj is None:
            raise ValueError("fastlv: this WaveNetBlock was built without cond_channels, but cond was given")
        if cond.dim() == 2:
            return self.cond_proj(cond).unsqueeze(-1)
        return _channels_first(self.cond_proj(_time_major(cond)))  # [T, B, 2C] memory

    def _outputs(self, x_tm: Tensor, h_tm: Tensor) -> tuple[Tensor, Tensor]:
        """Residual and skip from the block input and the gated activations, both [..., C] time-major."""
        inp = x_tm if self.input_proj is None else self.input_proj(x_tm)
        if not torch.is_grad_enabled():  # generation steps: plain products, no autograd.Function call
            y = self.res(h_tm)
            return inp + y, y if self.skip is None else self.skip(h_tm)
        skip_weight, skip_bias = (None, None) if self.skip is None else (self.skip.weight, self.skip.bias)
        return _ResidualSkip.apply(inp, h_tm, self.res.weight, self.res.bias, skip_weight, skip_bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_tm = _time_major_contiguous(x)
        h = gated_causal_conv1d(_channels_first(x_tm), self.weight, self.bias, self.dilation,
                                self._cond_term(cond))
        residual, skip = self._outputs(x_tm, _time_major(h))
        return _channels_first(residual), _channels_first(skip)

    @torch.no_grad()
    def init_queue(self, batch_size: int, device=None, dtype=None) -> "_BlockQueue":
        return _BlockQueue(self, batch_size, device, dtype)

    def step(self, x_t: Tensor, queue: "_BlockQueue", cond_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One generation step: x_t [B, in_channels] -> (residual [B, channels], skip [B, S]); pushes x_t."""
        cond_term = None if cond_t is None else self.cond_proj(cond_t)
        if _fused_step(x_t):
            inp = x_t if self.input_proj is None else self.input_proj(x_t)
            read_rows, write_row = queue.advance()
            skip_bias = None if self.skip is None else self.skip.bias
            return torch.ops.fastlv_C.wavenet_block_step(
                x_t, queue.buffer, read_rows, write_row, queue.stacked_weight, self.bias, cond_term, inp,
                queue.res_weight_t, self.res.bias, queue.skip_weight_t, skip_bias)
        taps = queue.push(x_t)  # [B, k * in_channels]: inputs at t - s_0, ..., t
        pre = torch.addmm(self.bias, taps, queue.stacked_weight)
        if cond_term is not None:
            pre = pre + cond_term
        f, g = pre.chunk(2, -1)
        return self._outputs(x_t, torch.tanh(f) * torch.sigmoid(g))


def _as_rows(grad: Tensor | None) -> Tensor | None:
    """A gradient [..., C] as a contiguous [rows, C] matrix (one copy when it is strided or expanded)."""
    return None if grad is None else grad.contiguous().view(-1, grad.shape[-1])


def _linear_grads(grad_rows: Tensor | None, rows: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Weight and bias gradients of out = rows @ W^T + b."""
    return (None, None) if grad_rows is None else (grad_rows.t() @ rows, grad_rows.sum(0))


class _ResidualSkip(torch.autograd.Function):
    """The block's 1x1 convolutions over time-major rows [..., C]:
    residual = inp + h W_res^T + b_res and skip = h W_skip^T + b_skip (skip = y = h W_res^T + b_res, the
    residual branch, without a skip convolution: STCN). Autograd of the same ops would allocate more
    [T * B, C] buffers (y, then inp + y; a contiguous copy of an upstream gradient for every GEMM that
    reads it; one d_h per convolution, then their sum), and on the CPU each new buffer of this size costs
    page faults comparable to a pass over it. Here each output is one GEMM into its own buffer, each
    gradient is made contiguous once and d_h is accumulated in place."""

    @staticmethod
    def forward(ctx, inp, h, res_weight, res_bias, skip_weight, skip_bias):
        rows = h.reshape(-1, h.shape[-1])  # a view: h is contiguous
        if skip_weight is None:
            skip = torch.addmm(res_bias, rows, res_weight.t()).view(inp.shape)
            residual = inp + skip
        else:
            residual = (inp.reshape(rows.shape[0], -1) + res_bias).addmm_(rows, res_weight.t()).view(inp.shape)
            skip = torch.addmm(skip_bias, rows, skip_weight.t()).view(*inp.shape[:-1], -1)
        ctx.save_for_backward(rows, res_weight, skip_weight)
        ctx.h_shape = h.shape
        ctx.set_materialize_grads(False)  # an unused output (often the skip) gets no zero gradient
        return residual, skip

    @staticmethod
    def backward(ctx, grad_residual, grad_skip):
        rows, res_weight, skip_weight = ctx.saved_tensors
        d_inp = grad_residual
        if skip_weight is None:  # skip is the residual branch's y, which gets both gradients
            grad_y = sum(g for g in (grad_residual, grad_skip) if g is not None)  # at least one is given
            g_res, g_skip = _as_rows(grad_y), None
        else:
            # The contiguous copy itself, not a view of it, is inp's gradient: autograd can then add inp's
            # other gradient (through the gated convolution) into it in place.
            d_inp = None if grad_residual is None else grad_residual.contiguous()
            g_res, g_skip = _as_rows(d_inp), _as_rows(grad_skip)
        d_h = None
        for g, weight in ((g_res, res_weight), (g_skip, skip_weight)):
            if g is not None:
                d_h = torch.mm(g, weight) if d_h is None else d_h.addmm_(g, weight)
        return (d_inp, d_h.view(ctx.h_shape), *_linear_grads(g_res, rows), *_linear_grads(g_skip, rows))


class _BlockQueue:
    """The last (k - 1) * dilation inputs of one block, as a ring buffer [(k - 1) * dilation, B, C_in]
    (zeros before the first step, the causal padding), and the block's tap weights stacked for one GEMM.
    The weights are a snapshot: make a new state after changing the parameters."""

    def __init__(self, block: WaveNetBlock, batch_size: int, device, dtype):
        k, d = block.kernel_size, block.dilation
        device = block.weight.device if device is None else device
        dtype = block.weight.dtype if dtype is None else dtype
        self.shifts = [tap_shift(j, k, d) for j in range(k)]
        self.length = self.shifts[0]
        self.buffer = torch.zeros(max(self.length, 1), batch_size, block.in_channels, device=device, dtype=dtype)
        self.t = 0
        # [k * C_in, 2C]: rows of tap j at j * C_in, so taps [B, k * C_in] @ stacked_weight sums the taps.
        self.stacked_weight = (block.weight.detach().permute(2, 1, 0).reshape(k * block.in_channels, -1)
                               .to(device, dtype).contiguous())
        # The 1x1 convolutions' weights as [in, out] for the fused step (wavenet_block_step).
        self.res_weight_t = block.res.weight.detach().t().contiguous().to(device, dtype)
        self.skip_weight_t = None if block.skip is None else block.skip.weight.detach().t().contiguous().to(device, dtype)

    def advance(self) -> tuple[list[int], int]:
        """Buffer rows of the taps before x_t at the current step, and the row x_t is stored in (-1 when
        there is no buffer); moves to the next step."""
        read_rows = [(self.t - s) % self.length for s in self.shifts[:-1]]
        write_row = self.t % self.length if self.length else -1
        self.t += 1
        return read_rows, write_row

    def push(self, x_t: Tensor) -> Tensor:
        """Inputs of every tap at the current step (concatenated), then store x_t."""
        read_rows, write_row = self.advance()
        taps = torch.cat([self.buffer[r] for r in read_rows] + [x_t], -1)
        if write_row >= 0:  # overwrite the oldest input only after reading it (the buffer rows are views)
            self.buffer[write_row] = x_t
        return taps


class TCNOutput(NamedTuple):
    levels: list  # d^l, l = 1..L: [B, C, T] (forward) or [B, C] (step)
    skip: Tensor | None  # sum of the blocks' skip outputs (only with skip_channels)


class TCN(nn.Module):
    """STCN's deterministic temporal convolutional network: ``levels`` levels of ``blocks_per_level``
    WaveNet blocks with dilations 1, 2, ..., 2^(blocks_per_level - 1) (STCN Sec. 2.1 Eq. 2, Appendix 7.1).

    ``forward(x [B, in_channels, T], cond=None)`` returns ``TCNOutput(levels, skip)``: ``levels[l]`` is
    d^{l+1} ``[B, channels, T]``, the output of the last block of level l + 1; ``skip`` is the sum of the
    skip outputs ``[B, skip_channels, T]`` when ``skip_channels`` is set, else None (STCN uses only d^l).
    ``cond`` (global ``[B, cond_channels]`` or local ``[B, cond_channels, T]``) conditions every block.

    Generation: ``state = tcn.init_state(B)``, then ``tcn.step(x_t [B, in_channels], state)`` per step.
    """

    def __init__(self, in_channels: int, channels: int, levels: int = 5, blocks_per_level: int = 5,
                 kernel_size: int = 2, *, skip_channels: int | None = None, cond_channels: int | None = None):
        super().__init__()
        self.levels, self.blocks_per_level, self.skip_channels = levels, blocks_per_level, skip_channels
        self.blocks = nn.ModuleList(
            WaveNetBlock(in_channels if i == 0 else channels, channels, kernel_size, 2 ** (i % blocks_per_level),
                         skip_channels=skip_channels, cond_channels=cond_channels)
            for i in range(levels * blocks_per_level))

    @property
    def receptive_field(self) -> int:
        return 1 + sum(block.receptive_field - 1 for block in self.blocks)

    def _run(self, x: Tensor, cond: Tensor | None, block_fn) -> TCNOutput:
        levels, skip = [], None
        for i, block in enumerate(self.blocks):
            x, s = block_fn(block, x, cond, i)
            if self.skip_channels:
                skip = s if skip is None else skip + s
            if (i + 1) % self.blocks_per_level == 0:
                levels.append(x)
        return TCNOutput(levels, skip)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> TCNOutput:
        if cond is not None and cond.dim() == 3:  # time-major memory once, for every block
            cond = _channels_first(_time_major(cond).contiguous())
        return self._run(x, cond, lambda block, h, c, i: block(h, c))

    @torch.no_grad()
    def init_state(self, batch_size: int, device=None, dtype=None) -> list:
        """Per-block input queues for :meth:`step`, all zeros (the causal padding)."""
        return [block.init_queue(batch_size, device, dtype) for block in self.blocks]

    def step(self, x_t: Tensor, state: list, cond_t: Tensor | None = None) -> TCNOutput:
        """One generation step: x_t ``[B, in_channels]`` (and cond_t ``[B, cond_channels]`` for this
        step) -> the levels' ``[B, channels]`` and skip of this step, equal to the full forward's at
        this time step. Updates ``state`` in place."""
        with _single_threaded_if_small(x_t):
            return self._run(x_t, cond_t, lambda block, h, c, i: block.step(h, state[i], c))
