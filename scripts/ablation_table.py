"""Tabulate training runs side by side: held-out k-step draft accuracy, loss, budget and wall time per run.

Reads ``<run>/metrics.jsonl`` of every run directory under the given folder (``scripts/ablate_drafts.sh`` writes
``outputs/ablation/<arm>``) and prints one Markdown row per run from its last evaluation record::

    python scripts/ablation_table.py outputs/ablation

``step 1 / 2 / 3`` are ``test_acc_step0..2``: the share of held-out positions where the draft's k-th autoregressive
step (fed its own earlier outputs) predicts the target's next token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def summary(run: Path) -> dict | None:
    """The last evaluation of a run plus its training budget (tokens, optimizer steps, seconds), or None."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("type") == "eval"]
    steps = [r for r in records if r.get("type") == "step"]
    if not evals:
        return None
    last = evals[-1]
    return {
        "run": run.name,
        "steps": last["step"],
        "tokens": sum(r.get("tokens", 0) for r in steps),
        "seconds": sum(r["tokens"] / r["tokens_per_s"] for r in steps if r.get("tokens_per_s")),
        **{f"acc{k}": last.get(f"test_acc_step{k}") for k in range(3)},
        "loss": last.get("test_loss"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a folder of run directories, each with metrics.jsonl")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"error: {folder} is not a directory", file=sys.stderr)
        return 2
    rows = [row for run in sorted(folder.iterdir()) if run.is_dir() and (row := summary(run))]
    if not rows:
        print(f"error: no run under {folder} has an evaluation record yet", file=sys.stderr)
        return 2
    print("| run | step 1 | step 2 | step 3 | test loss | optimizer steps | training tokens | train time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        accs = " | ".join("-" if r[f"acc{k}"] is None else f"{r[f'acc{k}']:.3f}" for k in range(3))
        print(f"| {r['run']} | {accs} | {r['loss']:.3f} | {r['steps']} | {int(r['tokens']):,} | "
              f"{r['seconds'] / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
