"""Tests for jakiro.evaluation: answer harness on a tiny random model, speed report arithmetic, the reference's own
output files, greedy equality, scripts/bench_gpu.py --small and the eval_metric batch script."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from script_calls import run_with_fake_python

from jakiro.evaluation import answers, speed
from jakiro.common.chat_templates import LLAMA2_SYSTEM_PROMPT
from jakiro.common.chat_templates import ChatPrompter
from jakiro.evaluation.records import append_record, read_records

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "reference-outputs"  # copies of the reference repo's Vicuna-7B MT-bench runs on an A40
QUESTIONS = DATA / "questions" / "mt_bench" / "question.jsonl"  # the first 2 MT-bench questions (2 turns each)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def generate(tiny_dirs, answer_file, *extra):
    target, draft = tiny_dirs
    argv = ["--base-model-path", str(target), "--ea-model-path", str(draft), "--set", "model.dtype=float32",
            "--question-file", str(QUESTIONS), "--answer-file", str(answer_file), "--warmup", "1",
            "--total-token", "8", "--depth", "3", "--top-k", "3", "--max-new-tokens", "6", "--no-progress", *extra]
    assert answers.main(argv) == 0
    return [record for _, record in read_records(answer_file)]


# -- answer harness -----------------------------------------------------------------------------------------------


def test_records_are_well_formed_with_exact_counts(tiny_dirs, tmp_path):
    spec = generate(tiny_dirs, tmp_path / "jakiro.jsonl", "--model-id", "tiny-jakiro")
    plain = generate(tiny_dirs, tmp_path / "plain.jsonl", "--method", "baseline")
    pld = generate(tiny_dirs, tmp_path / "pld.jsonl", "--method", "pld", "--prompt-lookup-num-tokens", "2")
    lookup = generate(tiny_dirs, tmp_path / "lookup.jsonl", "--set", "tree.lookup_tokens=4")
    assert lookup[0]["meta"]["settings"]["lookup_tokens"] == 4 and "lookup_tokens" not in spec[0]["meta"]["settings"]
    assert [r["question_id"] for r in spec] == [81, 82]
    for record in spec:
        assert set(record) == {"question_id", "answer_id", "model_id", "choices", "tstamp", "meta"}
        assert record["model_id"] == "tiny-jakiro" and record["meta"]["method"] == "jakiro"
        assert record["meta"]["tree"] == {"total_token": 8, "depth": 3, "top_k": 3, "sibling_mode": "mixture",
                                          "lookup_tokens": 0}
        (choice,) = record["choices"]
        assert choice["index"] == 0 and len(choice["turns"]) == 2  # both MT-bench turns
        assert all(t > 0 for t in choice["wall_time"])
        for forwards, tokens, accepted in zip(choice["idxs"], choice["new_tokens"], choice["accept_lengths"]):
            assert 1 <= tokens <= 6  # max_new_tokens reaches the generator
            assert forwards == 1 + len(accepted)  # prefill + one verification forward per step
            assert tokens <= 1 + sum(a + 1 for a in accepted)  # the last step may be cut at the budget
    assert any(n == 6 for r in spec for n in r["choices"][0]["new_tokens"])
    for record in plain:
        choice = record["choices"][0]
        assert choice["idxs"] == choice["new_tokens"]  # plain decoding: one forward per token, counted from 1
        assert "accept_lengths" not in choice
    for record in pld:
        assert all(f <= n for f, n in zip(record["choices"][0]["idxs"], record["choices"][0]["new_tokens"]))
    # greedy decoding is lossless, turn 2 included (its prompt holds each method's own turn-1 answer)
    texts = [[r["choices"][0]["turns"] for r in run] for run in (spec, plain, pld, lookup)]
    assert texts[0] == texts[1] == texts[2] == texts[3]


def test_oracle_method_answers_losslessly_in_one_step_per_turn(tiny_dirs, tmp_path):
    plain = generate(tiny_dirs, tmp_path / "plain.jsonl", "--method", "baseline")
    oracle = generate(tiny_dirs, tmp_path / "oracle.jsonl", "--method", "oracle")
    assert [r["choices"][0]["turns"] for r in oracle] == [r["choices"][0]["turns"] for r in plain]
    for record in oracle:
        assert record["meta"]["tree"] == {"total_token": 8}
        assert record["meta"]["settings"]["method"] == "oracle" and record["meta"]["settings"]["total_token"] == 8
        # greedy: the oracle's 8-node tree is the target's own 7-token chain, so 6 new tokens take one step
        assert record["choices"][0]["idxs"] == [2, 2]


def test_jakiro_star_answers_with_the_prompt_lookup_branch(tiny_dirs, tmp_path):
    star_args = ("--method", "jakiro_star", "--set", "tree.static_tree=cpu8", "--question-end", "1")
    star = generate(tiny_dirs, tmp_path / "star.jsonl", *star_args)
    lookup = generate(tiny_dirs, tmp_path / "star-lookup.jsonl", *star_args, "--set", "tree.lookup_tokens=4")
    plain = generate(tiny_dirs, tmp_path / "plain.jsonl", "--method", "baseline", "--question-end", "1")
    assert "lookup_tokens" not in star[0]["meta"]["settings"]
    assert lookup[0]["meta"]["settings"]["lookup_tokens"] == 4 and lookup[0]["meta"]["tree"]["lookup_tokens"] == 4
    assert [r["choices"][0]["turns"] for r in lookup] == [r["choices"][0]["turns"] for r in plain]


def test_resume_skips_done_questions_and_drops_a_truncated_line(tiny_dirs, tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    (first,) = generate(tiny_dirs, path, "--method", "baseline", "--question-end", "1")
    with open(path, "a") as f:
        f.write('{"question_id": 82, "answer_id": "x", "cho')  # a run killed mid-line
    records = generate(tiny_dirs, path, "--method", "baseline")
    assert "dropping a truncated last line" in capsys.readouterr().err
    assert [r["question_id"] for r in records] == [81, 82]
    assert records[0]["answer_id"] == first["answer_id"]  # question 81 was not answered again
    assert path.read_text().count("\n") == 2
    assert generate(tiny_dirs, path, "--method", "baseline") == records  # nothing left to do


def test_resume_refuses_a_file_made_with_other_settings(tiny_dirs, tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    (first,) = generate(tiny_dirs, path, "--method", "baseline", "--question-end", "1")
    assert first["meta"]["settings"]["max_new_tokens"] == 6 and "draft" not in first["meta"]["settings"]
    target, _ = tiny_dirs
    argv = ["--base-model-path", str(target), "--set", "model.dtype=float32", "--question-file", str(QUESTIONS),
            "--answer-file", str(path), "--method", "baseline", "--max-new-tokens", "5", "--no-progress"]
    assert answers.main(argv) == 2
    assert "holds results made with other settings (max_new_tokens: 6 in the file, 5 now)" in capsys.readouterr().err
    assert path.read_text().count("\n") == 1  # nothing was added
    # a record written before settings were recorded is not compared
    legacy = json.loads(path.read_text())
    del legacy["meta"]["settings"]
    path.write_text(json.dumps(legacy) + "\n")
    assert answers.main(argv) == 0
    assert [r["question_id"] for _, r in read_records(path)] == [81, 82]


def test_hardware_names_the_cpus_matrix_extension(monkeypatch, tmp_path):
    from jakiro.common import hardware

    assert hardware.matrix_extension("fpu avx2 avx512f avx512_bf16") == "AVX512-BF16"
    assert hardware.matrix_extension("fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16") == "AMX-BF16"
    assert hardware.matrix_extension("fpu sse4_2") is None
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n")
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    assert hardware.describe("cpu").startswith("AMD EPYC CPU (AVX2), ")  # Zen 3: told apart from an AVX-512 Zen 4


@pytest.mark.parametrize("key, other", [("hardware", "Other CPU, 64 threads"), ("torch", "2.0.0"),
                                        ("transformers", "5.0.0")])
def test_resume_refuses_a_file_from_other_hardware_or_versions(tiny_dirs, tmp_path, capsys, key, other):
    import torch
    import transformers

    from jakiro.common.hardware import describe

    path = tmp_path / "answers.jsonl"
    (first,) = generate(tiny_dirs, path, "--method", "baseline", "--question-end", "1")
    settings = first["meta"]["settings"]
    assert settings["hardware"] == first["meta"]["hardware"] == describe("cpu")
    assert (settings["torch"], settings["transformers"]) == (torch.__version__, transformers.__version__)
    settings[key] = other
    path.write_text(json.dumps(first) + "\n")
    target, _ = tiny_dirs
    argv = ["--base-model-path", str(target), "--set", "model.dtype=float32", "--question-file", str(QUESTIONS),
            "--answer-file", str(path), "--method", "baseline", "--max-new-tokens", "6", "--no-progress"]
    assert answers.main(argv) == 2
    assert f"({key}: {other!r} in the file, " in capsys.readouterr().err
    assert path.read_text().count("\n") == 1  # nothing was added
    # records written before this setting was recorded are not compared on it
    del settings[key]
    path.write_text(json.dumps(first) + "\n")
    assert answers.main(argv) == 0
    assert [r["question_id"] for _, r in read_records(path)] == [81, 82]


def test_resume_refuses_a_retrained_draft_in_the_same_directory(tiny_dirs, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    target, trained = tiny_dirs
    draft = tmp_path / "draft"
    shutil.copytree(trained, draft)
    path = tmp_path / "answers.jsonl"
    argv = ["--base-model-path", str(target), "--ea-model-path", str(draft), "--set", "model.dtype=float32",
            "--question-file", str(QUESTIONS), "--answer-file", str(path), "--warmup", "0", "--total-token", "8",
            "--depth", "3", "--top-k", "3", "--max-new-tokens", "4", "--no-progress"]
    assert answers.main([*argv, "--question-end", "1"]) == 0
    (weights,) = draft.glob("*.safetensors")
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    assert answers.main(argv) == 2
    assert "holds results made with other settings (draft: " in capsys.readouterr().err


def test_sampling_is_reproducible(tiny_dirs, tmp_path):
    runs = [generate(tiny_dirs, tmp_path / f"t1-{i}.jsonl", "--temperature", "1", "--question-end", "1",
                     "--warmup", "0") for i in range(2)]
    assert runs[0][0]["meta"]["temperature"] == 1.0
    assert runs[0][0]["choices"][0]["turns"] == runs[1][0]["choices"][0]["turns"]


def test_prompts_carry_earlier_answers(tiny_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[0])
    ids = ChatPrompter(tokenizer).input_ids(["first question", "second question"], ["first answer"])
    text = tokenizer.decode(ids[0])
    assert text.index("first question") < text.index("first answer") < text.index("second question")
    assert text.endswith("<|im_start|>assistant\n")
    prompter = ChatPrompter(tokenizer, "llama-2")  # FastChat template with the Llama-2 system prompt
    text = prompter.prompt_text(["Q1", "Q2"], ["A1"])
    assert LLAMA2_SYSTEM_PROMPT in text and text.endswith("Q2 [/INST] ") and "A1" in text
    assert "USER: Q1 ASSISTANT:" in ChatPrompter(tokenizer, "vicuna").prompt_text(["Q1"], [])
    with pytest.raises(ValueError, match="unknown chat template"):
        ChatPrompter(tokenizer, "no-such-template")


@pytest.mark.parametrize("args, message", [
    (["--question-file", "missing.jsonl"], "question file missing.jsonl not found"),
    (["--bench-name", "gsm8k"], "needs a question file"),
    (["--set", "eval.method=medusa"], "eval.method"),
    (["--method", "assisted", "--question-file", str(QUESTIONS)], "needs an assistant model"),
])
def test_bad_input_is_reported(args, message, capsys):
    assert answers.main(["--answer-file", "unused.jsonl", "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


def test_malformed_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question_id": 1, "choices": []}\n{not json}\n{"question_id": 2, "choices": []}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed JSON"):
        read_records(path)
    path.write_text('{"question_id": 1, "choices": [{"turns": ["a"], "idxs": [1], "new_tokens": [1]}]}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: choice \? lacks list field\(s\) wall_time"):
        read_records(path)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["x"]}\n{"question_id": 2, "turns": \n')
    from jakiro.common.assets import load_questions

    with pytest.raises(ValueError, match=r"q\.jsonl:2: malformed question line"):
        load_questions(questions)


# -- speed report ---------------------------------------------------------------------------------------------------


def _record(qid, texts, tokens, times, idxs, accept=None, meta=True):
    choice = {"index": 0, "turns": texts, "idxs": idxs, "new_tokens": tokens, "wall_time": times}
    if accept is not None:
        choice["accept_lengths"] = accept
    record = {"question_id": qid, "answer_id": str(qid), "model_id": "m", "choices": [choice], "tstamp": 0}
    if meta:
        record["meta"] = {"idxs": "target_forwards", "temperature": 0.0, "bench": "hand",
                          **({"tree": {"depth": 3}} if accept is not None else {})}
    return record


def _write(path, records):
    for record in records:
        append_record(path, record)
    return path


def test_speed_arithmetic_on_a_hand_made_file(tmp_path):
    baseline = _write(tmp_path / "base.jsonl", [
        _record(1, ["same", "abc"], [10, 20], [1.0, 1.0], [10, 20]),  # 30 tokens / 2 s = 15 tok/s
        _record(2, ["hello"], [30], [1.0], [30]),  # 30 tok/s
    ])
    method = _write(tmp_path / "spec.jsonl", [
        _record(1, ["same", "abcdef"], [10, 20], [0.5, 0.5], [3, 5], [[2, 1, 0], [3, 3]]),  # 30 tok/s
        _record(2, ["helXo"], [30], [0.25], [4], [[1, 2]]),  # 120 tok/s
        _record(3, ["extra"], [5], [1.0], [2], [[0]]),  # not in the baseline: left out
    ])
    report = speed.build_report(speed.load_answers(baseline), [speed.load_answers(method)])
    (m,) = report["methods"]
    assert m["samples"] == 2 and report["bench"] == "hand"
    assert m["speed"] == pytest.approx((30 + 120) / 2)
    assert m["speedup"] == pytest.approx(75 / 22.5)  # mean of speeds / mean of the baseline's speeds
    assert m["throughput_ratio"] == pytest.approx((60 / 1.25) / (60 / 3.0))  # 48 / 20 tok/s
    assert m["tau"] == pytest.approx(60 / (3 + 5 + 4))
    assert report["baseline"]["tau"] == pytest.approx(1.0)
    # steps accepted 2, 1, 0, 3, 3, 1, 2 draft tokens: alpha_d = #(>= d) / #(>= d - 1), d = 1 .. depth 3
    assert m["alpha"] == pytest.approx([6 / 7, 4 / 6, 2 / 4])
    eq = m["equality"]
    assert (eq["turns"], eq["identical"], eq["prefix"]) == (3, 1, 1)
    assert eq["mismatches"] == [{"question_id": 2, "choice": 0, "turn": 0, "first_diff_char": 3}]
    assert any("compared on the 2 samples" in note for note in report["notes"])
    table = speed.format_report(report)
    assert "| spec | 2 | 75.00 | 3.33x | 2.40x | 5.00 | 0.86 | 0.67 | 0.50 | 1/3 / 1 |" in table


def test_side_by_side_table_of_two_temperatures(tmp_path):
    def report(name, temperature, arms):  # arms: label -> (seconds of question 1, forwards)
        folder = tmp_path / name
        folder.mkdir()
        base = _write(folder / "base.jsonl", [_record(1, ["a b"], [20], [2.0], [20])])  # 10 tok/s
        methods = [_write(folder / f"{label}.jsonl", [_record(1, [text], [20], [seconds], [forwards], [[1]])])
                   for label, (text, seconds, forwards) in arms.items()]
        made = speed.build_report(speed.load_answers(base), [speed.load_answers(m) for m in methods])
        made["temperature"] = temperature
        return made

    greedy = report("t0", 0.0, {"spec": ("a b", 1.0, 8), "exact": ("a c", 0.5, 10)})
    sampled = report("t1", 1.0, {"spec": ("x", 4.0, 16)})
    lines = speed.format_side_by_side([greedy, sampled]).splitlines()
    assert lines[0] == "| method | T = 0 speedup | τ | greedy turns identical | T = 1 speedup | τ |"
    assert lines[2] == "| base (10.0 tokens/s at T = 0, 10.0 tokens/s at T = 1) | 1.00x | 1.00 | - | 1.00x | 1.00 |"
    assert lines[3] == "| spec | 2.00x | 2.50 | 1/1 | 0.50x | 1.25 |"
    assert lines[4] == "| exact | 4.00x | 2.00 | 0/1 |  |  |"  # not run at T = 1: blank there
    assert len(lines) == 5


def test_reference_format_and_zero_token_baseline(tmp_path, tiny_dirs):
    baseline = _write(tmp_path / "base.jsonl", [_record(1, ["abcd"], [0], [2.0], [9], meta=False)])
    method = _write(tmp_path / "spec.jsonl", [_record(1, ["abcd"], [10], [1.0], [4], meta=False)])
    base = speed.load_answers(baseline)
    assert base.samples[(1, 0)].tokens == [10]  # new_tokens 0: idxs + 1 autoregressive steps
    report = speed.build_report(base, [speed.load_answers(method)])
    (m,) = report["methods"]
    assert m["tau"] == pytest.approx(10 / 5)  # 0-based idxs: 5 steps
    assert m["speedup"] == pytest.approx(10 / 5)
    assert any("reference format" in n for n in report["notes"])
    assert any("new_tokens are all 0" in n for n in report["notes"])
    from transformers import AutoTokenizer

    retokenised = speed.load_answers(baseline, AutoTokenizer.from_pretrained(tiny_dirs[0]), "tiny")
    assert retokenised.samples[(1, 0)].tokens == [4]  # one byte-level token per character


@pytest.mark.parametrize("temperature, speedup, tau", [("0.0", 2.99, 4.77), ("1.0", 2.47, 3.92)])
def test_reference_output_files(temperature, speedup, tau, tmp_path, capsys):
    """The reference's Vicuna-7B MT-bench runs: speedup 2.99x (T=0) / 2.47x (T=1), exact tau 4.77 (T=0)."""
    out = tmp_path / "report.json"
    assert speed.main(["--baseline", str(REFERENCE / f"baseline-temperature-{temperature}.jsonl"),
                       "--method", str(REFERENCE / f"jakiro-temperature-{temperature}.jsonl"),
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (m,) = report["methods"]
    assert m["samples"] == 80 and report["temperature"] == float(temperature)
    assert m["speedup"] == pytest.approx(speedup, abs=0.02)
    assert m["tau"] == pytest.approx(tau, abs=0.02)
    assert report["baseline"]["tau"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "new_tokens are all 0" in printed and "reference format" in printed
    assert f"{speedup:.2f}x" in printed


def test_greedy_equality_on_reference_files():
    report = speed.build_report(speed.load_answers(REFERENCE / "baseline-temperature-0.0.jsonl"),
                                [speed.load_answers(REFERENCE / "jakiro-temperature-0.0.jsonl")])
    eq = report["methods"][0]["equality"]
    assert eq["turns"] == 160 and eq["identical"] + eq["prefix"] + len(eq["mismatches"]) == 160
    assert eq["identical"] > 100  # fp16 greedy: most turns match the baseline exactly


def test_average_over_benches(tmp_path, capsys):
    reports = []
    for bench, value in (("a", 2.0), ("b", 3.0)):
        report = {"bench": bench, "methods": [{"label": "spec", "speedup": value, "tau": value + 1}]}
        reports.append(tmp_path / f"{bench}.json")
        reports[-1].write_text(json.dumps(report))
    assert speed.main(["--average", *map(str, reports)]) == 0
    assert "| spec | 2.00x / 3.00 | 3.00x / 4.00 | 2.50x | 3.50 | 2 |" in capsys.readouterr().out


def test_plot_is_written_or_skipped_with_a_message(tmp_path, capsys):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"bench": "b", "methods": [{"label": "spec", "speedup": 2.0, "tau": 3.0}]}))
    png = tmp_path / "plot.png"
    assert speed.main(["--average", str(report), "--plot", str(png)]) == 0
    if importlib.util.find_spec("matplotlib") is None:
        assert "skipping the plot: matplotlib is not installed" in capsys.readouterr().err
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_leaves_out_a_method_that_a_bench_does_not_report():
    from jakiro.evaluation.plot import grouped_bars

    reports = [{"bench": "T=0", "methods": [{"label": "spec", "speedup": 2.0}, {"label": "exact", "speedup": 1.5}]},
               {"bench": "T=1", "methods": [{"label": "spec", "speedup": 0.9}]}]  # exact: a greedy-only arm
    bars, width = grouped_bars(reports, "speedup")
    assert width == pytest.approx(0.4)
    assert bars["spec"] == (pytest.approx([-0.2, 0.8]), [2.0, 0.9])
    assert bars["exact"] == (pytest.approx([0.2]), [1.5])  # no zero-height bar at T=1
    assert grouped_bars(reports, "tau")[0] == {"spec": ([], []), "exact": ([], [])}


