"""EAGLE-2 style dynamic-tree drafting with the Jakiro draft head (MoE siblings, CEPD last layer).

One round, with k = top_k and D = depth (root = layer 0, candidate layers 1 .. D+1):

1. Context pass: the draft runs over the newly committed positions (feature f_t of the target, token x_{t+1}),
   extending its stable KV cache. Its last position's head-1 feature proposes layer 1 (k candidates).
2. For each layer l = 1 .. D: the k beam nodes of layer l each propose k children (k*k candidates, score =
   parent's cumulative log-prob + child log-prob); the best k become the beam of layer l+1.
   Children come from one draft forward over the beam nodes (ancestor mask over the tree entries appended to the
   draft cache, all nodes of a layer at one position) — except with CEPD, where the last layer D+1 needs no
   forward: the forward over layer D-1 also evaluated the contrastive head h2, which predicts two steps ahead, so
   the children of a layer-D node m are the head-2 proposals of m's parent. (The reference attaches the head-2
   row computed at layer-(D-1) node j under the j-th *selected* layer-D node, which usually has another parent;
   here every candidate hangs under a child of the node whose head 2 proposed it.)
   Draft forwards per round: D with CEPD, D + 1 without, for the same D + 1 candidate layers.
3. Global rerank: the best ``total_token - 1`` of all k + D*k*k candidates by cumulative score form the tree
   (ancestor-closed, see :func:`jakiro.decoding.tree.select_candidates`), below the root.

Sibling modes (how a node's k children are proposed):

* ``mixture`` (reference): top-k of softmax(lm_head(h1)), h1 the routed mixture of experts.
* ``per_expert`` (decoupled): each routed expert e proposes from its own distribution softmax(lm_head(x + E_e(u)));
  the experts' ranked lists are interleaved (rank 1 of every expert, then rank 2, ...), duplicates dropped, and
  the first k kept. A child's score is its log-prob under the expert that proposed it. Children still carry the
  mixture feature h1 of their parent into the next forward, as in training.

Drafting is deterministic (no temperature, no sampling): every candidate is a one-hot proposal for the verifier.
"""

from __future__ import annotations

import torch

from jakiro.common.config import SIBLING_MODES
from jakiro.common.masks import additive_mask
from jakiro.model.draft import DraftCache, DraftHead, DraftOutput
from jakiro.decoding.drafting import DraftState
from jakiro.decoding.tree import DraftTree, build_tree, select_candidates


