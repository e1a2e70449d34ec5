"""What made a trained draft: ``training.json`` beside its ``config.json``.

The trainer writes it when it exports a draft (``train.output_dir/draft``); a shipped draft keeps it
(:mod:`jakiro.train.ship`). One JSON object::

    {"format": "jakiro-draft-training/1",
     "made_by": "python -m jakiro.train.main", "finished": "2026-12-06T21:00:00Z",
     "commit": "<git HEAD of the code that trained it, '+dirty' with uncommitted changes; null outside git>",
     "versions": {"jakiro", "torch", "transformers"}, "hardware": "<CPU or GPU name>",
     "data": {"features": "outputs/features/...", "conversations", "tokens", "assistant_tokens",
              "source": {"file", "content_sha256", "shuffle_seed", "start", "end"},
              "self_distilled": {"from": {source of the prompts}, "target", "max_len", "regenerate": {...}} | null},
     "recipe": {"model": {...}, "draft": {...}, "train": {...}},     # as run.json records them
     "steps": 12345, "training_tokens": 1.9e7,                     # this run: optimizer steps, tokens seen
     "held_out": {...},                                            # the last evaluation (test_* of metrics.jsonl)
     "init_from": {"path", "training": <that draft's training.json or null>} | null,
     "total_training_tokens": 2.0e7}                               # this run + every run it continued; null if unknown

Paths are written relative to the working directory or as ``~/...`` (never the machine's absolute paths), so a
record can ship in the repository.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import time
from pathlib import Path

from jakiro.common.io import sha256_path

FILE = "training.json"
FORMAT = "jakiro-draft-training/1"


def portable(path: str | os.PathLike | None) -> str | None:
    """``path`` as given when relative (without ``..``), else relative to the working directory when inside it,
    else ``~/...`` when inside the home directory, else its file name: no absolute path of this machine."""
    if path is None:
        return None
    given = Path(path).expanduser()
    if not given.is_absolute() and ".." not in given.parts:  # relative as given, even through a symlinked folder
        return given.as_posix()
    full = given.resolve()
    for base, prefix in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        if full.is_relative_to(base):
            return prefix + str(full.relative_to(base))
    return full.name


def source_commit() -> str | None:
    """The git HEAD of the checkout this package runs from, with ``+dirty`` when tracked files differ from it; None
    outside a git checkout (an installed wheel) or without git."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # an installed package: a repository around its site-packages is not its source
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               timeout=30).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed (a source tree)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def weights_digest(draft_dir: str | os.PathLike) -> str:
    """SHA-256 of what a draft directory starts a training run from: its files but ``training.json``, which a
    finished run resumed under a later commit writes anew around the same weights."""
    return sha256_path(draft_dir, skip=(FILE,))


def read_training_record(draft_dir: str | os.PathLike) -> dict | None:
    """The ``training.json`` of a draft directory, or None when it has none (or an unreadable one)."""
    path = Path(draft_dir) / FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def describe_features(data_dir: str | os.PathLike, manifest: dict) -> dict:
    """The ``data`` entry for a ``python -m jakiro.ge_data`` output directory with this ``manifest``: its size,
    the conversations it was made from and, when those were answered by the target
    (``python -m jakiro.ge_data.regenerate``, whose parts folder sits beside its output), how."""
    totals, source = manifest.get("totals", {}), manifest.get("input", {})
    described = {
        "features": portable(data_dir),
        "conversations": totals.get("conversations"),
        "tokens": totals.get("tokens"),
        "assistant_tokens": totals.get("assistant_tokens"),
        "source": {"file": Path(source["path"]).name if source.get("path") else None,
                   **{k: source.get(k) for k in ("content_sha256", "shuffle_seed", "start", "end")}},
        "self_distilled": None,
    }
    if source.get("path"):
        settings = Path(source["path"] + ".parts") / "settings.json"
        try:
            regen = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            regen = None
        if regen is not None:
            origin = regen.get("input", {})
            described["self_distilled"] = {
                "from": {"file": Path(origin["path"]).name if origin.get("path") else None,
                         **{k: origin.get(k) for k in ("content_sha256", "shuffle_seed", "start")}},
                "target": {k: regen.get("target", {}).get(k) for k in ("dtype", "identity")},
                "max_len": regen.get("max_len"),
                "regenerate": regen.get("regenerate"),
            }
    return described


def read_metrics(path: str | os.PathLike) -> tuple[int, float, dict | None]:
    """(optimizer steps, tokens trained, the last evaluation record without its type) from a run's
    ``metrics.jsonl``; (0, 0.0, None) when it does not exist."""
    steps, tokens, held_out = 0, 0.0, None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return steps, tokens, held_out
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("type") == "step":
            steps, tokens = max(steps, int(record["step"])), tokens + float(record.get("tokens", 0.0))
        elif record.get("type") == "eval":
            held_out = {k: v for k, v in record.items() if k != "type"}
    return steps, tokens, held_out


PATH_KEYS = ("data_dir", "output_dir", "init_from", "draft_config", "deepspeed_config", "base_model_path",
             "vocab_extra_data")


def portable_setting(value):
    """A path setting made :func:`portable`; None, the special values ``online`` and ``shipped:NAME`` and relative
    paths (hub ids too) stay as they are."""
    if not isinstance(value, str) or value == "online" or value.startswith("shipped:") or not Path(value).is_absolute():
        return value
    return portable(value)


def portable_recipe(config: dict) -> dict:
    """``config`` (sections of settings) with its path settings (:data:`PATH_KEYS`) made portable."""
    return {name: {k: portable_setting(v) if k in PATH_KEYS else v for k, v in section.items()}
            if isinstance(section, dict) else section for name, section in config.items()}


def training_record(run_record: dict, data: dict, metrics_path: str | os.PathLike, init_from: str | None,
                    init_dir: str | os.PathLike | None, hardware: str) -> dict:
    """The ``training.json`` object of a finished run (module docstring): ``run_record`` is its ``run.json``
    (``config`` = the recipe), ``data`` what :func:`describe_features` says of its data, ``init_from`` the
    ``train.init_from`` setting and ``init_dir`` the directory it resolved to (None for a fresh draft)."""
    import torch
    import transformers

    steps, tokens, held_out = read_metrics(metrics_path)
    earlier = None if init_dir is None else read_training_record(init_dir)
    if init_dir is None:
        total = tokens
    elif earlier is not None and earlier.get("total_training_tokens") is not None:
        total = tokens + float(earlier["total_training_tokens"])
    else:
        total = None  # continued a draft whose training is not recorded
    return {
        "format": FORMAT,
        "made_by": "python -m jakiro.train.main",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": source_commit(),
        "versions": {"jakiro": package_version("jakiro"), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "hardware": hardware,
        "data": data,
        "recipe": portable_recipe(run_record.get("config", {})),
        "steps": steps,
        "training_tokens": tokens,
        "held_out": held_out,
        "init_from": None if init_dir is None else {"path": portable_setting(init_from), "training": earlier},
        "total_training_tokens": total,
    }
