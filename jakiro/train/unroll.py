"""The draft run several steps from every start position at once, on its own outputs, as when drafting.

Used by the held-out k-step accuracy (:func:`jakiro.train.metrics.draft_chain`: the draft's own greedy tokens, no
gradient) and by training-time test (``train.unroll_steps``: the true next tokens, with gradient and a loss at every
step). Layout: everything is indexed by the *start* position t of a chain (B rows, S starts, H hidden size):

    step 0     the draft on the true features f_0..f_t                       -> out_0[t]  predicts f_{t+1}
    step k>=1  input (out_{k-1}[t], token x_{t+k+1}) at position t + k     -> out_k[t]  predicts f_{t+k+1}

The node of start t at step k attends to the true context of its conversation up to t (step 0's keys) and to its
own earlier nodes, exactly what drafting from t computes (:class:`ChainAttention`). Step k's target at start t is
the target at position t + k (:func:`step_targets`), scored only where t and t + k lie in the same conversation
(padded rows: inside the row; packed rows: same segment).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import accumulate

import torch
from torch.nn import functional as F
from transformers.models.llama.modeling_llama import LlamaAttention, apply_rotary_pos_emb

from jakiro.model.draft import DraftOutput


def ahead(x: torch.Tensor, k: int, fill) -> torch.Tensor:
    """[B, S, ...] -> [B, S, ...] with out[:, t] = x[:, t + k] (``fill`` past the end)."""
    if k == 0:
        return x
    pad = torch.full_like(x[:, :k], fill)
    return torch.cat([x[:, k:], pad], dim=1)


class ChainAttention:
    """The draft layer's attention for every chain at once (:meth:`DraftHead.forward`'s ``attend``), one call per step.

    Step 0 (the first call) attends causally within each conversation and keeps its keys and values as the chains'
    context; step k >= 1 is, for the node of start t, attention over the context keys <= t of its conversation and
    its own nodes of steps 1..k (position t of each step's keys, itself included) -- drafting from t computes exactly
    this. The context part is a causal [L, L] block per conversation and the own part k dot products per node, so a
    step costs about what step 0 does, never a dense mask over the S * (k + 1) keys of all chains.

    ``segments``: the lengths of the conversations packed one after another along S (B = 1); None: every row is one
    conversation (padded rows: padding sits after the real positions, which never attend to it).
    """

    def __init__(self, segments: Sequence[int] | None = None):
        self.segments = None if segments is None else [int(n) for n in segments]
        self.context: tuple[torch.Tensor, torch.Tensor] | None = None  # step 0's keys, values [B, kv, S, d]
        self.own_keys: list[torch.Tensor] = []  # steps 1..k: [B, kv, S, d] each
        self.own_values: list[torch.Tensor] = []

    def __call__(self, attention: LlamaAttention, z: torch.Tensor,
                 position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """z [B, S, H] -> [B, S, H] (``attention``'s projections, RoPE and output projection)."""
        b, s, _ = z.shape
        spans = self._spans(b, s)
        shape = (b, s, -1, attention.head_dim)
        q = attention.q_proj(z).view(shape).transpose(1, 2)
        k = attention.k_proj(z).view(shape).transpose(1, 2)
        v = attention.v_proj(z).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if self.context is None:
            self.context = (k, v)
            parts = [F.scaled_dot_product_attention(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], is_causal=True,
                                                    scale=attention.scaling, enable_gqa=True) for a, e in spans]
        else:
            self.own_keys.append(k)
            self.own_values.append(v)
            own_k, own_v = torch.stack(self.own_keys, dim=3), torch.stack(self.own_values, dim=3)  # [B, kv, S, k, d]
            keys, values = self.context
            parts = [chain_step_attention(q[:, :, a:e], keys[:, :, a:e], values[:, :, a:e], own_k[:, :, a:e],
                                          own_v[:, :, a:e], attention.scaling) for a, e in spans]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return attention.o_proj(out.transpose(1, 2).reshape(b, s, -1))

    def _spans(self, b: int, s: int) -> list[tuple[int, int]]:
        if self.segments is None:
            return [(0, s)]
        if b != 1 or sum(self.segments) != s:
            raise ValueError(f"segments {self.segments} must cover the S={s} positions of one packed row (got B={b})")
        ends = list(accumulate(self.segments))
        return list(zip([0] + ends[:-1], ends))


def chain_step_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, own_keys: torch.Tensor,
                         own_values: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of the chain nodes of one conversation at step k.

    Args:
        q: [B, heads, L, d] queries of the step-k nodes (node t = the chain started at t).
        keys, values: [B, kv, L, d] the context (step 0); node t sees positions <= t.
        own_keys, own_values: [B, kv, L, k, d] each chain's own nodes of steps 1..k; node t sees row t only.
        scale: the score scale (1 / sqrt(d)).
    Returns:
        [B, heads, L, d]; the heads share key/value heads in groups (grouped-query attention).
    """
    b, heads, length, d = q.shape
    kv = keys.shape[1]
    qg = q.reshape(b, kv, heads // kv, length, d)
    context = torch.matmul(qg, keys.unsqueeze(2).transpose(-1, -2)) * scale  # [B, kv, g, L, L]
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
    context = context.float().masked_fill(future, float("-inf"))
    own = torch.einsum("bkgld,bkljd->bkglj", qg, own_keys) * scale  # [B, kv, g, L, k]
    weights = torch.cat([context, own.float()], dim=-1).softmax(dim=-1).to(values.dtype)
    out = torch.matmul(weights[..., :length], values.unsqueeze(2))
    out = out + torch.einsum("bkglj,bkljd->bkgld", weights[..., length:], own_values)
    return out.reshape(b, heads, length, d)


def run_chain(draft, features: torch.Tensor, input_ids: torch.Tensor, steps: int,
              next_tokens: Callable[[int, DraftOutput], torch.Tensor], position_ids: torch.Tensor | None = None,
              segments: Sequence[int] | None = None, with_head2: bool = False) -> list[DraftOutput]:
    """The draft's outputs at steps 0..steps-1 from every start position (see the module docstring).

    Args:
        draft: a :class:`jakiro.model.draft.DraftHead` with bound target modules.
        features: [B, S, H] true features f_t; input_ids: [B, S] tokens x_{t+1}.
        next_tokens: (k, step k-1's output) -> [B, S] the token fed with it at step k (start-indexed: the token at
            position t + k for start t).
        position_ids: [B, S] positions; None = 0, 1, ... per row.
        segments: the lengths of the conversations packed along S (B = 1; positions restart at 0 in each):
            attention stays within each one. None: one conversation per row.
        with_head2: also compute the CEPD head at every step.
    Returns:
        one :class:`DraftOutput` per step, [B, S, ...] each, indexed by start position.
    """
    b, s, _ = features.shape
    if position_ids is None:
        position_ids = torch.arange(s, device=features.device).expand(b, s)
    attend = ChainAttention(segments)
    out = draft(features, input_ids, position_ids, with_head2=with_head2, attend=attend)
    outputs = [out]
    for k in range(1, steps):
        out = draft(out.head1, next_tokens(k, out), position_ids + k, attend=attend, with_head2=with_head2)
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
