"""scripts/ablation_table.py (the ablation's table from training logs), scripts/ablate_drafts.sh's arms and
scripts/compare_commits.py's refusal of a folder that is not a checkout."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder: Path, name: str, records: list[dict]) -> None:
    run = folder / name
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_table_takes_the_last_evaluation_and_sums_the_budget(tmp_path, capsys):
    write_run(tmp_path, "arm-a", [
        {"type": "step", "step": 1, "tokens": 1000, "tokens_per_s": 500.0},
        {"type": "eval", "step": 1, "test_acc_step0": 0.1, "test_acc_step1": 0.01, "test_acc_step2": 0.0,
         "test_loss": 3.0},
        {"type": "step", "step": 2, "tokens": 2000, "tokens_per_s": 100.0},
        {"type": "eval", "step": 2, "test_acc_step0": 0.25, "test_acc_step1": 0.125, "test_acc_step2": 0.0625,
         "test_loss": 2.5},
    ])
    write_run(tmp_path, "arm-b-no-eval-yet", [{"type": "step", "step": 1, "tokens": 10, "tokens_per_s": 1.0}])
    assert load("ablation_table").main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # header, rule, one run (the run without an evaluation is left out)
    assert lines[2] == "| arm-a | 0.250 | 0.125 | 0.062 | 2.500 | 2 | 3,000 | 0.4 min |"


def test_table_errors_are_one_line(tmp_path, capsys):
    table = load("ablation_table")
    assert table.main([str(tmp_path / "missing")]) == 2
    assert table.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("error:") == 2


def test_every_ablation_arm_is_listed_in_the_order():
    script = (ROOT / "scripts" / "ablate_drafts.sh").read_text()
    order = script.split("ORDER=(")[1].split(")")[0].split()
    arms = [line.strip()[1:].split("]=")[0] for line in script.splitlines()
            if line.strip().startswith("[") and "]=" in line]
    assert sorted(order) == sorted(arms) and len(order) == len(set(order))
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ablate_drafts.sh"), "no-such-arm"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "unknown arm 'no-such-arm'" in done.stderr


def test_compare_commits_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_commits.py"), str(tmp_path), str(ROOT)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is not a Jakiro checkout" in done.stderr
