"""A few-minute draft training run on real SmolLM2-135M-Instruct features of recovered ShareGPT conversations.

The project's own pipeline end to end: ``jakiro.ge_data`` writes features of 160 conversations (max 256 tokens),
``jakiro.train`` trains a Jakiro draft (2 experts + CEPD, an 8k-token draft vocabulary) for 2 epochs on 90 % of
them, and the held-out 10 % is scored before and after. The exported draft then speculates for the real target:
greedy output identical to plain decoding, with more accepted draft tokens than an untrained draft.
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jakiro.common.assets import ensure_sharegpt, ensure_smollm2
from jakiro.common.config import load_config
from jakiro.ge_data.generate import generate_features
from jakiro.model.draft import DraftHead
from jakiro.model.ea_model import EaModel
from jakiro.train.main import build_trainer
from jakiro.train.trainer import METRICS
from tiny_models import reset_accelerate

PROMPTS = ["Give me three tips for staying healthy.", "How do I reverse a list in Python?"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2_train")
    features = root / "features"
    data_cfg = load_config("ge_data_smollm2", [f"data.input_path={ensure_sharegpt(progress=False)}",
                                               f"data.output_dir={features}", "data.end=160", "data.max_len=256",
                                               "data.shard_size=80"])
    manifest = generate_features(data_cfg, progress=False)
    reset_accelerate()
    cfg = load_config("train_smollm2", [
        f"train.data_dir={features}", f"train.output_dir={root / 'train'}", "draft.vocab_size=8192",
        "train.lr=1e-3", "train.warmup_steps=10", "train.num_epochs=2", "train.batch_size=4",
        "train.test_fraction=0.1", "train.save_every=2", "train.checkpoint_steps=0",
        "train.unroll_steps=1",  # the plain step: the thresholds below were measured with it
    ])
    trainer = build_trainer(cfg)
    before = trainer.evaluate()
    export = trainer.train()
    after = trainer.evaluate()
    reset_accelerate()
    return {"manifest": manifest, "before": before, "after": after, "export": export, "out": root / "train"}


def test_training_on_smollm2_features_learns(run):
    before, after = run["before"], run["after"]
    assert run["manifest"]["totals"]["tokens"] > 20_000
    # measured: held-out loss 3.10 -> 2.04, head-1 top-1 0.001 -> 0.166, head-2 top-1 0.000 -> 0.069, first draft
    # step 0.001 -> 0.173 (88 steps, ~44k tokens)
    assert after["test_loss"] < 0.8 * before["test_loss"]
    assert before["test_head1_top1"] < 0.02 and after["test_head1_top1"] > 0.12
    assert after["test_head2_top1"] > 0.04 and after["test_acc_step0"] > 0.12
    steps = [json.loads(line) for line in (run["out"] / METRICS).read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["type"] == "step"]
    assert sum(losses[-10:]) < 0.75 * sum(losses[:10])


def test_trained_smollm2_draft_speculates_losslessly(run):
    path = ensure_smollm2(progress=False)
    target = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    trained = DraftHead.from_pretrained(run["export"])
    assert trained.config.draft_vocab_size == 8192 and trained.d2t.numel() == 8192
    mean_accepted = {}
    for name, draft in (("trained", trained), ("untrained", DraftHead(trained.config))):
        model = EaModel(target, draft.float(), tokenizer, total_token=16, depth=4, top_k=4)
        accepted = []
        for text in PROMPTS:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
            out = model.eagenerate(ids, max_new_tokens=48)
            accepted += model.last_stats.accept_lengths
            assert torch.equal(out, model.naivegenerate(ids, max_new_tokens=48)), text
        mean_accepted[name] = sum(accepted) / len(accepted)
    # measured: 0.24 accepted draft tokens per step vs 0.0 for the untrained draft
    assert mean_accepted["trained"] > mean_accepted["untrained"] + 0.1, mean_accepted
