"""Speed report from answer files: speedup, tau, per-depth acceptance and greedy equality against a baseline.

    python -m jakiro.evaluation.speed --baseline FILE --method FILE [--method FILE ...] [--tokenizer DIR]
                                      [--bench NAME] [--plot out.png] [--json out.json]
    python -m jakiro.evaluation.speed --average REPORT.json [REPORT.json ...] [--plot out.png]

A *sample* is one choice of one question; a method is compared with the baseline on the samples both files hold.
For a sample, tokens = sum over turns of ``new_tokens``, time = sum of ``wall_time``, speed = tokens / time.

* **speedup** = (mean over samples of the method's speed) / (mean over samples of the baseline's speed): the
  convention of the reference's ``speed_accept_len.py`` ("#ratio"), EAGLE's and Spec-Bench's ``speed.py``.
* **throughput ratio** = (total tokens / total time of the method) / (the same for the baseline).
* **tau** = total tokens / total target forwards. Files written by this package store the forwards of each turn
  in ``idxs`` (prefill included), so tau is exact and plain decoding has tau = 1. The reference's files store in
  ``idxs`` the 0-based index of the last decoding step; they are recognised by the missing ``meta`` field, and read
  as idxs + 1 steps per turn (the reference divided by idxs, which overestimates tau).
* **alpha_d** (per-depth acceptance) = (verification steps that accepted >= d draft tokens) / (steps that accepted
  >= d - 1), from the per-step ``accept_lengths`` of speculative records; d runs to the tree depth.
* **greedy equality**: turns whose text equals the baseline's, turns where one text is a prefix of the other (a
  different length cap), and the first differing character of the others. Expected only at temperature 0.

The reference's baseline files have ``new_tokens`` = 0 (a bug): their tokens are counted as idxs + 1 per turn (one
token per autoregressive step), or re-tokenised from the text with ``--tokenizer`` (text tokens, no special
tokens), and the report says so. ``--average`` reads the ``--json`` reports of several benches and prints each
method's speedup and tau per bench and their mean over benches.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jakiro.evaluation.records import FORWARDS_COUNTING, read_records
from jakiro.common.io import OutputExists, atomic_write_text, check_output


@dataclass
class Sample:
    tokens: list[int]
    times: list[float]
    forwards: list[int]
    texts: list[str]
    accept_lengths: list[list[int]] | None

    @property
    def speed(self) -> float:
        return sum(self.tokens) / sum(self.times)


@dataclass
class AnswerFile:
    path: Path
    samples: dict  # (question_id, choice index) -> Sample
    meta: dict
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.path.stem


def _count_tokens(texts: list[str], tokenizer) -> list[int]:
    return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]


def load_answers(path: str | Path, tokenizer=None, tokenizer_name: str = "") -> AnswerFile:
    """Read an answer file (this package's or the reference's) into per-sample token, time and forward counts."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no answer records")
    ours = [record.get("meta", {}).get("idxs") == FORWARDS_COUNTING for _, record in records]
    if any(ours) and not all(ours):
        raise ValueError(f"{path}: mixes records written by this package with records in the reference's format")
    reference = not ours[0]
    zero_tokens = reference and all(n == 0 for _, r in records for c in r["choices"] for n in c["new_tokens"])
    answers = AnswerFile(path, {}, dict(records[0][1].get("meta", {})))
    if reference:
        answers.notes.append(f"{path.name}: reference format (no meta): idxs read as 0-based step indices, "
                             f"forwards = idxs + 1 per turn")
        found = re.search(r"-temperature-([0-9.]+)$", str(records[0][1].get("model_id", "")))
        if found:  # the reference appends the temperature to the model id
            answers.meta["temperature"] = float(found.group(1))
    if zero_tokens:
        how = f"re-tokenised from the text with {tokenizer_name}" if tokenizer is not None else \
            "counted as idxs + 1 per turn (one token per autoregressive step)"
        answers.notes.append(f"{path.name}: new_tokens are all 0 (the reference baseline's bug): tokens {how}")
    for number, record in records:
        for choice in record["choices"]:
            key = (record["question_id"], choice.get("index", 0))
            if key in answers.samples:
                answers.notes.append(f"{path}:{number}: duplicate question {key[0]} choice {key[1]} ignored")
                continue
            forwards = [i + 1 for i in choice["idxs"]] if reference else list(choice["idxs"])
            tokens = list(choice["new_tokens"])
            if zero_tokens:
                tokens = _count_tokens(choice["turns"], tokenizer) if tokenizer is not None else forwards
            if sum(choice["wall_time"]) <= 0:
                raise ValueError(f"{path}:{number}: question {key[0]} has a total wall_time of 0")
            answers.samples[key] = Sample(tokens, list(choice["wall_time"]), forwards, list(choice["turns"]),
                                          choice.get("accept_lengths"))
    return answers


