"""What a reference (haiduo/Jakiro) or EAGLE user types works: module paths, flags, scripts, hub ids, checkpoints.

* the per-family answer scripts (``gen_ea_answer_vicuna`` ..., also under ``jakiro_star.evaluation``) are thin
  aliases that only preset the method and chat template; the reference's underscored flags parse;
* ``jakiro_star.model.ea_model.EaModel``, ``jakiro_star.train.main``, ``jakiro/train/main_deepspeed.py`` with its
  ``ds_config.json``, the reference's draft configs in ``jakiro/train`` and ``jakiro_star/train``;
* ``eval_metric/eval_{family}_Jakiro[-star]_all.sh`` call the generators with the family's template and method;
* the web UI's hyphenated flags and ``--model-type``; ``accelerate launch --mixed_precision``;
* hub ids for target and draft through a local Hugging Face cache (offline), the reference checkpoint layout, a
  prompt given as the tokenizer's list of ids;
* ``python -m jakiro`` and the console scripts; every entry point's ``--help`` says what each flag does and its
  default.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jakiro.__main__ import ENTRY_POINTS
from jakiro.__main__ import main as jakiro_main
from jakiro.common.config import ConfigError
from jakiro.evaluation.family_alias import alias_settings
from jakiro.evaluation.records import read_records
from jakiro.model.draft import DraftHead, DraftHeadConfig
from test_evaluation import QUESTIONS
from tiny_models import tiny_draft, tiny_ea_model, tiny_target

REPO_ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"vicuna": "vicuna", "llama2chat": "llama-2", "llama3chat": "llama-3"}
ALIASES = [f"{package}.evaluation.{kind}_{family}" for package in ("jakiro", "jakiro_star")
           for kind in ("gen_ea_answer", "gen_baseline_answer") for family in FAMILIES]
ALIASES += ["jakiro_star.evaluation.gen_ea_answer", "jakiro_star.evaluation.gen_baseline_answer"]

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def run_main_module(module: str, argv: list[str]) -> tuple[int, str]:
    """Run ``python -m module argv`` in this process: (exit code, stdout)."""
    out = io.StringIO()
    old = sys.argv
    sys.argv = [module, *argv]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old
    return code, out.getvalue()


# -- per-family answer scripts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ALIASES)
def test_answer_alias_settings_and_help(module):
    package, _, script = module.rpartition(".")
    family = next((f for f in FAMILIES if script.endswith(f"_{f}")), None)
    method, template = alias_settings(module)
    assert template == (FAMILIES[family] if family else None)
    if "baseline" in script:
        assert method == "baseline"
    else:
        assert method == ("jakiro_star" if package.startswith("jakiro_star") else None)
    code, text = run_main_module(module, ["--help"])
    assert code == 0
    assert text.startswith(f"usage: python -m {module}")
    for flag in ("--ea_model_path", "--base_model_path", "--model_id", "--total_token", "--top-p", "--tree-choices"):
        assert flag in text


def test_vicuna_alias_answers_with_reference_flags(tiny_dirs, tmp_path):
    """The reference's command line, underscores and an answer directory included."""
    target, draft = tiny_dirs
    reference = ["--ea_model_path", str(draft), "--base_model_path", str(target), "--model_id", "tiny",
                 "--question_file", str(QUESTIONS), "--answer_file", f"{tmp_path}/", "--total_token", "6",
                 "--depth", "2", "--top_k", "2", "--num_gpus_per_model", "1", "--num_gpus_total", "1",
                 "--temperature", "0.0", "--max_new_tokens", "6", "--warmup", "0", "--dtype", "float32",
                 "--no-progress"]
    assert run_main_module("jakiro.evaluation.gen_ea_answer_vicuna", reference)[0] == 0
    assert run_main_module("jakiro_star.evaluation.gen_ea_answer_vicuna",
                           [*reference[:14], "--model_id", "tiny-star", *reference[16:]])[0] == 0
    answers = {name: [r for _, r in read_records(tmp_path / "mt_bench" / f"{name}-temperature-0.0.jsonl")]
               for name in ("tiny", "tiny-star")}
    for name, method in (("tiny", "jakiro"), ("tiny-star", "jakiro_star")):
        assert [r["question_id"] for r in answers[name]] == [81, 82]
        assert {(r["meta"]["method"], r["meta"]["chat_template"]) for r in answers[name]} == {(method, "vicuna")}
    assert answers["tiny"][0]["meta"]["tree"]["total_token"] == 6
    code, _ = run_main_module("jakiro.evaluation.gen_baseline_answer_llama2chat", [*reference, "--num_gpus_total", "2"])
    assert code == 2


