"""Running a script of scripts/ with a stand-in ``python`` on PATH that records every call instead of running it;
starting a process with Ctrl-C and ``kill`` at their defaults."""

import os
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# one file per call, named by the time so that the names sort in call order; FAIL_ON=TEXT fails a call holding TEXT
# (exit status FAIL_CODE, default 1)
FAKE = """#!/usr/bin/env bash
printf "%s\\n" "$OMP_NUM_THREADS" "$@" > "$(mktemp "$RECORD/call.$(date +%s%N).XXXXXX")"
[[ -z "$FAIL_ON" || " $* " != *"$FAIL_ON"* ]] || { echo "failing on purpose" >&2; exit "${FAIL_CODE:-1}"; }
"""


def run_with_fake_python(tmp_path: Path, script: str, *args: str, root: Path = ROOT, **env: str
                         ) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """``bash <root>/scripts/<script> ARGS`` with ``env`` added; returns its result and its python calls in order,
    each as [OMP_NUM_THREADS, python's arguments...]. ``root``: the repository the script runs in (a copy in a
    temporary folder for a script that reads or writes files relative to it)."""
    run_env, record = with_fake_python(tmp_path, FAKE, **{"FAIL_ON": "", **env})
    done = subprocess.run(["bash", str(root / "scripts" / script), *args], env=run_env, capture_output=True,
                          text=True, cwd=tmp_path)
    return done, [path.read_text().splitlines() for path in sorted(record.iterdir())]


def with_fake_python(tmp_path: Path, fake_script: str, **env: str) -> tuple[dict, Path]:
    """(environment, record folder): ``fake_script`` installed as ``python`` first on PATH, ``RECORD`` naming an
    empty folder for it to write into, ``env`` added."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(fake_script)
    fake.chmod(0o755)
    record = tmp_path / "calls"
    record.mkdir()
    return {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "VIRTUAL_ENV": "set",
            "RECORD": str(record), **env}, record


def default_stop_signals() -> None:
    """``preexec_fn`` of a child that must see SIGINT / SIGTERM: a test run started in the background of a script
    (``nohup``, ``&``) ignores SIGINT, and a child inherits that (bash cannot even trap it then)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