def acceptance_by_depth(samples: list[Sample], depth: int | None = None) -> list[float | None]:
    """alpha_d for d = 1 .. depth (default: the longest accepted length seen); None where no step got to d - 1."""
    steps = [a for s in samples if s.accept_lengths for turn in s.accept_lengths for a in turn]
    if not steps:
        return []
    depth = max(depth or 0, max(steps))
    alphas = []
    for d in range(1, depth + 1):
        reached = sum(a >= d - 1 for a in steps)
        alphas.append(sum(a >= d for a in steps) / reached if reached else None)
    return alphas


def greedy_equality(method: AnswerFile, baseline: AnswerFile, keys: list) -> dict:
    """Per-turn text comparison with the baseline over ``keys``."""
    same = prefix = 0
    mismatches = []
    for key in keys:
        for turn, (a, b) in enumerate(zip(method.samples[key].texts, baseline.samples[key].texts)):
            if a == b:
                same += 1
            elif a.startswith(b) or b.startswith(a):
                prefix += 1
            else:
                first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                mismatches.append({"question_id": key[0], "choice": key[1], "turn": turn, "first_diff_char": first})
    turns = same + prefix + len(mismatches)
    return {"turns": turns, "identical": same, "prefix": prefix, "identical_fraction": same / turns if turns else None,
            "mismatches": mismatches}


def _summary(answers: AnswerFile, keys: list) -> dict:
    samples = [answers.samples[k] for k in keys]
    tokens = sum(sum(s.tokens) for s in samples)
    seconds = sum(sum(s.times) for s in samples)
    forwards = sum(sum(s.forwards) for s in samples)
    tree = answers.meta.get("tree") or {}
    return {"label": answers.label, "file": str(answers.path), "samples": len(samples), "tokens": tokens,
            "seconds": seconds, "speed": statistics.mean(s.speed for s in samples), "throughput": tokens / seconds,
            "tau": tokens / forwards if forwards else None,
            "alpha": acceptance_by_depth(samples, tree.get("depth")), "notes": answers.notes}


def made_by(answers: AnswerFile) -> str | None:
    """The method that wrote an answer file (its records' ``meta``), or None where they do not say."""
    return answers.meta.get("method") or (answers.meta.get("settings") or {}).get("method")


BUDGET_KEYS = ("max_new_tokens", "max_length")


def check_pairing(baseline: AnswerFile, methods: list[AnswerFile]) -> list[str]:
    """ValueError if the baseline file was made by a method other than plain decoding; notes for a baseline that
    does not say, a method file that is plain decoding too, and token budgets that differ from the baseline's."""
    notes = []
    base_method = made_by(baseline)
    if base_method is not None and base_method != "baseline":
        raise ValueError(f"{baseline.path} holds answers of method {base_method!r}, not of plain decoding: --baseline "
                         "takes the file of gen_baseline_answer (method 'baseline'), else every speedup is wrong")
    if base_method is None:
        notes.append(f"{baseline.path.name}: its records do not say which method made them; make sure it is plain "
                     "decoding")
    for method in methods:
        if made_by(method) == "baseline":
            notes.append(f"{method.path.name}: plain decoding as well (method 'baseline')")
        for key in BUDGET_KEYS:
            mine, base = method.meta.get(key), baseline.meta.get(key)
            if mine is not None and base is not None and mine != base:
                notes.append(f"WARNING {method.path.name}: {key} {mine} differs from the baseline's {base}: the two "
                             "files answer under different token budgets, so speed and tau compare unlike answers")
    return notes


