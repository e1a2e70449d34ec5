"""Prompt lookup: propose the tokens that followed an earlier occurrence of the text's last n-gram.

Chat answers often repeat stretches of the prompt or of themselves (code, names, lists, a looping small model).
:class:`PromptLookup` wraps any drafter and grafts such a continuation onto each of its trees as one extra branch
(:func:`jakiro.decoding.tree.graft_chain`): it costs no draft forward, only a few more verified nodes, and the
verifier treats it like any other deterministic candidate (a one-hot proposal, also beside sampled children), so
output stays exactly the target's.
"""

from __future__ import annotations

import torch

from jakiro.decoding.drafting import Drafter, DraftState, check_drafter
from jakiro.decoding.tree import DraftTree, graft_chain


class PromptLookup:
    """A :class:`jakiro.decoding.drafting.Drafter` adding a looked-up branch to another drafter's trees.

    Each round: the inner drafter's tree, then :func:`lookup_continuation` of ``state.history`` (up to
    ``num_tokens`` tokens after the latest earlier occurrence of the longest matching suffix n-gram, n from
    ``ngram`` down to 1) merged into it below the root.

    Args:
        drafter: any drafter (the dynamic tree, Jakiro*'s, the oracle, a user's own).
        num_tokens: most looked-up tokens per round (>= 1).
        ngram: longest suffix n-gram matched (>= 1).
    """

    def __init__(self, drafter: Drafter, num_tokens: int, ngram: int = 3):
        check_drafter(drafter)
        if num_tokens < 1 or ngram < 1:
            raise ValueError(f"prompt lookup needs num_tokens >= 1 and ngram >= 1, got {num_tokens} and {ngram}")
        self.drafter = drafter
        self.num_tokens = num_tokens
        self.ngram = ngram

    @property
    def total_token(self) -> int:
        return self.drafter.total_token + self.num_tokens

    def reset(self) -> None:
        self.drafter.reset()

    def propose(self, state: DraftState) -> DraftTree:
        tree = self.drafter.propose(state)
        return graft_chain(tree, lookup_continuation(state.history, self.ngram, self.num_tokens))


def lookup_continuation(ids: torch.Tensor, max_ngram: int, num_tokens: int) -> torch.Tensor:
    """The tokens after the most recent earlier occurrence of the longest matching suffix n-gram.

    n goes from ``max_ngram`` down to 1; the first n with a match wins, and of its matches the latest one (the
    nearest context). The suffix itself is not a match of itself.

    Args:
        ids: [S] committed token ids (prompt and generated text, the last one included).
        max_ngram: longest suffix tried (>= 1).
        num_tokens: most tokens returned (>= 1).
    Returns:
        [m] ids with 0 <= m <= num_tokens (empty when no n-gram recurs).
    """
    length = ids.shape[0]
    for n in range(min(max_ngram, length - 1), 0, -1):
        # window i holds ids[i : i + n]; windows end before the last token, so every match has a continuation
        windows = ids[: length - 1].unfold(0, n, 1)
        hits = (windows == ids[length - n:]).all(dim=1).nonzero()
        if hits.numel():
            start = int(hits[-1]) + n
            return ids[start: start + num_tokens]
    return ids[:0]
