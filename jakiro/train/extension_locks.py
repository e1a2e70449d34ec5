"""A warning for the silent hang of a DeepSpeed run whose CPU ops' JIT build was killed.

DeepSpeed builds its CPU ops (shared-memory communication, CPU Adam) with torch's C++ extension builder on first use,
holding a ``lock`` file in the op's build folder meanwhile. A build that is killed leaves the file, and every later
build of that op waits for it forever without a word (torch's behaviour). Builds take about 30 s, so a lock far
older than that is almost surely such a leftover: :func:`warn_stale_extension_locks` names it and what to do.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

STALE_AFTER_S = 600.0  # a build holds its lock ~30 s


def extensions_root() -> Path:
    """Where torch builds C++ extensions: ``TORCH_EXTENSIONS_DIR``, else torch's default root."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def stale_extension_locks(root: Path | None = None, older_than_s: float = STALE_AFTER_S) -> dict[Path, float]:
    """The build locks under ``root`` (the op folders and one level of ``py311_cpu``-style folders above them) last
    modified more than ``older_than_s`` seconds ago, by path (sorted), with their ages in seconds."""
    root = extensions_root() if root is None else root
    now = time.time()
    found = {}
    for lock in sorted([*root.glob("*/lock"), *root.glob("*/*/lock")]):
        try:
            age = now - lock.stat().st_mtime
        except OSError:  # removed meanwhile: a build finished
            continue
        if age > older_than_s:
            found[lock] = age
    return found


def warn_stale_extension_locks(root: Path | None = None, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Print a warning to stderr for each stale lock (see the module docstring); returns them."""
    locks = stale_extension_locks(root, older_than_s)
    for lock, age in locks.items():
        print(f"warning: {lock} is {age / 60:.0f} min old: a killed JIT build of DeepSpeed's "
              f"'{lock.parent.name}' op leaves it, and the build of that op then waits for it forever; if no other "
              "process is building it, delete the file", file=sys.stderr)
    return list(locks)
