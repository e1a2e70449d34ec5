"""Ship a trained draft with the package: ``python -m jakiro.train.ship DRAFT_DIR NAME`` writes it to
``jakiro/drafts/NAME`` (``shipped:NAME``): its weights in bf16 and its ``training.json`` (what made it,
:mod:`jakiro.train.provenance`) with ``"shipped": {"dtype", "from"}`` added. ``scripts/train_smollm2_drafts.sh``
runs it with ``SHIP=1``. A shipped draft of that name is replaced only with ``--force``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import jakiro.drafts as drafts
from jakiro.common.io import atomic_write_text
from jakiro.model.draft import DraftHead
from jakiro.train.provenance import FILE, portable, read_training_record


def ship(source: str | os.PathLike, name: str, dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write the trained draft in directory ``source`` as the shipped draft ``name`` (module docstring); returns
    its directory. ValueError for a source without a readable ``training.json`` (a shipped draft says what made it),
    for a bad name, or for an existing shipped draft of that name without ``force``."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"bad shipped draft name {name!r}: give a folder name such as smollm2-jakiro")
    destination = drafts.FOLDER / name
    if destination.exists() and not force:
        raise ValueError(f"shipped:{name} exists ({portable(destination)}); pass --force to replace it")
    record = read_training_record(source)
    if record is None:
        raise ValueError(f"{source} has no readable {FILE}: train it with python -m jakiro.train.main, which "
                         "records what made it")
    DraftHead.from_pretrained(source).save_pretrained(destination, dtype=getattr(torch, dtype))
    record["shipped"] = {"dtype": dtype, "from": portable(source)}
    atomic_write_text(destination / FILE, json.dumps(record, indent=1) + "\n")
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.train.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument("draft_dir", help="a trained draft directory (train.output_dir/draft)")
    parser.add_argument("name", help="the shipped draft's name: jakiro/drafts/NAME, loaded as shipped:NAME")
    parser.add_argument("--force", action="store_true", help="replace a shipped draft of that name (default: refuse)")
    args = parser.parse_args(argv)
    try:
        out = ship(args.draft_dir, args.name, force=args.force)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"shipped {args.draft_dir} as shipped:{args.name} ({portable(out)}, bf16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
