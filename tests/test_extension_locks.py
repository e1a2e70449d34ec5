"""The warning for a DeepSpeed JIT-build lock left by a killed build (jakiro/train/extension_locks.py)."""

import os
import time

from jakiro.train.extension_locks import stale_extension_locks, warn_stale_extension_locks


def _lock(path, age_s):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_old_locks_are_named_fresh_ones_are_not(tmp_path, monkeypatch, capsys):
    old = _lock(tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock", 3600)
    also_old = _lock(tmp_path / "cpu_adam" / "lock", 900)  # TORCH_EXTENSIONS_DIR holds the op folders directly
    _lock(tmp_path / "py311_cpu" / "fused_adam" / "lock", 20)  # a build in progress
    _lock(tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "build.ninja", 3600)  # not a lock
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert warn_stale_extension_locks() == sorted([old, also_old])
    err = capsys.readouterr().err
    assert f"warning: {old} is 60 min old" in err and "'deepspeed_shm_comm' op" in err
    assert "delete the file" in err and "fused_adam" not in err
    assert stale_extension_locks(tmp_path, older_than_s=7200) == {}


def test_no_extensions_folder_no_warning(tmp_path, capsys):
    assert warn_stale_extension_locks(tmp_path / "missing") == []
    assert capsys.readouterr().err == ""
