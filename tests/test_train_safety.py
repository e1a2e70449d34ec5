"""Training never ends in a silently wrong draft: corrupted or foreign data, a resume under other settings, a
non-finite loss, damaged or crafted checkpoints and occupied output dirs are one-line errors with exit status 2.

Uses the tiny target and feature dir of ``test_train`` (a few optimizer steps per run).
"""

import json
import shutil

import pytest
import torch
from test_train import VOCAB, fresh_accelerate_one_thread, sampled_items, tiny, write_feature_dir  # noqa: F401
from transformers import AutoConfig

from jakiro.target import target_identity
from jakiro.train.main import main
from jakiro.train.trainer import CHECKPOINTS, EXPORT, RUN_RECORD

SETTINGS = ("train.num_epochs=2", "train.batch_size=4", "train.checkpoint_steps=2", "train.warmup_steps=0",
            "train.test_fraction=0.25", "train.mixed_precision=no")


def args(tiny, out, features=None, extra=()):
    return ["--basepath", str(tiny["root"] / "target"), "--tmpdir", str(features or tiny["features"]), "--cpdir",
            str(out), *[a for o in (*SETTINGS, *extra) for a in ("--set", o)]]


def run(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    return code, err


def copy_features(tiny, tmp_path):
    return shutil.copytree(tiny["features"], tmp_path / "features")


def test_overwritten_shard_bytes_are_caught_when_training_opens_the_data(tiny, tmp_path, capsys):
    features = copy_features(tiny, tmp_path)
    shard = features / "shard_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-64:] = b"\xff" * 64  # same size: a NaN-filled tail of the features
    shard.write_bytes(bytes(data))
    code, err = run(capsys, args(tiny, tmp_path / "out", features))
    assert code == 2 and len(err) == 1 and str(shard) in err[0] and "corrupted" in err[0]
    assert "python -m jakiro.ge_data" in err[0] and not (tmp_path / "out" / EXPORT).exists()
    shard.write_bytes(bytes(data[:100]))  # truncated
    code, err = run(capsys, args(tiny, tmp_path / "out", features))
    assert code == 2 and len(err) == 1 and str(shard) in err[0]


def test_features_of_another_target_of_the_same_sizes_are_refused(tiny, tmp_path, capsys):
    features = copy_features(tiny, tmp_path)
    manifest = json.loads((features / "manifest.json").read_text())
    manifest["target"]["identity"] = "0123456789abcdef"  # another model, same hidden and vocabulary size
    (features / "manifest.json").write_text(json.dumps(manifest))
    code, err = run(capsys, args(tiny, tmp_path / "out", features))
    assert code == 2 and len(err) == 1 and "another target" in err[0] and "same sizes" in err[0]


def test_resume_refuses_other_settings_or_data_and_output_dirs_are_not_replaced(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args(tiny, out, extra=["train.stop_after_steps=3"])) == 0
    code, err = run(capsys, [*args(tiny, out, extra=["train.lr=0.01"]), "--resume"])
    assert code == 2 and len(err) == 1 and "train.lr" in err[0] and "other settings" in err[0]
    other = write_feature_dir(tmp_path / "other", tiny["train"][:12], 64, VOCAB,
                              json.loads((tiny["features"] / "manifest.json").read_text())["target"]["identity"])
    code, err = run(capsys, [*args(tiny, out, other), "--resume"])
    assert code == 2 and len(err) == 1 and "train.data_dir" in err[0] and "data_sha256" in err[0]
    code, err = run(capsys, args(tiny, out))  # neither --resume nor --force: refused
    assert code == 2 and len(err) == 1 and "--resume" in err[0] and "--force" in err[0]
    assert main([*args(tiny, out), "--resume"]) == 0  # the same job continues (stop_after_steps may change)
    assert main([*args(tiny, out, extra=["train.lr=0.01"]), "--force"]) == 0
    assert json.loads((out / RUN_RECORD).read_text())["config"]["train"]["lr"] == 0.01
    (tmp_path / "file").write_text("mine")
    code, err = run(capsys, args(tiny, tmp_path / "file"))
    assert code == 2 and len(err) == 1 and "existing file" in err[0] and (tmp_path / "file").read_text() == "mine"


def test_a_non_finite_loss_stops_training_naming_step_and_batch(tiny, tmp_path, capsys):
    items = [dict(item) for item in tiny["train"][:16]]
    items[5]["hidden_state"] = items[5]["hidden_state"].clone()
    items[5]["hidden_state"][3, 0] = float("nan")
    config = AutoConfig.from_pretrained(tiny["root"] / "target")
    features = write_feature_dir(tmp_path / "nan", items, 64, VOCAB,
                                 target_identity(config, tiny["target"].get_output_embeddings().weight))
    code, err = run(capsys, args(tiny, tmp_path / "out", features, ["train.num_epochs=1"]))
    assert code == 2 and len(err) == 1 and "non-finite loss at optimizer step" in err[0]
    assert "batch" in err[0] and "sequences" in err[0] and not (tmp_path / "out" / EXPORT).exists()


def test_checkpoints_hold_no_pickles_and_damaged_or_pickled_ones_are_refused(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args(tiny, out, extra=["train.stop_after_steps=2"])) == 0
    step = out / CHECKPOINTS / "step_2"
    assert sorted(p.name for p in step.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    weights = step / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    code, err = run(capsys, [*args(tiny, out), "--resume"])
    assert code == 2 and len(err) == 1 and str(weights) in err[0] and "truncated" in err[0]
    weights.write_bytes(good)
    (step / "state.json").unlink()
    torch.save({"x": 1}, step / "custom_checkpoint_0.pkl")  # accelerate's pickled layout
    code, err = run(capsys, [*args(tiny, out), "--resume"])
    assert code == 2 and len(err) == 1 and "pickled" in err[0]


@pytest.mark.parametrize("bad", ["record", "pkl"])
def test_deepspeed_checkpoints_load_only_files_the_run_recorded(tmp_path, bad):
    """DeepSpeed's format pickles; a folder with a file the run did not write (or change since) is not loaded."""
    from jakiro.train import checkpoint as ckpt

    folder = tmp_path / "step_3"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"weights")
    recorded = ckpt.file_hashes(folder)
    ckpt.check_hashes(folder, recorded)
    if bad == "record":
        with pytest.raises(ckpt.CheckpointError, match="no file hashes"):
            ckpt.check_hashes(folder, None)
    else:
        (folder / "random_states_0.pkl").write_bytes(b"crafted")
        with pytest.raises(ckpt.CheckpointError, match="random_states_0.pkl"):
            ckpt.check_hashes(folder, recorded)
