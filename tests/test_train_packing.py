"""Packed training batches (``train.packing``) against padded ones, and batches by token budget
(``train.batch_tokens``), on a tiny random draft.

Packing must not change what is learned: the same conversations packed into one row give the padded batch's draft
outputs, losses and gradients (to float32 summation order), attention never crosses from one conversation into
another, and no shifted target or head-2 pair spans two conversations.
"""

import pytest
import torch

from jakiro.common.config import load_config
from jakiro.model.draft import DraftHead, DraftHeadConfig, packed_attention
from jakiro.train.data import TokenBudgetSampler, add_noise, collate, collate_packed
from jakiro.train.losses import draft_losses, head2_mask
from jakiro.train.metrics import Sums
from jakiro.train.trainer import Trainer
from tiny_models import reset_accelerate, tiny_target

pytestmark = pytest.mark.usefixtures("fresh_accelerate")

VOCAB, HIDDEN = 64, 64


def items(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (n,), generator=g),
             "hidden_state": torch.randn(n, HIDDEN, generator=g).to(torch.bfloat16),
             "loss_mask": (torch.rand(n, generator=g) > 0.3).long(), "index": i, "weight": 1.0}
            for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama", VOCAB, seed=0)


def draft_for(target, **kw) -> DraftHead:
    torch.manual_seed(1)
    draft = DraftHead(DraftHeadConfig.for_target(target.config, **kw))
    draft.bind_target_modules(target.get_input_embeddings(), target.get_output_embeddings())
    return draft


def unpack(packed: torch.Tensor, lengths: list[int], width: int) -> torch.Tensor:
    """[1, T, ...] packed rows -> [B, width, ...] right-padded with zeros."""
    rows, start = [], 0
    for n in lengths:
        row = packed[0, start:start + n]
        rows.append(torch.cat([row, row.new_zeros(width - n, *row.shape[1:])]))
        start += n
    return torch.stack(rows)


def test_packed_batch_holds_the_padded_values_without_padding():
    data = items([7, 3, 11])
    padded, packed = collate(data, max_len=10), collate_packed(data, max_len=10)
    lengths = [7, 3, 10]
    assert packed["segments"].tolist() == lengths and packed["features"].shape == (1, 20, HIDDEN)
    for key in ("features", "target", "input_ids", "loss_mask", "position_ids"):
        assert torch.equal(unpack(packed[key], lengths, 10), padded[key] * (padded["position_ids"] < torch.tensor(
            lengths)[:, None]).view(3, 10, *[1] * (padded[key].dim() - 2))), key
    assert packed["position_ids"][0].tolist() == [*range(7), *range(3), *range(10)]
    # each conversation's last position: no target from the next conversation, no weight
    ends = torch.tensor(lengths).cumsum(0) - 1
    assert packed["target"][0, ends].abs().sum() == 0 and packed["loss_mask"][0, ends].sum() == 0
    assert packed["input_ids"][0, ends].tolist() == [0, 0, 0]


