"""scripts/train_smollm2_drafts.sh: which training runs it starts, with how many threads, one or several at a time.

A stand-in ``python`` on PATH records every call (its OMP_NUM_THREADS and arguments) instead of running anything.
"""

import pytest
from script_calls import run_with_fake_python


def run_script(tmp_path, *drafts, **env):
    """The script's result and its training calls as [threads, arguments after ``-m jakiro.train.main``...]."""
    env.setdefault("THREADS", "")
    done, calls = run_with_fake_python(tmp_path, "train_smollm2_drafts.sh", *drafts,
                                       TRAIN_DIR=str(tmp_path / "train"), **env)
    return done, [[call[0], *call[3:]] for call in calls if call[1:3] == ["-m", "jakiro.train.main"]]


def setting(call: list[str], key: str) -> str:
    return next(arg.split("=", 1)[1] for arg in call if arg.startswith(f"{key}="))


def test_one_at_a_time_by_default(tmp_path):
    done, calls = run_script(tmp_path, "jakiro", OMP_NUM_THREADS="")
    assert done.returncode == 0, done.stderr
    assert len(calls) == 2 and all(call[0] == "2" for call in calls)  # stage 1 and stage 2, 2 threads
    stage1, stage2 = sorted(calls, key=lambda call: "train_smollm2_selfdistill" in call)
    assert setting(stage1, "train.output_dir") == str(tmp_path / "train" / "smollm2-jakiro")
    assert setting(stage2, "train.init_from") == str(tmp_path / "train" / "smollm2-jakiro" / "draft")


def test_jobs_train_the_drafts_at_once_with_one_thread_each(tmp_path):
    done, calls = run_script(tmp_path, JOBS="3")
    assert done.returncode == 0, done.stderr
    assert len(calls) == 6 and all(call[0] == "1" for call in calls)
    stage2 = {setting(call, "train.output_dir") for call in calls if "train_smollm2_selfdistill" in call}
    assert stage2 == {str(tmp_path / "train" / f"smollm2-{name}-selfdistill")
                      for name in ("jakiro", "eagle2", "jakiro_star")}
    log = tmp_path / "train" / "smollm2-eagle2-selfdistill.log"  # each background run logs beside its output dir
    assert f"log in {log}" in done.stdout and "== stage 2, eagle2" in log.read_text()


def test_the_data_steps_keep_every_thread_when_jobs_train_at_once(tmp_path):
    done, calls = run_with_fake_python(tmp_path, "train_smollm2_drafts.sh", JOBS="3", THREADS="", OMP_NUM_THREADS="",
                                       TRAIN_DIR=str(tmp_path / "train"))
    assert done.returncode == 0, done.stderr
    data = [call for call in calls if call[1:3] == ["-m", "jakiro.ge_data"]]
    assert len(data) == 2 and all(call[0] == "" for call in data)  # torch's own default: all the cores
    assert {call[0] for call in calls if call[1:3] == ["-m", "jakiro.train.main"]} == {"1"}


def test_a_failing_background_run_stops_the_script(tmp_path):
    done, calls = run_script(tmp_path, "jakiro", "eagle2", JOBS="2", FAIL_ON="smollm2-eagle2-selfdistill")
    assert done.returncode == 1 and "a stage-2 run failed" in done.stderr
    assert len(calls) == 4  # both stage-2 runs started, the failure is reported once both ended


@pytest.mark.parametrize("code", ["130", "143"])
def test_a_run_stopped_by_a_signal_is_not_called_a_failure(tmp_path, code):
    """`pkill -TERM -f jakiro.train.main` (the documented way to stop) ends each run with 143 after its checkpoint:
    the script says the run was stopped and how to go on, and exits with that status."""
    done, calls = run_script(tmp_path, "jakiro", "eagle2", JOBS="2", FAIL_ON="smollm2-eagle2-selfdistill",
                             FAIL_CODE=code)
    assert done.returncode == int(code) and "failed" not in done.stderr
    assert f"a stage-2 run was stopped (exit {code}) after checkpointing: rerun the same command" in done.stderr


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_bad_jobs_is_refused(tmp_path, jobs):
    done, calls = run_script(tmp_path, JOBS=jobs)
    assert done.returncode == 2 and "JOBS must be an integer >= 1" in done.stderr and calls == []


def repo_with_shipped_answers(tmp_path, answers: bytes):
    """A copy of the script in a folder of its own, with ``answers`` shipped (gzip) in jakiro/drafts/training-data."""
    import gzip
    import hashlib
    import shutil

    from script_calls import ROOT

    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "train_smollm2_drafts.sh", root / "scripts")
    shipped = root / "jakiro" / "drafts" / "training-data" / "smollm2-sharegpt-regenerated.jsonl.gz"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(gzip.compress(answers))
    shipped.with_name(shipped.name + ".sha256").write_text(hashlib.sha256(answers).hexdigest() + "\n")
    return root, root / "outputs" / "regenerated" / "smollm2-sharegpt.jsonl"


