"""Draft-training losses, as pure functions of tensors.

Notation (one micro-batch; B sequences of S positions, H = hidden size, V = vocabulary):

    pred1[t]  = head 1 at position t, predicts target[t] = f_{t+1}         weight m[t]
    pred2[t]  = head 2 at position t, predicts target[t+1] = f_{t+2}       weight m[t+1],  t = 0 .. S-2
    p*_s      = softmax(lm_head(target[s]))  (no gradient)
    V_h       = sum_t w_t * mean_H SmoothL1_beta=1(pred_h[t], target) / normalizer_h
    P_h       = sum_t w_t * (-sum_v p*(v) log_softmax(lm_head(pred_h[t]))(v)) / normalizer_h
    L         = v_w (V1 + c V2) + p_w (P1 + c P2) [+ lb_w * load balancing]

With ``normalizer = sum(w) + 1e-5`` this is the reference's masked mean. The trainer passes the mask sum of the
*global* batch (all processes) divided by the number of processes instead, so that averaging gradients over
processes gives exactly the gradient of one process seeing the whole batch.

Only positions with a non-zero weight go through the LM head (the [N, V] logits dominate the cost), which gives
the same values as the reference's full [B, S, V] computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from jakiro.train.fused_loss import RANK_DEPTH, distill_rows
from jakiro.train.metrics import topk_correct

EPS = 1e-5  # the reference's denominator guard


def smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, H], [N, H] -> [N]: Huber loss with beta = 1, averaged over H (computed in float32)."""
    return F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=1.0).mean(-1)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """[N, V] draft logits, [N, V] target probabilities -> [N]: -sum_v p(v) log_softmax(logits)(v)."""
    return -(target_probs.float() * torch.log_softmax(logits.float(), dim=-1)).sum(-1)


def weighted_sum(values: torch.Tensor, weights: torch.Tensor, normalizer: float | torch.Tensor) -> torch.Tensor:
    """[N], [N] -> scalar sum_i w_i v_i / normalizer."""
    return (values * weights.to(values.dtype)).sum() / normalizer


def load_balancing_loss(router_logits: torch.Tensor, weights: torch.Tensor, experts_per_token: int) -> torch.Tensor:
    """Switch-Transformer balance loss E * sum_e f_e * P_e over weighted positions.

    Args:
        router_logits: [N, E] head-1 routing logits.
        weights: [N] position weights (0 = ignored).
        experts_per_token: k of the top-k routing.
    Returns:
        scalar; f_e = share of the k * N routing assignments that go to expert e, P_e = mean router probability
        of e. Equals 1 when routing is uniform, E when every position sends everything to one expert.
    """
    num_experts = router_logits.shape[-1]
    w = weights.float()
    total = w.sum() + EPS
    probs = router_logits.float().softmax(-1)
    chosen = torch.topk(router_logits, experts_per_token, dim=-1).indices
    assigned = torch.zeros_like(probs).scatter(-1, chosen, 1.0)  # [N, E], k ones per row
    share = (assigned * w[:, None]).sum(0) / (total * experts_per_token)
    mean_prob = (probs * w[:, None]).sum(0) / total
    return num_experts * (share * mean_prob).sum()


@dataclass
class HeadRows:
    """The weighted positions one head is scored on (gathered from the [B, S] layout).

    Attributes:
        pred: [N, H] predicted features.
        target_rows: [N] indices into the gathered target rows (see :func:`gather_rows`).
        weights: [N] loss weights.
    """

    pred: torch.Tensor
    target_rows: torch.Tensor
    weights: torch.Tensor


