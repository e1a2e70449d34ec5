"""Jakiro* sampling is lossless end to end: the joint distribution of the first three generated tokens over many
seeded ``StarEaModel.eagenerate`` runs matches the target's exact distribution (chi-square, alpha = 1e-3; see
tests/stats.py), at T = 1 and at T = 0.7 / top-p 0.9, for both sibling modes, and with a reduced draft vocabulary
(children drawn over the draft's token subset, proposals scattered back to the target's), and with a prompt-lookup
branch verified as fixed candidates beside the drawn ones. The same test rejects the
reference Jakiro*'s verifier input: children drawn from the joint softmax over both experts' logits and checked
against the lower-gated expert's share of it.
"""

from collections import Counter

import pytest
import torch

from imitating_draft import imitating_draft, weak_context_target
from jakiro.decoding import loop
from jakiro.decoding.verify import warp_logits
from jakiro_star.drafter import StaticTreeDrafter
from jakiro_star.model import StarEaModel
from stats import chi_square
from test_lossless import exact_three_token_distribution
from tiny_models import draft_state, tiny_draft

PROMPT = torch.tensor([[1, 5, 2]])
RUNS = 3000


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def target():
    """A vocabulary-8 target whose sequences have sizable probabilities, and a draft it often agrees with."""
    model = weak_context_target("llama", vocab_size=8, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.25)  # soften the sharpened test target
    return model


def sample_counts(model, sampling):
    """Counts of the first three generated tokens over RUNS seeds, and the draft tokens accepted in total."""
    counts, accepted = Counter(), 0
    for seed in range(RUNS):
        ids = model.eagenerate(PROMPT, max_new_tokens=3, seed=seed, **sampling)
        counts[tuple(ids[0, PROMPT.shape[1]:].tolist())] += 1
        accepted += sum(model.last_stats.accept_lengths)
    return counts, accepted


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9)],
                         ids=["T1", "T0.7-top_p0.9"])
@pytest.mark.parametrize("sibling_mode", ["mixture", "per_expert"])
def test_sampling_matches_target_distribution(target, sampling, sibling_mode):
    model = StarEaModel(target, imitating_draft(target), None, "cpu8", sibling_mode, stop_token_ids=[])
    counts, accepted = sample_counts(model, sampling)
    assert accepted > RUNS // 2, f"only {accepted} accepted drafts: tree verification is barely exercised"
    statistic, critical, dof = chi_square(counts, exact_three_token_distribution(model, PROMPT, sampling))
    assert statistic < critical, f"chi2={statistic:.1f} >= {critical:.1f} (dof {dof})"


@pytest.mark.parametrize("sibling_mode", ["mixture", "per_expert"])
def test_reduced_draft_vocabulary_stays_lossless(target, sibling_mode):
    """6 of the 8 tokens: two can never be proposed, yet the output must still follow the target exactly."""
    sampling = dict(temperature=1.0)
    draft = imitating_draft(target, draft_vocab_size=6)
    model = StarEaModel(target, draft, None, "cpu8", sibling_mode, stop_token_ids=[])
    tree = model.drafter.propose(draft_state(torch.randn(3, target.config.hidden_size), PROMPT[0], sampling,
                                             torch.Generator().manual_seed(0)))
    outside = torch.ones(target.config.vocab_size, dtype=torch.bool)
    outside[draft.d2t] = False
    assert tree.proposals.shape[1] == target.config.vocab_size and tree.proposals[:, outside].sum() == 0
    assert set(tree.tokens[1:].tolist()) <= set(draft.d2t.tolist())
    counts, accepted = sample_counts(model, sampling)
    assert accepted > RUNS // 3, f"only {accepted} accepted drafts: tree verification is barely exercised"
    statistic, critical, dof = chi_square(counts, exact_three_token_distribution(model, PROMPT, sampling))
    assert statistic < critical, f"chi2={statistic:.1f} >= {critical:.1f} (dof {dof})"


