"""Jakiro* proposals and recursive rejection sampling, against exact enumeration on a tiny vocabulary.

The exact distribution of the token leaving a node is computed by enumerating every sequence of sibling draws
(with its probability) and, for each, the verifier's acceptance chances and residuals — built from the library's
own ``acceptance_probability`` / ``rejection_residual``. It must equal the target distribution to 1e-9 with the
true proposals, and must differ with the reference Jakiro*'s wrong ones. The sampler itself
(``draw_children`` + :func:`jakiro.decoding.verify.verify`) is then checked against the target with a chi-square
test.
"""

import itertools
from collections import Counter

import pytest
import torch

from jakiro.decoding.tree import DraftTree, graft_chain
from jakiro.decoding.verify import acceptance_probability, rejection_residual, verify, warp_logits
from jakiro_star.proposals import check_mode, draw_children, expert_probabilities, slot_distributions, top_children
from jakiro_star.trees import get_static_tree
from stats import chi_square
from tiny_models import tiny_draft, tiny_target

V, E, C = 5, 2, 3  # vocabulary, routed experts, children of the node


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


SAMPLINGS = [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9), dict(temperature=1.0, top_p=0.3)]


def node_setup(seed, sampling):
    """Target distribution [V], per-expert draft distributions [1, E, V] and routing weights [1, E] of one node."""
    generator = torch.Generator().manual_seed(seed)
    target = warp_logits(torch.randn(V, generator=generator) * 1.5, **sampling).double().softmax(-1)
    expert_logits = torch.randn(1, E, V, generator=generator) * 1.5
    probs = warp_logits(expert_logits, **sampling).double().softmax(-1)  # = expert_probabilities, in float64
    weights = torch.rand(1, E, generator=generator, dtype=torch.float64).softmax(-1)
    return target, probs, weights


def enumerate_draws(slot_dists, slot=0, tokens=(), proposals=()):
    """Every outcome of drawing the slots [C, V] in order without replacement (a slot with no mass left is skipped,
    as in ``draw_children``). Yields (tokens, the true conditional proposal of each, probability)."""
    if slot == slot_dists.shape[0]:
        yield list(tokens), list(proposals), 1.0
        return
    remaining = slot_dists[slot].clone()
    remaining[list(tokens)] = 0
    mass = float(remaining.sum())
    if mass <= 0:
        yield from enumerate_draws(slot_dists, slot + 1, tokens, proposals)
        return
    q = remaining / mass
    for x in (q > 0).nonzero().flatten().tolist():
        for rest, rest_q, prob in enumerate_draws(slot_dists, slot + 1, tokens + (x,), proposals + (q,)):
            yield rest, rest_q, float(q[x]) * prob


def emission_given_draws(target, tokens, accept_qs, residual_qs):
    """Exact distribution [V] of the token leaving the node for fixed sibling draws, with the library's rule."""
    out = torch.zeros(V, dtype=torch.float64)
    reach, residual = 1.0, target
    for token, accept_q, residual_q in zip(tokens, accept_qs, residual_qs):
        chance = acceptance_probability(residual, accept_q, token)
        out[token] += reach * chance
        reach *= 1 - chance
        residual = rejection_residual(residual, residual_q)
    return out + reach * residual


def exact_emission(target, slot_dists):
    out = torch.zeros(V, dtype=torch.float64)
    for tokens, proposals, prob in enumerate_draws(slot_dists):
        out += prob * emission_given_draws(target, tokens, proposals, proposals)
    return out


