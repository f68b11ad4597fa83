"""One forward + backward call of every public op on fixed inputs (deterministic: explicit eps, or a
generator seeded per call), shared by tests/test_concurrency.py and tests/test_memory.py."""
import torch

from fastlv.ops import (diag_gmm_log_prob, gated_causal_conv1d, gaussian_kl, gaussian_log_prob, gaussian_rsample,
                        gaussian_sample_kl, gmm_log_prob, masked_linear, precision_weighted)


def op_calls(rows: int, dtype=torch.float32) -> dict:
    """name -> (differentiable inputs, function of them returning a tuple of outputs); ``rows`` scales
    the batch (rows = 1: tiny shapes)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    D, K = 17, 5
    mask = (torch.rand(24, 20, generator=g) < 0.5).float()
    eps = r(rows, D)
    return {
        "gmm_log_prob": ([r(rows, D), r(rows, D, K), r(rows, D, K), r(rows, D, K)],
                         lambda *t: (gmm_log_prob(*t, log_sigma_min=-5.0),)),
        "diag_gmm_log_prob": ([r(rows, D), r(rows, K), r(rows, K, D), r(rows, K, D)],
                              lambda *t: (diag_gmm_log_prob(*t),)),
        "gaussian_kl": ([r(rows, D) for _ in range(4)], lambda *t: (gaussian_kl(*t, free_bits=0.1),)),
        "gaussian_rsample": ([r(rows, D), r(rows, D)], lambda *t: (gaussian_rsample(*t, eps),)),
        "gaussian_rsample in-kernel noise": ([r(rows, D), r(rows, D)], lambda *t: (
            gaussian_rsample(*t, generator=torch.Generator().manual_seed(7)),)),
        "gaussian_sample_kl": ([r(rows, D) for _ in range(4)], lambda *t: gaussian_sample_kl(
            *t, posterior="precision_weighted", generator=torch.Generator().manual_seed(7))),
        "gaussian_log_prob": ([r(rows, D) for _ in range(3)], lambda *t: (gaussian_log_prob(*t),)),
        "precision_weighted": ([r(rows, D), r(rows, D).exp(), r(rows, D), r(rows, D).exp()],
                               lambda *t: precision_weighted(*t)),
        "gated_causal_conv1d": ([r(2, 6, rows + 4), r(8, 6, 2), r(8), r(2, 8, 1)],
                                lambda x, w, b, c: (gated_causal_conv1d(x, w, b, 2, c),)),
        "masked_linear": ([r(rows, 20), r(24, 20), r(24)], lambda x, w, b: (masked_linear(x, w, mask, b, "relu"),)),
    }


def forward_backward(inputs, fn):
    """Outputs and the gradients of their sum (with fixed weights) w.r.t. the inputs, detached."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    total = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outputs)
    grads = torch.autograd.grad(total, leaves)
    return [o.detach() for o in outputs] + list(grads)
