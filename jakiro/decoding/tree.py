"""Draft-tree bookkeeping as pure tensor functions: candidate selection, ancestor masks, positions, root-to-leaf paths.

A draft tree is described by a ``parents`` vector over its nodes. Node 0 is the root (the token the target already
committed); every other node's parent comes earlier in the list (``parents[i] < i``), so rows can be filled in order.

Worked example (used by the tests)::

    node      0(root)  1   2   3   4   5
    parent      -1     0   0   1   1   2

            0
          /   \\
         1     2
        / \\     \\
       3   4     5

    ancestor_mask (row i: which nodes node i may attend to, itself included)
         0 1 2 3 4 5
    0  [ 1 0 0 0 0 0 ]
    1  [ 1 1 0 0 0 0 ]
    2  [ 1 0 1 0 0 0 ]
    3  [ 1 1 0 1 0 0 ]
    4  [ 1 1 0 0 1 0 ]
    5  [ 1 0 1 0 0 1 ]

    depths            = [0, 1, 1, 2, 2, 2]       (target position offsets of the nodes)
    retrieve_indices  = [[0, 1, 3],
                         [0, 1, 4],
                         [0, 2, 5]]              (one row per leaf, root first, padded with -1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jakiro.common.masks import additive_mask


@dataclass
class DraftTree:
    """A draft tree ready for target verification.

    Attributes:
        tokens: [n] token ids, ``tokens[0]`` is the root.
        parents: [n] parent node index (-1 for the root).
        depths: [n] distance from the root; the target position of node i is ``prefix_len + depths[i]``.
        mask: [n, n] bool ancestor-or-self matrix.
        retrieve_indices: [leaves, max_depth + 1] node indices from root to each leaf, -1 padded.
        proposals: [n, V] float, row i the distribution node i's token was drawn from (row 0, the root's, is
            unused), over the target's vocabulary; None when every node is deterministic (chosen without
            randomness, e.g. a top-k). Siblings count as drawn in node order, each row conditioned on the earlier
            siblings (see :mod:`jakiro.decoding.verify`).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    mask: torch.Tensor
    retrieve_indices: torch.Tensor
    proposals: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def from_parents(cls, tokens: torch.Tensor, parents: torch.Tensor,
                     proposals: torch.Tensor | None = None) -> "DraftTree":
        """The tree with these nodes: tokens [n] and parents [n] (-1 for the root, ``parents[i] < i``), and for a
        sampled tree the [n, V] proposals; mask, depths and root-to-leaf paths follow from the parents."""
        mask = ancestor_mask(parents)
        depths = mask.sum(dim=1) - 1
        return cls(tokens, parents, depths, mask, retrieve_indices(mask, depths), proposals)


def select_candidates(scores: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Indices of the ``num_nodes`` best candidates, returned in ascending (= layer) order.

    Scores are cumulative log-probabilities, so a child never outscores its parent. Sorting is stable, so on a tie
    the earlier index (the parent) wins: the selected set is always ancestor-closed.

    Args:
        scores: [M] cumulative scores of the flat candidate list (parents listed before children).
        num_nodes: how many candidates to keep (clipped to M).
    Returns:
        [min(num_nodes, M)] long tensor, sorted ascending.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[: min(num_nodes, scores.shape[0])]).values


def build_tree(
    root_token: int | torch.Tensor,
    cand_tokens: torch.Tensor,
    cand_parents: torch.Tensor,
    selected: torch.Tensor,
) -> DraftTree:
    """Turn selected candidates into a verification tree.

    Args:
        root_token: the committed token at the root.
        cand_tokens: [M] token of every candidate.
        cand_parents: [M] flat candidate index of each candidate's parent, -1 where the parent is the root.
        selected: [n-1] ascending, ancestor-closed candidate indices (from :func:`select_candidates`).
    Returns:
        A :class:`DraftTree` with n nodes (root + selected).
    """
    device = cand_tokens.device
    root = torch.as_tensor(root_token, device=device, dtype=cand_tokens.dtype).reshape(1)
    tokens = torch.cat([root, cand_tokens[selected]])
    parent_cands = cand_parents[selected]
    # A selected candidate's parent is either the root (-1) or another selected candidate: find its node index.
    parent_pos = torch.searchsorted(selected, parent_cands.clamp(min=0))
    parents_rest = torch.where(parent_cands < 0, torch.zeros_like(parent_pos), parent_pos + 1)
    if (parent_cands >= 0).any():
        found = selected[parent_pos.clamp(max=selected.numel() - 1)] == parent_cands
        if not bool(found[parent_cands >= 0].all()):
            raise ValueError("selected candidates are not ancestor-closed")
    parents = torch.cat([torch.full((1,), -1, device=device, dtype=torch.long), parents_rest.long()])
    return DraftTree.from_parents(tokens, parents)


