"""Draft training end to end on a tiny random target: learning, resume, 1 vs 2 processes (gloo, DeepSpeed ZeRO-2),
export + lossless generation, CLI errors.

Training data are sequences sampled from the tiny target itself (temperature 0.5 after a random 4-token prompt)
with its final-normed features, so a draft can learn them in seconds. Runs use one thread per process: on a
shared 2-core machine, 2 OpenMP threads per process made tiny steps 20x slower.
"""

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from jakiro.common.config import ConfigError, load_config
from jakiro.ge_data.dataset import FeatureShards
from jakiro.target import target_identity
from jakiro.common.io import sha256_file
from jakiro.model.draft import DraftHead, DraftHeadConfig
from jakiro.model.ea_model import EaModel
from jakiro.train.data import split_indices
from jakiro.train.interrupts import Interrupted, StopRequests
from jakiro.train.provenance import read_training_record
from jakiro.train.launch import deepspeed_settings
from jakiro.train.main import build_trainer, main, parse_args, resolve_config
from jakiro.train.trainer import EXPORT, METRICS, Trainer, latest_checkpoint, saved_checkpoints
from script_calls import default_stop_signals
from tiny_models import reset_accelerate, tiny_target

VOCAB = 64
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_accelerate_one_thread():
    reset_accelerate()
    with one_thread():
        yield
    reset_accelerate()


@torch.no_grad()
def sampled_items(target, n: int, length: int, seed: int, prompt: int = 4, temperature: float = 0.5) -> list[dict]:
    """n sequences sampled from the target after random prompts, with its features; the prompt is unmasked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, prompt), generator=g)
    for _ in range(length - prompt):
        probs = (target(ids).logits[:, -1].float() / temperature).softmax(-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], dim=1)
    features = target.get_decoder()(ids).last_hidden_state.to(torch.bfloat16)
    mask = torch.zeros(length, dtype=torch.long)
    mask[prompt:] = 1
    return [{"input_ids": ids[i], "hidden_state": features[i], "loss_mask": mask} for i in range(n)]


def write_feature_dir(path: Path, items: list[dict], hidden_size: int, vocab_size: int,
                      identity: str = "tiny") -> Path:
    """A data dir in the format of ``python -m jakiro.ge_data`` (one shard + manifest.json) made by the target of
    ``identity`` (:func:`jakiro.ge_data.generate.target_identity`)."""
    path.mkdir(parents=True, exist_ok=True)
    lengths = torch.tensor([0] + [len(x["input_ids"]) for x in items])
    save_file({
        "input_ids": torch.cat([x["input_ids"] for x in items]).to(torch.int32),
        "loss_mask": torch.cat([x["loss_mask"] for x in items]).to(torch.uint8),
        "hidden_state": torch.cat([x["hidden_state"] for x in items]),
        "offsets": lengths.cumsum(0),
        "index": torch.arange(len(items)),
    }, str(path / "shard_00000.safetensors"))
    manifest = {"format": "jakiro-features/1",
                "target": {"path": "tiny", "hidden_size": hidden_size, "vocab_size": vocab_size,
                           "identity": identity},
                "shards": [{"file": "shard_00000.safetensors", "conversations": len(items),
                            "sha256": sha256_file(path / "shard_00000.safetensors")}]}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny target (also saved as a model dir), sampled train / test items and a feature dir of them."""
    root = tmp_path_factory.mktemp("train")
    with one_thread():
        target = tiny_target("llama", VOCAB, seed=0)
        target.save_pretrained(root / "target")
        train, test = sampled_items(target, 96, 40, seed=0), sampled_items(target, 24, 40, seed=1)
        identity = target_identity(AutoConfig.from_pretrained(root / "target"), target.get_output_embeddings().weight)
        features = write_feature_dir(root / "features", sampled_items(target, 24, 24, seed=2), 64, VOCAB, identity)
    return {"root": root, "target": target, "train": train, "test": test, "features": features}


def make_trainer(tiny, output_dir, overrides=(), train=None, test=None, **draft) -> Trainer:
    reset_accelerate()
    cfg = load_config(None, [f"train.output_dir={output_dir}", *overrides])
    target = tiny["target"]
    draft_config = DraftHeadConfig.for_target(target.config, **draft)
    return Trainer(cfg, draft_config, target.get_input_embeddings(), target.get_output_embeddings(),
                   train if train is not None else tiny["train"], test if test is not None else tiny["test"])


def records(output_dir, kind="step"):
    lines = (Path(output_dir) / METRICS).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


