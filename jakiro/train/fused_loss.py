"""The token-distillation losses of both draft heads in one pass over row chunks, with their analytic gradient.

For M target rows and the head-1 / head-2 rows scored against them (V = draft vocabulary, W: [V, H] the frozen LM
head, p = softmax(W f) the target's distribution for each target row):

    ce_h[i]  = -sum_v p(v) log_softmax(W x_h[i])(v)  =  lse(W x_h[i]) * sum_v p(v) - sum_v p(v) (W x_h[i])(v)
    d ce_h[i] / d x_h[i] = W^T (softmax(W x_h[i]) * sum_v p(v) - p)

:func:`distill_rows` computes, chunk of target rows by chunk, the target's logits, probabilities and greedy labels,
each head's soft cross-entropy, the rank of the target's label among the head's top :data:`RANK_DEPTH` logits (the
top-k metrics) and, when a gradient is wanted, the [rows, H] input gradient per unit of ce. Nothing [M, V]-sized is
kept: the backward pass only scales those stored gradients by the incoming per-row gradient. The values are those of
:func:`jakiro.train.losses.soft_cross_entropy` on the LM head's logits (the same matmul in the same dtype, the
softmax in float32) to float rounding; under CPU autocast the matmuls run in the autocast dtype, like ``F.linear``.
The LM head itself gets no gradient (it is the target's, frozen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 256  # target rows per chunk: the chunk's [rows, V] float32 work stays in the core's cache at V = 8k
RANK_DEPTH = 3  # top-k metrics up to k = 3


@dataclass
class DistillRows:
    """Outputs of :func:`distill_rows`.

    Attributes:
        ce: per head, [N_h] soft cross-entropy of each row (differentiable w.r.t. that head's rows).
        ranks: per head, [N_h] int64 rank of the target's greedy label among the row's top RANK_DEPTH logits
            (0 = the argmax; RANK_DEPTH = not among them).
        labels: [M] the target's greedy token (an index into the draft vocabulary) per target row.
    """

    ce: list[torch.Tensor]
    ranks: list[torch.Tensor]
    labels: torch.Tensor


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would multiply ``x`` in here: the autocast dtype inside CPU / CUDA autocast."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _bounds(index: torch.Tensor, starts: list[int]) -> list[int]:
    """Row boundaries of a sorted index: rows [out[c], out[c+1]) point into target chunk c."""
    return torch.searchsorted(index, torch.tensor(starts, dtype=index.dtype, device=index.device)).tolist()


class _DistillFunction(torch.autograd.Function):
    """(weight, target, indices..., rows...) -> (ce per head..., ranks per head..., labels); see the module
    docstring. ``rows`` get a gradient, nothing else does."""

    @staticmethod
    def forward(ctx, weight, target, chunk, indices, *rows):
        heads = len(rows)
        m = target.shape[0]
        starts = list(range(0, m, chunk)) + [m]
        bounds = [_bounds(index, starts) for index in indices]
        want = [ctx.needs_input_grad[4 + h] for h in range(heads)]
        ce = [r.new_empty(r.shape[0], dtype=torch.float32) for r in rows]
        ranks = [torch.full((r.shape[0],), RANK_DEPTH, dtype=torch.long, device=r.device) for r in rows]
        grads = [torch.empty_like(r) if w else None for r, w in zip(rows, want)]
        labels = torch.empty(m, dtype=torch.long, device=target.device)
        wt = weight.t()
        with torch.autocast(target.device.type, enabled=False):
            for c in range(len(starts) - 1):
                a, b = starts[c], starts[c + 1]
                t = (target[a:b] @ wt).float()
                probs = t.softmax(-1)
                label = t.argmax(-1)
                labels[a:b] = label
                mass = probs.sum(-1)
                for h in range(heads):
                    lo, hi = bounds[h][c], bounds[h][c + 1]
                    if lo == hi:
                        continue
                    local = indices[h][lo:hi] - a
                    p, s = probs.index_select(0, local), mass.index_select(0, local)
                    z = (rows[h][lo:hi] @ wt).float()
                    top = torch.topk(z, min(RANK_DEPTH, z.shape[1]), dim=-1).indices
                    found = top == label.index_select(0, local)[:, None]
                    ranks[h][lo:hi] = torch.where(found.any(-1), found.int().argmax(-1), RANK_DEPTH)
                    lse = torch.logsumexp(z, -1)
                    ce[h][lo:hi] = lse * s - (p * z).sum(-1)
                    if want[h]:
                        g = torch.exp(z - lse[:, None]).mul_(s[:, None]).sub_(p)
                        grads[h][lo:hi] = g.to(weight.dtype) @ weight
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.mark_non_differentiable(*ranks, labels)
        return (*ce, *ranks, labels)

    @staticmethod
    def backward(ctx, *outputs_grad):
        grads = ctx.saved_tensors
        heads = len(grads)
        out = []
        for h in range(heads):
            g = outputs_grad[h]
            out.append(None if g is None or not ctx.needs_input_grad[4 + h] else
                       (g[:, None] * grads[h].float()).to(grads[h].dtype))
        return (None, None, None, None, *out)


def distill_rows(weight: torch.Tensor, target: torch.Tensor, heads: list[tuple[torch.Tensor, torch.Tensor]],
                 chunk: int = CHUNK) -> DistillRows:
    """Soft cross-entropy of each head's rows against the target rows' distributions (see the module docstring).

    Args:
        weight: [V, H] the LM head's weight (frozen: it gets no gradient).
        target: [M, H] target features (no gradient).
        heads: per head, (rows [N_h, H], index [N_h] int64 non-decreasing indices into ``target``).
        chunk: target rows per chunk.
    """
    if weight.requires_grad:
        raise ValueError("distill_rows: the LM head weight must be frozen (requires_grad=False)")
    dtype = compute_dtype(target)
    w = weight.detach().to(dtype)
    rows = [r.to(dtype) for r, _ in heads]
    indices = [i.to(target.device) for _, i in heads]
    out = _DistillFunction.apply(w, target.detach().to(dtype), chunk, indices, *rows)
    n = len(heads)
    return DistillRows(list(out[:n]), list(out[n:2 * n]), out[-1])
