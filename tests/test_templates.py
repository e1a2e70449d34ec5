"""Tests of jakiro.common.chat_templates: ShareGPT validation, the assistant loss mask per template on real tokenizers.

Tokenizers: SmolLM2's ChatML (embedded asset), Qwen2.5-Coder's ChatML (only if already in the asset cache), and
tokenizers built here offline: a Llama-2 / Vicuna-style one (Metaspace BPE, ``<s>``/``</s>``, BOS added by its
post-processor) and a Llama-3-style one (byte-level BPE with the Llama-3 header tokens). The mask check decodes
every run of masked tokens and requires it to be exactly one assistant reply followed by its end-of-turn token.
"""

from importlib.metadata import version

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from jakiro.common import assets
from jakiro.common.chat_templates import (
    LLAMA2_SYSTEM_PROMPT,
    TEMPLATE_NAMES,
    SkipConversation,
    TemplateError,
    encode,
    get_template,
    to_messages,
)

CONVERSATIONS = [
    [{"from": "human", "value": "Hi there! Who are you?"},
     {"from": "gpt", "value": "I am a helpful assistant.\nAsk me anything."}],
    [{"from": "human", "value": "  Name two colours.  "},
     {"from": "gpt", "value": " Red and blue. "},
     {"from": "human", "value": "Café, naïve — “unicode” too?"},
     {"from": "gpt", "value": "Yes: café, naïve, “quotes” and\n\ttabs work."},
     {"from": "human", "value": "Thanks"}],
]
LLAMA2_JINJA = (  # a Llama-2-chat-like tokenizer template: BOS written by the template, contents stripped
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'].strip() + "
    "' [/INST]' }}{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _corpus():
    texts = [t["value"] for conv in CONVERSATIONS for t in conv]
    return texts + ["[INST] <<SYS>> [/INST] USER: ASSISTANT: A chat between a curious user and an artificial "
                    "intelligence assistant. The assistant gives helpful, detailed, and polite answers to the "
                    "user's questions. system user assistant You are a helpful tester.\n\n", LLAMA2_SYSTEM_PROMPT]


def _train(tokenizer: Tokenizer, specials: list[str], alphabet: list[str]) -> Tokenizer:
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(_corpus() * 3, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def llama2_tokenizer():
    """A Llama-2 / Vicuna-style fast tokenizer: Metaspace BPE, BOS <s> added by the post-processor, EOS </s>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    _train(tok, ["<unk>", "<s>", "</s>"], sorted(set("".join(_corpus()))))
    bos = ("<s>", tok.token_to_id("<s>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def llama3_tokenizer():
    """A Llama-3-style fast tokenizer: byte-level BPE with the Llama-3 header and end-of-turn special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    _train(tok, LLAMA3_SPECIALS, pre_tokenizers.ByteLevel.alphabet())
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return AutoTokenizer.from_pretrained(assets.ensure_smollm2(progress=False))


def _masked_runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    edges = torch.diff(torch.cat([torch.zeros(1), mask.float(), torch.zeros(1)]))
    return list(zip(torch.nonzero(edges == 1).flatten().tolist(), torch.nonzero(edges == -1).flatten().tolist()))


def check_mask(tokenizer, template, end_token: str) -> None:
    """Every masked run decodes to exactly one assistant reply + ``end_token`` (so no header, system or user token
    is masked), one run per reply."""
    for conversation in CONVERSATIONS:
        messages = to_messages({"conversations": conversation})
        ids, mask = encode(template, tokenizer, messages, max_len=10_000)
        assert ids.dtype == torch.int64 and mask.dtype == torch.uint8 and ids.shape == mask.shape
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        runs = _masked_runs(mask)
        assert len(runs) == len(replies)
        for (a, b), reply in zip(runs, replies):
            text = tokenizer.decode(ids[a:b])
            assert text.endswith(end_token) and text[: -len(end_token)].strip() == reply.strip(), text
            assert ids[b - 1] == tokenizer.convert_tokens_to_ids(end_token)
        # truncation keeps a prefix of the same tokens and mask
        short_ids, short_mask = encode(template, tokenizer, messages, max_len=runs[0][0] + 2)
        assert torch.equal(short_ids, ids[: len(short_ids)]) and torch.equal(short_mask, mask[: len(short_mask)])
        assert len(short_ids) == runs[0][0] + 2


def test_smollm2_chatml(smollm2_tokenizer):
    template = get_template("auto", smollm2_tokenizer)
    check_mask(smollm2_tokenizer, template, "<|im_end|>")
    messages = to_messages({"conversations": CONVERSATIONS[1]})
    ids, _ = encode(template, smollm2_tokenizer, messages, max_len=10_000)
    direct = smollm2_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids.tolist() == list(direct)  # the same tokens as the chat template gives


def test_smollm2_system_prompt(smollm2_tokenizer):
    template = get_template("auto", smollm2_tokenizer, system_prompt="You are a helpful tester.")
    assert template.render([{"role": "user", "content": "x"}], True).startswith(
        "<|im_start|>system\nYou are a helpful tester.<|im_end|>\n")
    check_mask(smollm2_tokenizer, template, "<|im_end|>")


def test_qwen2_chatml():
    path = assets.cache_dir() / "models" / f"{assets.QWEN_CODER['name']}-transformers-{version('transformers')}"
    if not (path / ".complete").exists():
        pytest.skip("Qwen2.5-Coder is not in the asset cache (python -m jakiro.common.assets --with-qwen)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_mask(tokenizer, get_template("auto", tokenizer), "<|im_end|>")


def test_vicuna(llama2_tokenizer):
    template = get_template("vicuna", llama2_tokenizer)
    check_mask(llama2_tokenizer, template, "</s>")
    text = template.render(to_messages({"conversations": CONVERSATIONS[0]}), False)
    assert text.startswith("A chat between a curious user") and " USER: Hi there! Who are you? ASSISTANT: I am" in text
    ids, _ = encode(template, llama2_tokenizer, to_messages({"conversations": CONVERSATIONS[0]}), 100)
    assert ids[0] == llama2_tokenizer.bos_token_id  # the tokenizer adds BOS, as the reference's tokenizer call did


def test_llama2(llama2_tokenizer):
    default = get_template("llama-2", llama2_tokenizer)  # the reference's Llama-2 safety system prompt
    assert default.render([], False) == f"[INST] <<SYS>>\n{LLAMA2_SYSTEM_PROMPT}\n<</SYS>>\n\n"
    check_mask(llama2_tokenizer, default, "</s>")
    template = get_template("llama-2", llama2_tokenizer, system_prompt="You are a helpful tester.")
    check_mask(llama2_tokenizer, template, "</s>")
    text = template.render(to_messages({"conversations": CONVERSATIONS[1]}), False)
    assert text.startswith("[INST] <<SYS>>\nYou are a helpful tester.\n<</SYS>>\n\n")
    assert "[/INST]  Red and blue.  </s><s>[INST] Café" in text


def test_llama2_tokenizer_chat_template(llama2_tokenizer):
    llama2_tokenizer.chat_template = LLAMA2_JINJA
    try:
        template = get_template("auto", llama2_tokenizer)
        check_mask(llama2_tokenizer, template, "</s>")
        ids, _ = encode(template, llama2_tokenizer, to_messages({"conversations": CONVERSATIONS[0]}), 100)
        assert ids[0] == llama2_tokenizer.bos_token_id and ids[1] != llama2_tokenizer.bos_token_id  # one BOS
    finally:
        llama2_tokenizer.chat_template = None


def test_llama3(llama3_tokenizer):
    template = get_template("llama-3", llama3_tokenizer, system_prompt="You are a helpful tester.")
    check_mask(llama3_tokenizer, template, "<|eot_id|>")
    assert template.render([{"role": "user", "content": " Hi "}], True) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful tester.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    default = get_template("llama-3", llama3_tokenizer).render([], False)
    assert default == f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{LLAMA2_SYSTEM_PROMPT}<|eot_id|>"


def test_template_errors(llama2_tokenizer, smollm2_tokenizer):
    with pytest.raises(TemplateError, match="unknown chat template 'chatml'.*auto, vicuna, llama-2, llama-3"):
        get_template("chatml", smollm2_tokenizer)
    with pytest.raises(TemplateError, match="no chat template"):
        get_template("auto", llama2_tokenizer)
    messages = to_messages({"conversations": CONVERSATIONS[0]})
    with pytest.raises(TemplateError, match="no special end-of-turn token.*match the tokenizer"):
        encode(get_template("vicuna", smollm2_tokenizer), smollm2_tokenizer, messages, 100)  # </s> is not special
    llama2_tokenizer.chat_template = (  # marks the last message: rendering turn by turn changes earlier text
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}")
    try:
        with pytest.raises(TemplateError, match="does not render turn by turn"):
            encode(get_template("auto", llama2_tokenizer), llama2_tokenizer, messages, 100)
    finally:
        llama2_tokenizer.chat_template = None
    assert TEMPLATE_NAMES == ("auto", "vicuna", "llama-2", "llama-3")


def _turns(*roles):
    return [{"from": r, "value": f"text {i}"} for i, r in enumerate(roles)]


@pytest.mark.parametrize("record, reason", [
    ({"conversations": []}, "empty"),
    ({"conversations": _turns("gpt")}, "empty"),  # the leading assistant turn is dropped
    ({"id": "x"}, "malformed"),
    ("not a dict", "malformed"),
    ({"conversations": [{"from": "human"}]}, "malformed"),
    ({"conversations": [{"from": "human", "value": 3}]}, "malformed"),
    ({"conversations": _turns("human", "bing")}, "bad_role"),
    ({"conversations": _turns("system", "human", "gpt")}, "bad_role"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": " \n"}]}, "empty_turn"),
    ({"conversations": _turns("human", "human", "gpt")}, "not_alternating"),
    ({"conversations": _turns("human", "gpt", "gpt")}, "not_alternating"),
    ({"conversations": _turns("human")}, "no_assistant"),
])
def test_to_messages_skips(record, reason):
    with pytest.raises(SkipConversation) as err:
        to_messages(record)
    assert err.value.reason == reason


def test_to_messages_roles():
    messages = to_messages({"conversations": _turns("gpt", "human", "gpt", "user", "assistant", "human")})
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2 + ["user"]
    assert messages[0]["content"] == "text 1"


def test_no_assistant_within_max_len(smollm2_tokenizer):
    messages = to_messages({"conversations": [{"from": "human", "value": "word " * 50},
                                              {"from": "gpt", "value": "ok"}]})
    with pytest.raises(SkipConversation, match="no_assistant_within_max_len"):
        encode(get_template("auto", smollm2_tokenizer), smollm2_tokenizer, messages, max_len=20)
