"""Oracle drafting (jakiro.decoding.oracle): the best tree under the target, found by search, and its losslessness."""

import itertools
from collections import Counter

import pytest
import torch

from jakiro.decoding.oracle import OracleDrafter, path_probabilities, target_probs
from jakiro.model.oracle import OracleEaModel
from stats import chi_square
from test_lossless import assert_greedy_equal, exact_three_token_distribution, prompts_for
from tiny_models import draft_state, tiny_draft, tiny_target

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def oracle_model(vocab_size, total_token, soften=1.0, seed=0):
    target = tiny_target("llama", vocab_size, seed)
    with torch.no_grad():
        target.get_output_embeddings().weight.mul_(soften)
    return OracleEaModel(target, tiny_draft(target), None, total_token, stop_token_ids=[])


def brute_force_best_sum(target, prompt, sampling, nodes, vocab):
    """The largest sum of P(path) over ``nodes`` distinct non-empty paths (depth <= nodes) below ``prompt``."""
    probs = {}
    with torch.no_grad():
        for depth in range(1, nodes + 1):
            for path in itertools.product(range(vocab), repeat=depth - 1):
                ids = torch.tensor([prompt + list(path)])
                p = target_probs(target(ids).logits[0, -1:], sampling)[0]
                before = probs.get(path, 1.0)
                for token in range(vocab):
                    probs[path + (token,)] = before * float(p[token])
    return sum(sorted(probs.values(), reverse=True)[:nodes])


@pytest.mark.parametrize("sampling", [dict(temperature=1.0, top_p=1.0, top_k=0),
                                      dict(temperature=0.7, top_p=0.9, top_k=0),
                                      dict(temperature=1.0, top_p=1.0, top_k=3)])
def test_oracle_tree_holds_the_most_probable_paths(sampling):
    model = oracle_model(vocab_size=5, total_token=5, soften=0.3)
    prompt = [1, 4, 2, 0]
    target = model.target
    target.prefill(torch.tensor([prompt[:-1]]))  # the root (last prompt token) is not cached yet
    tree = model.drafter.propose(draft_state(None, torch.tensor(prompt), sampling))
    assert len(target) == len(prompt) - 1, "the search must leave the target cache as it found it"
    assert len(tree) == 5
    with torch.no_grad():
        logits, _ = target.verify(tree)
    found = sum(path_probabilities(tree, target_probs(logits, sampling))[1:])
    best = brute_force_best_sum(model.base_model, prompt, sampling, nodes=4, vocab=5)
    assert found == pytest.approx(best, rel=1e-4)


def test_greedy_oracle_drafts_the_target_chain_and_accepts_all_of_it():
    model = oracle_model(vocab_size=16, total_token=5)
    assert_greedy_equal(model, prompts_for(16, 3), max_new_tokens=40)
    lengths = model.last_stats.accept_lengths
    assert lengths[:-1] == [4] * (len(lengths) - 1), "the greedy oracle's 4-node chain is always accepted"


def test_oracle_sampling_matches_target_distribution():
    model = oracle_model(vocab_size=8, total_token=4, soften=0.25, seed=3)
    prompt = torch.tensor([[1, 5, 2]])
    sampling = dict(temperature=1.0)
    counts, accepted = Counter(), 0
    for seed in range(2000):
        ids = model.eagenerate(prompt, max_new_tokens=3, seed=seed, **sampling)
        counts[tuple(ids[0, 3:].tolist())] += 1
        accepted += sum(model.last_stats.accept_lengths)
    assert accepted > 1000, "the oracle tree should be accepted often"
    statistic, critical, dof = chi_square(counts, exact_three_token_distribution(model, prompt, sampling))
    assert statistic < critical, f"chi2={statistic:.1f} >= {critical:.1f} (dof {dof})"


def test_oracle_tree_size_is_checked():
    with pytest.raises(ValueError, match="total_token must be >= 2"):
        OracleDrafter(target=None, total_token=1)
