"""The record of what made a trained draft (``training.json``, :mod:`jakiro.train.provenance`): portable paths, the
data description of self-distilled features, steps and tokens from the metrics log, the code's commit, and the
shipped copy of a draft (:mod:`jakiro.train.ship`). The trainer's own record is tested in tests/test_train.py."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from jakiro.train import provenance
from jakiro.train.provenance import describe_features, portable, portable_recipe, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_portable_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "features").mkdir(parents=True)
    assert portable(tmp_path / "outputs" / "features") == "outputs/features"
    assert portable("outputs/features") == "outputs/features"
    assert portable(Path.home() / ".cache" / "x.jsonl") == "~/.cache/x.jsonl"
    assert portable(tmp_path.parent / "elsewhere" / "file.jsonl") == "file.jsonl"  # outside both: the name only
    assert portable(None) is None
    (tmp_path / "linked").symlink_to(tmp_path.parent, target_is_directory=True)  # a folder linked from elsewhere
    assert portable("linked/train/draft") == "linked/train/draft"  # a relative path stays as given
    recipe = portable_recipe({"train": {"data_dir": str(tmp_path / "outputs" / "features"), "init_from": "shipped:d",
                                        "lr": 1e-3, "output_dir": "out/run"},
                              "model": {"base_model_path": str(tmp_path.parent / "target"), "dtype": "auto"}})
    assert recipe == {"train": {"data_dir": "outputs/features", "init_from": "shipped:d", "lr": 1e-3,
                                "output_dir": "out/run"},
                      "model": {"base_model_path": "target", "dtype": "auto"}}


def test_self_distilled_features_say_how_they_were_answered(tmp_path):
    answers = tmp_path / "regenerated.jsonl"
    (tmp_path / "regenerated.jsonl.parts").mkdir()
    settings = {"input": {"path": str(tmp_path / "sharegpt_recovered.jsonl"), "records": 10, "content_sha256": "abc",
                          "shuffle_seed": 42, "start": 550},
                "target": {"path": str(tmp_path / "t"), "dtype": "bfloat16", "identity": "d82c"},
                "template": "auto", "system_prompt": None, "max_len": 1024,
                "regenerate": {"max_new_tokens": 256, "temperature": 0.0, "batch_size": 128, "seed": 0,
                               "decoder": "static"}}
    (tmp_path / "regenerated.jsonl.parts" / "settings.json").write_text(json.dumps(settings))
    manifest = {"input": {"path": str(answers), "content_sha256": "def", "shuffle_seed": 42, "start": 0,
                          "end": None},
                "totals": {"conversations": 7, "tokens": 5000, "assistant_tokens": 3000}}
    about = describe_features(tmp_path / "features", manifest)
    assert about["conversations"] == 7 and about["tokens"] == 5000 and about["assistant_tokens"] == 3000
    assert about["source"] == {"file": "regenerated.jsonl", "content_sha256": "def", "shuffle_seed": 42,
                               "start": 0, "end": None}
    assert about["self_distilled"] == {
        "from": {"file": "sharegpt_recovered.jsonl", "content_sha256": "abc", "shuffle_seed": 42, "start": 550},
        "target": {"dtype": "bfloat16", "identity": "d82c"}, "max_len": 1024,
        "regenerate": settings["regenerate"]}
    (tmp_path / "regenerated.jsonl.parts" / "settings.json").unlink()  # ShareGPT's own answers: not self-distilled
    assert describe_features(tmp_path / "features", manifest)["self_distilled"] is None


def test_read_metrics_sums_step_tokens_and_keeps_the_last_evaluation(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [{"type": "step", "step": 1, "tokens": 100.0}, {"type": "step", "step": 2, "tokens": 50.0},
             {"type": "epoch", "step": 2, "tokens": 150.0}, {"type": "eval", "step": 2, "test_loss": 3.0},
             {"type": "step", "step": 3, "tokens": 25.0}, {"type": "eval", "step": 3, "test_loss": 2.5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert read_metrics(log) == (3, 175.0, {"step": 3, "test_loss": 2.5})
    assert read_metrics(tmp_path / "none.jsonl") == (0, 0.0, None)


def test_source_commit_names_this_checkout():
    commit = provenance.source_commit()
    if not (ROOT / ".git").exists():
        assert commit is None
        return
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit) and commit.startswith(head)


def test_ship_writes_bf16_weights_and_the_record(tmp_path, monkeypatch, capsys):
    import torch

    import jakiro.drafts as drafts
    from jakiro.model.draft import DraftHead, DraftHeadConfig
    from jakiro.train.ship import main, ship
    from tiny_models import tiny_target

    monkeypatch.setattr(drafts, "FOLDER", tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    torch.manual_seed(0)
    draft = DraftHead(DraftHeadConfig.for_target(tiny_target("llama", 64, seed=0).config))
    source = tmp_path / "run" / "draft"
    draft.save_pretrained(source)
    assert main([str(source), "tiny-draft"]) == 2  # no record: a shipped draft must say what made it
    assert "training.json" in capsys.readouterr().err and not (tmp_path / "shipped" / "tiny-draft").exists()
    (source / provenance.FILE).write_text(json.dumps({"format": provenance.FORMAT, "training_tokens": 10.0}))
    assert main([str(source), "tiny-draft"]) == 0
    shipped = DraftHead.from_pretrained("shipped:tiny-draft")
    for (key, ours), theirs in zip(draft.state_dict().items(), shipped.state_dict().values()):
        assert torch.equal(ours.to(torch.bfloat16).to(theirs.dtype), theirs), key
    record = provenance.read_training_record(tmp_path / "shipped" / "tiny-draft")
    assert record["training_tokens"] == 10.0 and record["shipped"] == {"dtype": "bfloat16", "from": "draft"}
    capsys.readouterr()
    assert main([str(source), "tiny-draft"]) == 2  # an existing shipped draft is replaced only with --force
    assert "--force" in capsys.readouterr().err
    assert main([str(source), "tiny-draft", "--force"]) == 0
    with pytest.raises(ValueError, match="bad shipped draft name"):
        ship(source, "../elsewhere")


def test_every_shipped_draft_loads_and_says_what_made_it():
    """The shipped drafts, the previous generation (``-v1``) included: each loads and records its training."""
    from jakiro.drafts import FOLDER, shipped_drafts
    from jakiro.model.draft import DraftHead

    names = shipped_drafts()
    bases = ("smollm2-jakiro", "smollm2-eagle2", "smollm2-jakiro_star")
    for base in bases:
        assert base in names and f"{base}-v1" in names, names
        assert provenance.read_training_record(FOLDER / f"{base}-v1")["total_training_tokens"] == 2_224_000
    # the current generation: >= 20 M training tokens each (10x v1), the same data and optimizer steps for all three
    current = [provenance.read_training_record(FOLDER / base) for base in bases]
    for record in current:
        assert record["total_training_tokens"] >= 20_000_000, record["total_training_tokens"]
        assert record["steps"] == current[0]["steps"] and record["data"] == current[0]["data"]
        assert record["init_from"]["training"]["steps"] == current[0]["init_from"]["training"]["steps"]
    for name in names:
        draft = DraftHead.from_pretrained(f"shipped:{name}")
        assert draft.config.draft_vocab_size == 8192, name
        record = provenance.read_training_record(FOLDER / name)
        assert record["format"] == provenance.FORMAT and record["total_training_tokens"] > 0, name
        assert record["shipped"]["dtype"] == "bfloat16", name