# --- learning ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """8 epochs (96 steps of 8 sequences) at lr 3e-3: the held-out metrics before and after, and the export."""
    out = tmp_path_factory.mktemp("trained")
    with one_thread():
        trainer = make_trainer(tiny, out, ["train.num_epochs=8", "train.warmup_steps=5", "train.lr=3e-3",
                                           "train.batch_size=8", "train.save_every=4", "train.checkpoint_steps=0"])
        before = trainer.evaluate()
        export = trainer.train()
        after = trainer.evaluate()
    reset_accelerate()
    return {"before": before, "after": after, "export": export, "out": out}


def test_training_lowers_loss_and_raises_heldout_accuracy(trained):
    before, after = trained["before"], trained["after"]
    # measured: loss 1.36 -> 1.01, top-1 0.02 -> 0.32, step-0 chain accuracy 0.01 -> 0.5
    assert after["test_loss"] < 0.85 * before["test_loss"]
    assert before["test_head1_top1"] < 0.05 and after["test_head1_top1"] > 0.2
    assert after["test_head2_top1"] > 3 * before["test_head2_top1"]
    assert after["test_acc_step0"] > 0.3 and after["test_acc_step1"] > 0.2
    steps = records(trained["out"])
    assert len(steps) == 96 and [r["step"] for r in steps] == list(range(1, 97))
    first, last = sum(r["loss"] for r in steps[:8]) / 8, sum(r["loss"] for r in steps[-8:]) / 8
    assert last < 0.85 * first
    assert {"lr", "v1", "p1", "v2", "p2", "head1_top1", "head2_top3", "tokens_per_s"} <= set(steps[0])
    assert len(records(trained["out"], "epoch")) == 8 and len(records(trained["out"], "eval")) == 2
    assert steps[4]["lr"] == pytest.approx(3e-3) and steps[-1]["lr"] < 1e-5  # warmup 5, cosine to 0 at the end


def test_export_loads_and_generates_losslessly(tiny, trained):
    target = tiny["target"]
    draft = DraftHead.from_pretrained(trained["export"])
    assert sorted(os.listdir(trained["export"])) == ["config.json", "model.safetensors", "training.json"]
    assert not any("embed" in k or "lm_head" in k for k in load_file(trained["export"] / "model.safetensors"))
    accepted = {}
    for name, candidate in (("trained", draft), ("untrained", DraftHead(draft.config))):
        model = EaModel(target, candidate, None, total_token=12, depth=3, top_k=3, stop_token_ids=[])
        lengths = []
        for item in tiny["test"][:4]:
            prompt = item["input_ids"][None, :6]
            ids = model.eagenerate(prompt, max_new_tokens=24)
            lengths += model.last_stats.accept_lengths
            assert torch.equal(ids, model.naivegenerate(prompt, max_new_tokens=24))
        accepted[name] = sum(lengths) / len(lengths)
    assert accepted["trained"] > accepted["untrained"] + 0.5, accepted


@pytest.mark.parametrize("draft, balance", [
    (dict(num_experts=1, experts_per_token=1, parallel_head=False), False),  # EAGLE-2: V1 and P1 only
    (dict(num_experts=4, experts_per_token=1), True),  # Switch load balancing on head-1 routing
])
def test_eagle2_draft_and_load_balancing(tiny, tmp_path, draft, balance):
    overrides = ["train.num_epochs=1", "train.batch_size=8", "train.load_balance_w=0.01"]
    trainer = make_trainer(tiny, tmp_path, overrides, train=tiny["train"][:32], test=tiny["test"][:8], **draft)
    DraftHead.from_pretrained(trainer.train())
    steps = records(tmp_path)
    assert len(steps) == 4 and all(r["loss"] > 0 for r in steps)
    if balance:  # E * sum_e f_e P_e: 1 for even routing, up to E = 4 when everything goes to one expert
        assert all(0.5 < r["balance"] <= 4 for r in steps)
    else:
        assert all(r["v2"] == r["p2"] == r["balance"] == 0 for r in steps) and "head2_top1" not in steps[0]


# --- resume -----------------------------------------------------------------------------------------------------------
RESUME = ["train.num_epochs=3", "train.batch_size=8", "train.warmup_steps=3", "train.lr=1e-3",
          "train.save_every=2", "train.checkpoint_steps=4"]


