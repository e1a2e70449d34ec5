"""Bad inputs give one clear error (exit status 2 at entry points), never a traceback or a silently wrong result:
answer files of another question set, a speed report against a baseline that is not plain decoding, drafts with
NaN weights, out-of-vocabulary prompts, NaN temperatures, unusable devices, missing model directories and outputs
that would replace a user's files (issue 28).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from jakiro import demo
from jakiro.common.config import ConfigError, load_config
from jakiro.evaluation import answers, speed
from jakiro.evaluation.records import read_records
from jakiro.model import init_draft
from jakiro.model.draft import DraftHead
from tiny_models import tiny_draft, tiny_ea_model, tiny_target

DATA = Path(__file__).resolve().parent / "data"
QUESTIONS = DATA / "questions" / "mt_bench" / "question.jsonl"


def errors(capsys) -> list[str]:
    """stderr's lines but for progress bars."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]


def answer(tiny_dirs, path, questions, *extra):
    target, _ = tiny_dirs
    argv = ["--base-model-path", str(target), "--set", "model.dtype=float32", "--question-file", str(questions),
            "--answer-file", str(path), "--method", "baseline", "--max-new-tokens", "4", "--warmup", "0",
            "--no-progress", *extra]
    return answers.main(argv)


def test_resuming_answers_with_another_question_file_is_refused(tiny_dirs, tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    assert answer(tiny_dirs, path, QUESTIONS, "--question-end", "1") == 0
    other = tmp_path / "other.jsonl"  # the same ids, other questions
    other.write_text("".join(json.dumps({**q, "turns": [f"Other {t}" for t in q["turns"]]}) + "\n"
                             for q in map(json.loads, QUESTIONS.read_text().splitlines())))
    capsys.readouterr()
    assert answer(tiny_dirs, path, other) == 2
    err = errors(capsys)
    assert len(err) == 1 and "questions:" in err[0] and "other settings" in err[0]
    assert [r["question_id"] for _, r in read_records(path)] == [81]
    assert answer(tiny_dirs, path / "answers.jsonl", QUESTIONS) == 2  # its folder is a file
    err = errors(capsys)
    assert len(err) == 1 and "answers.jsonl" in err[0]


def _record(qid, method, max_new_tokens, forwards):
    choice = {"index": 0, "turns": ["text"], "idxs": [forwards], "new_tokens": [8], "wall_time": [1.0]}
    meta = {"idxs": "target_forwards", "temperature": 0.0, "bench": "b", "method": method,
            "max_new_tokens": max_new_tokens}
    return json.dumps({"question_id": qid, "answer_id": "a", "model_id": "m", "choices": [choice], "meta": meta})


def test_speed_checks_which_file_is_the_baseline_and_flags_token_budgets(tmp_path, capsys):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(_record(1, "baseline", 64, 8) + "\n")
    spec = tmp_path / "spec.jsonl"
    spec.write_text(_record(1, "jakiro", 128, 3) + "\n")
    assert speed.main(["--baseline", str(spec), "--method", str(plain)]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "'jakiro', not of plain decoding" in err[0]
    assert speed.main(["--baseline", str(plain), "--method", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "WARNING spec.jsonl: max_new_tokens 128 differs from the baseline's 64" in out


def test_speed_reports_are_validated_and_not_written_over_a_users_file(tmp_path, capsys):
    plain, spec = tmp_path / "plain.jsonl", tmp_path / "spec.jsonl"
    plain.write_text(_record(1, "baseline", 64, 8) + "\n")
    spec.write_text(_record(1, "jakiro", 64, 3) + "\n")
    report, mine = tmp_path / "report.json", tmp_path / "notes.txt"
    mine.write_text("my notes")
    argv = ["--baseline", str(plain), "--method", str(spec), "--json"]
    assert speed.main([*argv, str(mine)]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "--force" in err[0] and mine.read_text() == "my notes"
    assert speed.main([*argv, str(report)]) == 0 and speed.main([*argv, str(report)]) == 0  # its own: rewritten
    report.write_text(report.read_text()[:50])  # truncated
    capsys.readouterr()
    assert speed.main(["--average", str(report)]) == 2
    err = errors(capsys)
    assert len(err) == 1 and str(report) in err[0] and "truncated" in err[0]


def test_a_draft_with_non_finite_weights_is_not_loaded(tmp_path):
    draft = tiny_draft(tiny_target(vocab_size=16))
    with torch.no_grad():
        draft.fc.weight[0, 0] = float("nan")
    draft.save_pretrained(tmp_path / "nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values \(fc.weight\)"):
        DraftHead.from_pretrained(tmp_path / "nan")


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=float("nan")), "temperature must be a number >= 0"),
    (dict(input_ids=torch.tensor([[1, 2, 16]])), "token id 16, outside the target's vocabulary"),
    (dict(input_ids=torch.tensor([[1, -1]])), "token id -1"),
    (dict(input_ids=torch.tensor([[1.0, 2.0]])), "integer token ids"),
])
def test_generation_refuses_nan_temperature_and_foreign_token_ids(kwargs, message):
    model = tiny_ea_model("llama", vocab_size=16, total_token=8, depth=2, top_k=2)
    kwargs = {"input_ids": torch.tensor([[1, 2, 3]]), **kwargs}
    for generate in (model.eagenerate, model.naivegenerate):
        with pytest.raises(ValueError, match=message):
            generate(**kwargs, max_new_tokens=4)


def test_init_draft_does_not_replace_an_existing_draft_without_force(tmp_path, capsys):
    target = tmp_path / "target"
    tiny_target(vocab_size=16).save_pretrained(target)
    out = tmp_path / "draft"
    argv = ["--base-model-path", str(target), "--out", str(out)]
    assert init_draft.main(argv) == 0
    trained = (out / "model.safetensors").read_bytes()
    assert init_draft.main([*argv, "--seed", "3"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "already exists" in err[0] and "--force" in err[0]
    assert (out / "model.safetensors").read_bytes() == trained
    assert init_draft.main([*argv, "--seed", "3", "--force"]) == 0
    assert (out / "model.safetensors").read_bytes() != trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_an_unusable_device_is_a_config_error():
    with pytest.raises(ConfigError, match="model.device: cuda requested, but this torch"):
        load_config(None, ["model.device=cuda"])
    with pytest.raises(ConfigError, match="model.device: 'gpu0' is neither a torch device"):
        load_config(None, ["model.device=gpu0"])


def test_demo_errors_are_one_line(tmp_path, capsys):
    assert demo.main(["--set", f"model.base_model_path={tmp_path / 'missing'}"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and err[0].startswith("error: model.base_model_path:") and "not found" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(QUESTIONS, tmp_path / "q.jsonl")
    assert demo.main(["--set", f"model.base_model_path={empty}", "--set",
                      f"eval.question_file={tmp_path / 'q.jsonl'}"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and err[0].startswith("error:") and str(empty) in err[0]


@pytest.mark.parametrize("override", ["train.lr=.inf", "eval.temperature=.nan", "train.betas=[.nan, 0.9]"])
def test_no_config_value_is_nan_or_infinite(override):
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(None, [override])


def test_a_truncated_target_file_is_named(tmp_path, capsys):
    """A target whose weights or tokenizer file was cut short: one line naming the file, from every loader."""
    from jakiro.ge_data.generate import main as ge_data_main

    target = tmp_path / "target"
    tiny_target(vocab_size=16).save_pretrained(target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    assert demo.main(["--set", f"model.base_model_path={target}", "--set", "model.draft_path=shipped:smollm2-jakiro",
                      "--set", f"eval.question_file={QUESTIONS}"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and str(weights) in err[0] and "truncated" in err[0]
    assert ge_data_main(["--set", f"model.base_model_path={target}", "--set",
                         f"data.output_dir={tmp_path / 'out'}", "--quiet"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and str(weights) in err[0] and "truncated" in err[0]


def test_resuming_answers_of_a_target_replaced_at_the_same_path_is_refused(tiny_dirs, tmp_path, capsys):
    target = tmp_path / "target"
    shutil.copytree(tiny_dirs[0], target)
    path = tmp_path / "answers.jsonl"
    argv = ["--base-model-path", str(target), "--set", "model.dtype=float32", "--question-file", str(QUESTIONS),
            "--answer-file", str(path), "--method", "baseline", "--max-new-tokens", "4", "--warmup", "0",
            "--no-progress"]
    assert answers.main([*argv, "--question-end", "1"]) == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.5)  # "retrained" in the same directory
    model.save_pretrained(target)
    capsys.readouterr()
    assert answers.main(argv) == 2
    err = errors(capsys)
    assert len(err) == 1 and "another target" in err[0]
    assert [r["question_id"] for _, r in read_records(path)] == [81]
