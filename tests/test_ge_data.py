"""Tests of the data generation pipeline (jakiro.ge_data): inputs, shards + manifest, resume, accelerate, datasets.

Real-model tests use the embedded SmolLM2-135M-Instruct (fp32 weights, a handful of short conversations). The
resume and 2-process tests use a tiny random Llama saved with SmolLM2's tokenizer, so they take seconds.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from tiny_models import tiny_target
from transformers import AutoModelForCausalLM, AutoTokenizer

from jakiro.common import assets
from jakiro.common.config import load_config
from jakiro.ge_data import allocation
import jakiro.ge_data.generate as gen
from jakiro.ge_data.dataset import FeatureShards, OnlineFeatures, read_manifest
from jakiro.ge_data.generate import GeDataError, generate_features, load_conversations, main
from jakiro.common.chat_templates import encode, get_template, to_messages


def conv(*pairs):
    turns = []
    for user, reply in pairs:
        turns.append({"from": "human", "value": user})
        if reply is not None:
            turns.append({"from": "gpt", "value": reply})
    return {"conversations": turns}


GOOD = [
    conv(("What is 2 + 2?", "2 + 2 is 4.")),
    conv(("Name a colour.", "Blue."), ("Another one?", "Green, like grass.")),
    conv(("Say hi in French.", "Bonjour !")),
    conv(("Is the sky blue?", "Yes, on a clear day."), ("Why?", "Rayleigh scattering.")),
    conv(("Count to three.", "One, two, three.")),
]
BAD = [  # (record, skip reason)
    ({"conversations": []}, "empty"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bing", "value": "yo"}]}, "bad_role"),
    (conv(("Only a question", None)), "no_assistant"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                        {"from": "gpt", "value": "c"}]}, "not_alternating"),
    ({"text": "no conversations key"}, "malformed"),
    (conv(("word " * 80, "too late")), "no_assistant_within_max_len"),
]


def records(n_good=None):
    """GOOD interleaved with BAD: a fixed input list."""
    out = []
    for i, good in enumerate(GOOD[:n_good]):
        out.append(good)
        if i < len(BAD):
            out.append(BAD[i][0])
    return out + [r for r, _ in BAD[len(GOOD[:n_good]):]]


def write_input(path, data, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    elif kind == "json":
        path.write_text(json.dumps(data))
    else:
        import datasets

        datasets.Dataset.from_list([r for r in data if "conversations" in r]).save_to_disk(str(path))
    return path


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- inputs and errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["json", "jsonl", "datasets"])
def test_load_conversations(tmp_path, kind):
    data = [conv(("q", "a")), conv(("q2", "a2"), ("q3", "a3"))]
    loaded, path = load_conversations(write_input(tmp_path / f"in.{kind}", data, kind))
    assert [to_messages(r) for r in loaded] == [to_messages(r) for r in data] and path.endswith(kind)


def test_default_input_is_sharegpt(tmp_path, monkeypatch):
    path = write_input(tmp_path / "sharegpt.jsonl", [conv(("q", "a"))], "jsonl")
    monkeypatch.setattr(gen, "ensure_sharegpt", lambda progress: path)
    assert load_conversations(None) == ([conv(("q", "a"))], str(path))


def test_input_errors(tmp_path):
    with pytest.raises(GeDataError, match="input not found.*nope.json"):
        load_conversations(tmp_path / "nope.json")
    with pytest.raises(GeDataError, match="no conversations"):
        load_conversations(write_input(tmp_path / "empty.json", [], "json"))
    (tmp_path / "bad.jsonl").write_text('{"conversations": []}\n{oops\n')
    with pytest.raises(GeDataError, match="bad.jsonl, line 2: not JSON"):
        load_conversations(tmp_path / "bad.jsonl")
    (tmp_path / "dict.json").write_text('{"conversations": []}')
    with pytest.raises(GeDataError, match="expected a JSON list"):
        load_conversations(tmp_path / "dict.json")


def test_cli_errors(tmp_path, capsys):
    path = write_input(tmp_path / "in.json", GOOD, "json")
    assert main(["--set", "data.chat_template=chatml", "--set", f"data.input_path={path}"]) == 2
    assert "unknown chat template 'chatml'; valid: auto, vicuna, llama-2, llama-3" in capsys.readouterr().err
    assert main(["--set", f"data.input_path={tmp_path / 'missing.jsonl'}"]) == 2
    assert "input not found" in capsys.readouterr().err
    assert main(["--set", f"data.input_path={path}", "--set", "data.start=10", "--set", "data.end=20"]) == 2
    assert "no conversations in [10, 20) of 5" in capsys.readouterr().err


# --- tiny target: resume, alias, two processes ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer, an input file and a config file using them."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(assets.ensure_smollm2(progress=False))
    model = tiny_target("llama", vocab_size=len(tokenizer))
    model.save_pretrained(root / "target")
    tokenizer.save_pretrained(root / "target")
    data = write_input(root / "in.jsonl", records(), "jsonl")
    config = root / "ge_data.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base_model_path": str(root / "target"), "dtype": "float32"},
        "data": {"input_path": str(data), "shard_size": 3, "max_len": 48},
    }))
    return root, config


def test_resume_gives_identical_result(tiny_run, tmp_path):
    root, config = tiny_run
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert allocation.main(["--config", str(config), "--outdir", str(full), "--quiet"]) == 0  # the reference alias
    expected = json.loads((full / "manifest.json").read_text())
    assert expected["totals"]["shards"] == 4 and expected["totals"]["conversations"] == len(GOOD)
    assert expected["totals"]["skipped"] == dict(sorted((reason, 1) for _, reason in BAD))

    cfg = load_config(config, [f"data.output_dir={parts}"])
    assert generate_features(cfg, max_shards=1, progress=False) is None  # "killed" after one shard
    assert sorted(p.name for p in parts.iterdir()) == ["shard_00000.safetensors"]
    (parts / ".shard_00001.safetensors.12345.tmp").write_bytes(b"partial write of a killed run")
    assert generate_features(cfg, max_shards=1, progress=False) is None
    assert generate_features(cfg, progress=False) == expected
    assert (parts / "manifest.json").read_bytes() == (full / "manifest.json").read_bytes()
    assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in full.iterdir())  # temp file gone
    assert all(sha(parts / s["file"]) == s["sha256"] for s in expected["shards"])
    assert generate_features(cfg, progress=False) == expected  # a finished run is a no-op

    with pytest.raises(GeDataError, match="other settings \\(max_len: 48 recorded, 64 now\\)"):
        generate_features(load_config(config, [f"data.output_dir={parts}", "data.max_len=64"]), progress=False)


def test_changed_input_content_or_corrupted_shard_is_refused(tiny_run, tmp_path, capsys):
    """Same input path and record count but other text: the old shards are not reused (issue 28, finding 1); a
    truncated shard and an output path that is a file are named in one-line errors."""
    root, config = tiny_run
    data = [dict(r) for r in records()]
    source = write_input(tmp_path / "in.jsonl", data, "jsonl")
    out = tmp_path / "out"
    cfg = load_config(config, [f"data.output_dir={out}", f"data.input_path={source}"])
    assert generate_features(cfg, max_shards=2, progress=False) is None
    data[0] = conv(("What is 3 + 3?", "3 + 3 is 6."))
    write_input(source, data, "jsonl")
    with pytest.raises(GeDataError, match="input.content_sha256"):
        generate_features(cfg, progress=False)
    shutil.rmtree(out)
    write_input(source, records(), "jsonl")
    assert generate_features(cfg, max_shards=1, progress=False) is None
    shard = out / "shard_00000.safetensors"
    damaged = bytearray(shard.read_bytes())
    damaged[-8:] = b"\xff" * 8  # same size, other bytes: not given a manifest hash
    shard.write_bytes(bytes(damaged))
    with pytest.raises(GeDataError, match="tensors changed since the shard was written"):
        generate_features(cfg, progress=False)
    assert not (out / "manifest.json").exists()
    shard.write_bytes(shard.read_bytes()[:40])
    args = ["--config", str(config), "--set", f"data.output_dir={out}", "--set", f"data.input_path={source}",
            "--quiet"]
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and str(shard) in err[0] and "truncated" in err[0] and "delete it" in err[0]
    file_out = tmp_path / "a-file"
    file_out.write_text("mine")
    assert main([*args[:-1], "--set", f"data.output_dir={file_out}", "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and "is an existing file" in err[0] and file_out.read_text() == "mine"


def test_raising_data_end_reuses_finished_shards(tiny_run, tmp_path):
    """end=5 writes shards [0, 3) and [3, 5); end=None (11 conversations) keeps shard 0 untouched, recomputes the cut
    shard 1, adds shards 2 and 3, and ends with the files of a run that had end=None from the start."""
    root, config = tiny_run
    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    small = generate_features(load_config(config, [f"data.output_dir={grown}", "data.end=5"]), progress=False)
    assert small["totals"]["shards"] == 2 and small["input"]["end"] == 5
    first = (grown / "shard_00000.safetensors").stat().st_mtime_ns
    cut = sha(grown / "shard_00001.safetensors")
    full = generate_features(load_config(config, [f"data.output_dir={grown}"]), progress=False)
    assert (grown / "shard_00000.safetensors").stat().st_mtime_ns == first  # reused, not rewritten
    assert sha(grown / "shard_00001.safetensors") != cut  # its 2 conversations became 3
    assert full == generate_features(load_config(config, [f"data.output_dir={fresh}"]), progress=False)
    assert all(sha(grown / s["file"]) == sha(fresh / s["file"]) for s in full["shards"])


def test_shard_format(tiny_run, tmp_path):
    root, config = tiny_run
    generate_features(load_config(config, [f"data.output_dir={tmp_path}", "data.shard_size=100"]), progress=False)
    manifest = read_manifest(tmp_path)
    assert [s["file"] for s in manifest["shards"]] == ["shard_00000.safetensors"]
    assert manifest["target"]["hidden_size"] == 64 and manifest["features_dtype"] == "bfloat16"
    assert manifest["input"]["selected"] == len(records())
    with safe_open(str(tmp_path / "shard_00000.safetensors"), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    n, total = len(GOOD), int(t["offsets"][-1])
    assert t["input_ids"].dtype == torch.int32 and t["input_ids"].shape == (total,)
    assert t["loss_mask"].dtype == torch.uint8 and t["loss_mask"].shape == (total,)
    assert t["hidden_state"].dtype == torch.bfloat16 and t["hidden_state"].shape == (total, 64)
    assert t["offsets"].shape == (n + 1,) and t["index"].shape == (n,)
    assert total == manifest["totals"]["tokens"] and int(t["loss_mask"].sum()) == manifest["totals"]["assistant_tokens"]
    assert max(torch.diff(t["offsets"]).tolist()) <= 48  # truncated to data.max_len
    kept = [records()[i] for i in t["index"].tolist()]
    assert sorted(map(json.dumps, kept)) == sorted(map(json.dumps, GOOD))


def test_two_processes_with_accelerate(tiny_run, tmp_path):
    root, config = tiny_run
    single = tmp_path / "single"
    generate_features(load_config(config, [f"data.output_dir={single}"]), progress=False)
    out = tmp_path / "two"
    launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "jakiro.ge_data", "--config", str(config),
              "--set", f"data.output_dir={out}", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # model.device=cpu: the processes form a gloo (MULTI_CPU) group
    first = subprocess.run(launch + ["--max-shards", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 shards written" in first.stdout and "2 process(es)" in first.stdout  # one shard per process
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000.safetensors", "shard_00001.safetensors"]
    second = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (out / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()


# --- SmolLM2: stored features are the target's, online == stored ------------------------------------------

@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    data = write_input(root / "in.json", records(), "json")
    cfg = load_config(None, ["model.dtype=float32", f"data.input_path={data}", f"data.output_dir={root / 'out'}",
                             "data.shard_size=4", "data.max_len=48"])
    manifest = generate_features(cfg, progress=False)
    return cfg, manifest


def test_smollm2_end_to_end(smollm2_run):
    cfg, manifest = smollm2_run
    assert manifest["target"]["name"].startswith("SmolLM2-135M-Instruct") and manifest["target"]["hidden_size"] == 576
    assert manifest["totals"]["conversations"] == len(GOOD) and sum(manifest["totals"]["skipped"].values()) == len(BAD)
    stored = FeatureShards(cfg.data.output_dir)
    assert len(stored) == len(GOOD)
    path = assets.ensure_smollm2(progress=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = get_template("auto", tokenizer)
    expected = sorted(encode(template, tokenizer, to_messages(r), 48)[0].tolist() for r in GOOD)
    assert sorted(stored[i]["input_ids"].tolist() for i in range(len(stored))) == expected
    for i in range(len(stored)):
        item = stored[i]
        ids = item["input_ids"]
        assert ids.dtype == torch.int64 and ids.shape == item["loss_mask"].shape and len(ids) <= 48
        assert item["hidden_state"].shape == (len(ids), 576) and item["hidden_state"].dtype == torch.bfloat16
        with torch.no_grad():
            direct = model(ids[None], output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(item["hidden_state"].float(), direct, rtol=1 / 128, atol=1e-3)


def test_online_equals_stored(smollm2_run):
    cfg, _ = smollm2_run
    stored = FeatureShards(cfg.data.output_dir)
    online = OnlineFeatures.from_config(cfg, progress=False)
    assert len(online) == len(stored) and sum(online.skipped.values()) == len(BAD)
    for i in range(len(stored)):
        a, b = stored[i], online[i]
        assert a.keys() == b.keys()
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["loss_mask"], b["loss_mask"])
        assert a["hidden_state"].dtype == b["hidden_state"].dtype == torch.bfloat16
        torch.testing.assert_close(a["hidden_state"].float(), b["hidden_state"].float(), rtol=1 / 128, atol=1e-3)
    # the online features can feed a trained module (no inference-mode tensors)
    layer = torch.nn.Linear(576, 2)
    layer(online[0]["hidden_state"].float()).sum().backward()


def test_feature_shards_split_and_errors(smollm2_run, tmp_path):
    cfg, manifest = smollm2_run
    full = FeatureShards(cfg.data.output_dir)
    last = FeatureShards(cfg.data.output_dir, shards=[len(manifest["shards"]) - 1])
    assert len(last) == manifest["shards"][-1]["conversations"]
    assert torch.equal(last[len(last) - 1]["input_ids"], full[len(full) - 1]["input_ids"])
    with pytest.raises(IndexError):
        full[len(full)]
    with pytest.raises(GeDataError, match="no manifest.json"):
        FeatureShards(tmp_path)
