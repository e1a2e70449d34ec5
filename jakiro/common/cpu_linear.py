"""Linear maps of a few fp32 rows on a CPU, computed as W @ X^T instead of X @ W^T.

For X @ W^T with a handful of rows, the CPU GEMM behind ``F.linear`` (MKL in torch 2.13's CPU wheel) prepares the
whole weight on every call; W @ X^T streams it once. A wide LM head pays most (the timings per row count are in
``docs/cpu.md``, "CPU verification kernels").

One row costs the same either way, so one-row products (plain decoding) keep ``F.linear``; more than
:data:`MAX_ROWS` rows, other dtypes and devices (not measured) and autograd (training) too. The results agree to
fp32 rounding.
"""

from __future__ import annotations

import torch
from torch.nn import functional

MAX_ROWS = 128  # the largest batch measured faster as W @ X^T


def few_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: [..., in] x [out, in] -> [..., out], as W @ X^T for 2 .. MAX_ROWS fp32 rows on
    a CPU outside autograd."""
    rows = x.shape[:-1].numel()
    if not (1 < rows <= MAX_ROWS and weight.device.type == "cpu" and weight.dtype == x.dtype == torch.float32) \
            or torch.is_grad_enabled():
        return functional.linear(x, weight, bias)
    out = torch.mm(weight, x.reshape(rows, x.shape[-1]).T).T.reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias
