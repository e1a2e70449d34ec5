"""The draft run several steps from every start position at once, on its own outputs, as when drafting.

Used by the held-out k-step accuracy (:func:`jakiro.train.metrics.draft_chain`: the draft's own greedy tokens, no
gradient) and by training-time test (``train.unroll_steps``: the true next tokens, with gradient and a loss at every
step). Layout: everything is indexed by the *start* position t of a chain (B rows, S starts, H hidden size):

    step 0     the draft on the true features f_0..f_t                       -> out_0[t]  predicts f_{t+1}
    step k>=1  input (out_{k-1}[t], token x_{t+k+1}) at position t + k     -> out_k[t]  predicts f_{t+k+1}

The node of start t at step k attends to the true context of its conversation up to t (step 0's keys) and to its
own earlier nodes (position t of each later block of the KV cache), exactly what drafting from t computes
(:func:`chain_mask`). Step k's target at start t is the target at position t + k (:func:`step_targets`), scored only
where t and t + k lie in the same conversation (padded rows: inside the row; packed rows: same segment).
"""

from __future__ import annotations

from typing import Callable

import torch

from jakiro.common.masks import additive_mask
from jakiro.model.draft import DraftCache, DraftOutput


def ahead(x: torch.Tensor, k: int, fill) -> torch.Tensor:
    """[B, S, ...] -> [B, S, ...] with out[:, t] = x[:, t + k] (``fill`` past the end)."""
    if k == 0:
        return x
    pad = torch.full_like(x[:, :k], fill)
    return torch.cat([x[:, k:], pad], dim=1)


def chain_mask(length: int, step: int, dtype: torch.dtype, device: torch.device,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B', 1, S, S * (step + 1)] additive mask for chain step ``step`` >= 0 of all S start positions at once.

    The cache holds the S context positions, then one block of S chain nodes per earlier step. The node of start t
    sees context positions <= t and its own chain nodes (position t of every block, itself included).
    ``position_ids`` [B, S] (packed rows, positions restarting at 0 per conversation): the context is further limited
    to t's own conversation, positions t - position_ids[t] .. t (B' = B); None: one causal context for all rows
    (B' = 1).
    """
    idx = torch.arange(length, device=device)
    context = idx[None, :] <= idx[:, None]  # [S, S]: key p <= query t
    if position_ids is not None:
        first = idx[None, :] - position_ids.to(device)  # [B, S]: the first position of t's conversation
        context = context[None] & (idx[None, None, :] >= first[:, :, None])  # [B, S, S]
    else:
        context = context[None]
    own = torch.eye(length, dtype=torch.bool, device=device).repeat(1, step).expand(context.shape[0], -1, -1)
    allowed = torch.cat([context, own], dim=-1)
    return additive_mask(allowed, dtype)[:, None]


def run_chain(draft, features: torch.Tensor, input_ids: torch.Tensor, steps: int,
              next_tokens: Callable[[int, DraftOutput], torch.Tensor], position_ids: torch.Tensor | None = None,
              packed: bool = False, with_head2: bool = False) -> list[DraftOutput]:
    """The draft's outputs at steps 0..steps-1 from every start position (see the module docstring).

    Args:
        draft: a :class:`jakiro.model.draft.DraftHead` with bound target modules.
        features: [B, S, H] true features f_t; input_ids: [B, S] tokens x_{t+1}.
        next_tokens: (k, step k-1's output) -> [B, S] the token fed with it at step k (start-indexed: the token at
            position t + k for start t).
        position_ids: [B, S] positions; None = 0, 1, ... per row.
        packed: the rows hold several conversations (positions restart at 0): attention stays within each one.
        with_head2: also compute the CEPD head at every step.
    Returns:
        one :class:`DraftOutput` per step, [B, S, ...] each, indexed by start position.
    """
    b, s, _ = features.shape
    if position_ids is None:
        position_ids = torch.arange(s, device=features.device).expand(b, s)
    segment_positions = position_ids if packed else None
    cache = DraftCache()
    out = draft(features, input_ids, position_ids, with_head2=with_head2, cache=cache,
                attention_mask=chain_mask(s, 0, features.dtype, features.device, segment_positions))
    outputs = [out]
    for k in range(1, steps):
        mask = chain_mask(s, k, out.head1.dtype, out.head1.device, segment_positions)
        out = draft(out.head1, next_tokens(k, out), position_ids + k, attention_mask=mask, cache=cache,
                    with_head2=with_head2)
        outputs.append(out)
    return outputs


def step_targets(target: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step k's (target [B, S, H], weights [B, S]) by start position: the target and weight at t + k, kept where
    t + k lies in t's conversation (its position is position_ids[t] + k). Step 0: the inputs unchanged."""
    if k == 0:
        return target, mask
    same = ahead(position_ids, k, -1) == position_ids + k
    return ahead(target, k, 0), ahead(mask, k, 0) * same