@pytest.mark.parametrize("extra", [[], ["train.unroll_steps=2", "train.packing=true"]], ids=["plain", "unrolled"])
def test_resume_is_bit_identical(tiny, tmp_path, extra):
    """``unrolled``: training-time test (2 draft steps per position) on packed batches resumes bit-exactly too."""
    data = dict(train=tiny["train"][:48], test=tiny["test"][:8])  # 6 steps per epoch, 18 in all
    whole = make_trainer(tiny, tmp_path / "whole", [*RESUME, *extra], **data)
    whole.train()
    # a run stopped at step 10 (checkpoints at steps 4, 8, 10), then "killed" after step 8's checkpoint: step_10
    # is lost, metrics.jsonl has records past step 8
    cut = tmp_path / "cut"
    make_trainer(tiny, cut, [*RESUME, *extra, "train.stop_after_steps=10"], **data).train()
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_10", "step_4", "step_8"]
    shutil.rmtree(cut / "checkpoints" / "step_10")
    assert latest_checkpoint(cut).name == "step_8"
    make_trainer(tiny, cut, [*RESUME, *extra], **data).train(resume=True)
    want, got = load_file(tmp_path / "whole" / EXPORT / "model.safetensors"), load_file(cut / EXPORT /
                                                                                          "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    def comparable(path):
        lines = [json.loads(line) for line in (path / METRICS).read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in lines]

    assert comparable(cut) == comparable(tmp_path / "whole")  # same log, no duplicated records
    if extra:
        assert all("unroll1_loss" in r for r in comparable(cut) if r["type"] == "step")


@pytest.mark.parametrize("signum, at_batch", [(signal.SIGTERM, 10), (signal.SIGINT, 6)],
                         ids=["SIGTERM-inside-an-epoch", "SIGINT-at-an-epochs-last-step"])
def test_a_signal_checkpoints_the_step_under_way_and_resume_is_bit_identical(tiny, tmp_path, monkeypatch, signum,
                                                                                at_batch):
    """Ctrl-C / kill during step N: the run finishes step N (and, at an epoch's last step, the epoch's end: its
    record, evaluation and checkpoint), checkpoints it, raises Interrupted; resuming ends bit-identical to a run never
    interrupted, with the same log."""
    data = dict(train=tiny["train"][:48], test=tiny["test"][:8])  # 6 steps per epoch, 18 in all
    whole = tmp_path / "whole"
    make_trainer(tiny, whole, RESUME, **data).train()
    cut = tmp_path / "cut"
    trainer = make_trainer(tiny, cut, RESUME, **data)
    micro_step = trainer._micro_step

    def signalled(batch, sums):  # the signal arrives in the middle of optimizer step at_batch
        if trainer.state.step == at_batch - 1:
            signal.raise_signal(signum)
        micro_step(batch, sums)

    monkeypatch.setattr(trainer, "_micro_step", signalled)
    # at the default (a test run in the background of a script ignores SIGINT, and so would the trainer then)
    default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
    before = signal.signal(signum, default)
    try:
        with pytest.raises(Interrupted, match=rf"{signal.Signals(signum).name} after step {at_batch} of 18.*--resume"
                           ) as stopped:
            trainer.train()
        assert stopped.value.exit_code == 128 + signum and signal.getsignal(signum) is default  # handler restored
    finally:
        signal.signal(signum, before)
    assert latest_checkpoint(cut).name == f"step_{at_batch}" and [r["step"] for r in records(cut)] == list(
        range(1, at_batch + 1))
    assert [r["epoch"] for r in records(cut, "epoch")] == list(range(at_batch // 6))
    make_trainer(tiny, cut, RESUME, **data).train(resume=True)
    want, got = (load_file(path / EXPORT / "model.safetensors") for path in (whole, cut))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    strip = [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
             for path in (whole, cut) for line in (path / METRICS).read_text().splitlines()]
    assert strip[:len(strip) // 2] == strip[len(strip) // 2:]


def test_stop_requests_second_signal_stops_at_once_and_ignored_signals_stay_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with StopRequests() as stops:
            assert not stops.asked
            signal.raise_signal(signal.SIGTERM)
            assert stops.asked and stops.name == "SIGTERM"
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the default again: a third signal kills
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job of a non-interactive shell
    try:
        with StopRequests() as stops:
            signal.raise_signal(signal.SIGINT)
            assert not stops.asked and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_keep_checkpoints_deletes_all_but_the_newest(tiny, tmp_path):
    """train.keep_checkpoints=2: after every save only the two newest checkpoints (and their record entries) stay,
    and the run resumes from the newest; it may change on resume (not part of the run's identity), as may how often
    the run evaluates (train.save_every), in a run recorded when that was still part of it."""
    data = dict(train=tiny["train"][:48], test=tiny["test"][:8])  # 6 steps per epoch
    make_trainer(tiny, tmp_path, [*RESUME, "train.keep_checkpoints=2", "train.stop_after_steps=10"], **data).train()
    assert [p.name for p in saved_checkpoints(tmp_path)] == ["step_8", "step_10"]
    assert sorted(json.loads((tmp_path / "run.json").read_text())["checkpoints"]) == ["step_10", "step_8"]
    record = json.loads((tmp_path / "run.json").read_text())
    record["config"]["train"]["save_every"] = 2  # as recorded before it was resumable
    (tmp_path / "run.json").write_text(json.dumps(record))
    make_trainer(tiny, tmp_path, [*RESUME, "train.keep_checkpoints=1", "train.save_every=1"],
                 **data).train(resume=True)
    assert [p.name for p in saved_checkpoints(tmp_path)] == ["step_18"]
    assert [r["epoch"] for r in records(tmp_path, "eval")] == [1, 2]  # epoch 2 (0-based 1) by save_every=2, then 1
    assert [r["step"] for r in records(tmp_path)] == list(range(1, 19))
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        load_config(None, ["train.keep_checkpoints=-1"])


def test_resume_of_a_run_recorded_before_a_setting_existed(tiny, tmp_path):
    """A run.json written before train.unroll_steps / unroll_decay and draft.init_from_target existed resumes
    when they are at their defaults (what the older code did) and is refused when they are not."""
    data = dict(train=tiny["train"][:16], test=tiny["test"][:4])
    settings = ["train.num_epochs=1", "train.batch_size=4", "train.checkpoint_steps=2", "train.stop_after_steps=2"]
    make_trainer(tiny, tmp_path, settings, **data).train()
    record = json.loads((tmp_path / "run.json").read_text())
    for section, key in (("train", "unroll_steps"), ("train", "unroll_decay"), ("draft", "init_from_target")):
        del record["config"][section][key]
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"train.unroll_steps: 1 recorded, 2 now"):
        make_trainer(tiny, tmp_path, [*settings[:-1], "train.unroll_steps=2"], **data).train(resume=True)
    make_trainer(tiny, tmp_path, settings[:-1], **data).train(resume=True)
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3, 4]


# --- processes --------------------------------------------------------------------------------------------------------
EQUIVALENCE = ["train.num_epochs=2", "train.warmup_steps=2", "train.lr=2e-3", "train.mixed_precision=no",
               "train.grad_clip_mode=norm", "train.grad_clip=0.5", "train.test_fraction=0.25",
               "train.checkpoint_steps=0", "train.save_every=2", "draft.num_experts=4", "draft.experts_per_token=2"]


def cli_args(tiny, output_dir, batch_size, extra=()):
    return ["--basepath", str(tiny["root"] / "target"), "--tmpdir", str(tiny["features"]), "--cpdir",
            str(output_dir), "--set", f"train.batch_size={batch_size}",
            *[a for o in (*EQUIVALENCE, *extra) for a in ("--set", o)]]


def launch(args, launcher):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [*launcher, "-m", "jakiro.train.main", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def one_process(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    with one_thread():
        assert main(cli_args(tiny, out, 4)) == 0
    reset_accelerate()
    return records(out)


UNROLL = ["train.unroll_steps=2"]


@pytest.fixture(scope="module")
def one_process_unrolled(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_unrolled")
    with one_thread():
        assert main(cli_args(tiny, out, 4, UNROLL)) == 0
    reset_accelerate()
    return records(out)


def torchrun():
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(29600 + os.getpid() % 300)]


@pytest.mark.parametrize("mode", ["gloo", "deepspeed_zero2", "gloo_packed", "gloo_packed_unrolled",
                                  "deepspeed_zero2_unrolled"])
def test_two_processes_match_one(tiny, request, tmp_path, mode):
    """Same global batch (2 x 2 vs 1 x 4): same loss curve, to float32 summation-order differences. ``gloo_packed``:
    the two processes pack their conversations (``train.packing``), the one process pads them. ``_unrolled``:
    training-time test (``train.unroll_steps=2``) in both, its per-step losses compared too.

    Tolerance: the runs differ only in the order of float32 sums (one 4-sequence batch vs an all-reduce of two
    halves, DeepSpeed's flat partitions), i.e. rounding at ~1e-7 relative per step that Adam can amplify; measured
    largest difference over the 10 steps: 9e-8 relative for both. 1e-5 leaves two orders of margin, while a wrong
    normalisation, a missing all-reduce or another batch order moves the loss by 1e-3 or more.
    """
    extra = {"gloo": [], "gloo_packed": ["train.packing=true"],
             "deepspeed_zero2": ["train.deepspeed_config=configs/deepspeed_zero2.json"]}[mode.removesuffix("_unrolled")]
    unrolled = mode.endswith("_unrolled")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port",
                str(29300 + os.getpid() % 300)] if mode.startswith("gloo") else torchrun()
    result = launch(cli_args(tiny, tmp_path, 2, [*extra, *(UNROLL if unrolled else [])]), launcher)
    two = records(tmp_path)
    one = request.getfixturevalue("one_process_unrolled" if unrolled else "one_process")
    assert len(two) == len(one) == 10
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
        if unrolled:
            assert b["unroll1_loss"] == pytest.approx(a["unroll1_loss"], rel=1e-5) and a["unroll1_loss"] > 0
        assert b["tokens"] == a["tokens"] and b["head1_top1"] == pytest.approx(a["head1_top1"], abs=1e-6)
    assert "trained draft" in result.stdout
    DraftHead.from_pretrained(tmp_path / EXPORT)


def kill_while_training(tiny, out, launcher, kill):
    """Start ``launcher -m jakiro.train.main`` on a long run into ``out``, call ``kill(process)`` once it has logged
    3 optimizer steps; (exit code, its stderr and stdout together)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = cli_args(tiny, out, 1, ["train.num_epochs=1000", "train.checkpoint_steps=0"])
    run = subprocess.Popen([*launcher, "-m", "jakiro.train.main", *args], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=default_stop_signals)
    try:
        deadline = time.monotonic() + 300
        while not ((out / METRICS).exists() and len(records(out)) >= 3):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0][-3000:]
            time.sleep(0.2)
        kill(run)
        err, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    return run.returncode, err


def test_kill_of_a_training_process_checkpoints_and_exits_143(tiny, tmp_path):
    """The real thing: ``kill`` of ``python -m jakiro.train.main`` while it trains."""
    code, err = kill_while_training(tiny, tmp_path, [sys.executable], lambda run: run.send_signal(signal.SIGTERM))
    assert code == 143, err[-3000:]
    steps = len(records(tmp_path))
    assert f"stopped by SIGTERM after step {steps} of " in err and "--resume" in err
    assert latest_checkpoint(tmp_path).name == f"step_{steps}"
    assert "Setting accelerator to CPU" not in err  # DeepSpeed's guess of the device (stdout), at the checkpoint


def test_a_signal_to_one_of_two_processes_stops_both_after_the_same_step(tiny, tmp_path):
    """torchrun, 2 processes: ``kill`` of one worker only; both agree to stop after the same step, which is
    checkpointed, and each says so."""
    def kill_one_worker(run):
        workers = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        os.kill(int(workers[1]), signal.SIGTERM)

    code, err = kill_while_training(tiny, tmp_path, torchrun(), kill_one_worker)
    assert code != 0
    steps = len(records(tmp_path))
    assert f"after step {steps} of " in err and "--resume" in err, err[-3000:]  # rank 0 says it, signalled or not
    assert latest_checkpoint(tmp_path).name == f"step_{steps}"


# --- configuration and CLI --------------------------------------------------------------------------------------------
def test_reference_flags_map_to_config_keys():
    args = parse_args(["--basepath", "m", "--tmpdir", "d", "--cpdir", "o", "--configpath", "c.json", "--lr", "1e-4",
                       "--bs", "2", "--gradient-accumulation-steps", "3", "--set", "train.lr=2e-4"])
    cfg = resolve_config(args)
    assert (cfg.model.base_model_path, cfg.train.data_dir, cfg.train.output_dir, cfg.train.draft_config) == \
        ("m", "d", "o", "c.json")
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.gradient_accumulation_steps) == (2e-4, 2, 3)  # --set wins


def test_deepspeed_settings_fill_auto(tmp_path):
    train = load_config(None, ["train.grad_clip_mode=norm", "train.batch_size=3"]).train
    settings = deepspeed_settings(str(ROOT / "configs" / "deepspeed_zero3.json"), train)
    assert settings["train_micro_batch_size_per_gpu"] == 3 and settings["gradient_clipping"] == 0.5
    assert settings["zero_optimization"]["stage"] == 3
    with pytest.raises(ConfigError, match="by norm only"):
        deepspeed_settings(str(ROOT / "configs" / "deepspeed_zero2.json"), load_config().train)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=8"):
        deepspeed_settings(str(path), train)


def run_cli(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_errors(tiny, trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--basepath", str(tiny["root"] / "target"), "--cpdir", str(tmp_path / "out")]
    code, err = run_cli(capsys, [*base, "--tmpdir", str(empty)])
    assert code == 2 and len(err) == 1 and "empty" in err[0] and "jakiro.ge_data" in err[0]
    code, err = run_cli(capsys, [*base, "--tmpdir", str(tmp_path / "missing")])
    assert code == 2 and len(err) == 1 and "missing" in err[0]
    foreign = write_feature_dir(tmp_path / "foreign", tiny["test"][:2], 32, VOCAB)
    code, err = run_cli(capsys, [*base, "--tmpdir", str(foreign)])
    assert code == 2 and len(err) == 1 and "hidden_size 32" in err[0] and "another target" in err[0]
    code, err = run_cli(capsys, [*base, "--tmpdir", str(tiny["features"]), "--set", "train.lrr=1"])
    assert code == 2 and err == ["error: unknown key 'train.lrr' (did you mean 'train.lr'?)"]
    code, err = run_cli(capsys, [*base, "--tmpdir", str(tiny["features"]), "--set", "train.report_to=mlflow"])
    assert code == 2 and len(err) == 1 and "train.report_to" in err[0]
    assert not (tmp_path / "out").exists()
    reuse = ["--basepath", str(tiny["root"] / "target"), "--tmpdir", str(tiny["features"]), "--cpdir",
             str(trained["out"])]
    code, err = run_cli(capsys, reuse)  # a finished run's checkpoints are not overwritten without --resume
    assert code == 2 and "already holds checkpoints" in err[-1] and "--resume" in err[-1]


def test_init_from_continues_a_trained_draft(tiny, trained, tmp_path, capsys):
    """train.init_from: the new run starts from the trained draft's architecture and weights (its first-step loss is
    the trained draft's, far below a fresh draft's), with a fresh schedule; bad uses are one-line errors."""
    base = ["--basepath", str(tiny["root"] / "target"), "--tmpdir", str(tiny["features"]),
            *[a for o in ("train.num_epochs=1", "train.batch_size=4", "train.checkpoint_steps=0",
                          "train.warmup_steps=0", "train.test_fraction=0.25", "draft.num_experts=4")
              for a in ("--set", o)]]
    first_loss = {}
    for name, extra in (("fresh", []), ("continued", ["--set", f"train.init_from={trained['export']}"])):
        assert main([*base, "--cpdir", str(tmp_path / name), *extra]) == 0
        first_loss[name] = records(tmp_path / name)[0]["loss"]
    assert first_loss["continued"] < 0.9 * first_loss["fresh"], first_loss
    # training.json beside each export: this run's steps and tokens, its data and recipe, the run it continued
    fresh, continued_record = (read_training_record(tmp_path / name / EXPORT) for name in ("fresh", "continued"))
    steps = records(tmp_path / "fresh")
    assert fresh["steps"] == steps[-1]["step"] == len(steps) and fresh["init_from"] is None
    assert fresh["training_tokens"] == pytest.approx(sum(r["tokens"] for r in steps))
    assert fresh["total_training_tokens"] == fresh["training_tokens"] > 0
    assert fresh["data"]["features"] == "features" and fresh["recipe"]["draft"]["num_experts"] == 4
    assert fresh["held_out"]["test_loss"] == records(tmp_path / "fresh", "eval")[-1]["test_loss"]
    assert str(tmp_path) not in json.dumps(fresh)  # no absolute path of this machine
    assert fresh["versions"]["torch"] == torch.__version__
    assert fresh["versions"]["jakiro"] == importlib.metadata.version("jakiro")
    earlier = read_training_record(trained["export"])  # the fixture's run: a Trainer without a data description
    assert earlier["data"] is None and earlier["steps"] == 96
    assert continued_record["init_from"]["training"] == earlier
    assert continued_record["total_training_tokens"] == pytest.approx(
        continued_record["training_tokens"] + earlier["training_tokens"])
    init = DraftHead.from_pretrained(trained["export"])
    continued = DraftHead.from_pretrained(tmp_path / "continued" / EXPORT)
    assert continued.config == init.config  # the init's architecture wins over draft.*
    assert continued.config.num_local_experts != 4 and not torch.equal(continued.fc.weight, init.fc.weight)
    assert [r["lr"] for r in records(tmp_path / "continued")] == [r["lr"] for r in records(tmp_path / "fresh")]
    capsys.readouterr()
    code, err = run_cli(capsys, [*base, "--cpdir", str(tmp_path / "x"), "--set",
                                 f"train.init_from={tmp_path / 'none'}"])
    assert code == 2 and len(err) == 1 and err[0].startswith("error: train.init_from:") and "none" in err[0]
    code, err = run_cli(capsys, [*base, "--cpdir", str(tmp_path / "x"), "--set",
                                 f"train.init_from={trained['export']}", "--set",
                                 f"train.draft_config={trained['export']}"])
    assert code == 2
    assert err == ["error: train.init_from and train.draft_config both fix the architecture; set only one"]
    code, err = run_cli(capsys, [*base, "--cpdir", str(tmp_path / "x"), "--set",
                                 f"train.init_from={trained['export']}", "--set",
                                 f"draft.vocab_extra_data={tiny['features']}"])
    assert code == 2 and len(err) == 1 and "a draft continued with train.init_from keeps its own" in err[0]


def test_resume_keeps_its_init_draft_by_weights_not_by_record(tiny, trained, tmp_path, capsys):
    """A run continued from a draft resumes after that draft's training.json was written anew, and is refused once
    the weights changed; a finished run resumed leaves its export as it is (unless the export is incomplete)."""
    init = tmp_path / "init"
    shutil.copytree(trained["export"], init)
    settings = ("train.num_epochs=1", "train.batch_size=4", "train.checkpoint_steps=1", f"train.init_from={init}")
    args = ["--basepath", str(tiny["root"] / "target"), "--tmpdir", str(tiny["features"]), "--cpdir",
            str(tmp_path / "run"), *[a for o in settings for a in ("--set", o)]]
    assert main([*args, "--set", "train.stop_after_steps=2"]) == 0
    record = json.loads((init / "training.json").read_text())
    (init / "training.json").write_text(json.dumps({**record, "commit": "a later one"}))
    assert main([*args, "--set", "train.stop_after_steps=3", "--resume"]) == 0
    assert [r["step"] for r in records(tmp_path / "run")] == [1, 2, 3]
    export = tmp_path / "run" / EXPORT
    exported = {path.name: path.read_bytes() for path in export.iterdir()}
    (export / "training.json").write_text(json.dumps({**json.loads(exported["training.json"]), "mark": 1}))
    capsys.readouterr()
    assert main([*args, "--set", "train.stop_after_steps=3", "--resume"]) == 0  # nothing left: the export stays
    assert "nothing left to train" in capsys.readouterr().out
    assert json.loads((export / "training.json").read_text())["mark"] == 1
    (export / "training.json").unlink()  # a run killed while exporting exports again
    assert main([*args, "--set", "train.stop_after_steps=3", "--resume"]) == 0
    assert {path.name: path.read_bytes() for path in export.iterdir()}.keys() == exported.keys()
    assert (export / "model.safetensors").read_bytes() == exported["model.safetensors"]
    weights = load_file(init / "model.safetensors")
    save_file({k: v + 1 if k == "fc.weight" else v for k, v in weights.items()}, init / "model.safetensors")
    capsys.readouterr()
    code, err = run_cli(capsys, [*args, "--resume"])
    errors = [line for line in err if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and "inputs.init_from" in errors[0]


def test_reduced_draft_vocabulary_run(tiny, tmp_path, capsys):
    """draft.vocab_size=16: the draft scores the 16 most frequent answer tokens of the training split, is exported
    with them, and generates losslessly."""
    out = tmp_path / "out"
    args = ["--basepath", str(tiny["root"] / "target"), "--tmpdir", str(tiny["features"]), "--cpdir", str(out),
            *[a for o in ("train.num_epochs=2", "train.batch_size=4", "train.checkpoint_steps=0",
                          "train.test_fraction=0.25", "draft.vocab_size=16") for a in ("--set", o)]]
    assert main(args) == 0
    assert "draft vocabulary: 16 of 64 tokens, covering" in capsys.readouterr().err
    draft = DraftHead.from_pretrained(out / EXPORT)
    cfg = resolve_config(parse_args(args))
    train_idx, _ = split_indices(len(FeatureShards(tiny["features"])), cfg.train.test_fraction, cfg.train.seed)
    counts = torch.zeros(VOCAB, dtype=torch.long)
    for i in train_idx:  # count by hand from the data directory
        item = FeatureShards(tiny["features"])[i]
        counts += torch.bincount(item["input_ids"][item["loss_mask"] > 0], minlength=VOCAB)
    order = sorted(range(VOCAB), key=lambda t: (-int(counts[t]), t))[:16]
    assert draft.config.draft_vocab_size == 16 and draft.d2t.tolist() == sorted(order)
    assert all(r["loss"] > 0 and "head1_top1" in r for r in records(out))
    model = EaModel(tiny["target"], draft, None, total_token=12, depth=3, top_k=3, stop_token_ids=[])
    for item in tiny["test"][:3]:
        prompt = item["input_ids"][None, :6]
        assert torch.equal(model.eagenerate(prompt, max_new_tokens=24), model.naivegenerate(prompt,
                                                                                            max_new_tokens=24))


def test_vocabulary_counts_the_extra_data_training_split(tiny, tmp_path, capsys):
    """draft.vocab_extra_data: the answer tokens of that features dir's training split (split like train.data_dir)
    are counted with the training data's when picking the draft vocabulary; bad dirs are one-line errors."""
    g = torch.Generator().manual_seed(3)
    extra_items = [{"input_ids": torch.randint(40, VOCAB, (30,), generator=g),
                    "hidden_state": torch.randn(30, 64, generator=g).to(torch.bfloat16),
                    "loss_mask": torch.ones(30, dtype=torch.long)} for _ in range(40)]
    identity = json.loads((tiny["features"] / "manifest.json").read_text())["target"]["identity"]
    extra = write_feature_dir(tmp_path / "extra", extra_items, 64, VOCAB, identity)
    sets = ("train.num_epochs=1", "train.batch_size=4", "train.checkpoint_steps=0", "train.test_fraction=0.25",
            "draft.vocab_size=16", f"draft.vocab_extra_data={extra}")
    args = ["--basepath", str(tiny["root"] / "target"), "--tmpdir", str(tiny["features"]), "--cpdir",
            str(tmp_path / "out"), *[a for o in sets for a in ("--set", o)]]
    assert main(args) == 0
    assert "of draft.vocab_extra_data's" in capsys.readouterr().err

    def answer_counts(folder):
        data = FeatureShards(folder)
        counts = torch.zeros(VOCAB, dtype=torch.long)
        for i in split_indices(len(data), 0.25, 0)[0]:
            counts += torch.bincount(data[i]["input_ids"][data[i]["loss_mask"] > 0], minlength=VOCAB)
        return counts

    def top16(counts):
        return sorted(sorted(range(VOCAB), key=lambda t: (-int(counts[t]), t))[:16])

    draft = DraftHead.from_pretrained(tmp_path / "out" / EXPORT)
    assert draft.d2t.tolist() == top16(answer_counts(tiny["features"]) + answer_counts(extra))
    assert draft.d2t.tolist() != top16(answer_counts(tiny["features"]))  # the extra data changed the choice
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["inputs"]["vocab_extra_data_sha256"] == sha256_file(extra / "manifest.json")
    for folder, message in ((tmp_path / "none", "draft.vocab_extra_data"), (tmp_path / "other", "another target")):
        if folder.name == "other":
            write_feature_dir(folder, extra_items, 64, VOCAB, "someone-else")
        bad = [a if not a.startswith("draft.vocab_extra_data=") else f"draft.vocab_extra_data={folder}" for a in args]
        code, err = run_cli(capsys, [*bad[:5], str(tmp_path / f"out-{folder.name}"), *bad[6:]])
        assert code == 2 and err[-1].startswith("error: ") and message in err[-1], err


def test_deepspeed_zero3_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    """ZeRO-3 (one process: DeepSpeed's partitioned parameters and optimizer state in its own checkpoint format):
    killed after a checkpoint, resumed, it ends with the weights of the run that was never stopped."""
    zero3 = ["train.deepspeed_config=configs/deepspeed_zero3.json", "train.checkpoint_steps=3"]

    def args(out, extra=()):
        return cli_args(tiny, out, 4, [*zero3, *extra])

    launch(args(tmp_path / "whole"), [sys.executable])
    cut = tmp_path / "cut"
    launch(args(cut, ["train.stop_after_steps=7"]), [sys.executable])
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_3", "step_6", "step_7"]
    shutil.rmtree(cut / "checkpoints" / "step_7")  # killed before step 7's checkpoint
    launch([*args(cut), "--resume"], [sys.executable])
    want = load_file(tmp_path / "whole" / EXPORT / "model.safetensors")
    got = load_file(cut / EXPORT / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_init_from_target_starts_from_the_targets_last_layer(tiny, tmp_path, capsys):
    """draft.init_from_target: the new draft's attention, norm and (equal-width) experts are the target's last
    layer's at the start of training, a log line says what was copied; train.init_from excludes it."""
    base = ["--basepath", str(tiny["root"] / "target"), "--tmpdir", str(tiny["features"]), "--cpdir",
            str(tmp_path / "out"), *[a for o in ("draft.init_from_target=true", "draft.expert_intermediate_size=128",
                                                 "model.dtype=float32", "train.test_fraction=0.25")
                                     for a in ("--set", o)]]
    trainer = build_trainer(resolve_config(parse_args(base)))
    assert "draft.init_from_target: copied 12 tensors from target layer 1" in capsys.readouterr().out
    layer, mine = tiny["target"].model.layers[-1], trainer.draft.layers[0]
    assert trainer.draft.config.input_norm  # the copied attention gets its normalised inputs
    assert torch.equal(mine.input_layernorm.weight, layer.input_layernorm.weight)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert torch.equal(getattr(mine.self_attn, name).weight, getattr(layer.self_attn, name).weight)
    assert torch.equal(mine.post_attention_layernorm.weight, layer.post_attention_layernorm.weight)
    assert all(torch.equal(expert.down_proj.weight, layer.mlp.down_proj.weight) for expert in mine.mlp_moe.experts)
    assert trainer.identity["config"]["draft"]["init_from_target"] is True  # a resume with another setting is refused
    reset_accelerate()
    code, err = run_cli(capsys, [*base, "--set", f"train.init_from={tmp_path}"])
    assert code == 2 and err == ["error: train.init_from and draft.init_from_target both set the initial weights; "
                                 "set only one"]