def test_noise_is_the_same_packed_or_padded():
    data = items([5, 9])
    padded, packed = collate(data, 16), collate_packed(data, 16)
    for kind in ("uniform", "gaussian"):
        a = add_noise(padded["features"], padded["lengths"], [3, 4], kind, 0.1, 0.2)
        b = add_noise(packed["features"], packed["lengths"], [3, 4], kind, 0.1, 0.2, packed=True)
        assert torch.equal(unpack(b, [5, 9], 9), a) and not torch.equal(a, padded["features"].float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_draft_forward_matches_separate_rows(target, dtype):
    """Every conversation's outputs equal those of the conversation run alone: no attention across boundaries."""
    draft = draft_for(target).to(dtype)
    data = items([6, 13, 4], seed=2)
    packed = collate_packed(data, 64)
    out = draft(packed["features"].to(dtype), packed["input_ids"], packed["position_ids"], with_head2=True,
                attend=packed_attention(packed["segments"].tolist()))
    start = 0
    for item in data:
        n = len(item["input_ids"])
        alone = collate([item], 64)
        ref = draft(alone["features"].to(dtype), alone["input_ids"], alone["position_ids"], with_head2=True)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(out.head1[0, start:start + n], ref.head1[0], **tol)
        torch.testing.assert_close(out.head2[0, start:start + n], ref.head2[0], **tol)
        start += n
    # changing one conversation leaves the others' outputs untouched
    changed = packed["features"].clone()
    changed[0, 6:19] += 1.0
    other = draft(changed.to(dtype), packed["input_ids"], packed["position_ids"], with_head2=True,
                  attend=packed_attention(packed["segments"].tolist()))
    assert torch.equal(other.head1[0, :6], out.head1[0, :6]) and torch.equal(other.head1[0, 19:], out.head1[0, 19:])
    assert not torch.equal(other.head1[0, 6:19], out.head1[0, 6:19])


def test_packed_segments_are_checked(target):
    draft = draft_for(target)
    packed = collate_packed(items([4, 5]), 64)
    with pytest.raises(ValueError, match="segments"):
        draft(packed["features"].float(), packed["input_ids"], packed["position_ids"], attend=packed_attention([4, 4]))
    with pytest.raises(ValueError, match="neither an attention mask nor a cache"):
        draft(packed["features"].float(), packed["input_ids"], packed["position_ids"],
              attention_mask=torch.zeros(1, 1, 9, 9), attend=packed_attention([4, 5]))


def test_head2_never_pairs_two_conversations():
    mask = torch.ones(1, 7)
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1]])
    assert head2_mask(mask, positions).tolist() == [[0, 1, 1, 0, 1, 0, 1]]
    head = torch.arange(7.0)[None, :, None].expand(1, 7, 4)
    terms, scores = draft_losses(head, head, head, mask, lambda x: x, 1.0, 0.0, 1.0, position_ids=positions)
    assert scores.weights2.numel() == 4  # targets at positions 1, 2, 4, 6 of the row


def trainer(target, tmp_path, packing, extra=()):
    reset_accelerate()
    cfg = load_config(None, [f"train.output_dir={tmp_path / ('packed' if packing else 'padded')}",
                             "train.mixed_precision=no", f"train.packing={str(packing).lower()}", *extra])
    config = DraftHeadConfig.for_target(target.config, num_experts=4, experts_per_token=2)
    data = items([9, 17, 5, 12, 30, 8], seed=3)
    return Trainer(cfg, config, target.get_input_embeddings(), target.get_output_embeddings(), data, data[:2])


@pytest.mark.parametrize("unroll", [1, 3])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(target, tmp_path, unroll):
    """The acceptance check of packing: one micro-step's losses, accuracies and gradients agree to float32
    summation order (measured: ~1e-7 relative), the same update from the same data. ``unroll`` 3 (training-time
    test): every unrolled step too, so no step's attention, target or head-2 pair crosses into another
    conversation."""
    results = []
    for packing in (False, True):
        tr = trainer(target, tmp_path, packing, ["train.load_balance_w=0.01", "train.batch_size=6",
                                                 f"train.unroll_steps={unroll}"])
        batch = next(iter(tr._loader(tr.train_set, tr.train_sampler, packing)))
        assert ("segments" in batch) == packing
        inputs = tr._inputs(batch, epoch=0)
        terms, scores, later = tr._losses(tr.model, inputs, tr._global_normalizers(inputs["mask"],
                                                                                   inputs["positions"]))
        assert len(later) == unroll - 1
        # packed batches are scored by the fused LM-head losses (ranks, no logits), padded rows by the plain ones
        assert (scores.ranks1 is not None, scores.logits1 is None) == (packing, packing)
        terms.total.backward()
        grads = {n: p.grad.clone() for n, p in tr.draft.named_parameters() if p.grad is not None}
        sums = Sums()
        tr._add_scores(sums, terms, scores)
        results.append((terms, grads, sums.values, inputs["tokens"], [t for t, _ in later]))
    (a, grads_a, sums_a, tokens_a, later_a), (b, grads_b, sums_b, tokens_b, later_b) = results
    assert tokens_a == tokens_b == 81
    for name in ("total", "v1", "p1", "v2", "p2", "balance"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-7)
    for step_a, step_b in zip(later_a, later_b):
        assert step_a.v1 > 0 and step_a.v2 > 0
        for name in ("total", "v1", "p1", "v2", "p2"):
            torch.testing.assert_close(getattr(step_b, name), getattr(step_a, name), rtol=1e-5, atol=1e-7)
    assert a.v2 > 0 and a.balance > 0
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 5
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6)
    for name in sums_a:
        assert sums_b[name] == pytest.approx(sums_a[name], rel=1e-5, abs=1e-6), name


