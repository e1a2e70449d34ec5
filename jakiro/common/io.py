"""File helpers shared by every entry point: atomic writes (a reader or a resumed run sees the old file or the whole
new one, never half of one), content hashes and their checks, what differs between two recorded settings, and
refusing to replace an output that a user did not ask to replace."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(temporary path)`` in ``path``'s folder, then rename it to ``path``.

    The temporary file is removed on any error; temporaries left by a killed writer of the same file are removed
    first.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike, skip: tuple[str, ...] = ()) -> str:
    """Hex SHA-256 of a file, or of a directory's files (relative names and bytes, in name order) but those whose
    relative names are in ``skip``."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and str(p.relative_to(path)) not in skip):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()


def check_file_hash(path: str | os.PathLike, expected: str | None, remedy: str) -> None:
    """ValueError naming ``path`` unless its SHA-256 is ``expected`` (None: nothing was recorded, also an error).

    ``remedy`` says what to do about it (e.g. "regenerate it with ...")."""
    if not expected:
        raise ValueError(f"{path}: no sha256 recorded for it, so it cannot be checked; {remedy}")
    found = sha256_file(path)
    if found != expected:
        raise ValueError(f"{path} is corrupted or was changed after it was written (sha256 {found[:12]}..., "
                         f"recorded {expected[:12]}...); {remedy}")


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every (nested, dotted) key whose value differs between two JSON-like dicts."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} recorded, {b!r} now")
    return out


class OutputExists(ValueError):
    """An output path holds something the run would replace; the message says how to proceed."""


def check_output(path: str | os.PathLike, kind: str, force: bool = False, flag: str = "--force") -> None:
    """Refuse an output ``path`` of the wrong kind or one that would be overwritten.

    ``kind`` is ``"file"`` or ``"dir"``. An existing path of the other kind is always refused; an existing file (or
    a non-empty directory) is refused unless ``force``."""
    path = Path(path)
    if not path.exists():
        return
    other = "dir" if kind == "file" else "file"
    if (kind == "file" and path.is_dir()) or (kind == "dir" and not path.is_dir()):
        raise OutputExists(f"{path} is an existing {'directory' if other == 'dir' else 'file'}, not a {kind} "
                           f"this run can write: give another path")
    if force or (kind == "dir" and not any(path.iterdir())):
        return
    raise OutputExists(f"{path} already exists; pass {flag} to replace it, or give another path")


def check_model_files(path: str | os.PathLike) -> None:
    """ValueError naming the file if a local model directory holds a truncated or corrupted JSON file (config,
    tokenizer, generation config) or safetensors file (its header and size are checked, not its bytes). Hub ids and
    missing paths are left to the loader."""
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        return
    for file in sorted(folder.iterdir()):
        try:
            if file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
            elif file.suffix == ".safetensors":
                with safe_open(str(file), "pt"):
                    pass
        except Exception as err:  # JSON and safetensors' own error types
            raise ValueError(f"{file} is truncated or corrupted ({err}); copy or download the model "
                             f"{folder.name} again") from None
