"""End-to-end losslessness of EaModel on tiny random targets of several families.

Greedy: eagenerate must equal ``generate(do_sample=False)`` token for token (fp32) for untrained drafts, across
families, tree shapes, sibling modes and with/without the CEPD parallel head.
Sampling: the joint distribution of the first three generated tokens over many seeded runs must match the target's
exact distribution (chi-square goodness of fit, alpha = 1e-3; see tests/stats.py).
"""

import itertools
from collections import Counter

import pytest
import torch

from jakiro.decoding.verify import warp_logits
from stats import chi_square
from tiny_models import tiny_ea_model

TREE_SHAPES = [
    dict(total_token=2, depth=1, top_k=1),
    dict(total_token=6, depth=2, top_k=2),
    dict(total_token=12, depth=3, top_k=3),
    dict(total_token=30, depth=5, top_k=4),
]


def assert_greedy_equal(model, prompts, max_new_tokens):
    accepted = 0
    for prompt in prompts:
        expected = model.base_model.generate(
            prompt, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens
        )
        ids, new_tokens, forwards = model.eagenerate(prompt, max_new_tokens=max_new_tokens, log=True)
        assert torch.equal(ids, expected), f"diverged for prompt {prompt.tolist()}"
        assert new_tokens == max_new_tokens
        assert forwards == 1 + len(model.last_stats.accept_lengths)  # prefill + one verification per step
        accepted += sum(model.last_stats.accept_lengths)
    return accepted


def prompts_for(vocab, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, 3 + 2 * i), generator=generator) for i in range(count)]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "mixtral"])
@pytest.mark.parametrize("sibling_mode", ["mixture", "per_expert"])
@pytest.mark.parametrize("parallel_head", [True, False])
def test_greedy_equals_target_across_families(family, sibling_mode, parallel_head):
    accepted = 0
    for shape in TREE_SHAPES:
        model = tiny_ea_model(family, vocab_size=16, sibling_mode=sibling_mode, parallel_head=parallel_head, **shape)
        accepted += assert_greedy_equal(model, prompts_for(16, 3), max_new_tokens=40)
    assert accepted > 0, "no draft token was ever accepted: the acceptance paths went untested"


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "mixtral"])
def test_greedy_with_exact_verification_across_families(family):
    accepted = 0
    for shape in TREE_SHAPES:
        model = tiny_ea_model(family, vocab_size=16, exact_verification=True, **shape)
        accepted += assert_greedy_equal(model, prompts_for(16, 3), max_new_tokens=40)
    assert accepted > 0, "no draft token was ever accepted: the acceptance paths went untested"


@pytest.mark.parametrize("family, attention", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"),
                                               ("mixtral", "sdpa")])
def test_exact_verification_computes_the_batched_function(family, attention):
    """Per-node attention and the masked batched forward are the same function (equal up to float rounding), so
    the sampling-verification guarantees carry over to exact verification unchanged."""
    from jakiro.target import TargetModel
    from jakiro.decoding.tree import DraftTree

    model = tiny_ea_model(family, vocab_size=64)
    model.base_model.config._attn_implementation = attention
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 3, 3, 6])
    tree = DraftTree.from_parents(torch.randint(0, 64, (9,), generator=torch.Generator().manual_seed(0)), parents)
    prompt = prompts_for(64, 1)[0]
    results = []
    for exact in (False, True):
        target = TargetModel(model.base_model, exact_verification=exact)
        target.prefill(prompt)
        results.append(target.verify(tree))
        assert len(target) == prompt.shape[1] + 9
    (batched_logits, batched_features), (exact_logits, exact_features) = results
    assert torch.allclose(exact_features, batched_features, atol=1e-5)
    assert torch.allclose(exact_logits, batched_logits, atol=1e-4)
    assert model.base_model.config._attn_implementation == attention  # restored after each exact verification


def test_exact_verification_refuses_sliding_window_targets():
    from tiny_models import tiny_target

    from jakiro.target import TargetModel

    with pytest.raises(ValueError, match="sliding-window attention"):
        TargetModel(tiny_target("mistral", sliding_window=4), exact_verification=True)


def test_greedy_eagle2_draft_single_expert():
    model = tiny_ea_model("llama", vocab_size=16, num_experts=1, experts_per_token=1, parallel_head=False,
                          total_token=12, depth=3, top_k=3)
    assert_greedy_equal(model, prompts_for(16, 4), max_new_tokens=40)


def test_greedy_four_experts_top2_large_vocab():
    model = tiny_ea_model("qwen2", vocab_size=256, num_experts=4, experts_per_token=2, sibling_mode="per_expert",
                          total_token=16, depth=4, top_k=4)
    assert_greedy_equal(model, prompts_for(256, 4), max_new_tokens=32)


