"""EaModel public API: argument validation, loading from directories, stopping and length caps, plain decoding,
streaming, seeded sampling, automatic tree size (``total_token=-1``) and draft placement.

All on tiny random fp32 targets (tests/tiny_models.py) with untrained drafts; generation is lossless with any
draft, so greedy results are compared with the target's own ``generate``.
"""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import jakiro
import jakiro.target.costs as costs_module
from jakiro.model.ea_model import EaModel
from jakiro.target.costs import TREE_SIZE_CANDIDATES, measure_verification_costs, pick_tree_size
from jakiro.target import TargetModel
from tiny_models import tiny_draft, tiny_ea_model, tiny_target

VOCAB = 16
PROMPT = torch.tensor([[3, 1, 4, 1, 5]])


# -- helpers ------------------------------------------------------------------------------------------------------
def word_level_tokenizer(vocab_size, special: dict[int, str] | None = None, eos: str | None = None):
    """A fast tokenizer over tokens ``t0..t{V-1}``; ``special`` renames some ids (e.g. {7: "<|im_end|>"})."""
    names = {i: f"t{i}" for i in range(vocab_size)}
    names.update(special or {})
    tokenizer = Tokenizer(models.WordLevel({name: i for i, name in names.items()}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = {"eos_token": eos} if eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", **kwargs)


def greedy_reference(target, prompt, n):
    return target.generate(prompt, do_sample=False, max_new_tokens=n, min_new_tokens=n)


@pytest.fixture(scope="module")
def model():
    return tiny_ea_model("llama", vocab_size=VOCAB, total_token=12, depth=3, top_k=3)


# -- validation ---------------------------------------------------------------------------------------------------
def test_draft_with_other_hidden_size_is_rejected():
    target = tiny_target(vocab_size=VOCAB)
    other = tiny_target(vocab_size=VOCAB, hidden_size=32, intermediate_size=64)
    with pytest.raises(ValueError, match="hidden size 32 != target hidden size 64"):
        EaModel(target, tiny_draft(other))


def test_draft_with_other_vocabulary_is_rejected():
    target = tiny_target(vocab_size=VOCAB)
    other = tiny_target(vocab_size=2 * VOCAB)
    with pytest.raises(ValueError, match="vocabulary 32 != target vocabulary 16"):
        EaModel(target, tiny_draft(other))


BAD_GENERATION_ARGS = [
    pytest.param(dict(input_ids=torch.tensor([[1, 2, 3], [4, 5, 6]])), "batch size", id="batch2"),
    pytest.param(dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "prompt is empty", id="empty"),
    pytest.param(dict(input_ids=torch.tensor([1, 2, 3])), r"\[batch, length\]", id="1d"),
    pytest.param(dict(max_new_tokens=0), "max_new_tokens", id="max_new_tokens0"),
    pytest.param(dict(temperature=-0.1), "temperature", id="temperature"),
    pytest.param(dict(top_p=0), "top_p", id="top_p0"),
    pytest.param(dict(top_p=1.5), "top_p", id="top_p1.5"),
    pytest.param(dict(top_k=-1), "top_k", id="top_k"),
    pytest.param(dict(max_length=5), "max_length=5", id="prompt_eq_max_length"),
    pytest.param(dict(max_length=3), "max_length=3", id="prompt_gt_max_length"),
]


@pytest.mark.parametrize("method", ["eagenerate", "naivegenerate", "ea_generate", "naive_generate"])
@pytest.mark.parametrize("kwargs, match", BAD_GENERATION_ARGS)
def test_bad_generation_arguments_raise_before_any_work(model, monkeypatch, method, kwargs, match):
    calls = []
    monkeypatch.setattr(model.target, "_features", lambda *a, **k: calls.append("target"))
    monkeypatch.setattr(model.drafter, "propose", lambda *a, **k: calls.append("draft"))
    kwargs = {"input_ids": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=match):
        getattr(model, method)(**kwargs)  # streaming methods must raise at the call, not on next()
    assert calls == []


def test_valid_edge_arguments_are_accepted(model):
    ids = model.eagenerate(PROMPT, max_length=6, top_p=1.0, top_k=0)
    assert ids.shape == (1, 6)


# -- loading ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ea_model")
    target = tiny_target(vocab_size=VOCAB)
    target.save_pretrained(root / "target")
    word_level_tokenizer(VOCAB, {VOCAB - 1: "<eos>"}, eos="<eos>").save_pretrained(root / "target")
    draft = tiny_draft(target)
    draft.save_pretrained(root / "draft")
    return root, target, draft


def test_from_pretrained_directories(saved_dirs):
    root, target, draft = saved_dirs
    model = EaModel.from_pretrained(base_model_path=str(root / "target"), ea_model_path=str(root / "draft"),
                                    total_token=8, depth=3, top_k=2, torch_dtype=torch.float32)
    assert isinstance(model, EaModel)
    assert model.base_model.dtype == torch.float32
    assert (model.drafter.total_token, model.drafter.depth, model.drafter.top_k) == (8, 3, 2)
    assert model.get_tokenizer().eos_token == "<eos>"
    assert model.stop_token_ids == [VOCAB - 1]
    for name, tensor in draft.state_dict().items():
        assert torch.equal(model.ea_layer.state_dict()[name], tensor)
    ids = model.eagenerate(PROMPT, max_new_tokens=20)
    expected = greedy_reference(target, PROMPT, 20)[0].tolist()
    if VOCAB - 1 in expected[PROMPT.shape[1]:]:
        expected = expected[: expected.index(VOCAB - 1, PROMPT.shape[1]) + 1]
    assert ids[0].tolist() == expected


def test_package_level_import_is_the_same_class():
    from jakiro import EaModel as top_level
    from jakiro.model.ea_model import EaModel as deep

    assert top_level is deep is jakiro.EaModel


# -- stopping and length caps -------------------------------------------------------------------------------------
TREE = dict(total_token=30, depth=5, top_k=4)


@pytest.fixture(scope="module")
def stop_case():
    """A target, a draft, its free-running greedy continuation, and an index ``i`` whose token is new there and is
    accepted inside a multi-token verification chunk (so stopping on it must cut that chunk after it)."""
    target = tiny_target(vocab_size=VOCAB, seed=1)
    draft = tiny_draft(target)
    free = EaModel(target, draft, None, **TREE, stop_token_ids=[])
    steps = list(free.ea_generate(PROMPT, max_new_tokens=20))
    generated = steps[-1][0, PROMPT.shape[1]:].tolist()
    assert generated == greedy_reference(target, PROMPT, 20)[0, PROMPT.shape[1]:].tolist()
    lengths = [s.shape[1] - PROMPT.shape[1] for s in steps]
    inside = [i for a, b in zip(lengths, lengths[1:]) for i in range(a, b - 1)]  # not the chunk's last token
    index = next((i for i in inside if generated[i] not in generated[:i]), None)
    assert index is not None, "no fresh token inside a multi-token chunk: pick another seed or prompt"
    return target, draft, generated, index


def test_chat_stop_token_in_tokenizer_vocab_stops_generation(stop_case):
    target, draft, generated, index = stop_case
    stop = generated[index]
    tokenizer = word_level_tokenizer(VOCAB, {stop: "<|im_end|>"})
    model = EaModel(target, draft, tokenizer, **TREE)
    assert model.stop_token_ids == [stop]
    expected = PROMPT[0].tolist() + generated[: index + 1]
    for method in (model.eagenerate, model.naivegenerate):
        ids, new_tokens, _ = method(PROMPT, max_new_tokens=20, log=True)
        assert ids[0].tolist() == expected, method.__name__
        assert new_tokens == index + 1


def test_explicit_stop_token_ids_are_honoured(stop_case):
    target, draft, generated, index = stop_case
    model = EaModel(target, draft, None, **TREE, stop_token_ids=[generated[index], VOCAB + 5])
    expected = PROMPT[0].tolist() + generated[: index + 1]
    assert model.eagenerate(PROMPT, max_new_tokens=20)[0].tolist() == expected
    assert model.naivegenerate(PROMPT, max_new_tokens=20)[0].tolist() == expected
    assert list(model.ea_generate(PROMPT, max_new_tokens=20))[-1][0].tolist() == expected


@pytest.mark.parametrize("method", ["eagenerate", "naivegenerate"])
@pytest.mark.parametrize("max_new_tokens, max_length, total", [(100, 12, 12), (9, 2048, 14), (9, 11, 11), (1, 50, 6)])
def test_length_caps(model, method, max_new_tokens, max_length, total):
    ids, new_tokens, _ = getattr(model, method)(PROMPT, max_new_tokens=max_new_tokens, max_length=max_length,
                                                log=True)
    assert ids.shape == (1, total)
    assert new_tokens == total - PROMPT.shape[1]
    assert torch.equal(ids, greedy_reference(model.base_model, PROMPT, new_tokens))


# -- plain decoding, streaming, sampling --------------------------------------------------------------------------
def test_naivegenerate_greedy_equals_generate_with_one_forward_per_token(model):
    for prompt in (PROMPT, torch.tensor([[7]]), torch.tensor([[2, 9, 9, 2, 0, 15, 11]])):
        ids, new_tokens, forwards = model.naivegenerate(prompt, max_new_tokens=17, log=True)
        assert torch.equal(ids, greedy_reference(model.base_model, prompt, 17))
        assert (new_tokens, forwards) == (17, 17)


def test_streaming_yields_growing_prefixes_ending_at_eagenerate_result(model):
    steps = list(model.ea_generate(PROMPT, max_new_tokens=25))
    lengths = [s.shape[1] for s in steps]
    assert lengths[0] == PROMPT.shape[1] + 1  # the prefill's token comes first
    assert all(a < b for a, b in zip(lengths, lengths[1:]))
    for shorter, longer in zip(steps, steps[1:]):
        assert torch.equal(longer[:, : shorter.shape[1]], shorter)
    assert torch.equal(steps[-1], model.eagenerate(PROMPT, max_new_tokens=25))
    naive_steps = list(model.naive_generate(PROMPT, max_new_tokens=5))
    assert [s.shape[1] for s in naive_steps] == [6, 7, 8, 9, 10]


@pytest.mark.parametrize("method", ["eagenerate", "naivegenerate"])
def test_seeded_sampling_is_reproducible(model, method):
    generate = getattr(model, method)
    sample = dict(temperature=1.5, top_p=0.95, top_k=8, max_new_tokens=10)
    first = generate(PROMPT, seed=1234, **sample)
    assert torch.equal(generate(PROMPT, seed=1234, **sample), first)
    outputs = {tuple(generate(PROMPT, seed=s, **sample)[0].tolist()) for s in range(3)}
    assert len(outputs) > 1, "the seed has no effect"
    torch.manual_seed(99)
    unseeded = generate(PROMPT, **sample)
    torch.manual_seed(99)
    assert torch.equal(generate(PROMPT, **sample), unseeded)  # seed=None draws from torch's global RNG


# -- tree size ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "costs, slack, choice",
    [
        ({8: 1.0, 16: 1.1, 24: 1.2, 32: 1.3, 48: 1.5, 64: 2.0}, 1.3, 32),  # boundary is inclusive
        ({8: 1.0, 16: 1.0, 24: 1.0, 32: 1.0, 48: 1.0, 64: 1.0}, 1.3, 64),  # flat: largest
        ({8: 1.0, 16: 2.0, 24: 3.0}, 1.3, 8),  # steep: smallest
        ({8: 1.0, 16: 1.5, 24: 1.2}, 1.3, 24),  # noisy: largest within slack, not the first knee
        ({8: 2.0, 16: 1.0, 64: 2.5}, 1.3, 64),  # relative to the smallest size, not the cheapest
        ({8: 1.0, 16: 1.9, 24: 2.1}, 2.0, 16),  # slack parameter
        ({32: 0.5}, 1.3, 32),
    ],
)
def test_pick_tree_size(costs, slack, choice):
    assert pick_tree_size(costs, slack) == choice


def test_auto_tree_size_uses_measured_costs(monkeypatch):
    calls = []

    def fake_costs(target, sizes, *args, **kwargs):
        calls.append((target, tuple(sizes)))
        return {8: 1.0, 16: 1.05, 24: 1.2, 32: 1.31, 48: 2.0, 64: 3.0}

    monkeypatch.setattr(costs_module, "measure_verification_costs", fake_costs)
    target = tiny_target(vocab_size=VOCAB)
    model = EaModel(target, tiny_draft(target), total_token=-1, depth=3, top_k=3, stop_token_ids=[])
    assert model.drafter.total_token == 24
    assert len(calls) == 1 and calls[0][1] == TREE_SIZE_CANDIDATES
    assert calls[0][0].model is target
    assert torch.equal(model.eagenerate(PROMPT, max_new_tokens=8), greedy_reference(target, PROMPT, 8))


def test_auto_tree_size_with_real_measurement_picks_a_candidate():
    target = tiny_target(vocab_size=VOCAB)
    model = EaModel(target, tiny_draft(target), total_token=-1, depth=3, top_k=3, stop_token_ids=[])
    assert model.drafter.total_token in TREE_SIZE_CANDIDATES
    assert model.target.cache is None


def test_measure_verification_costs():
    target = TargetModel(tiny_target(vocab_size=VOCAB))
    costs = measure_verification_costs(target, (2, 4), context_len=8, repeats=1)
    assert set(costs) == {2, 4}
    assert all(isinstance(c, float) and c > 0 for c in costs.values())
    assert target.cache is None


def test_set_tree_changes_the_tree_of_later_generations_and_stays_lossless():
    model = tiny_ea_model("llama", vocab_size=VOCAB, total_token=12, depth=3, top_k=3)
    trees = []
    model.set_tree(5, 2, 2)
    assert (model.drafter.total_token, model.drafter.depth, model.drafter.top_k) == (5, 2, 2)
    propose = model.drafter.propose

    def recording_propose(state):
        trees.append(propose(state))
        return trees[-1]

    model.drafter.propose = recording_propose
    assert torch.equal(model.eagenerate(PROMPT, max_new_tokens=12), greedy_reference(model.base_model, PROMPT, 12))
    assert trees and all(t.tokens.numel() == 5 and int(t.depths.max()) <= 3 for t in trees)


@pytest.mark.parametrize("shape", [(1, 3, 3), (12, 0, 3), (12, 3, 0), (12, 3, VOCAB + 1)])
def test_set_tree_rejects_bad_shapes_and_keeps_the_current_tree(model, shape):
    before = model.drafter
    with pytest.raises(ValueError):
        model.set_tree(*shape)
    assert model.drafter is before


def test_set_tree_auto_size_measures_the_target(monkeypatch):
    monkeypatch.setattr(costs_module, "measure_verification_costs", lambda target, sizes, *a, **k: {8: 1.0, 16: 1.2})
    model = tiny_ea_model("llama", vocab_size=VOCAB, total_token=12, depth=3, top_k=3)
    model.set_tree(-1, 2, 4)
    assert (model.drafter.total_token, model.drafter.depth, model.drafter.top_k) == (16, 2, 4)


# -- draft placement ----------------------------------------------------------------------------------------------
def test_draft_is_cast_to_target_dtype():
    target = tiny_target(vocab_size=VOCAB).to(torch.bfloat16)
    draft = tiny_draft(target)
    assert draft.fc.weight.dtype == torch.float32
    model = EaModel(target, draft, total_token=8, depth=2, top_k=2, stop_token_ids=[])
    assert {p.dtype for p in model.ea_layer.parameters()} == {torch.bfloat16}
    assert model.eagenerate(PROMPT, max_new_tokens=4).shape == (1, 9)


def test_draft_goes_to_the_device_of_the_last_decoder_layer():
    # "meta" stands in for a second device: only the last decoder layer lives there
    target = tiny_target(vocab_size=VOCAB)
    target.model.layers[-1].to("meta")
    model = EaModel(target, tiny_draft(target), total_token=8, depth=2, top_k=2, stop_token_ids=[])
    assert {p.device.type for p in model.ea_layer.parameters()} == {"meta"}
    assert target.get_input_embeddings().weight.device.type == "cpu"
    assert target.get_output_embeddings().weight.device.type == "cpu"