def regenerations(calls):
    return [call for call in calls if call[1:3] == ["-m", "jakiro.ge_data.regenerate"]]


def test_shipped_answers_are_unpacked_instead_of_regenerated(tmp_path):
    answers = b'{"id": "a", "conversations": []}\n'
    root, regenerated = repo_with_shipped_answers(tmp_path, answers)
    for run in range(2):  # the second run finds them unpacked
        done, calls = run_with_fake_python(tmp_path / f"run{run}", "train_smollm2_drafts.sh", "jakiro", root=root,
                                           TRAIN_DIR=str(tmp_path / "train"), THREADS="")
        assert done.returncode == 0, done.stderr
        assert regenerated.read_bytes() == answers and regenerations(calls) == []
        assert any(call[1:3] == ["-m", "jakiro.ge_data"] and "ge_data_smollm2_selfdistill" in call for call in calls)
        assert ("REGENERATE=1 answers again" in done.stdout) == (run == 0)


@pytest.mark.parametrize("case", ["REGENERATE=1", "a regeneration under way", "another file"])
def test_the_target_answers_when_asked_or_when_the_file_is_not_the_shipped_one(tmp_path, case):
    root, regenerated = repo_with_shipped_answers(tmp_path, b'{"id": "a", "conversations": []}\n')
    env = {"REGENERATE": "1"} if case == "REGENERATE=1" else {}
    if case == "a regeneration under way":
        (regenerated.parent / (regenerated.name + ".parts")).mkdir(parents=True)
    if case == "another file":
        regenerated.parent.mkdir(parents=True)
        regenerated.write_text("mine\n")
    done, calls = run_with_fake_python(tmp_path, "train_smollm2_drafts.sh", "jakiro", root=root,
                                       TRAIN_DIR=str(tmp_path / "train"), THREADS="", **env)
    assert done.returncode == 0, done.stderr
    assert len(regenerations(calls)) == 1
    assert (regenerated.read_text() == "mine\n") if case == "another file" else not regenerated.exists()
    assert ("smollm2-sharegpt-regenerated.jsonl.gz unpacked" in done.stderr) == (case == "another file")


# a stand-in python whose training runs last until SIGTERM, then record it and exit as jakiro.train.main does
STOPPABLE = """#!/usr/bin/env bash
[[ " $* " == *" jakiro.train.main "* ]] || exit 0
trap 'touch "$RECORD/stopped.$$"; exit 143' TERM
touch "$RECORD/running.$$"
while :; do sleep 0.05; done
"""


@pytest.mark.parametrize("jobs, signal_name", [("3", "SIGINT"), ("1", "SIGTERM")])
def test_ctrl_c_or_kill_of_the_script_stops_every_training_run_cleanly(tmp_path, jobs, signal_name):
    """Ctrl-C (SIGINT) or kill (SIGTERM) of the script while it trains: every run under way gets SIGTERM (which
    makes jakiro.train.main checkpoint and exit), the script waits for them, says how to go on and exits 130 / 143;
    no run is left behind."""
    import contextlib
    import os
    import signal
    import subprocess
    import time

    from script_calls import ROOT, default_stop_signals, with_fake_python

    env, record = with_fake_python(tmp_path, STOPPABLE, JOBS=jobs, THREADS="", TRAIN_DIR=str(tmp_path / "train"))
    script = subprocess.Popen(["bash", str(ROOT / "scripts" / "train_smollm2_drafts.sh")], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=default_stop_signals)
    try:
        deadline = time.monotonic() + 60
        while len(list(record.glob("running.*"))) < int(jobs):
            assert script.poll() is None and time.monotonic() < deadline, script.communicate()
            time.sleep(0.05)
        script.send_signal(getattr(signal, signal_name))
        _, err = script.communicate(timeout=60)
    finally:
        script.kill()
        for left in record.glob("running.*"):  # a run the script failed to stop must not outlive the test
            if not (record / f"stopped.{left.name.split('.')[1]}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(left.name.split(".")[1]), signal.SIGKILL)
    running = sorted(p.name.split(".")[1] for p in record.glob("running.*"))
    stopped = sorted(p.name.split(".")[1] for p in record.glob("stopped.*"))
    assert script.returncode == 128 + getattr(signal, signal_name), err
    assert len(running) == int(jobs) and stopped == running  # every run stopped by its SIGTERM, none left behind
    assert "each saves a checkpoint first; rerun the same command to go on" in err
