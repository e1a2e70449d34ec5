"""Prompt lookup (jakiro/decoding/lookup.py): which continuation is proposed, and the grafted branch's losslessness."""

from collections import Counter

import pytest
import torch

from jakiro.decoding.lookup import lookup_continuation
from stats import chi_square
from test_lossless import assert_greedy_equal, exact_three_token_distribution, prompts_for
from tiny_models import tiny_ea_model


def lookup(ids, max_ngram=3, num_tokens=4):
    return lookup_continuation(torch.tensor(ids), max_ngram, num_tokens).tolist()


def test_longest_ngram_wins_over_a_later_shorter_match():
    # "7 8" occurs at 0 (then 1) and "8" alone at 5 (then 2): the 2-gram match decides
    assert lookup([7, 8, 1, 1, 3, 8, 2, 5, 7, 8], max_ngram=2) == [1, 1, 3, 8]


def test_latest_occurrence_wins_and_the_suffix_does_not_match_itself():
    assert lookup([4, 1, 4, 2, 4], max_ngram=1, num_tokens=1) == [2]
    assert lookup([9, 4], max_ngram=3) == []  # "4" occurs only as the suffix itself


def test_continuation_is_capped_and_may_end_at_the_last_token():
    assert lookup([5, 6, 7, 8, 9, 5, 6], num_tokens=2) == [7, 8]
    assert lookup([3, 3], max_ngram=3) == [3]  # "3" at 0 is followed by the last token


def test_no_recurring_ngram_gives_nothing():
    assert lookup([1, 2, 3, 4]) == []
    assert lookup([1]) == []


LOOKUP_TREES = [dict(total_token=2, depth=1, top_k=1), dict(total_token=8, depth=2, top_k=3)]


@pytest.mark.parametrize("shape", LOOKUP_TREES)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_with_lookup_equals_target_and_uses_the_branch(family, shape):
    model = tiny_ea_model(family, vocab_size=16, lookup_tokens=6, **shape)
    # repetitive prompts: small random targets loop, so the looked-up branch is accepted often
    prompts = [torch.tensor([[3, 1, 4, 1, 5, 3, 1, 4]]), *prompts_for(16, 3)]
    longest = 0
    for prompt in prompts:
        assert_greedy_equal(model, [prompt], max_new_tokens=40)
        longest = max(longest, *model.last_stats.accept_lengths)
    assert longest > shape["depth"], "no step accepted more than the draft's depth: the lookup branch never won"


def test_sampling_with_lookup_matches_target_distribution():
    # one draft child per step, so accepting two or more tokens in a step needs the looked-up branch
    model = tiny_ea_model("llama", vocab_size=8, total_token=2, depth=1, top_k=1, seed=3, lookup_tokens=3)
    sampling = dict(temperature=1.0)
    likely = model.naivegenerate(torch.tensor([[1, 5, 2]]), max_new_tokens=3)[0, 3:].tolist()
    prompt = torch.tensor([[1, 5, 2, *likely, 1, 5, 2]])  # "1 5 2" recurs: the lookup proposes ``likely``
    counts, lookup_won = Counter(), 0
    for seed in range(3000):
        ids = model.eagenerate(prompt, max_new_tokens=3, seed=seed, **sampling)
        counts[tuple(ids[0, prompt.shape[1]:].tolist())] += 1
        lookup_won += any(length > 1 for length in model.last_stats.accept_lengths)
    assert lookup_won > 200, "too few steps accepted the looked-up branch past the draft's depth"
    statistic, critical, dof = chi_square(counts, exact_three_token_distribution(model, prompt, sampling))
    assert statistic < critical, f"chi2={statistic:.1f} >= {critical:.1f} (dof {dof})"


def test_lookup_settings_are_checked():
    with pytest.raises(ValueError, match="lookup_tokens must be >= 0"):
        tiny_ea_model(lookup_tokens=-1)