# -- scripts --------------------------------------------------------------------------------------------------------


def test_bench_gpu_small(capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--small", "--steps", "4", "--repeats", "1", "--total-token", "12", "--depth", "3"]) == 0
    out = capsys.readouterr().out
    assert "batch size 1" in out and "| 128 |" in out and "| whole cycle |" in out


def test_eval_script_help():
    done = subprocess.run(["bash", str(ROOT / "eval_metric" / "eval_smollm2.sh"), "--help"], capture_output=True,
                          text=True, check=True)
    assert "QUESTIONS_LIMIT" in done.stdout and "--questions-dir" in done.stdout


def test_eval_script_smoke_run(tiny_dirs, tmp_path):
    target, draft = tiny_dirs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "QUESTIONS_LIMIT": "1",
           "TEMPERATURES": "0.0", "BENCHES": "mt_bench gsm8k", "WARMUP": "0", "MAX_NEW_TOKENS": "4"}
    done = subprocess.run(
        ["bash", str(ROOT / "eval_metric" / "eval_family.sh"), "--family", "tiny", "--base-model-path", str(target),
         "--ea-model-path", str(draft), "--questions-dir", str(QUESTIONS.parent.parent), "--out-dir",
         str(tmp_path), "--", "--set", "model.dtype=float32", "--total-token", "8", "--depth", "2", "--no-progress"],
        capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping gsm8k: no question file" in done.stdout
    assert "| tiny-jakiro-temperature-0.0 | " in done.stdout.split("mean over benches")[-1]
    assert len(read_records(tmp_path / "mt_bench" / "tiny-jakiro-temperature-0.0.jsonl")) == 1


# -- interleaved benchmark ----------------------------------------------------------------------------------------
def bench_args(tiny_dirs, out_dir, *extra):
    target, draft = tiny_dirs
    common = ["--set", f"model.base_model_path={target}", "--set", "model.dtype=float32", "--set",
              f"eval.question_file={QUESTIONS}", "--set", "eval.warmup=1", "--set", "tree.total_token=8", "--set",
              "tree.depth=3", "--set", "tree.top_k=3"]
    arms = ["--arm", "vanilla", "eval.method=baseline", "--arm", "spec", f"model.draft_path={draft}",
            "--arm", "spec-pe", f"model.draft_path={draft}", "tree.sibling_mode=per_expert"]
    return [*common, *arms, "--out-dir", str(out_dir), "--max-new-tokens", "5", "--no-progress", *extra]


def test_benchmark_interleaves_arms_resumes_and_reports(tiny_dirs, tmp_path, monkeypatch, capsys):
    from jakiro.evaluation import benchmark

    order = []
    real = benchmark.answer_record

    def recording(cfg, method, prompter, question, meta):
        order.append((question["question_id"], cfg.eval.model_id, cfg.eval.temperature))
        return real(cfg, method, prompter, question, meta)

    monkeypatch.setattr(benchmark, "answer_record", recording)
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0", "1")) == 0
    q1, q2 = [json.loads(line)["question_id"] for line in QUESTIONS.read_text().splitlines()]
    assert order == [(q1, "vanilla", 0.0), (q1, "spec", 0.0), (q1, "spec-pe", 0.0),  # the order rotates
                     (q1, "vanilla", 1.0), (q1, "spec", 1.0), (q1, "spec-pe", 1.0),  # question by question
                     (q2, "spec", 0.0), (q2, "spec-pe", 0.0), (q2, "vanilla", 0.0),
                     (q2, "spec", 1.0), (q2, "spec-pe", 1.0), (q2, "vanilla", 1.0)]
    for temperature in ("0.0", "1.0"):
        report = json.loads((tmp_path / "mt_bench" / f"temperature-{temperature}" / "speed.json").read_text())
        assert [m["label"] for m in report["methods"]] == ["spec", "spec-pe"] and report["baseline"]["samples"] == 2
        for arm in ("vanilla", "spec", "spec-pe"):
            records = [r for _, r in
                       read_records(tmp_path / "mt_bench" / f"temperature-{temperature}" / f"{arm}.jsonl")]
            assert len(records) == 2 and all(r["model_id"] == arm for r in records)
            assert all(r["meta"]["temperature"] == float(temperature) for r in records)
    greedy = json.loads((tmp_path / "mt_bench" / "temperature-0.0" / "speed.json").read_text())
    assert all(m["equality"]["identical"] == m["equality"]["turns"] == 4 for m in greedy["methods"])
    summary = (tmp_path / "report.md").read_text()
    assert "| spec-pe |" in summary  # the side-by-side table first, then one table per temperature
    assert summary.startswith("| method | T = 0 speedup | τ | greedy turns identical | T = 1 speedup | τ |\n")
    # a rerun finds every question answered and only reports again
    order.clear()
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0", "1")) == 0
    assert order == []
    # an arm whose settings changed is refused before any model loads
    monkeypatch.setattr(benchmark, "load_arms", lambda arms: pytest.fail("models loaded for a refused run"))
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0", "--set", "tree.depth=2")) == 2
    assert "spec.jsonl holds results made with other settings (depth: 3 in the file, 2 now)" in \
        capsys.readouterr().err


def test_benchmark_report_only_compares_what_every_arm_answered(tiny_dirs, tmp_path, monkeypatch, capsys):
    from jakiro.evaluation import benchmark

    monkeypatch.setattr(benchmark, "load_arms", lambda arms: pytest.fail("models loaded for a report"))
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0", "--report-only")) == 2
    assert "nothing to report for vanilla at T=0, spec at T=0, spec-pe at T=0" in capsys.readouterr().err
    monkeypatch.undo()
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0")) == 0
    answers = tmp_path / "mt_bench" / "temperature-0.0"
    lines = (answers / "spec.jsonl").read_text().splitlines(keepends=True)
    (answers / "spec.jsonl").write_text(lines[0])  # as if stopped after the first question's spec answer
    for path in answers.glob("*.jsonl"):  # as if answered on another machine, where dtype auto chose bf16
        path.write_text(on_another_machine(path.read_text()))
    before = {path.name: path.read_text() for path in answers.glob("*.jsonl")}
    monkeypatch.setattr(benchmark, "load_arms", lambda arms: pytest.fail("models loaded for a report"))
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0")) == 2  # no resuming here
    assert "hardware: 'another CPU' in the file" in capsys.readouterr().err
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0", "--report-only")) == 0
    assert {path.name: path.read_text() for path in answers.glob("*.jsonl")} == before  # nothing answered
    report = json.loads((answers / "speed.json").read_text())
    assert report["baseline"]["samples"] == 1 and [m["samples"] for m in report["methods"]] == [1, 1]
    assert "2 answers left out: only the 1 samples that every arm answered are compared" in report["notes"]
    # the report still refuses a file whose records disagree, on the machine or on anything else
    first, second = (answers / "vanilla.jsonl").read_text().splitlines(keepends=True)
    (answers / "vanilla.jsonl").write_text(first + second.replace("another CPU", "a third CPU"))
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0", "--report-only")) == 2
    assert "hardware: 'a third CPU' in the file, 'another CPU' now" in capsys.readouterr().err
    (answers / "vanilla.jsonl").write_text(first + second)
    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0", "--report-only",
                                     "--set", "generation.max_length=999")) == 2
    assert "max_length: " in capsys.readouterr().err


