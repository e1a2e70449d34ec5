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
softmax in float32, float64 for float64 inputs) to float rounding; under CPU autocast the matmuls run in the autocast
dtype, like ``F.linear``. The LM head itself gets no gradient (it is the target's, frozen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 128  # target rows per chunk (each with the head rows scored against them); the best of 64 / 128 / 256 at V = 8k
RANK_DEPTH = 3  # top-k metrics up to k = 3
BLOCK = 128  # columns per block of the argmax / top-k search


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


def _blocks(x: torch.Tensor) -> torch.Tensor | None:
    """[R, V] -> [R, V / BLOCK, BLOCK] view, or None when V is not a multiple of BLOCK."""
    return x.view(x.shape[0], -1, BLOCK) if x.shape[1] % BLOCK == 0 and x.shape[1] > BLOCK else None


def first_argmax(x: torch.Tensor) -> torch.Tensor:
    """[R, V] -> [R] ``x.argmax(-1)`` (the first of equal maxima), through per-block maxima: torch's CPU argmax
    over 8k columns is several times slower than max-reducing blocks and searching one block."""
    blocks = _blocks(x)
    if blocks is None:
        return x.argmax(-1)
    best = blocks.amax(-1).argmax(-1)  # the first block holding the row maximum
    inside = blocks[torch.arange(x.shape[0], device=x.device), best].argmax(-1)
    return best * BLOCK + inside


def top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """[R, V] -> [R, k] indices of the k largest values, largest first (``torch.topk``'s values; which of equal
    values comes first is unspecified there too). The k largest lie in the k blocks of largest maxima: top-k of
    those blocks only."""
    blocks = _blocks(x)
    k = min(k, x.shape[1])
    if blocks is None or k > blocks.shape[1]:
        return torch.topk(x, k, dim=-1).indices
    chosen = blocks.amax(-1).topk(k, dim=-1).indices  # [R, k] blocks
    rows = torch.gather(blocks, 1, chosen[:, :, None].expand(-1, -1, BLOCK)).reshape(x.shape[0], k * BLOCK)
    inside = rows.topk(k, dim=-1).indices
    return torch.gather(chosen, 1, inside // BLOCK) * BLOCK + inside % BLOCK


class _DistillFunction(torch.autograd.Function):
    """(weight, target, chunk, indices, rows...) -> (ce per head..., ranks per head..., labels); see the module
    docstring. ``rows`` get a gradient, nothing else does."""

    @staticmethod
    def forward(ctx, weight, target, chunk, indices, *rows):
        heads = len(rows)
        m = target.shape[0]
        starts = list(range(0, m, chunk)) + [m]
        bounds = [_bounds(index, starts) for index in indices]
        aligned = [index.shape[0] == m and bool((index == torch.arange(m, device=index.device)).all())
                   for index in indices]  # head 1: row i scores target i
        want = [ctx.needs_input_grad[4 + h] for h in range(heads)]
        work = torch.promote_types(weight.dtype, torch.float32)  # softmax and sums: float32 (float64 stays)
        ce = [r.new_empty(r.shape[0], dtype=work) for r in rows]
        ranks = [torch.full((r.shape[0],), RANK_DEPTH, dtype=torch.long, device=r.device) for r in rows]
        grads = [torch.empty_like(r) if w else None for r, w in zip(rows, want)]
        labels = torch.empty(m, dtype=torch.long, device=target.device)
        wt = weight.t()
        # the chunks' [rows, V] buffers, allocated once: fresh large tensors per chunk cost page faults on every use
        sizes = [b - a + sum(bound[c + 1] - bound[c] for bound in bounds) for c, (a, b) in
                 enumerate(zip(starts, starts[1:]))]
        products = weight.new_empty(max(sizes, default=0), weight.shape[0])
        buffer = torch.empty(products.shape, dtype=work, device=weight.device)
        backward = weight.new_empty(products.shape)
        with torch.autocast(target.device.type, enabled=False):
            for c in range(len(starts) - 1):
                a, b = starts[c], starts[c + 1]
                spans = [(bounds[h][c], bounds[h][c + 1]) for h in range(heads)]
                # one matmul for the chunk's target rows and the head rows scored against them
                inputs = torch.cat([target[a:b], *(rows[h][lo:hi] for h, (lo, hi) in enumerate(spans))])
                logits = buffer[:len(inputs)]
                logits.copy_(torch.mm(inputs, wt, out=products[:len(inputs)]))
                t = logits[:b - a]
                probs = t.softmax(-1)
                label = first_argmax(t)
                labels[a:b] = label
                mass = probs.sum(-1)
                offset, scored = b - a, []
                for h, (lo, hi) in enumerate(spans):
                    if lo == hi:
                        continue
                    if aligned[h]:
                        p, s, wanted = probs, mass, label
                    else:
                        local = indices[h][lo:hi] - a
                        p, s, wanted = probs.index_select(0, local), mass.index_select(0, local), label[local]
                    z = logits[offset:offset + hi - lo]
                    offset += hi - lo
                    top = top_indices(z, RANK_DEPTH)
                    found = top == wanted[:, None]
                    ranks[h][lo:hi] = torch.where(found.any(-1), found.int().argmax(-1), RANK_DEPTH)
                    # ce = lse(z) s - sum p z = log(sum exp(z - max)) s - sum p (z - max)
                    z.sub_(z.gather(1, top[:, :1]))  # the row maximum
                    dot = torch.linalg.vecdot(p, z)
                    e = z.exp_()
                    total = e.sum(-1)
                    ce[h][lo:hi] = total.log() * s - dot
                    if want[h]:
                        at = sum(n for _, _, n in scored)
                        backward[at:at + hi - lo] = e.mul_((s / total)[:, None]).sub_(p)  # softmax sum(p) - p
                        scored.append((h, lo, hi - lo))
                if scored:
                    # one matmul for the input gradients of all heads
                    product = backward[:sum(n for _, _, n in scored)] @ weight
                    at = 0
                    for h, lo, n in scored:
                        grads[h][lo:lo + n] = product[at:at + n]
                        at += n
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.mark_non_differentiable(*ranks, labels)
        return (*ce, *ranks, labels)

    @staticmethod
    def backward(ctx, *outputs_grad):
        grads = ctx.saved_tensors
        out = []
        for h, stored in enumerate(grads):
            g = outputs_grad[h]
            out.append(None if g is None or not ctx.needs_input_grad[4 + h] else
                       (g[:, None] * stored.to(g.dtype)).to(stored.dtype))
        return (None, None, None, None, *out)


def distill_rows(weight: torch.Tensor, target: torch.Tensor, heads: list[tuple[torch.Tensor, torch.Tensor]],
                 chunk: int | None = None) -> DistillRows:
    """Soft cross-entropy of each head's rows against the target rows' distributions (see the module docstring).

    Args:
        weight: [V, H] the LM head's weight (frozen: it gets no gradient).
        target: [M, H] target features (no gradient).
        heads: per head, (rows [N_h, H], index [N_h] int64 non-decreasing indices into ``target``).
        chunk: target rows per chunk (None: :data:`CHUNK`).
    """
    if weight.requires_grad:
        raise ValueError("distill_rows: the LM head weight must be frozen (requires_grad=False)")
    dtype = compute_dtype(target)
    w = weight.detach().to(dtype)
    rows = [r.to(dtype) for r, _ in heads]
    indices = [i.to(target.device) for _, i in heads]
    out = _DistillFunction.apply(w, target.detach().to(dtype), chunk or CHUNK, indices, *rows)
    n = len(heads)
    return DistillRows(list(out[:n]), list(out[n:2 * n]), out[-1])
