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


def test_a_failing_background_run_stops_the_script(tmp_path):
    done, calls = run_script(tmp_path, "jakiro", "eagle2", JOBS="2", FAIL_ON="smollm2-eagle2-selfdistill")
    assert done.returncode == 1 and "a stage-2 run failed" in done.stderr
    assert len(calls) == 4  # both stage-2 runs started, the failure is reported once both ended


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_bad_jobs_is_refused(tmp_path, jobs):
    done, calls = run_script(tmp_path, JOBS=jobs)
    assert done.returncode == 2 and "JOBS must be an integer >= 1" in done.stderr and calls == []
