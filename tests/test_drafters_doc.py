"""docs/drafters.md does what it says: its Python blocks, run as they stand on a tiny target, give the target's own
greedy output (with draft tokens accepted) and a sampled run that ends."""

import re
from pathlib import Path

import pytest
import torch

from tiny_models import tiny_target

DOC = Path(__file__).resolve().parents[1] / "docs" / "drafters.md"

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_page_has_the_drafter_and_its_use():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 2 and "class BigramDrafter" in blocks[0] and "drafter=BigramDrafter" in blocks[1]
    assert len(blocks[0].splitlines()) <= 35, "the example drafter should stay about 30 lines"


def test_the_pages_code_runs_and_is_lossless(capsys):
    base_model = tiny_target("llama", vocab_size=16)  # a small random target loops: the bigram table pays off
    input_ids = torch.tensor([[3, 1, 4, 1, 5, 3, 1, 4]])
    namespace = {"base_model": base_model, "tokenizer": None, "input_ids": input_ids}
    for block in python_blocks(DOC.read_text()):
        exec(compile(block, str(DOC), "exec"), namespace)
    model = namespace["model"]
    assert torch.equal(namespace["greedy"], model.naivegenerate(input_ids, max_new_tokens=64))
    assert namespace["sampled"].shape == (1, input_ids.shape[1] + 64)
    assert "[" in capsys.readouterr().out  # the accepted lengths were printed
    model.eagenerate(input_ids, max_new_tokens=64)
    assert sum(model.last_stats.accept_lengths) > 16, "the bigram drafter was barely accepted"
    assert model.last_stats.target_forwards < 64