def test_short_packed_run_follows_the_padded_loss_curve(target, tmp_path):
    """Same data, same steps: the per-step losses of a packed and a padded run agree (fp32)."""
    curves = []
    for packing in (False, True):
        tr = trainer(target, tmp_path, packing, ["train.batch_size=2", "train.num_epochs=2", "train.lr=3e-3",
                                                 "train.warmup_steps=1", "train.checkpoint_steps=0",
                                                 "train.save_every=2"])
        tr.train()
        curves.append([r["loss"] for r in map(__import__("json").loads,
                                              (tr.output_dir / "metrics.jsonl").read_text().splitlines())
                       if r["type"] == "step"])
    assert len(curves[0]) == len(curves[1]) == 6
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
    assert curves[0][-1] < curves[0][0]


def test_token_budget_batches():
    lengths = [5, 9, 3, 12, 7, 7, 2, 10, 4, 6]
    one = TokenBudgetSampler(lengths, 24, 1, 0, seed=1, shuffle=True)
    one.set_epoch(1)
    batches = list(one)
    seen = sorted(p for batch in batches for p, w in batch if w > 0)
    assert seen == list(range(10))  # every sequence once an epoch
    assert all(sum(lengths[p] for p, _ in batch) <= 24 for batch in batches)
    assert len(batches) >= 3 and one.num_batches_in(1) == len(batches)
    assert one.num_batches_in(0) == len(one.global_batches(0))
    # two processes with half the budget each: the same global batches, split between them
    halves = [TokenBudgetSampler(lengths, 12, 2, r, seed=1, shuffle=True) for r in (0, 1)]
    for sampler in halves:
        sampler.set_epoch(1)
    for whole, first, second in zip(batches, *map(list, halves)):
        assert sorted(p for p, w in first + second if w > 0) == sorted(p for p, _ in whole)
    # gradient accumulation: a multiple of 4 batches, the extra ones weight 0
    padded = TokenBudgetSampler(lengths, 24, 1, 0, seed=1, shuffle=True, multiple_of=4)
    padded.set_epoch(1, start=1)
    rest = list(padded)
    assert (padded.num_batches % 4, len(rest)) == (0, padded.num_batches - 1)
    assert all(w == 0.0 for batch in rest[len(batches) - 1:] for _, w in batch)


def test_a_sequence_longer_than_the_budget_gets_its_own_batch():
    sampler = TokenBudgetSampler([50, 3, 4], 10, 1, 0, seed=0, shuffle=False)
    assert [[p for p, _ in b] for b in sampler] == [[0], [1, 2]]


