"""Choosing a reduced draft vocabulary: the target token ids that the training answers use most.

A draft with ``draft_vocab_size = N`` scores only N of the target's V tokens (see :mod:`jakiro.model.draft`). The N
are the most frequent tokens at loss-carrying positions (the assistant's answers) of the training conversations,
ties broken by the smaller id, so the same data always gives the same vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


def token_frequencies(dataset, indices: Sequence[int], vocab_size: int, progress: bool = True) -> torch.Tensor:
    """[V] counts of each token id at the loss-carrying positions of items ``indices``.

    Args:
        dataset: a feature dataset with ``tokens(i) -> (input_ids [L], loss_mask [L])`` (``FeatureShards``,
            ``OnlineFeatures``), so that no features are read or computed.
    """
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for i in tqdm(indices, desc="draft vocabulary", unit="conv", disable=not progress):
        ids, mask = dataset.tokens(i)
        used = ids[mask > 0]
        if used.numel() and int(used.max()) >= vocab_size:
            raise ValueError(f"item {i} holds token id {int(used.max())} >= the vocabulary size {vocab_size}")
        counts += torch.bincount(used, minlength=vocab_size)
    return counts


def most_frequent_tokens(counts: torch.Tensor, n: int) -> torch.Tensor:
    """[n] ids of the n largest counts (ties: smaller id first), sorted by id."""
    if not 1 <= n <= counts.numel():
        raise ValueError(f"a draft vocabulary of {n} tokens does not fit a vocabulary of {counts.numel()}")
    order = torch.sort(counts, descending=True, stable=True).indices
    return order[:n].sort().values


def coverage(counts: torch.Tensor, token_ids: torch.Tensor) -> float:
    """Share of the counted tokens that ``token_ids`` covers (1.0 for an empty count)."""
    total = int(counts.sum())
    return float(counts[token_ids].sum()) / total if total else 1.0