def graft_chain(tree: DraftTree, chain: torch.Tensor) -> DraftTree:
    """The tree with one more root-to-leaf branch spelling ``chain`` below the root.

    The chain is merged like a word into a trie: it follows existing nodes while their tokens match and appends the
    rest as a new path, so siblings stay distinct (which sampling verification requires) and a chain the drafter
    already proposed adds no node. New nodes come after the old ones, so ``parents[i] < i`` still holds, and they
    are tried after their drawn siblings. In a sampled tree (``proposals`` set) the new nodes get one-hot rows: a
    token fixed before the step from the committed text alone is a draw from delta_token, which keeps recursive
    rejection sampling lossless (:mod:`jakiro.decoding.verify`).

    Args:
        tree: a draft tree with n nodes (``proposals`` [n, V] or None).
        chain: [m] token ids proposed after the root, in order.
    Returns:
        A tree with n + (unmatched part of the chain) nodes (proposals [n + new, V] or None); the old nodes keep
        their indices. The tree itself when the chain adds no node.
    """
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    child_of = {(parents[i], tokens[i]): i for i in range(1, len(tokens))}
    node = 0
    for token in chain.tolist():
        if (node, token) not in child_of:
            child_of[(node, token)] = len(tokens)
            tokens.append(token)
            parents.append(node)
        node = child_of[(node, token)]
    if len(tokens) == len(tree):
        return tree
    device = tree.tokens.device
    proposals = tree.proposals
    if proposals is not None:
        fixed = torch.zeros(len(tokens) - len(tree), proposals.shape[1], dtype=proposals.dtype,
                            device=proposals.device)
        fixed[torch.arange(fixed.shape[0]), torch.tensor(tokens[len(tree):], device=proposals.device)] = 1.0
        proposals = torch.cat([proposals, fixed])
    return DraftTree.from_parents(torch.tensor(tokens, dtype=tree.tokens.dtype, device=device),
                                  torch.tensor(parents, dtype=torch.long, device=device), proposals)


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """[n, n] bool matrix: ``mask[i, j]`` is True when node j is node i or one of its ancestors.

    Args:
        parents: [n] parent index per node, -1 for the root; ``parents[i] < i``.
    """
    n = parents.shape[0]
    idx = torch.arange(n, device=parents.device)
    mask = torch.eye(n, dtype=torch.bool, device=parents.device)
    up = parents.clamp(min=0)  # the root points at itself
    cur = idx
    for _ in range(n - 1):
        nxt = up[cur]
        if torch.equal(nxt, cur):
            break
        mask[idx, nxt] = True
        cur = nxt
    return mask


def retrieve_indices(mask: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Root-to-leaf node paths, one row per leaf in node order, padded with -1.

    Args:
        mask: [n, n] ancestor-or-self matrix.
        depths: [n] node depths.
    Returns:
        [leaves, max_depth + 1] long tensor.
    """
    n = mask.shape[0]
    is_parent = (mask & ~torch.eye(n, dtype=torch.bool, device=mask.device)).any(dim=0)
    leaves = (~is_parent).nonzero().squeeze(1)
    width = int(depths.max()) + 1
    levels = torch.arange(width, device=mask.device)
    # at_level[l, d, j]: node j is on leaf l's path and sits at depth d
    at_level = mask[leaves][:, None, :] & (depths[None, None, :] == levels[None, :, None])
    paths = at_level.int().argmax(dim=-1)
    return torch.where(at_level.any(dim=-1), paths, torch.full_like(paths, -1))


def full_tree(tokens: torch.Tensor, arity: int = 4) -> DraftTree:
    """A stand-in draft tree over ``tokens`` [n]: the full ``arity``-ary tree (node i's parent is (i - 1) // arity),
    for timing verification of n nodes."""
    n = tokens.shape[0]
    return DraftTree.from_parents(tokens, torch.tensor([-1] + [(i - 1) // arity for i in range(1, n)]))


def root_paths(tree_mask: torch.Tensor) -> list[torch.Tensor]:
    """Node i's path from the root, root first: [i's ancestors..., i] (parents precede children, so the ancestors in
    index order are the path in order). With the worked example: [0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 4], [0, 2, 5].

    Args:
        tree_mask: [n, n] bool ancestor-or-self matrix.
    """
    return [row.nonzero().flatten() for row in tree_mask]


def additive_tree_mask(tree_mask: torch.Tensor, prefix_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Float attention mask for verifying a tree after a cached prefix.

    Every tree node sees the whole prefix and its own ancestors. Values are 0 (attend) or the dtype's minimum
    (masked) — additive masks are correct under both eager and SDPA attention, boolean ones are not.

    Args:
        tree_mask: [n, n] bool ancestor-or-self matrix.
        prefix_len: number of cached positions before the tree.
        dtype: the attention dtype.
    Returns:
        [1, 1, n, prefix_len + n] tensor.
    """
    n = tree_mask.shape[0]
    allowed = torch.cat(
        [torch.ones(n, prefix_len, dtype=torch.bool, device=tree_mask.device), tree_mask], dim=1
    )
    return additive_mask(allowed, dtype)[None, None]
