"""Static draft trees for Jakiro*: validation of *choices* lists and their conversion to the repo's tree structures.

A static tree is written as a list of choices, one per draft node: the path of *child ranks* from the root to the
node. Rank r is the (r+1)-th child drawn under its parent, so ranks also fix the order in which the verifier tries
siblings. A valid choices list is prefix-closed (every node's parent path is listed) and its ranks are contiguous
(rank r > 0 needs rank r - 1 beside it).

Nodes are numbered breadth first (by depth, then lexicographically by path), the root being node 0, so parents
come before children and the siblings of a node appear in rank order — the layout :mod:`jakiro.decoding.tree` uses.

Worked example (used by the tests)::

    choices = [[0], [1], [0, 0], [0, 1], [0, 0, 0]]

    node      0(root)  1    2    3      4      5
    choice     ()     (0)  (1)  (0,0)  (0,1)  (0,0,0)
    parent     -1      0    0    1      1      3
    rank       -1      0    1    0      1      0
    depth       0      1    1    2      2      3

            0
          /   \\
         1     2
        / \\
       3   4
       |
       5

The registered trees (names and choices) live in :mod:`jakiro_star.tree_choices`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from jakiro.decoding.tree import DraftTree, ancestor_mask, build_tree
from jakiro_star.tree_choices import STATIC_TREES


@dataclass(frozen=True)
class StaticTree:
    """A static draft tree of n nodes (root included).

    Attributes:
        name: registry name, or ``"custom"``.
        choices: the n - 1 rank paths of the draft nodes, in node order (node i is ``choices[i - 1]``).
        parents: [n] parent node index, -1 for the root.
        ranks: [n] child rank (= drawing and trial order among siblings), -1 for the root.
        depths: [n] distance from the root.
        mask: [n, n] bool ancestor-or-self matrix.
        num_children: [n] children per node.
    """

    name: str
    choices: tuple[tuple[int, ...], ...]
    parents: torch.Tensor
    ranks: torch.Tensor
    depths: torch.Tensor
    mask: torch.Tensor
    num_children: torch.Tensor

    def __len__(self) -> int:
        return len(self.choices) + 1

    @property
    def depth(self) -> int:
        """Depth of the deepest node (= draft tokens on the longest path)."""
        return int(self.depths.max())

    @property
    def max_children(self) -> int:
        return int(self.num_children.max())

    def nodes_at(self, depth: int) -> torch.Tensor:
        """Node indices at ``depth``, ascending."""
        return (self.depths == depth).nonzero().squeeze(1)

    def to_draft_tree(self, root_token: int | torch.Tensor, node_tokens: torch.Tensor,
                      present: torch.Tensor | None = None) -> DraftTree:
        """The verification tree for one drafting round.

        Args:
            root_token: the committed token at the root.
            node_tokens: [n - 1] token drawn at each draft node (node order).
            present: [n - 1] bool, False for nodes that were not drawn (their subtrees must be absent too);
                None = all present.
        Returns:
            A :class:`jakiro.decoding.tree.DraftTree` over the root and the present nodes, in node order.
        """
        if node_tokens.shape != (len(self) - 1,):
            raise ValueError(f"expected {len(self) - 1} node tokens for tree {self.name!r}, "
                             f"got {tuple(node_tokens.shape)}")
        candidate_parents = (self.parents[1:] - 1).to(node_tokens.device)  # root children: -1
        if present is None:
            selected = torch.arange(len(self) - 1, device=node_tokens.device)
        else:
            selected = present.to(node_tokens.device).nonzero().squeeze(1)
        return build_tree(root_token, node_tokens, candidate_parents, selected)

    @classmethod
    def from_choices(cls, choices: Sequence[Sequence[int]], name: str = "custom") -> "StaticTree":
        """Validate a choices list and build the tree (see the module docstring for the rules)."""
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or len(choices) == 0:
            raise ValueError(f"static tree {name!r}: choices must be a non-empty list of rank paths, got {choices!r}")
        paths = []
        for choice in choices:
            if (isinstance(choice, (str, bytes)) or not isinstance(choice, Sequence) or len(choice) == 0
                    or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in choice)):
                raise ValueError(f"static tree {name!r}: each choice must be a non-empty list of ranks >= 0, "
                                 f"got {choice!r}")
            paths.append(tuple(choice))
        known = set(paths)
        if len(known) != len(paths):
            duplicates = sorted({p for p in paths if paths.count(p) > 1})
            raise ValueError(f"static tree {name!r}: duplicate choices {duplicates}")
        for path in paths:
            if len(path) > 1 and path[:-1] not in known:
                raise ValueError(f"static tree {name!r}: choice {list(path)} has no parent {list(path[:-1])}")
            if path[-1] > 0 and path[:-1] + (path[-1] - 1,) not in known:
                raise ValueError(f"static tree {name!r}: choice {list(path)} needs its elder sibling "
                                 f"{list(path[:-1] + (path[-1] - 1,))} (ranks are drawing order)")
        ordered = tuple(sorted(paths, key=lambda p: (len(p), p)))
        index = {path: i + 1 for i, path in enumerate(ordered)}
        parents = torch.tensor([-1] + [index.get(p[:-1], 0) for p in ordered], dtype=torch.long)
        ranks = torch.tensor([-1] + [p[-1] for p in ordered], dtype=torch.long)
        depths = torch.tensor([0] + [len(p) for p in ordered], dtype=torch.long)
        num_children = torch.bincount(parents[1:], minlength=len(ordered) + 1)
        return cls(name, ordered, parents, ranks, depths, ancestor_mask(parents), num_children)


def get_static_tree(tree: str | Sequence[Sequence[int]] | StaticTree) -> StaticTree:
    """A registered tree by name, a tree from a choices list, or the given :class:`StaticTree` itself."""
    if isinstance(tree, StaticTree):
        return tree
    if isinstance(tree, str):
        if tree not in STATIC_TREES:
            raise ValueError(f"unknown static tree {tree!r}; registered trees: {', '.join(STATIC_TREES)}")
        return StaticTree.from_choices(STATIC_TREES[tree], tree)
    return StaticTree.from_choices(tree)
