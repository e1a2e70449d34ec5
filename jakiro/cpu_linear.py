"""Linear maps of a few fp32 rows on a CPU, computed as W @ X^T instead of X @ W^T.

For X @ W^T with a handful of rows, the CPU GEMM behind ``F.linear`` (MKL in torch 2.13's CPU wheel) prepares the
whole weight on every call; W @ X^T streams it once. A wide LM head pays most: medians on a 2-core AVX2 EPYC, fp32
(microseconds):

| weight | 1 row | 2 rows | 8 rows | 32 rows | 128 rows |
|---|---|---|---|---|---|
| 49,152 x 576 (SmolLM2's head), ``F.linear`` | 8,175 | 17,613 | 16,938 | 25,491 | 65,215 |
| the same, W @ X^T | 8,096 | 4,597 | 8,564 | 17,849 | 46,614 |
| 8,192 x 576 (the shipped drafts' head), ``F.linear`` | 708 | 1,356 | 2,678 | 4,497 | 11,757 |
| the same, W @ X^T | 657 | 550 | 1,336 | 2,246 | 7,638 |

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