# -- the rule is exact -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mixture", "per_expert"])
@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("seed", range(4))
def test_exact_emission_equals_the_target(mode, sampling, seed):
    target, probs, weights = node_setup(seed, sampling)
    slot_dists = slot_distributions(probs, weights, C, mode)[0]
    total = sum(prob for *_, prob in enumerate_draws(slot_dists))
    assert total == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(exact_emission(target, slot_dists), target, atol=1e-9, rtol=0)


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("fixed", range(V))
def test_exact_emission_with_a_fixed_candidate_after_the_sampled_ones(sampling, fixed):
    """A prompt-lookup token tried after the drawn siblings (only where it is not one of them) is a draw from
    delta_fixed: the emission still equals the target, whichever token the lookup fixed."""
    target, probs, weights = node_setup(1, sampling)
    slot_dists = slot_distributions(probs, weights, C, "mixture")[0]
    one_hot = torch.zeros(V, dtype=torch.float64)
    one_hot[fixed] = 1.0
    out = torch.zeros(V, dtype=torch.float64)
    for tokens, proposals, prob in enumerate_draws(slot_dists):
        if fixed not in tokens:
            tokens, proposals = tokens + [fixed], proposals + [one_hot]
        out += prob * emission_given_draws(target, tokens, proposals, proposals)
    torch.testing.assert_close(out, target, atol=1e-9, rtol=0)


def test_grafted_chain_gets_one_hot_proposals_and_keeps_the_drawn_ones():
    proposals = torch.rand(3, V).softmax(-1)  # root (unused), two drawn children 2 and 4
    tree = DraftTree.from_parents(torch.tensor([0, 2, 4]), torch.tensor([-1, 0, 0]), proposals)
    grafted = graft_chain(tree, torch.tensor([4, 1, 3]))  # merges into node 2, then appends 1 and 3
    assert grafted.tokens.tolist() == [0, 2, 4, 1, 3] and grafted.parents.tolist() == [-1, 0, 0, 2, 3]
    torch.testing.assert_close(grafted.proposals[:3], proposals)
    assert grafted.proposals[3:].tolist() == torch.eye(V)[[1, 3]].tolist()
    assert graft_chain(tree, torch.tensor([2])) is tree  # nothing new
    tree.proposals = None  # a deterministic tree stays one
    assert graft_chain(tree, torch.tensor([1])).proposals is None


def test_enumeration_covers_exhausted_slots():
    """top_p = 0.3 leaves some draft distributions with fewer than C tokens: later slots go undrawn."""
    _, probs, weights = node_setup(0, dict(temperature=1.0, top_p=0.3))
    slot_dists = slot_distributions(probs, weights, C, "per_expert")[0]
    lengths = {len(tokens) for tokens, *_ in enumerate_draws(slot_dists)}
    assert min(lengths) < C


# -- wrong proposals are caught ----------------------------------------------------------------------------------


def reference_emission(target, probs, accept="joint_low", residual="near_uniform"):
    """The reference Jakiro*'s node (section 2.2 of the reference notes), enumerated exactly: C candidates drawn
    without replacement from the joint softmax over both experts' 2V logits (taken as log p_e); acceptance with
    q_i = P_joint(lower expert, x_i) / (1 - sum_{j<i} P_joint(lower expert, x_j)) ("joint_low") or with the true
    conditional ("true"); on rejection subtract softmax(mean_e p_e), a near-uniform vector, with the tried
    siblings removed ("near_uniform") or the true conditional ("true")."""
    joint = probs[0].log().reshape(-1).softmax(-1)  # [E * V]: P(e, v)
    lower_share = joint.view(E, V)[1]
    near_uniform = probs[0].mean(0).softmax(-1)
    token_of = torch.arange(E * V) % V
    out = torch.zeros(V, dtype=torch.float64)
    for seq in itertools.permutations(range(E * V), C):
        prob, left = 1.0, 1.0  # probability of drawing these joint indices in this order
        for index in seq:
            prob *= float(joint[index]) / left
            left -= float(joint[index])
        tokens = [index % V for index in seq]
        accept_qs, residual_qs = [], []
        for i, token in enumerate(tokens):
            remaining = joint.clone()
            remaining[list(seq[:i])] = 0
            true_q = torch.zeros(V, dtype=torch.float64).index_add_(0, token_of, remaining)
            true_q /= true_q.sum()
            if accept == "joint_low":
                q = torch.ones(V, dtype=torch.float64)  # only q[token] is read
                q[token] = min(1.0, float(lower_share[token]) / (1 - float(lower_share[tokens[:i]].sum())))
                accept_qs.append(q)
            else:
                accept_qs.append(true_q)
            if residual == "near_uniform":
                r = near_uniform.clone()
                r[tokens[:i]] = 0
                residual_qs.append(r / r.sum())
            else:
                residual_qs.append(true_q)
        out += prob * emission_given_draws(target, tokens, accept_qs, residual_qs)
    return out