class TreeDrafter:
    """Builds one draft tree per decoding round; owns the draft KV cache of one generation. A
    :class:`jakiro.decoding.drafting.Drafter`."""

    def __init__(self, draft: DraftHead, total_token: int, depth: int, top_k: int, sibling_mode: str = "mixture"):
        if total_token < 2:
            raise ValueError(f"total_token must be >= 2 (root + at least one draft token), got {total_token}")
        if depth < 1 or top_k < 1:
            raise ValueError(f"depth and top_k must be >= 1, got depth={depth}, top_k={top_k}")
        if sibling_mode not in SIBLING_MODES:
            raise ValueError(f"sibling_mode must be one of {SIBLING_MODES}, got {sibling_mode!r}")
        vocab = draft.config.draft_vocab_size or draft.config.vocab_size
        if top_k > vocab:
            raise ValueError(f"top_k={top_k} exceeds the draft's vocabulary size {vocab}")
        self.draft = draft
        self.total_token = total_token
        self.depth = depth
        self.top_k = top_k
        self.per_expert = sibling_mode == "per_expert" and draft.config.num_local_experts > 1
        self.cepd = draft.config.parallel_head
        self.cache = DraftCache()

    def reset(self) -> None:
        """Forget the previous generation's draft cache."""
        self.cache = DraftCache()

    @torch.inference_mode()
    def propose(self, state: DraftState) -> DraftTree:
        """Extend the draft context with the newly committed positions (``state.features`` [S, H],
        ``state.tokens`` [S]) and draft a deterministic tree below ``state.tokens[-1]`` (no ``proposals``)."""
        draft, k, depth = self.draft, self.top_k, self.depth
        param = draft.fc.weight
        features = state.features.to(param.device, param.dtype)
        tokens = state.tokens.to(param.device)
        start = len(self.cache)
        positions = torch.arange(start, start + tokens.shape[0], device=param.device)[None]
        ctx = draft(
            features[None], tokens[None], positions, cache=self.cache, last_position_only=True,
            with_head2=self.cepd and depth == 1, with_experts=self.per_expert,
        )
        stable_len = len(self.cache)

        # layer 1
        child_tokens, child_logp = self._propose(ctx)  # [1, k]
        cand_tokens = [child_tokens[0]]
        cand_scores = [child_logp[0]]
        cand_parents = [torch.full((k,), -1, dtype=torch.long, device=param.device)]
        beam_ids = torch.arange(k, device=param.device)  # flat candidate ids of the beam
        beam_scores = child_logp[0]
        beam_tokens = child_tokens[0]
        beam_inputs = ctx.head1[0, -1:].expand(k, -1)  # feature each beam node is fed with (its parent's h1)
        beam_rows = torch.zeros(k, 0, dtype=torch.bool, device=param.device)  # ancestry among tree entries
        pending_head2 = (ctx, torch.zeros(k, dtype=torch.long, device=param.device)) if self.cepd and depth == 1 \
            else None
        next_id = k

        for layer in range(1, depth + 1):
            if self.cepd and layer == depth:
                source, parent_rows = pending_head2
                tokens_kk, logp_kk = self._propose(source, head2=True)
                tokens_kk, logp_kk = tokens_kk[parent_rows], logp_kk[parent_rows]
                out = None
            else:
                rows = torch.cat([beam_rows, torch.eye(k, dtype=torch.bool, device=param.device)], dim=1)
                mask = torch.cat([torch.ones(k, stable_len, dtype=torch.bool, device=param.device), rows], dim=1)
                additive = additive_mask(mask, param.dtype)
                pos = torch.full((1, k), stable_len + layer - 1, device=param.device)
                want_head2 = self.cepd and layer == depth - 1
                out = draft(
                    beam_inputs[None], beam_tokens[None], pos, attention_mask=additive[None, None], cache=self.cache,
                    with_head2=want_head2, with_experts=self.per_expert,
                )
                tokens_kk, logp_kk = self._propose(out)  # [k, k]
                if want_head2:
                    pending_head2 = (out, None)
            scores = (beam_scores[:, None] + logp_kk).reshape(-1)
            cand_tokens.append(tokens_kk.reshape(-1))
            cand_scores.append(scores)
            cand_parents.append(beam_ids.repeat_interleave(k))
            if layer == depth:
                break
            best = torch.topk(scores, k).indices
            parent_slot = best // k
            beam_ids = next_id + best
            next_id += k * k
            beam_scores = scores[best]
            beam_tokens = tokens_kk.reshape(-1)[best]
            beam_inputs = out.head1[0][parent_slot]
            beam_rows = rows[parent_slot]
            if pending_head2 is not None and pending_head2[1] is None:
                pending_head2 = (pending_head2[0], parent_slot)

        self.cache.crop(stable_len)
        cand_tokens_t = torch.cat(cand_tokens)
        selected = select_candidates(torch.cat(cand_scores).float(), self.total_token - 1)
        return build_tree(tokens[-1], cand_tokens_t, torch.cat(cand_parents), selected)

    def _propose(self, out: DraftOutput, head2: bool = False):
        """Top-k children for each of the m positions of a draft forward (batch 1).

        Args:
            out: a draft forward over m nodes (the context pass has m = 1: only its last position is evaluated).
            head2: propose from the CEPD head instead of head 1.
        Returns:
            (tokens [m, k], log-probs [m, k]).
        """
        k, draft = self.top_k, self.draft
        if head2 or not self.per_expert:
            logp = draft.compact_logits((out.head2 if head2 else out.head1)[0]).float().log_softmax(-1)
            top = torch.topk(logp, k, dim=-1)
            return draft.to_target_ids(top.indices), top.values
        per_expert = draft.compact_logits(out.expert_features[0]).float().log_softmax(-1)  # [m, E_k, V_d]
        tokens, logp = interleave_expert_rankings(per_expert, k)
        return draft.to_target_ids(tokens), logp


def interleave_expert_rankings(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k distinct tokens of the experts' ranked lists taken rank by rank (rank 1 of every expert in
    expert order, then rank 2, ...).

    Args:
        scores: [m, E, V] per-expert scores (e.g. log-probs), experts strongest first.
        k: tokens to keep per row (<= V).
    Returns:
        (tokens [m, k], the score of each token under the expert that proposed it [m, k]).
    """
    top = torch.topk(scores, k, dim=-1)  # [m, E, k]
    m = top.indices.shape[0]
    tokens = top.indices.transpose(1, 2).reshape(m, -1)  # rank-major interleave: [m, k * E]
    values = top.values.transpose(1, 2).reshape(m, -1)
    earlier = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool, device=tokens.device).tril(-1)
    duplicate = ((tokens[:, :, None] == tokens[:, None, :]) & earlier).any(-1)
    order = torch.sort(duplicate.int(), dim=1, stable=True).indices[:, :k]
    return tokens.gather(1, order), values.gather(1, order)