# --- python -m jakiro.train.throughput --------------------------------------------------------------------------------
def test_throughput_command_prints_both_paths_and_the_ratio(target, tmp_path, capsys):
    import re

    from jakiro.train.throughput import draft_step_flops, main
    from test_train import write_feature_dir

    target.save_pretrained(tmp_path / "target")
    data = [{k: v for k, v in item.items() if k not in ("index", "weight")} for item in items([9, 17, 5, 12, 30, 8])]
    features = write_feature_dir(tmp_path / "features", data, HIDDEN, VOCAB)
    argv = ["--config", "default", "--data", str(features), "--set", f"model.base_model_path={tmp_path / 'target'}",
            "--set", "train.batch_size=2", "--set", "train.batch_tokens=32", "--conversations", "6", "--rounds", "2",
            "--matmul-size", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    lines = out[next(i for i, x in enumerate(out) if x.startswith("draft training throughput on ")):]
    assert re.fullmatch(r"ratio new/old: \d+\.\d\d", lines[-1])
    assert re.fullmatch(r"matmul 64x64 bfloat16: \d+\.\d{3} TFLOP/s \(the best of 3 measurements during the run\)",
                        lines[-4])
    assert "6 conversations, 81 tokens an epoch" in lines[0]
    for name, layout in (("old", "padded, 2 sequences a batch"), ("new", "packed, 32 tokens a batch")):
        line = next(x for x in lines if x.startswith(f"{name} ("))
        assert re.fullmatch(rf"{name} \({layout}\): [\d,]+ tokens/s, [\d,.]+ GFLOP/s = \d+\.\d% of the matmul rate",
                            line), line
    assert sum(x.startswith("round ") for x in lines) == 2
    # FLOPs: more tokens and more scored rows cost more; attention grows with the square of a conversation
    config = DraftHeadConfig.for_target(target.config)
    assert draft_step_flops(config, [10, 10], 8, 6) < draft_step_flops(config, [20], 8, 6)
    assert draft_step_flops(config, [20], 8, 6) < draft_step_flops(config, [20], 16, 12)
    # bad input: one line, exit status 2
    assert main([*argv[:2], "--data", str(tmp_path / "missing"), *argv[4:]]) == 2
    assert "error: train.data_dir" in capsys.readouterr().err
    assert main([*argv, "--rounds", "0"]) == 2


def test_packed_token_budget_run_resumes_bit_identically(target, tmp_path):
    """Batches by token budget differ from epoch to epoch; a run cut after a checkpoint and resumed still ends with
    the uninterrupted run's weights and log."""
    from safetensors.torch import load_file

    settings = ["train.batch_tokens=30", "train.num_epochs=2", "train.lr=3e-3", "train.warmup_steps=1",
                "train.checkpoint_steps=2", "train.save_every=2", "train.mixed_precision=bf16"]
    whole = trainer(target, tmp_path / "whole", True, settings)
    assert whole.total_steps == sum(whole.train_sampler.num_batches_in(e) for e in range(2)) >= 6
    whole.train()
    cut = trainer(target, tmp_path / "cut", True, [*settings, "train.stop_after_steps=5"])
    cut.train()
    trainer(target, tmp_path / "cut", True, settings).train(resume=True)
    want = load_file(tmp_path / "whole" / "packed" / "draft" / "model.safetensors")
    got = load_file(tmp_path / "cut" / "packed" / "draft" / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    def log(path):
        import json

        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
                for line in (path / "packed" / "metrics.jsonl").read_text().splitlines()]

    assert log(tmp_path / "cut") == log(tmp_path / "whole")


def test_sequence_lengths_read_no_features(tmp_path):
    from torch.utils.data import Subset

    from jakiro.ge_data.dataset import FeatureShards
    from jakiro.train.data import sequence_lengths
    from test_train import write_feature_dir

    data = [{k: v for k, v in item.items() if k not in ("index", "weight")} for item in items([9, 17, 5, 12])]
    shards = FeatureShards(write_feature_dir(tmp_path / "features", data, HIDDEN, VOCAB))
    assert sequence_lengths(shards, 16) == [9, 16, 5, 12]
    assert sequence_lengths(Subset(shards, [3, 1]), 16) == [12, 16]
    assert sequence_lengths(data, 10) == [9, 10, 5, 10]