@pytest.mark.parametrize("sibling_mode", ["mixture", "per_expert"])
def test_greedy_reduced_draft_vocabulary(sibling_mode):
    """A draft scoring only 12 of 32 tokens proposes only those; the output is still the target's."""
    accepted = 0
    for shape in TREE_SHAPES[1:]:
        model = tiny_ea_model("llama", vocab_size=32, sibling_mode=sibling_mode, draft_vocab_size=12, **shape)
        accepted += assert_greedy_equal(model, prompts_for(32, 3), max_new_tokens=40)
    assert accepted > 0


def exact_three_token_distribution(model, prompt, sampling):
    """P(x1, x2, x3) under the target's processed sampling distribution, computed by brute force."""
    target = model.base_model
    vocab = target.config.vocab_size
    with torch.no_grad():
        p1 = warp_logits(target(prompt).logits[0, -1], **sampling).softmax(-1)
        seconds = torch.cat([prompt.repeat(vocab, 1), torch.arange(vocab)[:, None]], dim=1)
        p2 = warp_logits(target(seconds).logits[:, -1], **sampling).softmax(-1)  # [V, V]
        pairs = torch.tensor(list(itertools.product(range(vocab), repeat=2)))
        thirds = torch.cat([prompt.repeat(len(pairs), 1), pairs], dim=1)
        p3 = warp_logits(target(thirds).logits[:, -1], **sampling).softmax(-1).view(vocab, vocab, vocab)
    joint = p1[:, None, None] * p2[:, :, None] * p3
    return {tuple(idx): float(joint[idx]) for idx in itertools.product(range(vocab), repeat=3)}


@pytest.mark.parametrize(
    "sampling, sibling_mode, draft_vocab_size",
    [(dict(temperature=1.0), "mixture", None), (dict(temperature=0.7, top_p=0.9), "per_expert", None),
     (dict(temperature=1.0), "per_expert", 5)],
)
def test_sampling_matches_target_distribution(sampling, sibling_mode, draft_vocab_size):
    model = tiny_ea_model("llama", vocab_size=8, total_token=8, depth=2, top_k=3, sibling_mode=sibling_mode, seed=3,
                          draft_vocab_size=draft_vocab_size)
    # soften the sharpened test target so that many sequences have sizable probability
    with torch.no_grad():
        model.base_model.lm_head.weight.mul_(0.25)
    prompt = torch.tensor([[1, 5, 2]])
    counts = Counter()
    accepted = 0
    for seed in range(3000):
        ids = model.eagenerate(prompt, max_new_tokens=3, seed=seed, **sampling)
        counts[tuple(ids[0, 3:].tolist())] += 1
        accepted += sum(model.last_stats.accept_lengths)
    assert accepted > 500, "too few accepted drafts to exercise tree verification"
    expected = exact_three_token_distribution(model, prompt, sampling)
    statistic, critical, dof = chi_square(counts, expected)
    assert statistic < critical, f"chi2={statistic:.1f} >= {critical:.1f} (dof {dof})"


def test_sampling_reproducible_with_seed_and_global_rng():
    model = tiny_ea_model("llama", vocab_size=16)
    prompt = torch.tensor([[1, 2, 3]])
    a = model.eagenerate(prompt, temperature=1.0, max_new_tokens=20, seed=11)
    b = model.eagenerate(prompt, temperature=1.0, max_new_tokens=20, seed=11)
    assert torch.equal(a, b)
    torch.manual_seed(5)
    c = model.eagenerate(prompt, temperature=1.0, max_new_tokens=20)
    torch.manual_seed(5)
    d = model.eagenerate(prompt, temperature=1.0, max_new_tokens=20)
    assert torch.equal(c, d)


def test_greedy_draft_with_an_input_norm_from_the_target():
    """A draft made by ``draft.init_from_target`` (an input norm; the target's last layer copied in): drafting runs
    it like any other draft, it gets tokens accepted and the output stays the target's."""
    from jakiro.model.draft import DraftHead, DraftHeadConfig
    from jakiro.model.ea_model import EaModel
    from jakiro.model.target_init import init_from_target_layer, last_decoder_layer
    from tiny_models import tiny_target

    target = tiny_target("llama", 16, 0)
    torch.manual_seed(1)
    draft = DraftHead(DraftHeadConfig.for_target(target.config, input_norm=True, expert_intermediate_size=128))
    index, layer = last_decoder_layer(target)
    assert "layers.0.input_layernorm.weight" in init_from_target_layer(draft, layer.state_dict(), index).copied
    model = EaModel(target, draft, None, 12, 3, 3, "mixture", stop_token_ids=[])
    assert assert_greedy_equal(model, prompts_for(16, 3), max_new_tokens=40) > 0