def on_another_machine(jsonl: str) -> str:
    """Answer records as if written on another CPU with other library versions and dtype."""
    records = [json.loads(line) for line in jsonl.splitlines()]
    for record in records:
        record["meta"]["settings"].update(hardware="another CPU", torch="0.0", transformers="0.0", dtype="bfloat16")
    return "".join(json.dumps(record) + "\n" for record in records)


def benchmark_calls(tmp_path, script: str, *args: str, **env) -> list[list[str]]:
    """The argument lists that ``scripts/<script>`` gives ``python -m jakiro.evaluation.benchmark``, in order."""
    done, calls = run_with_fake_python(tmp_path, script, *args, **env)
    assert done.returncode == 0, done.stderr
    return [call[3:] for call in calls if call[1:3] == ["-m", "jakiro.evaluation.benchmark"]]  # after -m MODULE


def benchmark_cpu_args(tmp_path, **env):
    """The arguments scripts/benchmark_cpu.sh gives the benchmark (it calls it once)."""
    [call] = benchmark_calls(tmp_path, "benchmark_cpu.sh", "--report-only", **env)
    return call


@pytest.mark.parametrize("exact", ["1", "0"])
def test_benchmark_cpu_script_arms_are_valid_configs(tmp_path, exact):
    from jakiro.evaluation import benchmark

    args = benchmark.parse_args(benchmark_cpu_args(tmp_path, EXACT=exact))
    arms = {arm.name: arm.cfg for arm in benchmark.build_arms(args)}  # every override is a known, valid key
    assert args.report_only
    star, star_lookup = arms["jakiro_star"], arms["jakiro_star-lookup"]
    assert star.eval.method == star_lookup.eval.method == "jakiro_star"
    assert (star.tree.lookup_tokens, star_lookup.tree.lookup_tokens) == (0, 10)
    assert arms["jakiro-v1"].model.draft_path == "shipped:smollm2-jakiro-v1"  # the previous generation, same tree
    assert arms["jakiro-v1"].tree.total_token == arms["jakiro"].tree.total_token
    exact_arms = {"jakiro-exact", "jakiro-lookup-exact"}
    if exact == "1":
        assert exact_arms <= set(arms) and set(args.greedy_only) == exact_arms
        assert all(arms[name].generation.exact_verification for name in exact_arms)
    else:
        assert not exact_arms & set(arms) and args.greedy_only == []


