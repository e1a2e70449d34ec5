"""Static-tree drafting with the Jakiro draft head: children of every node come from the experts' distributions.

One round, for a static tree of depth D (:mod:`jakiro_star.trees`):

1. Context pass: the draft runs over the newly committed positions (target feature f_t, token x_{t+1}), extending
   its stable KV cache; its last position is the root's draft output.
2. For depth d = 1 .. D: the nodes of depth d - 1 that have children ("parents") get their children drawn from
   their per-expert distributions (:mod:`jakiro_star.proposals`: mixture or per-expert slots; sampled without
   replacement at temperature > 0, deterministic top candidates at temperature 0). Then, unless d = D, one draft
   forward over the depth-d nodes that have children: each is fed its own token and its parent's head-1 feature,
   attends to the stable cache plus its own ancestors' tree entries (ancestor mask), and sits at draft position
   ``stable_len + d - 1``. Leaves are never forwarded. Draft forwards per round: D (context pass + depths
   1 .. D-1).
3. The tree entries are cropped from the draft cache; the result is a :class:`jakiro.decoding.tree.DraftTree` over
   the root and the drawn nodes, carrying each node's recorded proposal (``proposals``; None at temperature 0) for
   the recursive rejection sampling of :func:`jakiro.decoding.verify.verify`.

Children are drawn over the draft's own vocabulary (its ``compact_logits``: V_d token ids, all V for a
full-vocabulary draft), which keeps the per-expert distributions and draws V / V_d times smaller; only the kept
nodes' proposals are scattered back to the target's vocabulary (zero outside the draft's) for verification.

Children carry their parent's mixture feature h1 (as in training), whichever expert proposed them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jakiro.common.masks import additive_mask
from jakiro.decoding.drafting import DraftState
from jakiro.decoding.tree import DraftTree
from jakiro.model.draft import DraftCache, DraftHead, DraftOutput
from jakiro_star.proposals import check_mode, draw_children, expert_probabilities, slot_distributions, top_children
from jakiro_star.trees import StaticTree, get_static_tree


class _Level:
    """Index tables of one depth d of a static tree: its nodes and where each sits under its parent."""

    def __init__(self, tree: StaticTree, depth: int):
        self.nodes = tree.nodes_at(depth)  # [k] children at depth d
        self.parents = torch.unique(tree.parents[self.nodes])  # [m] parents (depth d - 1), ascending
        self.parent_row = torch.searchsorted(self.parents, tree.parents[self.nodes])  # [k] row of each child's parent
        self.slot = tree.ranks[self.nodes]  # [k] child rank = slot
        self.counts = tree.num_children[self.parents]  # [m]
        self.slots = int(self.counts.max())


class StaticTreeDrafter:
    """Drafts one static tree per round; owns the draft KV cache of one generation. A
    :class:`jakiro.decoding.drafting.Drafter`."""

    def __init__(self, draft: DraftHead, tree: str | Sequence[Sequence[int]] | StaticTree, proposal: str = "mixture"):
        check_mode(proposal)
        self.tree = get_static_tree(tree)
        draft_vocab = draft.config.draft_vocab_size or draft.config.vocab_size
        if self.tree.max_children > draft_vocab:
            raise ValueError(f"static tree {self.tree.name!r} has a node with {self.tree.max_children} children, "
                             f"more than the draft vocabulary size {draft_vocab}")
        self.draft_vocab_size = draft_vocab
        self.draft = draft
        self.proposal = proposal
        self.total_token = len(self.tree)
        self.levels = [_Level(self.tree, d) for d in range(1, self.tree.depth + 1)]
        self.cache = DraftCache()

    def reset(self) -> None:
        """Forget the previous generation's draft cache."""
        self.cache = DraftCache()

    @torch.inference_mode()
    def propose(self, state: DraftState) -> DraftTree:
        """Extend the draft context with the newly committed positions (``state.features`` [S, H],
        ``state.tokens`` [S]) and draft the static tree below ``state.tokens[-1]``: children drawn with
        ``state.generator`` from the experts' distributions warped by ``state.sampling`` (``proposals`` [n, V]
        recorded), or deterministic top candidates at temperature 0 (no ``proposals``)."""
        draft, tree = self.draft, self.tree
        sampling, generator = state.sampling, state.generator
        param = draft.fc.weight
        device = param.device
        features = state.features.to(device, param.dtype)
        tokens = state.tokens.to(device)
        start = len(self.cache)
        positions = torch.arange(start, start + tokens.shape[0], device=device)[None]
        # the context pass evaluates its last position only: one output row, the root's
        parent_out = draft(features[None], tokens[None], positions, cache=self.cache, last_position_only=True,
                           with_experts=True)
        stable_len = len(self.cache)

        n, greedy = len(tree), sampling["temperature"] == 0
        node_tokens = torch.zeros(n, dtype=torch.long)
        node_tokens[0] = int(tokens[-1])
        present = torch.ones(n, dtype=torch.bool)
        proposals = None if greedy else torch.zeros(n, self.draft_vocab_size)  # over the draft vocabulary
        cached_nodes = torch.zeros(0, dtype=torch.long)  # tree nodes in the draft cache, in cache order
        for depth, level in enumerate(self.levels, start=1):
            self._draw_level(level, parent_out, node_tokens, present, proposals, sampling, generator)
            if depth == len(self.levels):
                break
            forward = self.levels[depth].parents  # depth-d nodes that have children
            rows = level.parent_row[torch.searchsorted(level.nodes, forward)]
            cached_nodes = torch.cat([cached_nodes, forward])
            allowed = torch.cat([torch.ones(len(forward), stable_len, dtype=torch.bool),
                                 tree.mask[forward][:, cached_nodes]], dim=1).to(device)
            mask = additive_mask(allowed, param.dtype)
            pos = torch.full((1, len(forward)), stable_len + depth - 1, device=device)
            parent_out = draft(parent_out.head1[0][rows.to(device)][None], node_tokens[forward].to(device)[None], pos,
                               attention_mask=mask[None, None], cache=self.cache, with_experts=True)

        self.cache.crop(stable_len)
        node_tokens = node_tokens.to(device)
        built = tree.to_draft_tree(node_tokens[0], node_tokens[1:], present[1:])
        kept = present.nonzero().squeeze(1)  # the root and the drawn nodes, in node order
        built.proposals = None if proposals is None else self._to_target_vocabulary(proposals[kept])
        return built

    def _to_target_vocabulary(self, proposals: torch.Tensor) -> torch.Tensor:
        """[k, V_d] proposals over the draft vocabulary -> [k, V] over the target's (zero outside the draft's)."""
        d2t = self.draft.d2t
        if d2t is None:
            return proposals
        full = proposals.new_zeros(proposals.shape[0], self.draft.config.vocab_size)
        return full.index_copy_(1, d2t.cpu(), proposals)

    def _draw_level(self, level: _Level, parent_out: DraftOutput, node_tokens: torch.Tensor, present: torch.Tensor,
                    proposals: torch.Tensor | None, sampling: dict, generator: torch.Generator | None) -> None:
        """Draw the children of ``level.parents`` from their draft outputs (one row per parent, in order) and write
        them into the per-node tensors (tokens as target ids, proposals over the draft vocabulary)."""
        logits = self.draft.compact_logits(parent_out.expert_features[0])  # [m, E, V_d]
        probs = expert_probabilities(logits, sampling)
        weights = parent_out.expert_weights[0].to(probs.device)  # [m, E]
        if proposals is None:
            chosen = self.draft.to_target_ids(top_children(probs, weights, level.slots, self.proposal)).cpu()
            node_tokens[level.nodes] = chosen[level.parent_row, level.slot]
            return
        counts = level.counts * present[level.parents]  # an absent parent has no children
        draws = draw_children(slot_distributions(probs, weights, level.slots, self.proposal), counts, generator)
        node_tokens[level.nodes] = self.draft.to_target_ids(draws.tokens.to(logits.device)).cpu()[
            level.parent_row, level.slot]
        present[level.nodes] = draws.present[level.parent_row, level.slot]
        proposals[level.nodes] = draws.proposals[level.parent_row, level.slot]
