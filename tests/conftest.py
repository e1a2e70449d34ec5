"""Shared test setup: make the tiny-model helpers importable, keep CPU runs deterministic, shared fixtures."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="module")
def one_thread_per_module():
    """Tiny models run fastest on one thread, above all on a loaded machine (use with pytestmark)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """(target dir, draft dir): a tiny random Llama with a byte-level tokenizer and chat template, and a draft."""
    from tiny_models import tiny_draft, tiny_target
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # one token per byte
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=specials[0],
                                        additional_special_tokens=specials[1:])
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    target = tiny_target("llama", vocab_size=len(vocab))
    target.save_pretrained(root / "target")
    tokenizer.save_pretrained(root / "target")
    tiny_draft(target).save_pretrained(root / "draft")
    return root / "target", root / "draft"