def test_sampling_with_the_lookup_branch_matches_target_distribution(monkeypatch):
    """One drawn child per step (static tree [[0]], untrained draft), so the looked-up branch competes as fixed
    candidates after the drawn child, against the residual its rejection leaves; the prompt makes the lookup propose
    the target's likely continuation. Counts the steps that accepted a grafted node."""
    sampling = dict(temperature=1.0)
    target = weak_context_target("llama", vocab_size=8, seed=1)  # sharper than the fixture's: the branch wins often
    model = StarEaModel(target, tiny_draft(target, seed=1), None, [[0]], stop_token_ids=[], lookup_tokens=3)
    likely = model.naivegenerate(PROMPT, max_new_tokens=3)[0, PROMPT.shape[1]:].tolist()
    prompt = torch.tensor([[*PROMPT[0].tolist(), *likely, *PROMPT[0].tolist()]])
    drafted_sizes, grafted_wins = [], 0
    propose, verify = model.drafter.propose, loop.verify

    def recording_propose(state):  # the static drafter's tree, before prompt lookup grafts its branch
        tree = propose(state)
        drafted_sizes.append(len(tree))
        return tree

    def counting_verify(tree, logits, sampling, generator):
        nonlocal grafted_wins
        verdict = verify(tree, logits, sampling, generator)
        grafted_wins += bool((verdict.accepted_nodes >= drafted_sizes[-1]).any())  # grafted nodes come last
        return verdict

    model.drafter.propose = recording_propose
    monkeypatch.setattr(loop, "verify", counting_verify)
    counts = Counter()
    for seed in range(RUNS):
        ids = model.eagenerate(prompt, max_new_tokens=3, seed=seed, **sampling)
        counts[tuple(ids[0, prompt.shape[1]:].tolist())] += 1
    assert grafted_wins > RUNS // 6, f"only {grafted_wins} steps accepted a looked-up token"
    statistic, critical, dof = chi_square(counts, exact_three_token_distribution(model, prompt, sampling))
    assert statistic < critical, f"chi2={statistic:.1f} >= {critical:.1f} (dof {dof})"


def reference_draw_level(self, level, parent_out, node_tokens, present, proposals, sampling, generator):
    """The reference Jakiro*'s ``sample_moe`` in place of :meth:`StaticTreeDrafter._draw_level`: children are drawn
    without replacement from the joint softmax over both experts' concatenated (warped) logits, and the proposal
    handed to the verifier is the lower-gated expert's share of that joint softmax, whichever expert drew."""
    logits = warp_logits(self.draft.logits(parent_out.expert_features[0]), **sampling)  # [m, 2, V]
    m, experts, vocab = logits.shape
    joint = logits.reshape(m, experts * vocab).softmax(-1).cpu()
    drawn = torch.multinomial(joint, level.slots, replacement=False, generator=generator) % vocab  # [m, C]
    lower_share = joint.view(m, experts, vocab)[:, -1]
    node_tokens[level.nodes] = drawn[level.parent_row, level.slot]
    proposals[level.nodes] = lower_share[level.parent_row]


def test_chi_square_rejects_the_reference_proposal(target, monkeypatch):
    """With q(x) about half an expert's probability, p/q >= 1 almost always: nearly every draft token is accepted
    and the output follows the draft's joint distribution instead of the target's. The bias is as large as the
    draft is wrong, so this uses an untrained draft (an imitating one hides it at this sample size)."""
    sampling = dict(temperature=1.0)
    monkeypatch.setattr(StaticTreeDrafter, "_draw_level", reference_draw_level)
    model = StarEaModel(target, tiny_draft(target, parallel_head=False), None, "cpu8", "mixture",
                        stop_token_ids=[])
    counts, accepted = sample_counts(model, sampling)
    assert accepted > RUNS // 2
    statistic, critical, dof = chi_square(counts, exact_three_token_distribution(model, PROMPT, sampling))
    assert statistic > critical, f"chi2={statistic:.1f} <= {critical:.1f} (dof {dof}): the bias went unnoticed"
