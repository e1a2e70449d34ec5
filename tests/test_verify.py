"""Verification rules: greedy acceptance tables, exactness of the sampling rule, and the sampling warpers."""

from collections import Counter

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from jakiro.decoding.tree import build_tree
from jakiro.decoding.verify import acceptance_probability, rejection_residual, verify, verify_greedy, warp_logits
from stats import chi_square

V = 6


def example_tree():
    """root(0) -> {1: tok 1, 2: tok 2}; node 1 -> {3: tok 3, 4: tok 4}; node 2 -> {5: tok 5}."""
    tokens = torch.tensor([1, 2, 3, 4, 5])
    parents = torch.tensor([-1, -1, 0, 0, 1])
    return build_tree(0, tokens, parents, torch.arange(5))


def one_hot_logits(argmaxes):
    logits = torch.full((len(argmaxes), V), -5.0)
    logits[torch.arange(len(argmaxes)), torch.tensor(argmaxes)] = 5.0
    return logits


@pytest.mark.parametrize(
    "argmaxes, accepted, bonus",
    [
        # target argmax at nodes 0..5
        ([1, 4, 0, 0, 0, 0], [1, 4], 0),  # root->1 accepted, 1->4 accepted, bonus from node 4
        ([2, 0, 5, 0, 0, 3], [2, 5], 3),  # the second branch all the way
        ([3, 0, 0, 0, 0, 0], [], 3),  # nothing accepted: bonus = target argmax at the root
        ([1, 0, 0, 0, 0, 0], [1], 0),  # first level only
    ],
)
def test_greedy_table(argmaxes, accepted, bonus):
    tree = example_tree()
    verdict = verify_greedy(tree, one_hot_logits(argmaxes))
    assert tree.tokens[verdict.accepted_nodes].tolist() == accepted
    assert verdict.next_token == bonus


def exact_two_token_distribution(logits, tree, **sampling):
    """P(first, second) of the committed tokens when sampling from the target along the tree."""
    probs = warp_logits(logits, **sampling).softmax(-1)
    node_of = {(0, int(tree.tokens[i])): i for i in range(1, len(tree)) if tree.parents[i] == 0}
    # second-level distribution: from the tree node of the first token if drafted, else from an "off-tree" row.
    # the off-tree row is the last row of `logits` in these tests
    out = {}
    for a in range(V):
        row = node_of.get((0, a), logits.shape[0] - 1)
        for b in range(V):
            out[(a, b)] = float(probs[0, a] * probs[row, b])
    return out


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9),
                                      dict(temperature=1.3, top_k=3)])
def test_sampling_rule_reproduces_the_target_distribution(sampling):
    torch.manual_seed(0)
    tree = example_tree()
    logits = torch.randn(len(tree) + 1, V) * 1.5
    generator = torch.Generator().manual_seed(1)
    counts = Counter()
    draws = 20000
    off_tree = logits.shape[0] - 1
    probs = warp_logits(logits, **sampling).softmax(-1)
    for _ in range(draws):
        verdict = verify(tree, logits[:-1], sampling, generator)
        emitted = tree.tokens[verdict.accepted_nodes].tolist() + [verdict.next_token]
        if len(emitted) == 1:  # first token rejected everywhere: the second would come from an off-tree step
            emitted.append(int(torch.multinomial(probs[off_tree], 1, generator=generator)))
        counts[tuple(emitted[:2])] += 1
    expected = exact_two_token_distribution(logits, tree, **sampling)
    statistic, critical, dof = chi_square(counts, expected)
    assert statistic < critical, f"chi2={statistic:.1f} >= {critical:.1f} (dof {dof})"


def test_chi_square_detects_a_biased_verifier():
    """The same check fails for a verifier that over-accepts drafts (accept with sqrt(p) instead of p)."""
    torch.manual_seed(0)
    tree = example_tree()
    logits = torch.randn(len(tree), V) * 1.5
    probs = logits.softmax(-1)
    generator = torch.Generator().manual_seed(1)
    counts = Counter()
    children = [1, 2]  # nodes under the root, tokens 1 and 2
    for _ in range(20000):
        p = probs[0].clone()
        token = None
        for child in children:
            tok = int(tree.tokens[child])
            if float(torch.rand((), generator=generator)) < float((p[tok] / p.sum()).sqrt()):
                token = tok
                break
            p[tok] = 0
        if token is None:
            token = int(torch.multinomial(p, 1, generator=generator))
        counts[token] += 1
    statistic, critical, _ = chi_square(counts, {v: float(probs[0, v]) for v in range(V)})
    assert statistic > critical


@pytest.mark.parametrize("token", range(V))
def test_one_hot_arithmetic_is_the_recursive_rule_with_a_delta_proposal(token):
    """A tree without proposals is walked in float32 on the unnormalised residual r: accept x iff u * sum(r) < r(x),
    zero r(x) on rejection. That is recursive rejection sampling with q = delta_x: acceptance min(1, r(x)/q(x)) and
    residual (r - q)^+ renormalised, on the normalised residual."""
    r = torch.rand(V, generator=torch.Generator().manual_seed(token))
    normalised = (r / r.sum()).double()
    delta = torch.zeros(V, dtype=torch.float64)
    delta[token] = 1.0
    assert acceptance_probability(normalised, delta, token) == pytest.approx(float(r[token] / r.sum()), rel=1e-6)
    zeroed = r.clone()
    zeroed[token] = 0.0
    torch.testing.assert_close(rejection_residual(normalised, delta), (zeroed / zeroed.sum()).double())


def test_sampling_is_reproducible_from_a_seed():
    tree = example_tree()
    logits = torch.randn(len(tree), V)

    def draws(seed):
        generator = torch.Generator().manual_seed(seed)
        return [verify(tree, logits, dict(temperature=1.0), generator).next_token for _ in range(50)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@pytest.mark.parametrize("temperature, top_p, top_k", [(0.7, 0.9, 0), (1.0, 1.0, 5), (1.5, 0.5, 20), (1.0, 1.0, 0)])
def test_warp_logits_matches_transformers_warpers(temperature, top_p, top_k):
    torch.manual_seed(3)
    logits = torch.randn(4, 50) * 3
    expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = warp_logits(logits, temperature, top_p, top_k)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    finite = ~torch.isinf(ours)
    assert torch.allclose(ours[finite], expected[finite])