def build_report(baseline: AnswerFile, methods: list[AnswerFile], bench: str | None = None) -> dict:
    """The speed report (a JSON-ready dict) of each method against the baseline (see :func:`check_pairing`)."""
    notes = list(baseline.notes) + check_pairing(baseline, methods)
    report = {"bench": bench or baseline.meta.get("bench") or baseline.path.parent.name,
              "temperature": baseline.meta.get("temperature"),
              "baseline": _summary(baseline, sorted(baseline.samples, key=str)), "methods": []}
    for method in methods:
        keys = sorted(set(method.samples) & set(baseline.samples), key=str)
        if not keys:
            raise ValueError(f"{method.path} and {baseline.path} have no question in common")
        if len(keys) < max(len(method.samples), len(baseline.samples)):
            notes.append(f"{method.path.name}: compared on the {len(keys)} samples it shares with the baseline "
                         f"({len(method.samples)} in the file, {len(baseline.samples)} in the baseline)")
        if method.meta.get("temperature") != baseline.meta.get("temperature"):
            notes.append(f"{method.path.name}: temperature {method.meta.get('temperature')} differs from the "
                         f"baseline's {baseline.meta.get('temperature')}")
        own, base = _summary(method, keys), _summary(baseline, keys)
        notes.extend(own.pop("notes"))
        own.update(speedup=own["speed"] / base["speed"], throughput_ratio=own["throughput"] / base["throughput"],
                   baseline_speed=base["speed"], equality=greedy_equality(method, baseline, keys))
        report["methods"].append(own)
    report["baseline"].pop("notes")
    report["notes"] = notes
    return report