def test_benchmark_cpu_script_takes_more_greedy_only_arms(tmp_path):
    """An extra --greedy-only (with an arm of one's own) adds to the script's exact arms instead of replacing them."""
    from jakiro.evaluation import benchmark

    [call] = benchmark_calls(tmp_path, "benchmark_cpu.sh", "--report-only", "--arm", "vanilla-fp32",
                             "eval.method=baseline", "model.dtype=float32", "--greedy-only", "vanilla-fp32")
    args = benchmark.parse_args(call)
    assert args.greedy_only == ["jakiro-exact", "jakiro-lookup-exact", "vanilla-fp32"]
    arms = {arm.name: arm.cfg for arm in benchmark.build_arms(args)}
    assert arms["vanilla-fp32"].model.dtype == "float32" and arms["vanilla-fp32"].eval.method == "baseline"


def test_tune_tree_script_arms_are_valid_configs(tmp_path):
    """scripts/tune_tree_cpu.sh: the Jakiro draft alone on each dynamic tree at T = 0, then the Jakiro* draft alone
    on each static tree at T = 1, each against vanilla decoding; STAR_TREES="" leaves the second benchmark out."""
    from jakiro.evaluation import benchmark

    dynamic, static = (benchmark.parse_args(call) for call in benchmark_calls(
        tmp_path, "tune_tree_cpu.sh", TREES="8/3/4 16/5/4", STAR_TREES="cpu8 cpu16"))
    arms = {arm.name: arm.cfg for arm in benchmark.build_arms(dynamic)}
    assert set(arms) == {"vanilla", "tree-8-3-4", "tree-16-5-4"} and dynamic.temperatures == [0.0]
    tree = arms["tree-16-5-4"].tree
    assert (tree.total_token, tree.depth, tree.top_k, tree.lookup_tokens) == (16, 5, 4, 0)
    arms = {arm.name: arm.cfg for arm in benchmark.build_arms(static)}
    assert set(arms) == {"vanilla", "star-cpu8", "star-cpu16"} and static.temperatures == [1.0]
    assert arms["star-cpu16"].eval.method == "jakiro_star" and arms["star-cpu16"].tree.static_tree == "cpu16"
    assert arms["star-cpu16"].model.draft_path == "shipped:smollm2-jakiro_star"
    assert static.out_dir == dynamic.out_dir + "-star"
    assert len(benchmark_calls(tmp_path / "skip", "tune_tree_cpu.sh", STAR_TREES="")) == 1


