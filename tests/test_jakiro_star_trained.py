"""A Jakiro* draft trained by jakiro's own trainer (2 experts, top-2, no parallel head) decodes losslessly with
``StarEaModel`` and is accepted far more often than an untrained one.

Training data and trainer setup come from tests/test_train.py (sequences sampled from the tiny target itself).
"""

import pytest
import torch

from jakiro.model.draft import DraftHead
from jakiro_star.model import StarEaModel
from test_train import VOCAB, make_trainer, one_thread, reset_accelerate, sampled_items
from tiny_models import tiny_target


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(target, trained draft, held-out sequences): 8 epochs of 12 steps of 8 sequences at lr 3e-3."""
    out = tmp_path_factory.mktemp("star-trained")
    with one_thread():
        target = tiny_target("llama", VOCAB, seed=0)
        data = {"target": target, "train": sampled_items(target, 96, 40, seed=0),
                "test": sampled_items(target, 24, 40, seed=1)}
        trainer = make_trainer(data, out, ["train.num_epochs=8", "train.warmup_steps=5", "train.lr=3e-3",
                                           "train.batch_size=8", "train.save_every=8", "train.checkpoint_steps=0"],
                               num_experts=2, experts_per_token=2, parallel_head=False)
        export = trainer.train()
    reset_accelerate()
    return target, DraftHead.from_pretrained(export), data["test"]


@pytest.mark.parametrize("sibling_mode", ["mixture", "per_expert"])
def test_trained_draft_is_lossless_and_accepted(trained, sibling_mode):
    target, draft, held_out = trained
    assert not draft.config.parallel_head and draft.config.num_local_experts == 2
    accepted = {}
    with one_thread():
        for name, candidate in (("trained", draft), ("untrained", DraftHead(draft.config))):
            model = StarEaModel(target, candidate, None, "cpu12", sibling_mode, stop_token_ids=[])
            lengths = []
            for item in held_out[:4]:
                prompt = item["input_ids"][None, :6]
                expected = target.generate(prompt, do_sample=False, max_new_tokens=24, min_new_tokens=24)
                assert torch.equal(model.eagenerate(prompt, max_new_tokens=24), expected)
                lengths += model.last_stats.accept_lengths
            accepted[name] = sum(lengths) / len(lengths)
    assert accepted["trained"] > accepted["untrained"] + 0.5, accepted
