"""Shared test setup: make the tiny-model helpers importable, keep CPU runs deterministic, shared fixtures."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def fresh_accelerate():
    """accelerate's process-wide state reset before and after a test (trainers read and set it)."""
    from tiny_models import reset_accelerate

    reset_accelerate()
    yield
    reset_accelerate()


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


# The slow tier: `pytest -m "not slow"` leaves these out (the README's test command and CI run everything). Each
# entry is a node-id prefix and what makes it slow; durations from a 2-core CPU. What stays in the fast tier: greedy
# equality on every tiny target family, one end-to-end chi-square test per verifier (the dynamic tree's, Jakiro*'s),
# the verifiers' exact-enumeration tests, the config and every bad-input test.
SLOW = {
    "test_smollm2.py::": "the real SmolLM2-135M, 128-token generations (~4.5 min)",
    "test_train_smollm2.py::": "features + 2 training epochs on SmolLM2 (~2 min)",
    "test_webui_browser.py::": "headless Chromium driving the web UI",
    "test_assets.py::test_smollm2_answers_paris": "a SmolLM2 generation",
    "test_demo.py::test_demo_prints_identical_texts_and_its_settings": "the demo end to end (~20 s)",
    "test_lossless.py::test_sampling_matches_target_distribution[sampling1": "second chi-square of the dynamic tree",
    "test_lossless.py::test_sampling_matches_target_distribution[sampling2": "third chi-square of the dynamic tree",
    "test_lossless.py::test_greedy_equals_target_across_families[False-": "greedy without CEPD: the CEPD case stays",
    "test_lossless.py::test_greedy_equals_target_across_families[True-per_expert-": "per-expert: mixture stays",
    "test_jakiro_star_lossless.py::test_sampling_matches_target_distribution[per_expert": "second Jakiro* chi-square",
    "test_jakiro_star_lossless.py::test_sampling_matches_target_distribution[mixture-T0.7": "third Jakiro* chi-square",
    "test_jakiro_star_lossless.py::test_reduced_draft_vocabulary_stays_lossless": "chi-square, 3,000 runs (~37 s)",
    "test_jakiro_star_lossless.py::test_sampling_with_the_lookup_branch": "chi-square, 3,000 runs (~22 s)",
    "test_jakiro_star_lossless.py::test_chi_square_rejects_the_reference_proposal": "chi-square, 3,000 runs (~33 s)",
    "test_lookup.py::test_sampling_with_lookup_matches_target_distribution": "chi-square with the lookup branch",
    "test_oracle.py::test_oracle_sampling_matches_target_distribution": "chi-square of the oracle (~16 s)",
    "test_ge_data.py::test_two_processes_with_accelerate": "two processes through accelerate (~36 s)",
    "test_train.py::test_deepspeed_zero3_resume_matches_an_uninterrupted_run": "DeepSpeed ZeRO-3 (~30 s)",
    "test_train.py::test_two_processes_match_one": "two gloo / DeepSpeed processes (~11 s each)",
    "test_evaluation.py::test_eval_script_smoke_run": "the bash evaluation script end to end",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: left out of the fast tier, pytest -m 'not slow' (see SLOW in conftest)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        node = item.nodeid.split("tests/", 1)[-1]
        if any(node.startswith(prefix) for prefix in SLOW):
            item.add_marker(pytest.mark.slow)