def _number(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_report(report: dict) -> str:
    """Markdown table (one row per method, the baseline first) preceded by the notes."""
    base = report["baseline"]
    depth = max((len(m["alpha"]) for m in report["methods"]), default=0)
    lines = [f"note: {note}" for note in report["notes"]]
    lines.append(f"bench {report['bench']}, temperature {_number(report['temperature'], 'g')}, baseline "
                 f"{base['label']}: {base['samples']} samples, {base['speed']:.2f} tok/s (mean over samples)")
    header = ["method", "samples", "tok/s", "speedup", "tput ratio", "tau"] + [f"a{d}" for d in range(1, depth + 1)]
    header.append("greedy same / prefix")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [[base["label"], base["samples"], f"{base['speed']:.2f}", "1.00x", "1.00x", _number(base["tau"], ".2f")]
            + ["-"] * depth + ["-"]]
    for m in report["methods"]:
        eq = m["equality"]
        alphas = [_number(a, ".2f") for a in m["alpha"]] + ["-"] * (depth - len(m["alpha"]))
        rows.append([m["label"], m["samples"], f"{m['speed']:.2f}", f"{m['speedup']:.2f}x",
                     f"{m['throughput_ratio']:.2f}x", _number(m["tau"], ".2f")] + alphas
                    + [f"{eq['identical']}/{eq['turns']} / {eq['prefix']}"])
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    if report["temperature"]:
        lines.append("(sampling: texts are not expected to equal the baseline's at temperature > 0)")
    for m in report["methods"]:
        shown = m["equality"]["mismatches"][:3]
        if shown:
            lines.append(f"{m['label']}: first differing character vs baseline: " + ", ".join(
                f"q{x['question_id']} turn {x['turn'] + 1} at char {x['first_diff_char']}" for x in shown)
                + (" ..." if len(m["equality"]["mismatches"]) > 3 else ""))
    return "\n".join(lines)


def format_side_by_side(reports: list[dict]) -> str:
    """One row per method over the reports of several temperatures of one run (the README's headline table):
    speedup and tau at each temperature, and at temperature 0 the turns whose text equals the baseline's. A method
    that a temperature did not run shows blanks there; the baseline's row gives its tokens/s."""
    def temperature(report: dict) -> str:
        return _number(report["temperature"], "g")

    cells: dict[str, dict[int, dict]] = {}  # method -> report index -> its summary; the baseline first
    for i, report in enumerate(reports):
        cells.setdefault(report["baseline"]["label"], {})[i] = {"speedup": 1.0, "tau": report["baseline"]["tau"]}
        for m in report["methods"]:
            cells.setdefault(m["label"], {})[i] = m
    header = ["method"]
    for report in reports:
        header += [f"T = {temperature(report)} speedup", "τ"]
        if not report["temperature"]:
            header.append("greedy turns identical")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n, (label, per_report) in enumerate(cells.items()):
        row = [label]
        if n == 0:
            row[0] += " (" + ", ".join(f"{r['baseline']['speed']:.1f} tokens/s at T = {temperature(r)}"
                                       for r in reports) + ")"
        for i, report in enumerate(reports):
            m = per_report.get(i)
            row += ["", ""] if m is None else [f"{m['speedup']:.2f}x", _number(m["tau"], ".2f")]
            if not report["temperature"]:
                eq = m and m.get("equality")  # the baseline has none
                row.append("" if m is None else f"{eq['identical']}/{eq['turns']}" if eq else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_average(reports: list[dict]) -> str:
    """Each method's speedup / tau per bench and their means over benches, one row per method."""
    benches = list(dict.fromkeys(r["bench"] for r in reports))
    cells: dict[str, dict[str, dict]] = {}
    for report in reports:
        for m in report["methods"]:
            cells.setdefault(m["label"], {})[report["bench"]] = m
    header = ["method"] + benches + ["mean speedup", "mean tau", "benches"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per_bench in cells.items():
        row = [label] + [f"{per_bench[b]['speedup']:.2f}x / {_number(per_bench[b]['tau'], '.2f')}"
                         if b in per_bench else "-" for b in benches]
        taus = [m["tau"] for m in per_bench.values() if m["tau"] is not None]
        row += [f"{statistics.mean(m['speedup'] for m in per_bench.values()):.2f}x",
                _number(statistics.mean(taus) if taus else None, ".2f"), str(len(per_bench))]
        lines.append("| " + " | ".join(row) + " |")
    return "cells: speedup / tau\n" + "\n".join(lines)


def _plot(reports: list[dict], path: str) -> None:
    from jakiro.evaluation.plot import PlotUnavailable, plot_reports

    try:
        plot_reports(reports, path)
        print(f"plot: {path}")
    except PlotUnavailable as err:
        print(f"skipping the plot: {err}", file=sys.stderr)


def read_report(path: str | Path) -> dict:
    """A ``--json`` report; ValueError naming the file if it is unreadable, truncated or not such a report."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable speed report (truncated or corrupted? {err}); write it again with "
                         "python -m jakiro.evaluation.speed --json") from None
    if not isinstance(report, dict) or not {"bench", "methods"} <= set(report):
        raise ValueError(f"{path}: not a speed report of python -m jakiro.evaluation.speed --json")
    return report


def check_outputs(json_path: str | None, plot_path: str | None, force: bool) -> None:
    """Refuse to replace a file that is not an earlier output of this tool (a speed report, a PNG) unless
    ``force``; a directory is always refused."""
    for path, ours in ((json_path, _is_report), (plot_path, _is_png)):
        if path is None:
            continue
        check_output(path, "file", force=True)  # a directory there: refused
        if Path(path).exists() and not force and not ours(path):
            raise OutputExists(f"{path} exists and is not an earlier output of this tool; pass --force to replace "
                               "it, or give another path")


def _is_report(path: str | Path) -> bool:
    try:
        read_report(path)
    except ValueError:
        return False
    return True


def _is_png(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.evaluation.speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="answer file of plain decoding (required unless --average; no default)")
    parser.add_argument("--method", action="append", default=[],
                        help="answer file of a method (repeatable; one at least required unless --average; no default)")
    parser.add_argument("--tokenizer", help="tokenizer dir to re-count tokens of files whose new_tokens are all 0 "
                        "(the reference's baseline files; default: none)")
    parser.add_argument("--bench", help="bench name for the report (default: from the records, else the folder)")
    parser.add_argument("--json", help="write the report as JSON here (default: print only)")
    parser.add_argument("--plot", help="write a PNG of speedup and tau here (needs matplotlib; default: none)")
    parser.add_argument("--average", nargs="+", metavar="REPORT",
                        help="JSON reports (from --json) to average over benches, instead of --baseline/--method "
                             "(default: none)")
    parser.add_argument("--force", action="store_true", help="replace --json / --plot files that this tool did not "
                        "write (default: refuse; its own earlier outputs are replaced anyway)")
    args = parser.parse_args(argv)
    if args.average and (args.baseline or args.method):
        parser.error("--average takes JSON reports only, not --baseline / --method")
    if not args.average and not (args.baseline and args.method):
        parser.error("give --baseline FILE and at least one --method FILE (or --average REPORT.json ...)")
    try:
        check_outputs(args.json, args.plot, args.force)
        if args.average:
            reports = [read_report(p) for p in args.average]
            print(format_average(reports))
        else:
            tokenizer = None
            if args.tokenizer:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
            load = lambda p: load_answers(p, tokenizer, args.tokenizer or "")  # noqa: E731
            reports = [build_report(load(args.baseline), [load(p) for p in args.method], args.bench)]
            print(format_report(reports[0]))
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(args.json, json.dumps(reports[0], indent=1) + "\n")
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.plot:
        _plot(reports, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
