"""Oracle drafting: the tree a perfect draft (the target itself) would propose, to measure a target's headroom.

With lossless verification of deterministic candidates (:mod:`jakiro.decoding.verify`) the accepted path is distributed
exactly as a path sampled from the target, so a tree's expected number of accepted draft tokens is

    E[accepted] = sum over its non-root nodes v of P(v),   P(v) = product of the target's (warped) probabilities
                                                                   of the tokens on the path root -> v

and the best tree of n nodes holds the n - 1 most probable paths (a path is never more probable than its prefix,
so they form a tree). No deterministic draft (the ``jakiro`` method's dynamic tree, EAGLE-2's) can beat it at that
size: its tau bounds what training such a draft can achieve, and tau over the verification cost of n nodes
(``python -m jakiro.evaluation.tree_costs``) bounds its speedup on a device. Drafts that *sample* their children
and are verified by rejection sampling (Jakiro*) are not bound by it: one drawing from exactly the target's
distribution would have every token accepted. At temperature 0 the target's distribution is one-hot and the oracle
tree is the greedy chain.

The search is best-first in rounds: one target forward over the current tree (cache cropped back afterwards)
gives the distribution at every node; the n - 1 most probable children of evaluated nodes become the next tree;
it stops when the tree no longer changes (at most one round per depth). These search forwards are not counted
as target forwards and cost far more than any draft, so only tau is meaningful, not the wall time.
"""

from __future__ import annotations

import torch

from jakiro.decoding.drafting import DraftState
from jakiro.decoding.tree import DraftTree
from jakiro.decoding.verify import warp_logits
from jakiro.target import TargetModel


def target_probs(logits: torch.Tensor, sampling: dict) -> torch.Tensor:
    """[n, V] logits -> [n, V] float32 probabilities of the sampling distribution (one-hot argmax at T=0)."""
    if sampling["temperature"] == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    return warp_logits(logits, sampling["temperature"], sampling["top_p"], sampling["top_k"]).softmax(dim=-1)


def tree_of_paths(root: int, paths: list[tuple[int, ...]]) -> DraftTree:
    """The tree below ``root`` whose non-root nodes are the given token paths (prefix-closed), shallowest first."""
    ordered = sorted(paths, key=len)
    index = {(): 0, **{path: i + 1 for i, path in enumerate(ordered)}}
    tokens = torch.tensor([root] + [path[-1] for path in ordered])
    parents = torch.tensor([-1] + [index[path[:-1]] for path in ordered])
    return DraftTree.from_parents(tokens, parents)


def path_probabilities(tree: DraftTree, probs: torch.Tensor) -> list[float]:
    """P(v) for every node of ``tree`` (1 for the root) given the [n, V] target probabilities at its nodes."""
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    out = [1.0]
    for node in range(1, len(tokens)):
        out.append(out[parents[node]] * float(probs[parents[node], tokens[node]]))
    return out


class OracleDrafter:
    """Drafts, below each committed token, the n-node tree with the highest expected acceptance under the target.
    A :class:`jakiro.decoding.drafting.Drafter`."""

    def __init__(self, target: TargetModel, total_token: int):
        if total_token < 2:
            raise ValueError(f"total_token must be >= 2 (root + at least one draft token), got {total_token}")
        self.target = target
        self.total_token = total_token

    def reset(self) -> None:
        """Nothing is kept between generations."""

    @torch.inference_mode()
    def propose(self, state: DraftState) -> DraftTree:
        """The best ``total_token``-node tree below the last committed token ``state.tokens[-1]`` (not yet in the
        target's cache) under the target's ``state.sampling`` distribution; deterministic (no ``proposals``)."""
        root, sampling = int(state.tokens[-1]), state.sampling
        paths: list[tuple[int, ...]] = []
        # each round fixes at least one more tree layer, so total_token rounds suffice; the cap only matters if
        # numerical noise between forwards over differently shaped trees keeps swapping two near-equal paths
        for _ in range(self.total_token):
            tree = tree_of_paths(root, paths)
            probs = self._probs_at_nodes(tree, sampling)
            chosen = self._best_paths(tree, probs)
            if set(chosen) == set(paths):
                break
            paths = chosen
        return tree

    def _probs_at_nodes(self, tree: DraftTree, sampling: dict) -> torch.Tensor:
        """[n, V] target probabilities at the tree's nodes; the target cache is left as it was."""
        prefix_len = len(self.target)
        logits, _ = self.target.verify(tree)
        self.target.crop(prefix_len)
        return target_probs(logits, sampling)

    def _best_paths(self, tree: DraftTree, probs: torch.Tensor) -> list[tuple[int, ...]]:
        """The ``total_token - 1`` most probable paths among the tree's nodes and their children."""
        wanted = self.total_token - 1
        node_paths = [()]
        tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
        for node in range(1, len(tokens)):
            node_paths.append(node_paths[parents[node]] + (tokens[node],))
        node_probs = path_probabilities(tree, probs)
        candidates = dict(zip(node_paths[1:], node_probs[1:]))
        values, ids = probs.topk(min(wanted, probs.shape[-1]), dim=-1)
        for node, path in enumerate(node_paths):
            for value, token in zip(values[node].tolist(), ids[node].tolist()):
                if value > 0:
                    candidates.setdefault(path + (token,), node_probs[node] * value)
        # most probable first; on a tie the shorter path first, so every chosen path's prefix is chosen too
        ranked = sorted(candidates, key=lambda path: (-candidates[path], len(path)))
        return [path for path in ranked[:wanted] if candidates[path] > 0]