@pytest.mark.parametrize("accept, residual", [("joint_low", "near_uniform"), ("joint_low", "true"),
                                              ("true", "near_uniform")])
def test_reference_proposals_are_not_lossless(accept, residual):
    target, probs, _ = node_setup(1, dict(temperature=1.0))
    emitted = reference_emission(target, probs, accept, residual)
    assert float(emitted.sum()) == pytest.approx(1.0, abs=1e-9)
    assert float((emitted - target).abs().sum()) / 2 > 0.02  # total variation distance


def test_unconditional_proposal_for_draws_without_replacement_is_not_lossless():
    """Recording the slot distribution itself instead of the conditional given the earlier siblings."""
    target, probs, weights = node_setup(1, dict(temperature=1.0))  # (for some nodes the error happens to vanish)
    slot_dists = slot_distributions(probs, weights, C, "mixture")[0]
    out = torch.zeros(V, dtype=torch.float64)
    for tokens, _, prob in enumerate_draws(slot_dists):
        unconditional = [slot_dists[j] for j in range(len(tokens))]
        out += prob * emission_given_draws(target, tokens, unconditional, unconditional)
    assert float((out - target).abs().sum()) / 2 > 0.02


def test_reference_emulation_is_exact_when_given_true_proposals():
    """Sanity check of the emulation above: with the true conditionals the reference's draws are lossless too."""
    target, probs, _ = node_setup(1, dict(temperature=1.0))
    torch.testing.assert_close(reference_emission(target, probs, "true", "true"), target, atol=1e-9, rtol=0)


# -- the sampler -------------------------------------------------------------------------------------------------


def one_level_tree(draws):
    """Root with the drawn children (leaves) as a DraftTree with proposals (row 0 is the root's)."""
    present = draws.present[0]
    tokens = torch.cat([torch.tensor([0]), draws.tokens[0][present]])
    children = int(present.sum())
    tree = get_static_tree([[rank] for rank in range(children)]).to_draft_tree(tokens[0], tokens[1:])
    tree.proposals = torch.cat([torch.zeros(1, V), draws.proposals[0][present]])
    return tree


@pytest.mark.parametrize("mode, sampling", [("mixture", dict(temperature=1.0)),
                                            ("per_expert", dict(temperature=0.7, top_p=0.9))])
def test_sampler_matches_the_target(mode, sampling):
    target_logits = torch.randn(V, generator=torch.Generator().manual_seed(5)) * 1.5
    target = warp_logits(target_logits, **sampling).softmax(-1)
    _, probs, weights = node_setup(5, sampling)
    slot_dists = slot_distributions(probs.float(), weights.float(), C, mode)
    generator = torch.Generator().manual_seed(0)
    counts, accepted = Counter(), 0
    for _ in range(6000):
        tree = one_level_tree(draw_children(slot_dists, torch.tensor([C]), generator))
        logits = target_logits.expand(len(tree), V)  # the children's rows only matter for the bonus token
        verdict = verify(tree, logits, sampling, generator)
        first = int(tree.tokens[verdict.accepted_nodes[0]]) if len(verdict.accepted_nodes) else verdict.next_token
        counts[first] += 1
        accepted += len(verdict.accepted_nodes)
    assert accepted > 1000
    statistic, critical, dof = chi_square(counts, {v: float(target[v]) for v in range(V)})
    assert statistic < critical, f"chi2={statistic:.1f} >= {critical:.1f} (dof {dof})"