def gather_rows(
    head1: torch.Tensor, head2: torch.Tensor | None, target: torch.Tensor, mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, HeadRows, HeadRows | None]:
    """Select the positions that carry weight, with head 2 aligned by position (pred2[t] vs target[t + 1]).

    Args:
        head1, head2: [B, S, H] head outputs (head2 may be None).
        target: [B, S, H] next features f_{t+1}.
        mask: [B, S] weights.
        position_ids: [B, S] positions within each conversation (packed rows restart at 0); None = 0, 1, ... per
            row. Head 2 scores target s only where position s > 0, i.e. s - 1 is in the same conversation.
    Returns:
        target rows [M, H] (positions with mask > 0, row-major), head-1 rows and head-2 rows (or None).
    """
    b, s = (mask > 0).nonzero(as_tuple=True)
    weights = mask[b, s]
    rows = torch.arange(len(b), device=mask.device)
    if mask.shape[0] == 1:  # one (packed) row: index_select, whose backward is a cheaper index_add
        def pick(x: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return x[0].index_select(0, s)
    else:
        def pick(x: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return x[b, s]
    first = HeadRows(pick(head1, b, s), rows, weights)
    second = None
    if head2 is not None:
        # target position s is predicted by head 2 at position s - 1 of the same conversation
        keep = s >= 1 if position_ids is None else position_ids[b, s] >= 1
        second = HeadRows(pick(head2, b[keep], s[keep] - 1), rows[keep], weights[keep])
    return pick(target, b, s), first, second


@dataclass
class LossTerms:
    """Loss terms of one micro-batch (scalars; p2 / v2 are zero without a parallel head)."""

    total: torch.Tensor
    v1: torch.Tensor
    p1: torch.Tensor
    v2: torch.Tensor
    p2: torch.Tensor
    balance: torch.Tensor


@dataclass
class HeadScores:
    """What the metrics need besides the losses, per head: [N] target argmax labels and weights, and either the
    [N, V] draft logits or (``fused``) the [N] rank of the label among the draft's top
    :data:`~jakiro.train.fused_loss.RANK_DEPTH` logits (head 2's entries None without a parallel head)."""

    logits1: torch.Tensor | None
    labels1: torch.Tensor
    weights1: torch.Tensor
    logits2: torch.Tensor | None
    labels2: torch.Tensor | None
    weights2: torch.Tensor | None
    ranks1: torch.Tensor | None = None
    ranks2: torch.Tensor | None = None

    def scored(self, head: int) -> bool:
        """Whether head ``head`` (1 or 2) was scored."""
        return getattr(self, f"weights{head}") is not None

    def topk_hits(self, head: int, ks=(1, 2, 3)) -> torch.Tensor:
        """[len(ks)] weighted counts of head ``head``'s rows whose target label is among its top-k logits."""
        weights, ranks = getattr(self, f"weights{head}"), getattr(self, f"ranks{head}")
        if ranks is None:
            return topk_correct(getattr(self, f"logits{head}"), getattr(self, f"labels{head}"), weights, ks)
        if max(ks) > RANK_DEPTH:
            raise ValueError(f"fused scores rank the top {RANK_DEPTH} logits only, asked for top-{max(ks)}")
        w = weights.float()
        return torch.stack([((ranks < k).float() * w).sum() for k in ks]).cpu()


def draft_losses(
    head1: torch.Tensor,
    head2: torch.Tensor | None,
    target: torch.Tensor,
    mask: torch.Tensor,
    lm_head: Callable[[torch.Tensor], torch.Tensor],
    v_w: float,
    p_w: float,
    parallel_w: float,
    normalizers: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
    balance: torch.Tensor | None = None,
    balance_w: float = 0.0,
    position_ids: torch.Tensor | None = None,
    head_weight: torch.Tensor | None = None,
) -> tuple[LossTerms, HeadScores]:
    """L = v_w (V1 + c V2) + p_w (P1 + c P2) + balance_w * balance.

    Args:
        head1, head2: [B, S, H] draft outputs (head2 None for a draft without a parallel head).
        target: [B, S, H] f_{t+1}; mask: [B, S] weights (0 on padding and on the last position).
        lm_head: [N, H] -> [N, V] logits (the target's frozen head).
        normalizers: (head 1, head 2) denominators; None = the local masked mean (sum(w) + 1e-5).
        balance: precomputed load-balancing loss (scalar) or None.
        position_ids: [B, S] positions within each conversation (packed batches); see :func:`gather_rows`.
        head_weight: [V, H] the frozen weight of a bias-free ``lm_head``: the soft cross-entropies and top-k ranks
            come from one row-chunked pass with the analytic gradient (:mod:`jakiro.train.fused_loss`; same values
            to float rounding, no [N, V] tensors kept for backward) and the scores carry ranks instead of logits.
            None: ``lm_head`` on all rows at once, plain autograd.
    """
    target_rows, rows1, rows2 = gather_rows(head1, head2, target, mask, position_ids)
    if normalizers is None:
        normalizers = (rows1.weights.sum() + EPS, (rows2.weights.sum() + EPS) if rows2 is not None else 1.0)
    v1 = weighted_sum(smooth_l1(rows1.pred, target_rows), rows1.weights, normalizers[0])
    v2 = v1.new_zeros(())
    if rows2 is not None:
        v2 = weighted_sum(smooth_l1(rows2.pred, target_rows[rows2.target_rows]), rows2.weights, normalizers[1])
    if head_weight is not None:
        p1, p2, scores = _fused_soft_losses(target_rows, rows1, rows2, head_weight, normalizers)
    else:
        p1, p2, scores = _soft_losses(target_rows, rows1, rows2, lm_head, normalizers)
    balance = v1.new_zeros(()) if balance is None else balance
    total = v_w * (v1 + parallel_w * v2) + p_w * (p1 + parallel_w * p2) + balance_w * balance
    return LossTerms(total, v1, p1, v2, p2, balance), scores


def _soft_losses(target_rows: torch.Tensor, rows1: HeadRows, rows2: HeadRows | None, lm_head, normalizers):
    """(P1, P2, scores): both heads' soft cross-entropies with ``lm_head`` on all rows at once, plain autograd."""
    with torch.no_grad():
        target_logits = lm_head(target_rows).float()
        target_probs = target_logits.softmax(-1)
        labels = target_logits.argmax(-1)
    logits1 = lm_head(rows1.pred)
    p1 = weighted_sum(soft_cross_entropy(logits1, target_probs), rows1.weights, normalizers[0])
    p2 = p1.new_zeros(())
    logits2 = labels2 = weights2 = None
    if rows2 is not None:
        logits2 = lm_head(rows2.pred)
        p2 = weighted_sum(soft_cross_entropy(logits2, target_probs[rows2.target_rows]), rows2.weights,
                          normalizers[1])
        labels2, weights2, logits2 = labels[rows2.target_rows], rows2.weights, logits2.detach()
    return p1, p2, HeadScores(logits1.detach(), labels, rows1.weights, logits2, labels2, weights2)


def _fused_soft_losses(target_rows: torch.Tensor, rows1: HeadRows, rows2: HeadRows | None,
                       head_weight: torch.Tensor, normalizers):
    """(P1, P2, scores): both heads' soft cross-entropies and top-k ranks from one
    :func:`jakiro.train.fused_loss.distill_rows` pass (no [N, V] logits kept)."""
    heads = [(rows1.pred, rows1.target_rows)] + ([(rows2.pred, rows2.target_rows)] if rows2 is not None else [])
    fused = distill_rows(head_weight, target_rows, heads)
    p1 = weighted_sum(fused.ce[0], rows1.weights, normalizers[0])
    p2 = p1.new_zeros(())
    labels2 = weights2 = ranks2 = None
    if rows2 is not None:
        p2 = weighted_sum(fused.ce[1], rows2.weights, normalizers[1])
        labels2, weights2, ranks2 = fused.labels[rows2.target_rows], rows2.weights, fused.ranks[1]
    return p1, p2, HeadScores(None, fused.labels, rows1.weights, None, labels2, weights2, fused.ranks[0], ranks2)


def head2_mask(mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """[B, S] weights of the targets head 2 can score: ``mask`` where the position has a predecessor in the same
    conversation (position > 0), else 0."""
    return mask * (position_ids > 0)
