"""Reduced draft vocabulary selection: frequencies at loss positions, deterministic top-N, coverage."""

import pytest
import torch

from jakiro.train.vocab import coverage, most_frequent_tokens, token_frequencies


class TokenItems:
    """A stand-in dataset exposing ``tokens(i)`` only: reading features would be a bug."""

    def __init__(self, items):
        self.items = items

    def tokens(self, i):
        return self.items[i]

    def __getitem__(self, i):
        raise AssertionError("token_frequencies must not read features")


def test_counts_only_loss_positions_of_the_chosen_items():
    data = TokenItems([
        (torch.tensor([1, 2, 2, 3]), torch.tensor([0, 1, 1, 1])),
        (torch.tensor([4, 4, 4]), torch.tensor([1, 1, 1])),  # not chosen below
        (torch.tensor([3, 5]), torch.tensor([1, 0])),
    ])
    counts = token_frequencies(data, [0, 2], vocab_size=6, progress=False)
    assert counts.tolist() == [0, 0, 2, 2, 0, 0]


def test_most_frequent_breaks_ties_by_smaller_id_and_returns_sorted_ids():
    counts = torch.tensor([5, 0, 7, 5, 5, 1])
    assert most_frequent_tokens(counts, 3).tolist() == [0, 2, 3]  # 7, then the first two of the 5s
    assert most_frequent_tokens(counts, 6).tolist() == list(range(6))
    assert coverage(counts, most_frequent_tokens(counts, 3)) == pytest.approx(17 / 23)


@pytest.mark.parametrize("n", [0, 7])
def test_vocabulary_size_out_of_range(n):
    with pytest.raises(ValueError, match="draft vocabulary"):
        most_frequent_tokens(torch.ones(6), n)


def test_token_id_outside_the_vocabulary_is_reported():
    data = TokenItems([(torch.tensor([1, 9]), torch.tensor([1, 1]))])
    with pytest.raises(ValueError, match="token id 9"):
        token_frequencies(data, [0], vocab_size=6, progress=False)
