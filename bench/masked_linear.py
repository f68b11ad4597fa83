"""Masked linear layer and the MADE output head: the dense masked GEMM in eager PyTorch vs torch.compile of
it vs fastlv's block-sparse kernels.

Cases (rows = B x T = 32 x 40, the TIMIT batch of Dai et al. 2019, Appendix C):
- masked_linear L200 -> 512: the MADE input layer (natural order, sorted hidden degrees), ReLU;
- masked_linear 512 -> 512: a MADE hidden layer;
- MADE head: h_t [.., 512] context, x_t [.., 200], 2 hidden layers of 512, per-element 20-component GMM
  (5 components and fewer repeats in quick mode, to keep it under 40 s), log p(x_t | h_t) summed; eager/compile = the same head from torch.nn (nn.Linear on W * M) + the
  reference GMM (fastlv.ops.gmm_log_prob_ref); fastlv = fastlv.nn.MADE.
Bound: the GEMM FLOPs on the kept blocks only (about half the dense FLOPs) at the measured sgemm rate.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import fastlv
from bench.common import time_providers
from fastlv.nn import MADE, hidden_degrees, input_degrees, made_mask
from fastlv.ops import gmm_log_prob_ref, masked_linear

ROWS = (32, 40)
L, HIDDEN, CONTEXT, COMPONENTS = 200, 512, 512, 20


def dense_masked_linear(x, weight, mask, bias):
    """What the op replaces: a dense GEMM on the masked weight, then the bias and ReLU."""
    return torch.relu(F.linear(x, weight * mask, bias))


def layer_case(n_in: int, n_out: int, device: str, seed: int = 0):
    in_degrees = input_degrees(L) if n_in == L else hidden_degrees(n_in, L, False)
    mask = made_mask(in_degrees, hidden_degrees(n_out, L, False), strict=False).float().to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*ROWS, n_in, generator=g).to(device).requires_grad_()
    weight = (torch.randn(n_out, n_in, generator=g) / n_in ** 0.5).to(device).requires_grad_()
    bias = torch.zeros(n_out).to(device).requires_grad_()
    return (x, weight, mask, bias), (x, weight, bias)


def torch_nn_made(made: MADE, n_components: int):
    """The same MADE head from torch.nn pieces: dense GEMMs on W * M, ReLU, the reference GMM."""
    layers = [(layer.weight, layer.mask.float(), layer.bias) for layer in (*made.hidden, made.output)]

    def log_prob(x, h):
        u = torch.cat([h, x], -1)
        for weight, mask, bias in layers[:-1]:
            u = torch.relu(F.linear(u, weight * mask, bias))
        weight, mask, bias = layers[-1]
        params = F.linear(u, weight * mask, bias).unflatten(-1, (L, 3, n_components))
        logits, mu, log_sigma = params.unbind(-2)
        return gmm_log_prob_ref(x, logits, mu, log_sigma).sum(-1)
    return log_prob


def made_case(device: str, n_components: int, seed: int = 0):
    made = MADE(L, (HIDDEN, HIDDEN), context_size=CONTEXT, n_components=n_components).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*ROWS, L, generator=g).to(device)
    h = torch.randn(*ROWS, CONTEXT, generator=g).to(device).requires_grad_()
    return made, x, h


def sgemm_flops_per_second(device: str) -> float:
    a, b = torch.randn(1280, 512, device=device), torch.randn(512, 512, device=device)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 1280 * 512 * 512 / min(times)


def kept_flops(masks: list[torch.Tensor], rows: int, backward: bool) -> float:
    """GEMM FLOPs on the kept weights only: 2 * rows * nnz per product (3 products with the backward)."""
    nnz = sum(int((m != 0).sum()) for m in masks)
    return 2 * rows * nnz * (3 if backward else 1)


def run(quick: bool = False, device: str = "cpu", bandwidth: float | None = None) -> list[dict]:
    rows = []
    repeats = 25  # a layer's fwd+bwd takes ~10 ms: medians of many runs, even in quick mode
    rate = sgemm_flops_per_second(device)
    backends = ["cpp"] if device == "cpu" else ["cuda", "triton"]
    fastlv_backends = [b for b in backends if fastlv.backends(device)[b] == "available"]
    n_rows = ROWS[0] * ROWS[1]

    def with_backend(backend, fn):
        def call():
            with fastlv.use_backend(backend):
                fn()
        return call

    compiled_layer = torch.compile(dense_masked_linear)
    for shape_name, (n_in, n_out) in {f"L{L}->{HIDDEN}": (L, HIDDEN), f"{HIDDEN}->{HIDDEN}": (HIDDEN, HIDDEN)}.items():
        args, params = layer_case(n_in, n_out, device)

        def forward_backward(fn):
            torch.autograd.grad(fn(*args).sum(), params)

        def fastlv_layer(x, weight, mask, bias):
            return masked_linear(x, weight, mask, bias, "relu")

        providers = {"eager": lambda: forward_backward(dense_masked_linear),
                     "compile": lambda: forward_backward(compiled_layer)}
        for b in fastlv_backends:
            providers[f"fastlv-{b}"] = with_backend(b, lambda: forward_backward(fastlv_layer))
        times = time_providers(providers, repeats=repeats, device=device)
        bound = kept_flops([args[2]], n_rows, backward=True) / rate
        for name, t in times.items():
            rows.append({"op": "masked_linear", "shape": f"{shape_name} rows {n_rows}", "pass": "fwd+bwd",
                         "provider": name, "ms": t * 1e3, "x vs eager": times["eager"] / t,
                         "x vs compile": times["compile"] / t, "bound ms": bound * 1e3})

    components = 5 if quick else COMPONENTS
    made, x, h = made_case(device, components)
    reference = torch_nn_made(made, components)
    compiled_reference = torch.compile(reference)
    weights = [p for p in made.parameters()]

    def head_step(fn):
        torch.autograd.grad(-fn(x, h).mean(), [h, *weights])

    providers = {"eager": lambda: head_step(reference), "compile": lambda: head_step(compiled_reference)}
    for b in fastlv_backends:
        providers[f"fastlv-{b}"] = with_backend(b, lambda: head_step(made.log_prob))
    times = time_providers(providers, repeats=5 if quick else 9, warmup=1 if quick else 2, device=device)
    masks = [layer.mask for layer in (*made.hidden, made.output)]
    bound = kept_flops(masks, n_rows, backward=True) / rate
    for name, t in times.items():
        rows.append({"op": "MADE head", "shape": f"L{L} ctx{CONTEXT} 2x{HIDDEN} GMM{components} rows {n_rows}",
                     "pass": "fwd+bwd", "provider": name, "ms": t * 1e3, "x vs eager": times["eager"] / t,
                     "x vs compile": times["compile"] / t, "bound ms": bound * 1e3})
    return rows
