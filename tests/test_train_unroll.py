"""Training-time test (``train.unroll_steps``): the unrolled loss against a per-position loop written out by hand,
the three draft kinds with CEPD head 2, a reduced vocabulary and packing, short runs and the settings' errors.

The hand computation runs the draft from every start position t of every conversation on its own, exactly as
drafting does: step 0 on the true features f_0..f_t, step 1 on [f_0..f_t, h_0(t)] with the true next token, each
step's last output scored against the target feature it predicts; per-step masked means, summed with the weights
unroll_decay ** k. It shares nothing with the batched implementation but the draft forward and the loss formulas.
"""

import json

import pytest
import torch
from torch.nn import functional as F

from jakiro.common.config import ConfigError, load_config
from jakiro.model.draft import DraftHead, DraftHeadConfig
from jakiro.train.losses import EPS
from jakiro.train.trainer import METRICS, Trainer
from tiny_models import reset_accelerate, tiny_target

pytestmark = pytest.mark.usefixtures("fresh_accelerate")

VOCAB, HIDDEN = 64, 64
KINDS = {  # the three draft kinds of the shipped recipe, at the tiny target's sizes
    "jakiro": dict(num_experts=2, experts_per_token=2, parallel_head=True),
    "eagle2": dict(num_experts=1, experts_per_token=1, parallel_head=False, expert_intermediate_size=128),
    "jakiro_star": dict(num_experts=2, experts_per_token=2, parallel_head=False),
}


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama", VOCAB, seed=0)


def items(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (n,), generator=g),
             "hidden_state": torch.randn(n, HIDDEN, generator=g),
             "loss_mask": (torch.rand(n, generator=g) > 0.25).long(), "index": i, "weight": 1.0}
            for i, n in enumerate(lengths)]


def make_trainer(target, out, overrides=(), data=None, vocabulary=None, **draft):
    reset_accelerate()
    cfg = load_config(None, [f"train.output_dir={out}", "train.mixed_precision=no", "train.noise=none", *overrides])
    config = DraftHeadConfig.for_target(target.config, **draft)
    data = data if data is not None else items([9, 14, 6], seed=1)
    return Trainer(cfg, config, target.get_input_embeddings(), target.get_output_embeddings(), data, data[:2],
                   draft_vocabulary=vocabulary)


def hand_loss(draft: DraftHead, data, steps, decay, v_w=1.0, p_w=0.1, c=0.5):
    """sum_k decay^k L_k by running every start position of every conversation alone, one step at a time."""
    def head(x):  # the draft's scoring head: the target's LM head over the draft vocabulary
        return draft.compact_logits(x)

    def terms(pred, target):
        target_probs = head(target).softmax(-1)
        v = F.smooth_l1_loss(pred, target, beta=1.0, reduction="none").mean()
        p = -(target_probs * head(pred).log_softmax(-1)).sum()
        return v, p

    total = 0.0
    for k in range(steps):
        v1 = p1 = v2 = p2 = 0.0
        w1 = w2 = 0.0
        for item in data:
            ids, feats, m = item["input_ids"], item["hidden_state"].float(), item["loss_mask"].float()
            n = len(ids)
            for t in range(n - 1):  # a chain starting at t: the true features f_0..f_t, tokens x_1..x_{t+1}
                if t + k + 1 >= n:  # step k predicts f_{t+k+1}: past the conversation's end
                    continue
                seq_f, seq_x = feats[: t + 1], ids[1: t + 2]
                for _ in range(k + 1):  # steps 0..k; the last one's outputs are scored
                    out = draft(seq_f[None], seq_x[None], torch.arange(len(seq_f))[None],
                                with_head2=draft.config.parallel_head)
                    h1 = out.head1[0, -1]
                    position = len(seq_f)  # the next node sits here, paired with the true token after it
                    if position + 1 < n:
                        seq_f, seq_x = torch.cat([seq_f, h1[None]]), torch.cat([seq_x, ids[position + 1: position + 2]])
                weight = m[t + k]  # the weight of position t + k, whose target f_{t+k+1} step k predicts
                v, p = terms(h1, feats[t + k + 1])
                v1, p1, w1 = v1 + weight * v, p1 + weight * p, w1 + weight
                if draft.config.parallel_head and t + k + 2 < n:  # head 2: f_{t+k+2}, weight of position t+k+1
                    weight2 = m[t + k + 1]
                    v, p = terms(out.head2[0, -1], feats[t + k + 2])
                    v2, p2, w2 = v2 + weight2 * v, p2 + weight2 * p, w2 + weight2
        step = v_w * (v1 / (w1 + EPS) + c * v2 / (w2 + EPS)) + p_w * (p1 / (w1 + EPS) + c * p2 / (w2 + EPS))
        total = total + decay ** k * step
    return total


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("packing", [False, True])
def test_two_step_loss_matches_the_hand_computation(target, tmp_path, kind, packing):
    data = items([9, 14, 6], seed=1)
    tr = make_trainer(target, tmp_path, ["train.unroll_steps=2", "train.unroll_decay=0.7", "train.batch_size=3",
                                         f"train.packing={str(packing).lower()}"], data, **KINDS[kind])
    batch = next(iter(tr._loader(tr.train_set, tr.train_sampler, packing)))
    assert sorted(batch["index"].tolist()) == [0, 1, 2] and ("segments" in batch) == packing
    inputs = tr._inputs(batch, epoch=0)
    terms, _, later = tr._losses(tr.model, inputs, tr._global_normalizers(inputs["mask"], inputs["positions"]))
    assert len(later) == 1 and later[0][0].total > 0
    grads = torch.autograd.grad(terms.total, [tr.draft.fc.weight, tr.draft.layers[0].self_attn.q_proj.weight])
    want = hand_loss(tr.draft, data, 2, 0.7)
    want_grads = torch.autograd.grad(want, [tr.draft.fc.weight, tr.draft.layers[0].self_attn.q_proj.weight])
    torch.testing.assert_close(terms.total, want, rtol=1e-5, atol=1e-6)
    for got, expected in zip(grads, want_grads):  # the gradient also flows from step 1 back through step 0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # step 1's loss is a real term: the unrolled total differs from step 0's alone
    assert abs(terms.total.item() - hand_loss(tr.draft, data, 1, 0.7).item()) > 1e-3


