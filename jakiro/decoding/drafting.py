"""The one drafter interface: what a drafter is given each round (:class:`DraftState`) and what it must do
(:class:`Drafter`).

Every way of proposing a tree implements it — the EAGLE-2 dynamic tree with CEPD
(:class:`jakiro.decoding.drafter.TreeDrafter`), Jakiro*'s sampled static tree
(:class:`jakiro_star.drafter.StaticTreeDrafter`), the oracle (:class:`jakiro.decoding.oracle.OracleDrafter`), prompt
lookup wrapped around any of them (:class:`jakiro.decoding.lookup.PromptLookup`) and a user's own (docs/drafters.md)
— and the generate loop (:func:`jakiro.decoding.loop.speculative_tokens`) is written once against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from jakiro.decoding.tree import DraftTree


@dataclass
class DraftState:
    """What a drafter sees at the start of a round: the positions committed since its previous round.

    Attributes:
        features: [S, H] the target's features (last hidden state, final-normed) at the newly committed positions;
            in the first round the prompt's positions.
        tokens: [S] the token that follows each of those positions; ``tokens[-1]`` is the last committed token,
            the root of the tree to propose (not yet in the target's cache).
        history: [T] every committed token, prompt and generated, root last (``history[-1] == tokens[-1]``).
        sampling: the target's sampling settings ``temperature`` (0 = greedy), ``top_p``, ``top_k``.
        generator: the CPU ``torch.Generator`` of this generation, for drafters that draw their children.
    """

    features: torch.Tensor
    tokens: torch.Tensor
    history: torch.Tensor
    sampling: dict
    generator: torch.Generator | None = None


@runtime_checkable
class Drafter(Protocol):
    """Proposes one draft tree per round.

    Attributes:
        total_token: the largest tree it proposes, root included (bounds the verification forward).
    """

    total_token: int

    def reset(self) -> None:
        """Forget the previous generation (draft caches); called once before a generation's first round."""

    def propose(self, state: DraftState) -> DraftTree:
        """A tree whose root (node 0) is ``state.tokens[-1]``, with at most ``total_token`` nodes. Its
        ``proposals`` are None when every node was chosen without randomness; a drafter that draws nodes records
        each node's exact proposal distribution (see :class:`jakiro.decoding.tree.DraftTree`)."""


def check_drafter(drafter) -> None:
    """Raise ValueError naming what is missing when ``drafter`` does not implement :class:`Drafter`."""
    missing = [name for name in ("reset", "propose") if not callable(getattr(drafter, name, None))]
    total = getattr(drafter, "total_token", None)
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        missing.append(f"total_token (an int >= 1, got {total!r})")
    if missing:
        raise ValueError(f"the drafter {type(drafter).__name__} does not implement the Drafter interface "
                         f"(jakiro.decoding.drafting.Drafter, docs/drafters.md): missing {', '.join(missing)}")


def check_tree(tree, state: DraftState, drafter) -> None:
    """Raise ValueError when a proposed tree cannot be verified: not a DraftTree, a root other than the last
    committed token (verifying it would feed the target a wrong token), or more than ``total_token`` nodes."""
    name = type(drafter).__name__
    if not isinstance(tree, DraftTree):
        raise ValueError(f"{name}.propose returned {type(tree).__name__}, not a jakiro.decoding.tree.DraftTree")
    root, expected = int(tree.tokens[0]), int(state.tokens[-1])
    if root != expected:
        raise ValueError(f"{name}.propose returned a tree rooted at token {root}; the root must be the last "
                         f"committed token, state.tokens[-1] = {expected}")
    if len(tree) > drafter.total_token:
        raise ValueError(f"{name}.propose returned {len(tree)} nodes, more than its total_token = "
                         f"{drafter.total_token}")
