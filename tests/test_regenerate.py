"""Tests of self-distilled data (jakiro.ge_data.regenerate): the target's own answers, turn by turn, resumable.

A tiny random Llama with SmolLM2's tokenizer answers; a third of its vocabulary counts as end-of-sequence so that
answers end after a few tokens and conversations go on for several turns.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import save_tiny_target_with_smollm2_tokenizer

from jakiro.common.chat_templates import get_template, to_messages
from jakiro.common.config import load_config
from jakiro.ge_data.generate import GeDataError, generate_features
from jakiro.ge_data.regenerate import main, regenerate


def conv(*users, reply="a reply"):
    turns = []
    for user in users:
        turns += [{"from": "human", "value": user}, {"from": "gpt", "value": reply}]
    return {"id": f"c{len(users)}-{users[0][:8]}", "conversations": turns}


RECORDS = [
    conv("What is 2 + 2?"),
    conv("Name a colour.", "Another one?", "And a third?"),
    {"conversations": [{"from": "human", "value": "a"}, {"from": "bing", "value": "b"}]},  # skipped: bad role
    conv("Say hi in French.\u2028Thanks.", "Now in German.\x85"),  # line separators that are not "\n"
    conv("word " * 200),  # the prompt alone reaches max_len: never asked
    conv("Is the sky blue?", "Why?"),
    conv("Count to three.", "Backwards?"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("regen")
    model, tokenizer = save_tiny_target_with_smollm2_tokenizer(root / "target", eos_every=3)
    data = root / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config = root / "regenerate.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base_model_path": str(root / "target"), "dtype": "float32", "chat_template": "auto"},
        "data": {"input_path": str(data), "max_len": 160},
        "regenerate": {"max_new_tokens": 12, "batch_size": 1},
    }))
    return {"root": root, "config": config, "model": model, "tokenizer": tokenizer}


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def test_answers_are_the_targets_own(tiny, tmp_path):
    """Every assistant turn is the target's greedy answer, generated alone, to the regenerated conversation so far;
    user turns are the source's; a prompt over max_len and a malformed record drop out."""
    out = tmp_path / "out.jsonl"
    cfg = load_config(tiny["config"], [f"regenerate.output_path={out}", "regenerate.batch_size=3"])
    assert regenerate(cfg, progress=False) == out
    rows = read(out)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in RECORDS if "id" in r and "word" not in r["id"])
    model, tokenizer = tiny["model"], tiny["tokenizer"]
    template = get_template("auto", tokenizer)
    ends = set(model.generation_config.eos_token_id)
    turns = 0
    for row in rows:
        source = to_messages(RECORDS[row["source_index"]])
        messages = to_messages(row)
        assert [m["content"] for m in messages[::2]] == [m["content"] for m in source[::2]][:len(messages) // 2]
        for k in range(1, len(messages), 2):
            ids = tokenizer(template.render(messages[:k], True), return_tensors="pt").input_ids
            with torch.no_grad():
                new = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=sorted(ends),
                                     pad_token_id=0)[0, ids.shape[1]:].tolist()
            cut = next((i for i, t in enumerate(new) if t in ends), len(new))
            assert messages[k]["content"] == tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
            assert messages[k]["content"] != "a reply"
            turns += 1
    assert turns > len(rows)  # some conversations went on past their first turn


def test_resume_matches_one_run_and_feeds_ge_data(tiny, tmp_path):
    whole, parts = tmp_path / "whole.jsonl", tmp_path / "parts.jsonl"
    assert regenerate(load_config(tiny["config"], [f"regenerate.output_path={whole}"]), progress=False) == whole
    cfg = load_config(tiny["config"], [f"regenerate.output_path={parts}"])
    assert regenerate(cfg, max_parts=1, progress=False) is None  # "killed" after the first part of 4 conversations
    assert not parts.exists() and len(list(parts.with_name("parts.jsonl.parts").glob("part_*.jsonl"))) == 1
    assert regenerate(cfg, progress=False) == parts
    assert parts.read_bytes() == whole.read_bytes()
    assert any("\u2028" in turn["value"] for row in read(parts) for turn in row["conversations"])

    features = load_config(tiny["config"], [f"data.input_path={parts}", f"data.output_dir={tmp_path / 'f'}"])
    manifest = generate_features(features, progress=False)
    assert manifest["totals"]["conversations"] == len(read(parts))

    with pytest.raises(GeDataError, match="other settings \\(regenerate.max_new_tokens: 12 recorded, 5 now\\)"):
        regenerate(load_config(tiny["config"], [f"regenerate.output_path={parts}", "regenerate.max_new_tokens=5"]),
                   progress=False)


def test_changed_input_or_an_existing_output_file_is_refused(tiny, tmp_path, capsys):
    """Parts answered from an input file whose content changed since (same path, same record count) are not
    reused; an output file that is not this run's is replaced only with --force."""
    source = tmp_path / "in.jsonl"
    source.write_text(Path(load_config(tiny["config"]).data.input_path).read_text())
    out = tmp_path / "out.jsonl"
    cfg = load_config(tiny["config"], [f"regenerate.output_path={out}", f"data.input_path={source}"])
    assert regenerate(cfg, max_parts=1, progress=False) is None
    original = source.read_text()
    source.write_text(original.replace("a reply", "another reply"))
    with pytest.raises(GeDataError, match="input.content_sha256"):
        regenerate(cfg, progress=False)
    source.write_text(original)
    part = out.with_name("out.jsonl.parts") / "part_00000.jsonl"
    part.write_text(part.read_text()[:-20])  # a damaged finished part is named, not concatenated
    with pytest.raises(GeDataError, match="part_00000.jsonl is truncated or corrupted"):
        regenerate(cfg, progress=False)
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my own file\n")
    args = ["--config", str(tiny["config"]), "--set", f"regenerate.output_path={mine}", "--quiet"]
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "--force" in err[0] and mine.read_text() == "my own file\n"
    assert main([*args, "--set", "data.end=2", "--force"]) == 0 and mine.read_text() != "my own file\n"


def test_cli_errors(tiny, tmp_path, capsys):
    assert main(["--config", str(tiny["config"]), "--set", f"data.input_path={tmp_path / 'missing.jsonl'}"]) == 2
    assert "input not found" in capsys.readouterr().err
    assert main(["--config", str(tiny["config"]), "--set", "regenerate.batch_size=0"]) == 2
    assert "regenerate.batch_size" in capsys.readouterr().err


def test_shipped_recipe_configs_chain():
    """The stage-2 recipe of the shipped drafts: regenerated file -> features -> training, on conversations that
    stage 1 did not use, continuing from the stage-1 draft."""
    stage1, train1 = load_config("ge_data_smollm2"), load_config("train_smollm2")
    regen, features = load_config("regenerate_smollm2"), load_config("ge_data_smollm2_selfdistill")
    train2 = load_config("train_smollm2_selfdistill")
    assert regen.data.input_path == stage1.data.input_path and regen.data.shuffle_seed == stage1.data.shuffle_seed
    assert regen.data.start >= stage1.data.end and regen.data.max_len == features.data.max_len
    assert features.data.input_path == regen.regenerate.output_path
    assert train2.train.data_dir == features.data.output_dir != train1.train.data_dir
    assert train2.train.init_from == f"{train1.train.output_dir}/draft"
