"""PNG of speedup and tau per bench and method, from speed reports (``python -m jakiro.evaluation.speed --json``).

    python -m jakiro.evaluation.plot REPORT.json [REPORT.json ...] --out plot.png

Needs matplotlib, an optional dependency (``pip install matplotlib``); without it the plot is skipped with a
message and everything else works.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_reports(reports: list[dict], path: str | Path) -> None:
    """Two panels of grouped bars (speedup, tau): one group per bench, one bar per method that the bench reports."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("matplotlib is not installed (pip install matplotlib)") from None
    benches = list(dict.fromkeys(r["bench"] for r in reports))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2 + 1.6 * len(benches)), 4.5))
    for ax, key, title in ((axes[0], "speedup", "speedup vs baseline (x)"), (axes[1], "tau", "tau (tokens / forward)")):
        bars, width = grouped_bars(reports, key)
        for label, (xs, ys) in bars.items():
            ax.bar_label(ax.bar(xs, ys, width, label=label), fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(benches)), benches)
        ax.set_title(title)
        ax.axhline(1.0, color="grey", linewidth=0.8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grouped_bars(reports: list[dict], key: str) -> tuple[dict[str, tuple[list[float], list[float]]], float]:
    """Bar positions and heights of ``key`` per method label: group b (the b-th bench) is centred on x = b, each method
    keeps its slot in every group, and a method that a bench does not report (e.g. a greedy-only arm at T = 1) or
    reports no value for gets no bar there. Returns ({label: (xs, ys)}, bar width)."""
    benches = list(dict.fromkeys(r["bench"] for r in reports))
    labels = list(dict.fromkeys(m["label"] for r in reports for m in r["methods"]))
    values = {(r["bench"], m["label"]): m.get(key) for r in reports for m in r["methods"]}
    width = 0.8 / max(len(labels), 1)
    bars = {}
    for i, label in enumerate(labels):
        offset = (i - (len(labels) - 1) / 2) * width
        present = [(b + offset, values[bench, label]) for b, bench in enumerate(benches)
                   if values.get((bench, label)) is not None]
        bars[label] = ([x for x, _ in present], [y for _, y in present])
    return bars, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.evaluation.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="JSON reports written by jakiro.evaluation.speed --json")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--force", action="store_true",
                        help="replace an --out file that is not a PNG (default: refuse)")
    args = parser.parse_args(argv)
    from jakiro.evaluation.speed import check_outputs, read_report

    try:
        check_outputs(None, args.out, args.force)
        plot_reports([read_report(p) for p in args.reports], args.out)
    except PlotUnavailable as err:
        print(f"skipping the plot: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