def test_verifier_input_errors():
    tree = get_static_tree([[0]]).to_draft_tree(0, torch.tensor([3]))
    logits = torch.zeros(2, V)
    sampling = dict(temperature=1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        verify(DraftTree.from_parents(tree.tokens, tree.parents, torch.zeros(2, V + 1)), logits, sampling)
    no_mass = torch.zeros(2, V)
    no_mass[1, 0] = 1.0  # token 3 has proposal probability 0
    with pytest.raises(ValueError, match="cannot have been drawn"):
        verify(DraftTree.from_parents(tree.tokens, tree.parents, no_mass), logits, sampling)


# -- proposals ---------------------------------------------------------------------------------------------------


def test_slot_distributions():
    _, probs, weights = node_setup(3, dict(temperature=1.0))
    mixture = slot_distributions(probs, weights, 4, "mixture")
    expected = weights[0, 0] * probs[0, 0] + weights[0, 1] * probs[0, 1]
    for slot in range(4):
        torch.testing.assert_close(mixture[0, slot], expected)
    per_expert = slot_distributions(probs, weights, 4, "per_expert")
    for slot in range(4):
        assert torch.equal(per_expert[0, slot], probs[0, slot % E])  # round robin, strongest expert first
    with pytest.raises(ValueError, match="sibling_mode must be one of"):
        slot_distributions(probs, weights, 4, "joint")
    with pytest.raises(ValueError, match="per_expert"):
        check_mode("experts")


def test_draw_children_records_the_exact_conditional():
    generator = torch.Generator().manual_seed(0)
    slot_dists = torch.rand(3, 4, 7, generator=generator).softmax(-1)
    slot_dists[2, :, 2:] = 0  # parent 2's slots only have tokens 0 and 1
    slot_dists[2] /= slot_dists[2].sum(-1, keepdim=True)
    counts = torch.tensor([4, 2, 4])
    for _ in range(20):
        draws = draw_children(slot_dists, counts, generator)
        assert draws.present[0].all() and draws.present[1].tolist() == [True, True, False, False]
        assert draws.present[2].tolist() == [True, True, False, False]  # no mass left after two draws
        for parent in range(3):
            drawn = []
            for slot in range(4):
                if not draws.present[parent, slot]:
                    assert draws.proposals[parent, slot].abs().sum() == 0 and draws.tokens[parent, slot] == 0
                    continue
                expected = slot_dists[parent, slot].clone()
                expected[drawn] = 0
                torch.testing.assert_close(draws.proposals[parent, slot], expected / expected.sum())
                token = int(draws.tokens[parent, slot])
                assert token not in drawn and draws.proposals[parent, slot, token] > 0
                drawn.append(token)


def test_expert_probabilities_use_the_targets_warping():
    logits = torch.randn(2, E, 11, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(expert_probabilities(logits, dict(temperature=0.0)), logits.softmax(-1))
    sampling = dict(temperature=0.7, top_p=0.8, top_k=5)
    torch.testing.assert_close(expert_probabilities(logits, sampling), warp_logits(logits, **sampling).softmax(-1))


def test_top_children_are_distinct_and_ranked():
    probs = torch.tensor([[[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.6, 0.1]]])  # [1, E, 4]
    weights = torch.tensor([[0.7, 0.3]])
    # mixture: 0.38, 0.27, 0.25, 0.10
    assert top_children(probs, weights, 3, "mixture").tolist() == [[0, 1, 2]]
    # per expert: rank 1 of expert 0 (token 0), of expert 1 (token 2), then rank 2 of expert 0 (token 1)
    assert top_children(probs, weights, 3, "per_expert").tolist() == [[0, 2, 1]]


def test_expert_weights_mix_the_expert_features_into_head1():
    target = tiny_target("llama", vocab_size=32)
    draft = tiny_draft(target, parallel_head=False)
    draft.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    features = torch.randn(1, 5, target.config.hidden_size)
    with torch.no_grad():
        out = draft(features, torch.arange(5)[None], torch.arange(5)[None], with_experts=True)
    assert out.expert_weights.shape == (1, 5, 2)
    torch.testing.assert_close(out.expert_weights.sum(-1), torch.ones(1, 5))
    mixed = (out.expert_weights[..., None] * out.expert_features).sum(2)  # x + sum_e w_e E_e(u), sum w = 1
    torch.testing.assert_close(mixed, out.head1, atol=1e-5, rtol=0)