def test_spread_order_samples_every_prefix_evenly():
    from jakiro.evaluation.benchmark import spread_order

    order = [q["question_id"] for q in spread_order([{"question_id": 81 + i} for i in range(80)])]
    assert sorted(order) == list(range(81, 161))
    assert order[:10] == list(range(81, 161, 8))  # every 8th first: all 8 categories (blocks of 10)
    assert order[10:20] == list(range(85, 161, 8))  # then the rest of every 4th
    assert {(q - 81) // 10 for q in order[:10]} == set(range(8))


def test_benchmark_greedy_only_arms_skip_sampling(tiny_dirs, tmp_path):
    from jakiro.evaluation import benchmark

    assert benchmark.main(bench_args(tiny_dirs, tmp_path, "--temperatures", "0", "1", "--questions", "1",
                                     "--greedy-only", "spec-pe")) == 0
    assert (tmp_path / "mt_bench" / "temperature-0.0" / "spec-pe.jsonl").is_file()
    assert not (tmp_path / "mt_bench" / "temperature-1.0" / "spec-pe.jsonl").exists()
    sampled = json.loads((tmp_path / "mt_bench" / "temperature-1.0" / "speed.json").read_text())
    assert [m["label"] for m in sampled["methods"]] == ["spec"]


@pytest.mark.parametrize("arms, message", [
    (["--arm", "x", "--arm", "y", "--greedy-only", "z"], "--greedy-only: give names of arms other than the baseline"),
    (["--arm", "x", "--arm", "y", "--greedy-only", "x"], "--greedy-only: give names of arms other than the baseline"),
    (["--arm", "a=b"], "arm's name"),
    (["--arm", "one", "eval.method=baseline"], "at least two arms"),
    (["--arm", "x", "--arm", "x"], "two arms are named 'x'"),
    (["--arm", "x", "--arm", "y", "tree.depht=3"], "unknown key 'tree.depht'"),
])
def test_benchmark_bad_arms(arms, message, tmp_path, capsys):
    from jakiro.evaluation import benchmark

    assert benchmark.main([*arms, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


# -- greedy losslessness check ------------------------------------------------------------------------------------
def greedy_check_args(tiny_dirs, out, *extra):
    target, draft = tiny_dirs
    return ["--set", f"model.base_model_path={target}", "--set", f"model.draft_path={draft}", "--set",
            "model.dtype=float32", "--set", f"eval.question_file={QUESTIONS}", "--set", "tree.total_token=8",
            "--set", "tree.depth=3", "--set", "tree.top_k=3", "--max-new-tokens", "12", "--out", str(out),
            "--no-progress", *extra]


def test_first_difference():
    from jakiro.evaluation.greedy_check import first_difference

    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2 and first_difference([1, 2, 3], [1, 2]) == 2


@pytest.mark.parametrize("method", ["jakiro", "jakiro_star"])
def test_greedy_check_finds_every_turn_identical_and_resumes(method, tiny_dirs, tmp_path, monkeypatch, capsys):
    from jakiro.evaluation import greedy_check

    out = tmp_path / "check.jsonl"
    extra = ["--set", f"eval.method={method}"] + (["--set", "tree.static_tree=cpu8"] if method == "jakiro_star" else [])
    assert greedy_check.main(greedy_check_args(tiny_dirs, out, *extra)) == 0
    summary = json.loads(out.with_name("check.summary.json").read_text())
    assert (summary["questions"], summary["questions_identical"], summary["turns"], summary["turns_identical"]) == \
        (2, 2, 4, 4)
    assert summary["tokens"] == 4 * 12 and summary["near_ties"] == summary["mismatches"] == []
    assert "questions identical (all turns): 2/2 (100.0%)" in capsys.readouterr().out
    records = greedy_check.read_results(out)
    from jakiro.common.hardware import describe

    assert summary["hardware"] == {describe("cpu"): 2}  # questions per machine, counted from the records
    assert all(r["hardware"] == describe("cpu") and "hardware" not in r["settings"] for r in records)
    monkeypatch.setattr(greedy_check, "check_question", lambda *a: pytest.fail("a finished question was redone"))
    monkeypatch.setattr(greedy_check, "load_method", lambda *a: pytest.fail("loaded the model with nothing to do"))
    assert greedy_check.main(greedy_check_args(tiny_dirs, out, *extra, "--questions", "1")) == 0
    assert json.loads(out.with_name("check.summary.json").read_text()) == {
        **summary, "hardware": {describe("cpu"): 1}, "questions": 1, "questions_identical": 1, "turns": 2,
        "turns_identical": 2, "tokens": 2 * 12}
    assert greedy_check.main(greedy_check_args(tiny_dirs, out, *extra, "--tie", "0.5")) == 2  # other settings
    assert "(tie: 0.0001 in the file, 0.5 now)" in capsys.readouterr().err


def test_greedy_check_reports_a_divergence_with_the_targets_logits(tiny_dirs, tmp_path, monkeypatch, capsys):
    from jakiro.evaluation import greedy_check
    from jakiro.evaluation.methods import EaMethod

    real = EaMethod.generate

    def corrupted(self, input_ids, temperature, seed):  # a lossy "speculative" method: token 3 is off by one
        out = real(self, input_ids, temperature, seed)
        out.tokens[3] = (out.tokens[3] + 1) % 100
        return out

    monkeypatch.setattr(EaMethod, "generate", corrupted)
    out = tmp_path / "check.jsonl"
    assert greedy_check.main(greedy_check_args(tiny_dirs, out, "--questions", "1")) == 1
    text = capsys.readouterr().out
    assert "turns identical: 0/2" in text and "other divergences (bugs): 2" in text
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    first = record["turns"][0]["divergence"]
    assert first["position"] == 3 and first["speculative_token"] == (first["plain_token"] + 1) % 100
    assert first["plain_logit"] - first["speculative_logit"] == pytest.approx(first["logit_gap"])
    assert first["logit_gap"] > 1e-4  # the plain token is the target's argmax, the corrupted one is not
    assert first["top2_gap"] >= 0
    # the same divergences count as near-ties under a (silly) threshold above their gap
    assert greedy_check.main(greedy_check_args(tiny_dirs, tmp_path / "loose.jsonl", "--questions", "1",
                                               "--tie", "1e9")) == 0
    assert "near-tie divergences: 2; other divergences (bugs): 0" in capsys.readouterr().out


def test_greedy_check_needs_a_speculative_method(tiny_dirs, tmp_path, capsys):
    from jakiro.evaluation import greedy_check

    args = greedy_check_args(tiny_dirs, tmp_path / "x.jsonl", "--set", "eval.method=pld")
    assert greedy_check.main(args) == 2
    assert "eval.method must be one of jakiro, jakiro_star" in capsys.readouterr().err


def test_pick_questions_spreads_over_categories():
    questions = [{"question_id": 81 + i, "category": i // 10} for i in range(80)]  # MT-bench's layout
    picked = answers.pick_questions(questions, every=4)
    assert len(picked) == 20 and {q["category"] for q in picked} == set(range(8))
    assert [q["question_id"] for q in answers.pick_questions(questions, 3, every=4)] == [81, 85, 89]
    assert answers.pick_questions(questions, 5) == questions[:5]
    with pytest.raises(ValueError, match="--every must be >= 1"):
        answers.pick_questions(questions, every=0)


def run_tree_costs(target, capsys, *extra):
    """tree_costs on the tiny fp32 target after 8 cached tokens: (exit code, table rows as cell lists, output)."""
    from jakiro.evaluation import tree_costs

    argv = ["--set", f"model.base_model_path={target}", "--set", "model.dtype=float32", "--context", "8", *extra]
    code = tree_costs.main(argv)
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    return code, rows, out


def test_tree_costs_prints_the_curve(tiny_dirs, capsys):
    from jakiro.evaluation import tree_costs

    target, _ = tiny_dirs
    code, rows, out = run_tree_costs(target, capsys, "--sizes", "4", "1", "2", "--repeats", "1")
    assert code == 0
    assert [row[0].strip() for row in rows] == ["1", "2", "4"]
    assert "| (decoding step) |" in out
    assert "tree.total_token: -1 would pick" in out
    assert tree_costs.main(["--set", f"model.base_model_path={target}", "--sizes", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_tree_costs_compares_the_cpu_kernels_side_by_side(tiny_dirs, capsys):
    target, _ = tiny_dirs
    code, rows, out = run_tree_costs(target, capsys, "--sizes", "4", "2", "--repeats", "2", "--compare-kernels")
    assert code == 0
    assert [row[0].strip() for row in rows] == ["2", "4"]
    assert "| CPU kernels + packed weights, ms |" in out  # a float32 target on a CPU: three arms
    assert all(len(row) == 6 and all(float(cell) > 0 for cell in row[1:]) for row in rows)


# -- alternating A/B of one lookup setting ------------------------------------------------------------------------


def alternate_argv(tiny_dirs, *extra):
    target, draft = tiny_dirs
    return ["--set", f"model.base_model_path={target}", "--set", f"model.draft_path={draft}",
            "--set", "model.dtype=float32", "--set", f"eval.question_file={QUESTIONS}", "--set", "tree.total_token=8",
            "--every", "1", "--max-new-tokens", "12", *extra]


def test_alternate_times_both_values_on_the_same_turns(tiny_dirs, capsys):
    from jakiro.evaluation import alternate

    assert alternate.main(alternate_argv(tiny_dirs, "--setting", "lookup_tokens", "--values", "0", "4")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("after question")]
    assert [line.split(":")[0] for line in lines] == ["after question 81", "after question 82"]
    assert all("B/A" in line for line in lines)


def test_alternate_packed_weights_switches_the_targets_kernels(tiny_dirs, capsys, monkeypatch):
    from jakiro.evaluation import alternate
    from jakiro.model.ea_model import EaModel

    used = []
    generate = EaModel.eagenerate

    def recording(self, input_ids, **kwargs):
        used.append(self.target.packed_weights)
        return generate(self, input_ids, **kwargs)

    monkeypatch.setattr(EaModel, "eagenerate", recording)
    assert alternate.main(alternate_argv(tiny_dirs, "--setting", "packed_weights", "--values", "0", "1")) == 0
    assert "B/A" in capsys.readouterr().out
    assert used[:2] == [False, True] and sorted(set(used)) == [False, True]  # warm-up, then both on every turn


def test_alternate_reports_a_greedy_difference(tiny_dirs, monkeypatch):
    from jakiro.evaluation import alternate
    from jakiro.model.ea_model import EaModel

    generate = EaModel.eagenerate

    def differs_when_b(self, input_ids, **kwargs):  # B's answers end with another token
        ids = generate(self, input_ids, **kwargs)
        if self.lookup_tokens == 4 and ids.shape[1] > input_ids.shape[1] + 1:
            ids[0, -1] = (ids[0, -1] + 1) % self.base_model.config.vocab_size
        return ids

    monkeypatch.setattr(EaModel, "eagenerate", differs_when_b)
    with pytest.raises(AssertionError, match="turn 1: greedy answers differ between lookup_tokens=0 and "
                                             "lookup_tokens=4"):
        alternate.main(alternate_argv(tiny_dirs, "--setting", "lookup_tokens", "--values", "0", "4"))


@pytest.mark.parametrize("args, message", [
    (["--setting", "lookup_ngram", "--values", "0", "3"], "must be >= 1"),
    (["--setting", "lookup_ngram", "--values", "2", "3"], "needs the lookup branch on"),
    (["--setting", "lookup_tokens", "--values", "4", "4"], "must differ"),
    (["--setting", "packed_weights", "--values", "0", "2"], "must be 0 or 1"),
    (["--setting", "packed_weights", "--values", "0", "1", "--set", "model.dtype=bfloat16"], "no packed weights"),
    (["--setting", "lookup_tokens", "--values", "0", "4", "--set", "eval.method=baseline"], "jakiro or jakiro_star"),
])
def test_alternate_bad_input(tiny_dirs, args, message, capsys):
    from jakiro.evaluation import alternate

    assert alternate.main(alternate_argv(tiny_dirs, *args)) == 2
    assert message in capsys.readouterr().err
