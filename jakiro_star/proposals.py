"""Decoupled child proposals for Jakiro*: per-expert draft distributions, their mixture, and the draws.

For one tree node (a draft forward position), each routed expert e gives a draft distribution

    p_e = softmax(warp(lm_head(x + E_e(u))))        warp = the target's own temperature / top-k / top-p
    pi_e = head-1 routing weight of e               (softmax over the routed experts' gate logits, sum 1)

and the node's C children ("slots", rank 0 .. C-1) are proposed in one of two modes:

* ``mixture``:    every slot proposes from q = sum_e pi_e * p_e   (the proper mixture proposal);
* ``per_expert``: slot j proposes from p_{e(j)}, e(j) = j mod E   (routed experts strongest first, round robin).

Sampling (temperature > 0): the slots are drawn in rank order **without replacement** across the node's children,
and each child records the exact distribution it was drawn from — its slot distribution s_j restricted to the
tokens not drawn yet and renormalised:

    q_j(v) = s_j(v) * [v not in {x_0 .. x_{j-1}}] / (1 - s_j({x_0 .. x_{j-1}}))

That recorded q_j is what the verifier (:mod:`jakiro.decoding.verify`) needs to stay lossless. A slot whose
distribution has no mass left (possible after top-k / top-p warping) is not drawn: the child and its subtree are
absent this round. That decision depends on draft-side quantities only, which keeps verification exact.

Greedy (temperature 0): deterministic top candidates, no randomness — ``mixture`` takes the top C tokens of
q = sum_e pi_e softmax(logits_e); ``per_expert`` interleaves the experts' ranked lists (rank 1 of every expert,
then rank 2, ...) and keeps the first C distinct tokens.

Shapes: m parent nodes, E routed experts, V vocabulary, C children slots per parent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jakiro.common.config import SIBLING_MODES
from jakiro.decoding.drafter import interleave_expert_rankings
from jakiro.decoding.verify import warp_logits


@dataclass
class ChildDraws:
    """Children drawn for m parents.

    Attributes:
        tokens: [m, C] token of each child slot (0 where absent).
        proposals: [m, C, V] float32 distribution each child was drawn from (zeros where absent).
        present: [m, C] bool, False for slots beyond a parent's child count or without mass left.
    """

    tokens: torch.Tensor
    proposals: torch.Tensor
    present: torch.Tensor


def check_mode(mode: str) -> None:
    if mode not in SIBLING_MODES:
        raise ValueError(f"sibling_mode must be one of {SIBLING_MODES}, got {mode!r}")


def expert_probabilities(expert_logits: torch.Tensor, sampling: dict) -> torch.Tensor:
    """Per-expert draft distributions p_e.

    Args:
        expert_logits: [m, E, V] draft logits of each routed expert.
        sampling: ``temperature`` (0 = greedy: plain softmax, used for ranking only), ``top_p``, ``top_k``.
    Returns:
        [m, E, V] float32 probabilities.
    """
    if sampling["temperature"] == 0:
        return expert_logits.float().softmax(-1)
    return warp_logits(expert_logits, **sampling).softmax(-1)


def slot_distributions(probs: torch.Tensor, weights: torch.Tensor, slots: int, mode: str) -> torch.Tensor:
    """The distribution each child slot proposes from (before excluding earlier siblings).

    Args:
        probs: [m, E, V] per-expert distributions p_e.
        weights: [m, E] routing weights pi_e (each row sums to 1).
        slots: C, children per parent.
        mode: ``mixture`` or ``per_expert``.
    Returns:
        [m, C, V] (a broadcast view in ``mixture`` mode).
    """
    check_mode(mode)
    if mode == "mixture":
        mixture = torch.einsum("me,mev->mv", weights.to(probs.dtype), probs)
        return mixture[:, None, :].expand(-1, slots, -1)
    expert_of_slot = torch.arange(slots, device=probs.device) % probs.shape[1]
    return probs[:, expert_of_slot]


def draw_children(slot_dists: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None) -> ChildDraws:
    """Draw each parent's children in slot order, without replacement, recording their exact proposals q_j.

    Args:
        slot_dists: [m, C, V] slot distributions (:func:`slot_distributions`); moved to the CPU for drawing with
            ``generator`` (a CPU ``torch.Generator``).
        counts: [m] children to draw per parent (<= C; 0 for a parent that is itself absent).
        generator: source of randomness.
    """
    slot_dists = slot_dists.detach().float().cpu()
    counts = counts.cpu()
    m, slots, vocab = slot_dists.shape
    tokens = torch.zeros(m, slots, dtype=torch.long)
    proposals = torch.zeros(m, slots, vocab)
    present = torch.zeros(m, slots, dtype=torch.bool)
    drawn = torch.zeros(m, vocab, dtype=torch.bool)
    for slot in range(slots):
        remaining = slot_dists[:, slot].masked_fill(drawn, 0.0)
        mass = remaining.sum(-1)
        rows = ((counts > slot) & (mass > 0)).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        q = remaining[rows] / mass[rows, None]
        picked = torch.multinomial(q, 1, generator=generator).squeeze(1)
        tokens[rows, slot] = picked
        proposals[rows, slot] = q
        present[rows, slot] = True
        drawn[rows, picked] = True
    return ChildDraws(tokens, proposals, present)


def top_children(probs: torch.Tensor, weights: torch.Tensor, slots: int, mode: str) -> torch.Tensor:
    """Greedy (temperature 0) children: deterministic top candidates, distinct within a parent.

    Args:
        probs: [m, E, V] per-expert distributions; weights: [m, E] routing weights; slots: C (<= V).
    Returns:
        [m, C] tokens in slot order.
    """
    check_mode(mode)
    if mode == "mixture":
        mixture = torch.einsum("me,mev->mv", weights.to(probs.dtype), probs)
        return torch.topk(mixture, slots, dim=-1).indices
    return interleave_expert_rankings(probs, slots)[0]
