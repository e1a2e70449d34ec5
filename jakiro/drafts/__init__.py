"""Draft heads shipped with the package, named ``shipped:<name>`` wherever a draft directory is expected.

Each sub-folder is a draft directory (``config.json`` + ``model.safetensors``) trained by
``scripts/train_smollm2_drafts.sh``; see ``docs/training.md`` ("Shipped drafts") for the data, steps and wall time of each::

    EaModel.from_pretrained(base_model_path=smollm2_dir, ea_model_path="shipped:smollm2-jakiro")
    python -m jakiro.demo --set model.draft_path=shipped:smollm2-eagle2
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "shipped:"
FOLDER = Path(__file__).resolve().parent


def shipped_drafts() -> list[str]:
    """Names of the shipped drafts."""
    return sorted(p.name for p in FOLDER.iterdir() if (p / "config.json").is_file())


def resolve_draft_path(path: str | os.PathLike) -> Path:
    """A draft directory path; ``shipped:<name>`` is the shipped draft of that name (ValueError if none)."""
    text = str(path)
    if not text.startswith(PREFIX):
        return Path(path)
    name = text[len(PREFIX):]
    if name not in shipped_drafts():
        raise ValueError(f"no shipped draft named {name!r}; shipped: {', '.join(shipped_drafts()) or 'none'}")
    return FOLDER / name
