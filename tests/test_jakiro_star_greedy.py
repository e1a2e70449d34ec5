"""Jakiro* at temperature 0: output equals the target's own greedy decoding, token for token (fp32).

Over the registered static trees, both sibling modes, untrained drafts and "trained-like" drafts that the target
often agrees with (tests/imitating_draft.py) — the latter must show real acceptance, otherwise equality would be
trivial.
"""

import pytest
import torch

from imitating_draft import imitating_draft, weak_context_target
from jakiro_star.model import StarEaModel
from jakiro_star.tree_choices import STATIC_TREES
from tiny_models import tiny_draft, tiny_target


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def prompts_for(vocab, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, 3 + 2 * i), generator=generator) for i in range(count)]


def greedy_accept_rate(model, prompts, max_new_tokens=40):
    """Asserts equality with ``generate(do_sample=False)``; returns the mean accepted draft tokens per step."""
    accepted = steps = 0
    for prompt in prompts:
        expected = model.base_model.generate(prompt, do_sample=False, max_new_tokens=max_new_tokens,
                                             min_new_tokens=max_new_tokens)
        ids, new_tokens, forwards = model.eagenerate(prompt, max_new_tokens=max_new_tokens, log=True)
        assert torch.equal(ids, expected), f"diverged for prompt {prompt.tolist()}"
        assert new_tokens == max_new_tokens
        assert forwards == 1 + len(model.last_stats.accept_lengths)  # prefill + one verification per step
        assert max(model.last_stats.accept_lengths) <= model.drafter.tree.depth
        accepted += sum(model.last_stats.accept_lengths)
        steps += len(model.last_stats.accept_lengths)
    return accepted / steps


@pytest.mark.parametrize("tree", sorted(STATIC_TREES))
@pytest.mark.parametrize("sibling_mode", ["mixture", "per_expert"])
def test_greedy_equals_target_untrained_draft(tree, sibling_mode):
    target = tiny_target("llama", vocab_size=16)
    model = StarEaModel(target, tiny_draft(target, parallel_head=False), None, tree, sibling_mode, stop_token_ids=[])
    greedy_accept_rate(model, prompts_for(16, 3))


@pytest.mark.parametrize("tree", sorted(STATIC_TREES))
@pytest.mark.parametrize("sibling_mode", ["mixture", "per_expert"])
def test_greedy_equals_target_trained_like_draft(tree, sibling_mode):
    target = weak_context_target("llama", vocab_size=16)
    model = StarEaModel(target, imitating_draft(target), None, tree, sibling_mode, stop_token_ids=[])
    rate = greedy_accept_rate(model, prompts_for(16, 3))
    assert rate > 1.0, f"mean accepted length {rate:.2f}: the draft should agree with the target often"


@pytest.mark.parametrize("family", ["qwen2", "mistral", "mixtral"])
def test_greedy_other_families(family):
    target = weak_context_target(family, vocab_size=32)
    model = StarEaModel(target, imitating_draft(target), None, "cpu12", "per_expert", stop_token_ids=[])
    assert greedy_accept_rate(model, prompts_for(32, 2)) > 0


@pytest.mark.parametrize("num_experts, experts_per_token", [(2, 1), (4, 2), (1, 1)])
def test_greedy_other_expert_routings(num_experts, experts_per_token):
    target = weak_context_target("llama", vocab_size=16)
    draft = imitating_draft(target, num_experts, experts_per_token)
    for mode in ("mixture", "per_expert"):
        model = StarEaModel(target, draft, None, "cpu16", mode, stop_token_ids=[])
        assert greedy_accept_rate(model, prompts_for(16, 2)) > 0


@pytest.mark.parametrize("choices", [[[0], [0, 0], [0, 0, 0]], [[0], [1], [2]]], ids=["chain", "one-level"])
def test_greedy_custom_trees_and_stop_tokens(choices):
    """A choices list works as a tree; generation stops right after a stop token, like the target's."""
    target = weak_context_target("llama", vocab_size=16)
    plain = target.generate(torch.tensor([[1, 2, 3]]), do_sample=False, max_new_tokens=30, min_new_tokens=30)
    stop = int(plain[0, 3 + 10])  # the 11th generated token
    first_stop = next(i for i in range(3, plain.shape[1]) if int(plain[0, i]) == stop)
    model = StarEaModel(target, imitating_draft(target), None, choices, stop_token_ids=[stop])
    ids = model.eagenerate(torch.tensor([[1, 2, 3]]), max_new_tokens=30)
    assert torch.equal(ids, plain[:, : first_stop + 1])


def greedy_longest_accept_with_lookup(tree):
    """Asserts greedy equality with the target with a 6-token lookup branch; returns the longest accepted run."""
    target = weak_context_target("llama", vocab_size=16)
    model = StarEaModel(target, tiny_draft(target, seed=1), None, tree, lookup_tokens=6, stop_token_ids=[])
    longest = 0
    for prompt in [torch.tensor([[3, 1, 4, 1, 5, 3, 1, 4]]), *prompts_for(16, 3)]:
        expected = target.generate(prompt, do_sample=False, max_new_tokens=40, min_new_tokens=40)
        assert torch.equal(model.eagenerate(prompt, max_new_tokens=40), expected)
        longest = max(longest, *model.last_stats.accept_lengths)
    return longest


def test_greedy_with_lookup_equals_target_and_uses_the_branch():
    # one drawn child per step: accepting two or more tokens takes the looked-up branch
    assert greedy_longest_accept_with_lookup([[0]]) > 1, "no step accepted past the drawn child: the branch never won"


def test_greedy_with_lookup_equals_target_on_a_bushy_tree():
    assert greedy_longest_accept_with_lookup("cpu8") >= 1