# -- module paths, training aliases, configs -----------------------------------------------------------------------
def test_jakiro_star_model_ea_model_path():
    from jakiro_star.model import StarEaModel
    from jakiro_star.model.ea_model import EaModel

    assert EaModel is StarEaModel


def test_jakiro_star_train_main_is_jakiro_training_without_the_parallel_head(monkeypatch):
    from jakiro.train import main as train_main

    seen = {}

    def stop(cfg):
        seen["cfg"] = cfg
        raise ConfigError("stop here")

    monkeypatch.setattr(train_main, "build_trainer", stop)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    code, _ = run_main_module("jakiro_star.train.main", ["--tmpdir", "D", "--cpdir", "C", "--bs", "2"])
    assert code == 2
    cfg = seen["cfg"]
    assert (cfg.train.data_dir, cfg.train.output_dir, cfg.train.batch_size) == ("D", "C", 2)
    assert cfg.draft.parallel_head is False
    code, text = run_main_module("jakiro_star.train.main", ["--help"])
    assert code == 0 and text.startswith("usage: python -m jakiro_star.train.main")


def test_main_deepspeed_script_presets_deepspeed(monkeypatch, tmp_path):
    script = REPO_ROOT / "jakiro" / "train" / "main_deepspeed.py"
    assert json.loads((script.parent / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
    namespace = runpy.run_path(str(script), run_name="main_deepspeed")
    calls = []
    monkeypatch.setitem(namespace["main"].__globals__, "train_main", lambda rest, **kw: calls.append((rest, kw)) or 0)
    monkeypatch.chdir(script.parent)
    assert namespace["main"](["--local_rank=0", "--deepspeed_config", "ds_config.json", "--tmpdir", "D"]) == 0
    rest, kw = calls[0]
    assert rest == ["--tmpdir", "D"]
    assert kw["preset"] == ("train.grad_clip_mode=norm", f"train.deepspeed_config={script.parent / 'ds_config.json'}")
    help_run = subprocess.run([sys.executable, "main_deepspeed.py", "--help"], cwd=script.parent, text=True,
                              capture_output=True, timeout=120)
    assert help_run.returncode == 0, help_run.stderr
    assert "--deepspeed_config" in help_run.stdout and "--tmpdir" in help_run.stdout


REFERENCE_CONFIGS = {  # file: hidden, heads, kv heads, vocab, rope theta, fc bias
    "vicuna_7B_config.json": (4096, 32, 32, 32000, 10000.0, True),
    "vicuna_13B_config.json": (5120, 40, 40, 32000, 10000.0, True),
    "vicuna_33B_config.json": (6656, 52, 13, 32000, 10000.0, True),
    "llama_2_chat_7B_config.json": (4096, 32, 32, 32000, 10000.0, True),
    "llama_2_chat_13B_config.json": (5120, 40, 40, 32000, 10000.0, True),
    "llama_2_chat_70B_config.json": (8192, 64, 8, 32000, 10000.0, True),
    "Jakiro-LLaMA3-Instruct-8B": (4096, 32, 8, 128256, 500000.0, False),
    "Jakiro-LLaMA3-Instruct-70B": (8192, 64, 8, 128256, 500000.0, False),
    "Mixtral_8x7B_config.json": (4096, 32, 32, 32000, 10000.0, True),
}


@pytest.mark.parametrize("package", ["jakiro", "jakiro_star"])
def test_reference_draft_configs(package):
    for name, (hidden, heads, kv, vocab, theta, bias) in REFERENCE_CONFIGS.items():
        raw = json.loads((REPO_ROOT / package / "train" / name).read_text())
        assert (raw["num_local_experts"], raw["num_experts_per_tok"], raw["num_hidden_layers"]) == (2, 2, 1)
        config = DraftHeadConfig.from_dict(raw)
        assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.vocab_size,
                config.rope_parameters["rope_theta"], config.bias) == (hidden, heads, kv, vocab, theta, bias), name
        assert config.parallel_head and config.expert_intermediate_size == hidden


@pytest.mark.parametrize("family,template", [("vicuna", "vicuna"), ("llama2", "llama-2"), ("llama3", "llama-3")])
@pytest.mark.parametrize("kind,method,temperature",
                         [("Jakiro", "jakiro", "0.0"), ("Jakiro-star", "jakiro_star", "1.0")])
def test_eval_metric_family_scripts(tmp_path, family, template, kind, method, temperature):
    """The batch scripts run eval_family.sh with the family's template and method (a fake python logs the calls)."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("FAMILY", "CONFIG", "CHAT_TEMPLATE", "METHODS")}
    env.update(PYTHON=str(fake), OUT_DIR=str(tmp_path / "out"), BENCHES="mt_bench")
    run = subprocess.run(["bash", f"eval_metric/eval_{family}_{kind}_all.sh", "--base-model-path", "B"],
                         cwd=REPO_ROOT, env=env, text=True, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines()
    generators = [c for c in calls if "gen_" in c]
    assert [c.split()[1] for c in generators] == ["jakiro.evaluation.gen_baseline_answer",
                                                  "jakiro.evaluation.gen_ea_answer"]
    for call in generators:
        assert f"--chat-template {template}" in call and f"--temperature {temperature}" in call
        assert "--base-model-path B" in call
    assert f"--method {method}" in generators[1]


# -- web UI and training flags -------------------------------------------------------------------------------------
def test_webui_reference_spellings_and_model_type():
    from jakiro.application import webui

    args = webui.parse_args(["--ea-model-path", "E", "--base-model-path", "B", "--model-type", "llama3",
                             "--total-token", "-1", "--max_new_token", "9"])
    cfg = webui.config_from(args)
    assert (cfg.model.draft_path, cfg.model.base_model_path, cfg.model.chat_template) == ("E", "B", "llama-3")
    assert (cfg.tree.total_token, cfg.generation.max_new_tokens) == (-1, 9)
    for given, template in webui.MODEL_TYPES.items():
        assert webui.config_from(webui.parse_args(["--model_type", given])).model.chat_template == template
    with pytest.raises(ConfigError, match="load_in_8bit: quantised loading is not supported"):
        webui.config_from(webui.parse_args(["--load_in_8bit"]))


def test_launcher_mixed_precision_is_respected_or_a_clear_error(monkeypatch):
    from jakiro.train.main import parse_args, resolve_config

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_config(parse_args([])).train.mixed_precision == "fp16"  # the default yields to the launcher
    assert resolve_config(parse_args(["--config", "train_smollm2"])).train.mixed_precision == "fp16"  # auto yields
    assert resolve_config(parse_args(["--set", "train.mixed_precision=fp16"])).train.mixed_precision == "fp16"
    with pytest.raises(ConfigError, match="'bf16' conflicts with the launcher's --mixed_precision fp16"):
        resolve_config(parse_args(["--set", "train.mixed_precision=bf16"]))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what the launcher exports without the flag
    assert resolve_config(parse_args([])).train.mixed_precision == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="--mixed_precision fp8"):
        resolve_config(parse_args([]))


# -- checkpoints, hub ids, prompts ---------------------------------------------------------------------------------
def write_reference_checkpoint(directory: Path, draft: DraftHead, target, bin_format: bool, with_embed: bool):
    """A draft directory laid out as the reference ships it (§1.7): its Llama-style config.json with
    num_local_experts / num_experts_per_tok, and pytorch_model.bin or model.safetensors with its parameter names."""
    directory.mkdir(parents=True)
    c = draft.config
    config = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
              "hidden_size": c.hidden_size, "intermediate_size": 4 * c.hidden_size, "max_position_embeddings": 512,
              "model_type": "llama", "num_attention_heads": c.num_attention_heads, "num_hidden_layers": 1,
              "num_key_value_heads": c.num_key_value_heads, "rms_norm_eps": 1e-6, "torch_dtype": "float16",
              "transformers_version": "4.28.1", "vocab_size": c.vocab_size, "num_local_experts": 2,
              "num_experts_per_tok": 2}
    (directory / "config.json").write_text(json.dumps(config))
    state = {k: v.half() for k, v in draft.state_dict().items()}
    if with_embed:
        state["embed_tokens.weight"] = target.get_input_embeddings().weight.detach().half().clone()
        state["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(c.head_dim // 2)  # older transformers' buffer
    if bin_format:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(state, directory / "model.safetensors")


@pytest.mark.parametrize("bin_format,with_embed", [(True, True), (True, False), (False, True), (False, False)])
def test_reference_checkpoint_layout_loads(tmp_path, bin_format, with_embed):
    target = tiny_target()
    draft = tiny_draft(target)
    write_reference_checkpoint(tmp_path / "draft", draft, target, bin_format, with_embed)
    loaded = DraftHead.from_pretrained(tmp_path / "draft")
    assert loaded.config.num_local_experts == 2 and loaded.config.parallel_head
    for name, tensor in draft.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.half().float()), name


def test_prompt_as_the_tokenizers_list_of_ids():
    model = tiny_ea_model()
    ids = [[5, 9, 11, 3, 7]]  # tokenizer([prompt]).input_ids
    expected = model.naivegenerate(torch.tensor(ids), max_new_tokens=10)
    assert torch.equal(model.eagenerate(ids, max_new_tokens=10), expected)
    assert torch.equal(model.eagenerate(ids[0], max_new_tokens=10), expected)  # tokenizer(prompt).input_ids
    with pytest.raises(ValueError, match="rows of different lengths"):
        model.eagenerate([[1, 2], [3]])
    with pytest.raises(ValueError, match="list of token ids, got str"):
        model.eagenerate("hello")


HUB_SCRIPT = """
import torch
from jakiro.model.ea_model import EaModel
from jakiro.drafts import resolve_draft_path
model = EaModel.from_pretrained(base_model_path="tiny-org/tiny-target", ea_model_path="tiny-org/Jakiro-tiny",
                                total_token=8, depth=3, top_k=3, torch_dtype=torch.float32)
prompt = model.tokenizer(["hello there"]).input_ids
out = model.eagenerate(prompt, temperature=0.0, max_new_tokens=12)
assert torch.equal(out, model.naivegenerate(torch.tensor(prompt), max_new_tokens=12))
print("draft", resolve_draft_path("tiny-org/Jakiro-tiny"))
try:
    resolve_draft_path("tiny-org/not-cached")
except ValueError as err:
    print("missing", err)
"""


def test_hub_ids_through_an_offline_cache(tiny_dirs, tmp_path):
    target_dir, draft_dir = tiny_dirs
    cache = tmp_path / "hub"
    for repo, source in (("tiny-target", target_dir), ("Jakiro-tiny", None)):
        snapshot = cache / f"models--tiny-org--{repo}" / "snapshots" / "0123456789abcdef"
        if source is None:
            draft = DraftHead.from_pretrained(draft_dir)
            write_reference_checkpoint(snapshot, draft, None, bin_format=True, with_embed=False)
        else:
            snapshot.mkdir(parents=True)
            for file in source.iterdir():
                (snapshot / file.name).write_bytes(file.read_bytes())
        (cache / f"models--tiny-org--{repo}" / "refs").mkdir()
        (cache / f"models--tiny-org--{repo}" / "refs" / "main").write_text("0123456789abcdef")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", HUB_SCRIPT], env=env, cwd=tmp_path, text=True, capture_output=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"draft {cache}/models--tiny-org--Jakiro-tiny/snapshots/0123456789abcdef" in run.stdout
    assert "missing draft 'tiny-org/not-cached' is no local directory" in run.stdout


# -- python -m jakiro, console scripts, --help of every entry point ------------------------------------------------
def test_python_m_jakiro_lists_the_entry_points_and_console_scripts_match():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert jakiro_main() == 0
    text = out.getvalue()
    for module, script, _ in ENTRY_POINTS:
        assert module in text
        if script:
            assert f"[{script}]" in text
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    listed = {script: module for module, script, _ in ENTRY_POINTS if script}
    assert set(scripts) == set(listed)
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        assert module == listed[script] or module == f"{listed[script]}.generate", script  # jakiro.ge_data
        assert callable(getattr(importlib.import_module(module), function))


class _Captured(Exception):
    pass


def entry_parser(module: str) -> argparse.ArgumentParser:
    """The argument parser an entry point builds, captured when it parses (nothing runs)."""
    main = importlib.import_module(module + (".generate" if module == "jakiro.ge_data" else "")).main
    captured = []
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        if not self.add_help:  # an inner helper parser (e.g. main_deepspeed's launcher flags)
            return original(self, args, namespace)
        captured.append(self)
        raise _Captured

    argparse.ArgumentParser.parse_known_args = capture
    try:
        main([])
    except _Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_known_args = original
    return captured[0]


@pytest.mark.parametrize("module", [module for module, _, _ in ENTRY_POINTS])
def test_every_flag_says_what_it_does_and_its_default(module):
    parser = entry_parser(module)
    assert parser.prog == f"python -m {module}"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = (action.help or "").lower()
        assert len(text) > 10, f"{module} {action.option_strings}: no help"
        if action.option_strings and not action.required:
            assert "default" in text or "required" in text, f"{module} {action.option_strings}: no default"


def test_speed_without_arguments_fails():
    from jakiro.evaluation import speed

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        speed.main([])
    assert exit_.value.code == 2
    assert "usage: python -m jakiro.evaluation.speed" in err.getvalue()
