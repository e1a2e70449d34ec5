"""Draft heads shipped with the package, named ``shipped:<name>`` wherever a draft directory is expected, and
Hugging Face hub ids (``org/name``, e.g. the reference's ``Hhaiduo/Jakiro-Vicuna-7B-v1.3``) resolved to a local
snapshot through ``huggingface_hub`` (its cache, ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``, as
transformers does for the target).

Each sub-folder but ``training-data/`` is a draft directory (``config.json`` + ``model.safetensors`` +
``training.json``, what made it: :mod:`jakiro.train.provenance`) trained by ``scripts/train_smollm2_drafts.sh`` and
written here by :mod:`jakiro.train.ship`; ``smollm2-<draft>-v1`` are the previous generation, kept for comparison.
``training-data/`` holds the target's own answers the SmolLM2 drafts learned (gzip JSONL; the training script unpacks
it). ``docs/training.md`` ("Shipped drafts") gives the data, steps and wall time of each::

    EaModel.from_pretrained(base_model_path=smollm2_dir, ea_model_path="shipped:smollm2-jakiro")
    python -m jakiro.demo --set model.draft_path=shipped:smollm2-eagle2
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PREFIX = "shipped:"
FOLDER = Path(__file__).resolve().parent
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, as the hub spells repository ids
HUB_FILES = ["config.json", "*.safetensors", "pytorch_model.bin"]  # what a draft directory needs


def shipped_drafts() -> list[str]:
    """Names of the shipped drafts."""
    return sorted(p.name for p in FOLDER.iterdir() if (p / "config.json").is_file())


def resolve_draft_path(path: str | os.PathLike) -> Path:
    """A draft directory path; ``shipped:<name>`` is the shipped draft of that name (ValueError if none); a hub id
    that is not a local path is the snapshot of that hub repository (:func:`hub_snapshot`)."""
    text = str(path)
    if not text.startswith(PREFIX):
        if Path(path).exists() or not HUB_ID.match(text):
            return Path(path)
        return hub_snapshot(text)
    name = text[len(PREFIX):]
    if name not in shipped_drafts():
        raise ValueError(f"no shipped draft named {name!r}; shipped: {', '.join(shipped_drafts()) or 'none'}")
    return FOLDER / name


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of hub repository ``repo_id`` holding its draft files (downloaded unless cached;
    with ``HF_HUB_OFFLINE=1`` only the cache is read). ValueError naming the id if it is not found."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as err:  # huggingface_hub raises many types: offline cache miss, HTTP errors, bad ids, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"draft {repo_id!r} is no local directory, and no hub snapshot was found or downloaded "
                         f"({type(err).__name__}: {first})") from None
