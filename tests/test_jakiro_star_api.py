"""Jakiro* drafting, model API, config and evaluation entry point.

* the static-tree drafter: tree shape, draft forwards per round, cache cropping, proposals, and that every node's
  children are exactly what the draft proposes along that node's own chain (masks and positions are right);
* ``StarEaModel``: ``from_pretrained`` / ``eagenerate`` / ``ea_generate`` / ``naivegenerate``, input errors;
* config keys ``tree.static_tree`` and ``eval.method=jakiro_star``, and ``gen_ea_answer`` running Jakiro*.
"""

import pytest
import torch

from imitating_draft import imitating_draft, weak_context_target
from jakiro.common.config import ConfigError, load_config
from jakiro.evaluation import answers
from jakiro.evaluation.records import read_records
from jakiro.model.draft import DraftCache
from jakiro_star.drafter import StaticTreeDrafter
from jakiro_star.model import StarEaModel
from jakiro_star.proposals import expert_probabilities, top_children
from test_evaluation import QUESTIONS
from tiny_models import draft_state, tiny_draft, tiny_target

GREEDY = dict(temperature=0.0, top_p=1.0, top_k=0)
SAMPLING = dict(temperature=0.8, top_p=0.95, top_k=0)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def drafter_for(tree="mc_sim_7b_63", mode="mixture", vocab=64):
    target = weak_context_target("llama", vocab_size=vocab)
    draft = imitating_draft(target, expert_scale=2.0)  # experts that disagree, so the modes differ
    draft.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    return target, StaticTreeDrafter(draft.eval(), tree, mode)


def context(target, length=6):
    ids = torch.arange(3, 3 + length)[None]
    with torch.no_grad():
        features = target.get_decoder()(ids).last_hidden_state[0]
    return features, torch.cat([ids[0, 1:], torch.tensor([42])])


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLING], ids=["greedy", "sampling"])
@pytest.mark.parametrize("mode", ["mixture", "per_expert"])
def test_drafted_tree_has_the_static_shape(sampling, mode):
    target, drafter = drafter_for(mode=mode)
    static = drafter.tree
    forwards = []
    drafter.draft.register_forward_hook(lambda module, args, out: forwards.append(args[1].shape[1]))
    tree = drafter.propose(draft_state(*context(target), sampling, torch.Generator().manual_seed(0)))
    assert len(tree) == 27 and torch.equal(tree.parents, static.parents) and torch.equal(tree.depths, static.depths)
    assert tree.tokens[0] == 42
    # context pass (6 positions), then one forward per depth 1..5 over the nodes that have children
    assert forwards == [6, 4, 5, 2, 2, 1]
    assert len(drafter.cache) == 6  # tree entries were cropped
    for node in range(len(tree)):  # siblings are distinct
        kids = tree.tokens[tree.parents == node].tolist()
        assert len(set(kids)) == len(kids)
    if sampling is GREEDY:
        assert tree.proposals is None
    else:
        assert tree.proposals.shape == (27, 64) and tree.proposals[0].abs().sum() == 0
        torch.testing.assert_close(tree.proposals[1:].sum(-1), torch.ones(26))
        assert (tree.proposals[torch.arange(1, 27), tree.tokens[1:].cpu()] > 0).all()


def test_greedy_children_follow_each_nodes_own_chain():
    """Drafting node by node along a path with a plain causal draft gives the same children as the tree drafter."""
    target, drafter = drafter_for(tree="cpu16", mode="per_expert")
    features, tokens = context(target)
    tree = drafter.propose(draft_state(features, tokens, GREEDY))
    draft, static = drafter.draft, drafter.tree
    for node in range(len(static)):
        if static.num_children[node] == 0:
            continue
        path = [node]
        while path[-1] != 0:
            path.append(int(static.parents[path[-1]]))
        path = path[::-1]  # root ... node
        cache = DraftCache()
        with torch.no_grad():
            out = draft(features[None], tokens[None], torch.arange(len(tokens))[None], cache=cache, with_experts=True)
            for depth, step in enumerate(path[1:], start=1):
                head1 = out.head1[:, -1:]
                position = torch.tensor([[len(tokens) + depth - 1]])
                out = draft(head1, tree.tokens[step].view(1, 1), position, cache=cache, with_experts=True)
        probs = expert_probabilities(draft.logits(out.expert_features[0, -1:]), GREEDY)
        expected = top_children(probs, out.expert_weights[0, -1:], int(static.num_children[node]), "per_expert")
        assert tree.tokens[static.parents == node].tolist() == expected[0].tolist(), f"node {node}"


def test_sibling_modes_propose_differently():
    target, mixture = drafter_for(mode="mixture")
    _, per_expert = drafter_for(mode="per_expert")
    features, tokens = context(target)
    a = mixture.propose(draft_state(features, tokens, GREEDY))
    b = per_expert.propose(draft_state(features, tokens, GREEDY))
    assert not torch.equal(a.tokens, b.tokens)


def test_sampled_drafts_are_reproducible_from_the_generator():
    target, drafter = drafter_for()
    features, tokens = context(target)
    trees = [drafter.propose(draft_state(features, tokens, SAMPLING, torch.Generator().manual_seed(seed)))
             for seed in (1, 1, 2)]
    assert torch.equal(trees[0].tokens, trees[1].tokens)
    assert not torch.equal(trees[0].tokens, trees[2].tokens)


