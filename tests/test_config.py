"""Tests for jakiro.common.config.

Defaults, file + override merging, error messages, shipped configs, round trips, CLI.
"""

import argparse
import json

import pytest
import torch

from jakiro.common.config import (
    CONFIG_DIR,
    ConfigError,
    DraftConfig,
    JakiroConfig,
    TreeConfig,
    add_config_arguments,
    config_from_args,
    load_config,
    save_config,
    to_dict,
)


def test_defaults_are_the_reference_settings():
    cfg = load_config()
    assert cfg == JakiroConfig()
    assert (cfg.tree.total_token, cfg.tree.depth, cfg.tree.top_k) == (60, 5, 10)
    assert (cfg.train.lr, cfg.train.betas, cfg.train.weight_decay) == (9e-5, (0.9, 0.95), 1e-3)
    assert (cfg.train.v_w, cfg.train.p_w, cfg.train.parallel_w) == (1.0, 0.1, 0.5)
    assert cfg.model.dtype == "bfloat16" and cfg.draft.num_experts == 2 and cfg.eval.bench_name == "mt_bench"


def test_file_and_overrides_merge(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("tree:\n  depth: 7\n  top_k: 4\ntrain:\n  lr: 2e-4\n  betas: [0.8, 0.9]\n")
    cfg = load_config(path, ["tree.top_k=3", "train.num_epochs=2", "model.draft_path=drafts/a", "eval.model_id=123"])
    assert (cfg.tree.depth, cfg.tree.top_k, cfg.tree.total_token) == (7, 3, 60)  # override wins, rest default
    assert cfg.train.lr == 2e-4 and isinstance(cfg.train.lr, float)  # "2e-4" is a float, not a string
    assert cfg.train.betas == (0.8, 0.9) and cfg.train.num_epochs == 2
    assert cfg.model.draft_path == "drafts/a"
    assert cfg.eval.model_id == "123"  # string fields keep the text as written


def test_override_coercion():
    cfg = load_config(None, ["train.lr=1", "model.draft_path=x", "model.draft_path=null", "draft.bias=false",
                             "train.betas=[0.5, 0.6]", "eval.temperature=1"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int -> float
    assert cfg.model.draft_path is None  # later overrides win; null clears an Optional
    assert cfg.draft.bias is False and cfg.train.betas == (0.5, 0.6) and cfg.eval.temperature == 1.0


def test_json_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"generation": {"temperature": 1, "top_p": 0.9}}))
    cfg = load_config(path)
    assert cfg.generation.temperature == 1.0 and cfg.generation.top_p == 0.9


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["trian.lr=1"], ["unknown section 'trian'", "did you mean 'train'"]),
        (["train.lrr=1"], ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
        (["train.SECTION=x"], ["unknown key 'train.SECTION'"]),
        (["tree.depth=abc"], ["tree.depth", "expected int", "'abc'"]),
        (["tree.depth=1.5"], ["tree.depth", "expected int", "1.5"]),
        (["draft.bias=yes"], ["draft.bias", "expected bool", "'yes'"]),  # only true/false are booleans
        (["draft.bias=1"], ["draft.bias", "expected bool"]),
        (["train.betas=[0.9]"], ["train.betas", "expected list of 2"]),
        (["model.device=null"], ["model.device", "expected str", "None"]),
        (["tree.depth=0"], ["tree.depth", ">= 1", "got 0"]),
        (["tree.total_token=1"], ["tree.total_token", "-1 or an integer >= 2", "got 1"]),
        (["generation.top_p=0"], ["generation.top_p", "(0, 1]"]),
        (["tree.sibling_mode=mix"], ["tree.sibling_mode", "'mixture'", "'mix'"]),
        (["model.dtype=fp32"], ["model.dtype", "'float32'", "'fp32'"]),
        (["draft.experts_per_token=3"], ["draft.experts_per_token", "num_experts=2", "got 3"]),
        (["draft.num_experts=1", "draft.experts_per_token=1"], ["draft.parallel_head", "num_experts < 2"]),
        (["tree.depth"], ["expected section.key=value"]),
    ],
)
def test_errors_name_the_key(overrides, needles):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.parametrize(
    "text, needles",
    [
        ("tre:\n  depth: 3\n", ["unknown section 'tre'", "did you mean 'tree'"]),
        ("tree:\n  dept: 3\n", ["unknown key 'tree.dept'", "did you mean 'tree.depth'"]),
        ("tree: 3\n", ["tree", "expected a mapping"]),
        ("train:\n  lr: fast\n", ["train.lr", "expected float", "'fast'"]),
        ("- 1\n", ["expected a mapping of sections"]),
    ],
)
def test_file_errors_name_the_key(tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for needle in needles:
        assert needle in str(err.value)


def test_programmatic_construction_is_validated():
    with pytest.raises(ConfigError, match=r"draft\.experts_per_token"):
        DraftConfig(num_experts=2, experts_per_token=3)
    with pytest.raises(ConfigError, match=r"tree\.depth: expected int"):
        TreeConfig(depth="5")
    assert DraftConfig(num_experts=1, experts_per_token=1, parallel_head=False).num_experts == 1


def test_missing_file():
    with pytest.raises(ConfigError, match="no_such_config"):
        load_config("no_such_config")


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_load(path):
    assert isinstance(load_config(CONFIG_DIR / path), JakiroConfig)


def test_shipped_config_values():
    assert load_config("default") == JakiroConfig()  # default.yaml documents exactly the defaults
    small = load_config("configs/smollm2.yaml")
    assert load_config("smollm2") == small
    assert (small.tree.total_token, small.tree.depth, small.tree.top_k) == (8, 3, 4)
    assert small.model.dtype in ("bfloat16", "float32")  # auto: by the CPU (test_auto_dtype_follows_the_hardware)
    eagle2 = load_config("eagle2").draft
    assert (eagle2.num_experts, eagle2.experts_per_token, eagle2.parallel_head) == (1, 1, False)


@pytest.mark.parametrize("name", ["resolved.yaml", "resolved.json"])
def test_save_load_round_trip(tmp_path, name):
    cfg = load_config("smollm2", ["train.betas=[0.5, 0.75]", "eval.question_end=10", "data.system_prompt=Hi: you"])
    path = tmp_path / "run" / name
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert to_dict(cfg)["train"]["betas"] == [0.5, 0.75]
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temp file left behind


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", "smollm2", "--set", "tree.depth=6", "--set", "generation.temperature=0.7"])
    cfg = config_from_args(args)
    assert (cfg.tree.depth, cfg.tree.top_k, cfg.generation.temperature) == (6, 4, 0.7)
    assert config_from_args(parser.parse_args([])) == JakiroConfig()


@pytest.mark.parametrize("extension, device, dtype", [
    ("AVX2", "cpu", "float32"),  # bf16 emulated: a several-row product (tree verification) costs ~4 one-row ones
    ("AVX512-BF16", "cpu", "bfloat16"), ("AMX-BF16", "cpu", "bfloat16"), (None, "cpu", "float32"),
    ("AVX2", "cuda", "bfloat16"),
])
def test_auto_dtype_follows_the_hardware(monkeypatch, extension, device, dtype):
    from jakiro.common import hardware

    monkeypatch.setattr(hardware, "matrix_extension", lambda: extension)
    monkeypatch.setattr(hardware, "device_problem", lambda device: None)  # as if this torch had the device
    cfg = load_config("smollm2", [f"model.device={device}"])
    assert cfg.model.dtype == dtype  # resolved when the config is built: records and answer files name the real one


@pytest.mark.parametrize("extension, cuda, mixed_precision", [
    ("AVX2", False, "no"),  # fp32 training: bf16 autocast is emulated there (~8x slower in tests/test_train_smollm2.py)
    ("AMX-BF16", False, "bf16"), ("AVX512-BF16", False, "bf16"), ("AVX2", True, "bf16"),
])
def test_auto_mixed_precision_follows_the_hardware(monkeypatch, extension, cuda, mixed_precision):
    from jakiro.common import hardware

    monkeypatch.setattr(hardware, "matrix_extension", lambda: extension)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = load_config("train_smollm2")  # model.dtype and train.mixed_precision: auto
    assert cfg.train.mixed_precision == mixed_precision
    if not cuda:  # model.dtype follows model.device (cpu here)
        assert cfg.model.dtype == ("bfloat16" if mixed_precision == "bf16" else "float32")