def test_three_steps_with_a_reduced_vocabulary(target, tmp_path):
    data = items([11, 7], seed=2)
    vocabulary = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:16]
    tr = make_trainer(target, tmp_path, ["train.unroll_steps=3", "train.batch_size=2", "train.packing=true"], data,
                      vocabulary, draft_vocab_size=16, **KINDS["jakiro"])
    inputs = tr._inputs(next(iter(tr._loader(tr.train_set, tr.train_sampler, True))), epoch=0)
    terms, _, later = tr._losses(tr.model, inputs, tr._global_normalizers(inputs["mask"], inputs["positions"]))
    assert len(later) == 2
    torch.testing.assert_close(terms.total, hand_loss(tr.draft, data, 3, 0.8), rtol=1e-5, atol=1e-6)


def test_one_step_is_the_plain_forward(target, tmp_path):
    """unroll_steps 1 (the default) runs the draft once, without the chain's cache and masks: today's step."""
    data = items([9, 14, 6], seed=1)
    tr = make_trainer(target, tmp_path, ["train.batch_size=3"], data)
    assert tr.train_cfg.unroll_steps == 1 and tr.heads.steps == 1
    inputs = tr._inputs(next(iter(tr._loader(tr.train_set, tr.train_sampler, False))), epoch=0)
    terms, _, later = tr._losses(tr.model, inputs, tr._global_normalizers(inputs["mask"], inputs["positions"]))
    assert later == []
    out = tr.draft(inputs["features"], inputs["input_ids"], inputs["positions"], with_head2=True)
    assert torch.equal(tr.heads(inputs["features"], inputs["input_ids"], inputs["positions"])[0], out.head1)
    torch.testing.assert_close(terms.total, hand_loss(tr.draft, data, 1, 0.8), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", list(KINDS))
def test_unrolled_run_logs_every_step_and_exports(target, tmp_path, kind):
    data = items([12, 15, 9, 10, 13, 8, 14, 11], seed=3)
    tr = make_trainer(target, tmp_path, ["train.unroll_steps=3", "train.batch_size=2", "train.num_epochs=2",
                                         "train.lr=3e-3", "train.warmup_steps=1", "train.checkpoint_steps=0",
                                         "train.save_every=2", "train.packing=true"], data, **KINDS[kind])
    DraftHead.from_pretrained(tr.train())
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    steps = [r for r in lines if r["type"] == "step"]
    assert len(steps) == 8
    for record in steps + [r for r in lines if r["type"] == "epoch"]:
        assert {"unroll1_loss", "unroll2_loss", "unroll1_top1", "unroll2_top1"} <= set(record)
        assert record["unroll1_loss"] > 0 and 0 <= record["unroll2_top1"] <= 1
    evals = [r for r in lines if r["type"] == "eval"]
    assert len(evals) == 1 and "test_acc_step1" in evals[0]
    assert steps[-1]["unroll1_loss"] < steps[0]["unroll1_loss"]  # the unrolled steps learn too


@pytest.mark.parametrize("overrides, needles", [
    (["train.unroll_steps=0"], ["train.unroll_steps", ">= 1", "got 0"]),
    (["train.unroll_decay=0"], ["train.unroll_decay", "> 0", "got 0.0"]),
    (["train.unroll_decay=-1"], ["train.unroll_decay", "> 0"]),
    (["train.unroll_steps=2.5"], ["train.unroll_steps", "expected int"]),
])
def test_bad_unroll_settings_are_named(overrides, needles):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert all(needle in str(err.value) for needle in needles), str(err.value)