def test_drafter_errors():
    target = tiny_target("llama", vocab_size=3)
    draft = tiny_draft(target, parallel_head=False)
    with pytest.raises(ValueError, match="more than the draft vocabulary size 3"):
        StaticTreeDrafter(draft, "mc_sim_7b_63")
    with pytest.raises(ValueError, match="more than the draft vocabulary size 3"):  # a 64-token target, 3 drafted
        StaticTreeDrafter(tiny_draft(tiny_target("llama", vocab_size=64), parallel_head=False, draft_vocab_size=3),
                          "mc_sim_7b_63")
    with pytest.raises(ValueError, match="sibling_mode must be one of"):
        StaticTreeDrafter(draft, "cpu8", "joint")
    with pytest.raises(ValueError, match="unknown static tree"):
        StaticTreeDrafter(draft, "mc_sim_7b_26")


# -- StarEaModel --------------------------------------------------------------------------------------------------


def test_from_pretrained_and_generate_api(tmp_path):
    target = weak_context_target("llama", vocab_size=32)
    target.save_pretrained(tmp_path / "target")
    imitating_draft(target).save_pretrained(tmp_path / "draft")
    with pytest.raises(ValueError, match="pass static_tree"):
        StarEaModel.from_pretrained(str(tmp_path / "target"), str(tmp_path / "draft"), total_token=60)
    with pytest.raises(ValueError, match="sibling_mode must be one of"):
        StarEaModel.from_pretrained(str(tmp_path / "target"), str(tmp_path / "draft"), sibling_mode="joint")

    model = StarEaModel(target, imitating_draft(target), None, "cpu12", stop_token_ids=[])
    assert model.drafter.total_token == 13 and isinstance(model.drafter, StaticTreeDrafter)
    prompt = torch.tensor([[1, 2, 3]])
    expected = target.generate(prompt, do_sample=False, max_new_tokens=20, min_new_tokens=20)
    ids, new_tokens, forwards = model.eagenerate(prompt, max_new_tokens=20, log=True)
    assert torch.equal(ids, expected) and new_tokens == 20 and forwards < 20
    stream = list(model.ea_generate(prompt, max_new_tokens=20))
    assert torch.equal(stream[-1], expected) and len(stream) == forwards
    assert torch.equal(model.naivegenerate(prompt, max_new_tokens=20), expected)
    sampled = model.eagenerate(prompt, temperature=1.0, top_p=0.9, max_new_tokens=20, seed=3)
    assert torch.equal(sampled, model.eagenerate(prompt, temperature=1.0, top_p=0.9, max_new_tokens=20, seed=3))
    with pytest.raises(ValueError, match="batch size must be 1"):
        model.eagenerate(prompt.repeat(2, 1))


def test_from_pretrained_loads_saved_directories(tmp_path):
    target = tiny_target("llama", vocab_size=32)
    target.save_pretrained(tmp_path / "target")
    tiny_draft(target, parallel_head=False).save_pretrained(tmp_path / "draft")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(32)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0"))).save_pretrained(
        tmp_path / "target")
    model = StarEaModel.from_pretrained(str(tmp_path / "target"), str(tmp_path / "draft"), static_tree="cpu8",
                                        sibling_mode="per_expert", torch_dtype=torch.float32)
    assert model.drafter.tree.name == "cpu8" and model.drafter.proposal == "per_expert"
    prompt = torch.tensor([[4, 5, 6]])
    expected = model.base_model.generate(prompt, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    assert torch.equal(model.eagenerate(prompt, max_new_tokens=12), expected)


# -- config and evaluation ----------------------------------------------------------------------------------------


def test_config_keys():
    cfg = load_config("jakiro_star_smollm2")
    assert cfg.eval.method == "jakiro_star" and cfg.tree.static_tree == "cpu8" and cfg.tree.lookup_tokens == 10
    assert (cfg.draft.num_experts, cfg.draft.experts_per_token, cfg.draft.parallel_head) == (2, 2, False)
    assert load_config(None, ["tree.static_tree=cpu16"]).tree.static_tree == "cpu16"
    with pytest.raises(ConfigError, match=r"tree\.static_tree: expected one of 'mc_sim_7b_63'.*got 'mc_sim'"):
        load_config(None, ["tree.static_tree=mc_sim"])


def test_gen_ea_answer_runs_jakiro_star(tiny_dirs, tmp_path):
    target, draft = tiny_dirs
    base = ["--base-model-path", str(target), "--ea-model-path", str(draft), "--set", "model.dtype=float32",
            "--question-file", str(QUESTIONS), "--warmup", "0", "--max-new-tokens", "8", "--no-progress"]
    assert answers.main([*base, "--answer-file", str(tmp_path / "star.jsonl"), "--method", "jakiro_star",
                         "--static-tree", "cpu8", "--set", "tree.sibling_mode=per_expert"]) == 0
    assert answers.main([*base, "--answer-file", str(tmp_path / "plain.jsonl"), "--method", "baseline"]) == 0
    star = [record for _, record in read_records(tmp_path / "star.jsonl")]
    plain = [record for _, record in read_records(tmp_path / "plain.jsonl")]
    for record in star:
        assert record["meta"]["method"] == "jakiro_star"
        assert record["meta"]["tree"] == {"static_tree": "cpu8", "total_token": 9, "depth": 4,
                                          "sibling_mode": "per_expert", "lookup_tokens": 0}
        choice = record["choices"][0]
        assert all(forwards == 1 + len(acc) for forwards, acc in zip(choice["idxs"], choice["accept_lengths"]))
    # greedy decoding is lossless, turn 2 included
    assert [r["choices"][0]["turns"] for r in star] == [r["choices"][0]["turns"] for r in plain]
