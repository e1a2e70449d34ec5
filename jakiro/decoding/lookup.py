"""Prompt lookup: propose the tokens that followed an earlier occurrence of the text's last n-gram.

Chat answers often repeat stretches of the prompt or of themselves (code, names, lists, a looping small model). The
speculative loop can graft such a continuation onto the draft tree as one extra branch
(:func:`jakiro.decoding.tree.graft_chain`, ``tree.lookup_tokens``): it costs no draft forward, only a few more verified
nodes, and the verifier treats it like any other deterministic candidate, so output stays exactly the target's.
"""

from __future__ import annotations

import torch


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
