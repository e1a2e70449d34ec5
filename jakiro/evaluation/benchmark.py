"""Interleaved speed benchmark: several decoding methods ("arms") answer the same questions in turn, in one process.

    python -m jakiro.evaluation.benchmark --config smollm2 --out-dir outputs/benchmark/cpu \\
        --arm vanilla eval.method=baseline  --arm pld eval.method=pld \\
        --arm jakiro model.draft_path=DRAFT_DIR  --arm jakiro-per-expert model.draft_path=DRAFT_DIR \\
        tree.sibling_mode=per_expert  [--temperatures 0.0 1.0] [--questions N] [--every K] [--max-new-tokens 256]

An arm is a name and config overrides on top of ``--config`` / ``--set`` (any ``eval.method`` of
:mod:`jakiro.evaluation.methods`). The first arm is the baseline of the reports. For each question and each
temperature, every arm answers all turns before the next temperature or question starts, and the arms' order rotates
from question to question, so that slow drift of the machine (thermal state, background load) hits all arms alike;
all models stay loaded; ``--greedy-only NAME ...`` arms skip the temperatures above 0. Questions go in a spread order
(every 8th first, see :func:`spread_order`), so a run stopped part way holds a fair sample of every category at every
temperature (``--report-only`` reports it without answering more). Each arm writes
``OUT_DIR/<bench>/temperature-<T>/<arm>.jsonl`` (the records of ``gen_ea_answer``), and a question already answered
by an arm is not answered again (a killed run resumes; an answer file made with other settings is refused). At the
end, per temperature:
``speed.json`` beside the answers and a markdown table (``python -m jakiro.evaluation.speed``), then
``OUT_DIR/report.md``: every arm's speedup and tau at each temperature side by side (the README's headline table),
then all tables; with ``--plot`` ``OUT_DIR/speed.png`` (speedup and tau).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from tqdm import tqdm

from jakiro.common.assets import AssetError, load_questions
from jakiro.common.config import ConfigError, JakiroConfig, add_config_arguments, load_config
from jakiro.evaluation.answers import (answer_choice, answer_meta, answer_record, check_same_target, done_questions,
                                       pick_questions, question_path)
from jakiro.common.chat_templates import ChatPrompter
from jakiro.evaluation.methods import load_method
from jakiro.evaluation.records import append_record
from jakiro.evaluation.run_settings import run_settings, settings
from jakiro.evaluation.speed import build_report, format_report, format_side_by_side, load_answers
from jakiro.common.io import atomic_write_text, check_output

ARM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass
class Arm:
    """One method under test: its name, config and (once loaded) method, prompter and record meta."""

    name: str
    cfg: JakiroConfig
    method: object = None
    prompter: ChatPrompter | None = None
    meta: dict | None = None

    def answer_file(self, out_dir: Path, temperature: float) -> Path:
        return out_dir / self.cfg.eval.bench_name / f"temperature-{temperature}" / f"{self.name}.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jakiro.evaluation.benchmark",
                                     description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--arm", nargs="+", action="append", required=True, metavar="NAME [SECTION.KEY=VALUE ...]",
                        help="a method under test (repeatable; the first is the baseline)")
    parser.add_argument("--out-dir", required=True, help="answer files, reports and the plot go here")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.0, 1.0],
                        help="temperatures to answer at (default: 0.0 1.0)")
    parser.add_argument("--questions", type=int, default=None, help="only the first N questions (default: all)")
    parser.add_argument("--every", type=int, default=1,
                        help="only every K-th question, before --questions (K=4: 20 MT-bench questions, all "
                             "categories; default 1: all)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per turn (default: the config's)")
    parser.add_argument("--greedy-only", nargs="+", action="extend", default=[], metavar="NAME",
                        help="arms that answer at temperature 0 only (e.g. exact verification, which matters only "
                             "for greedy equality; repeatable; default: none)")
    parser.add_argument("--report-only", action="store_true",
                        help="answer nothing: write the reports from the answer files as they are (a stopped run: "
                             "the questions every arm of a temperature answered), whichever machine answered them "
                             "(default: answer, then report)")
    parser.add_argument("--plot", action="store_true", help="also write speed.png (needs matplotlib; default: off)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (default: show them)")
    return parser.parse_args(argv)


def build_arms(args: argparse.Namespace) -> list[Arm]:
    """One config per arm: the shared config, then the arm's overrides (validated like any config value)."""
    arms, seen = [], set()
    common = list(args.overrides)
    if args.max_new_tokens is not None:
        common.append(f"eval.max_new_tokens={args.max_new_tokens}")
    for name, *overrides in args.arm:
        if not ARM_NAME.match(name) or "=" in name:
            raise ConfigError(f"--arm: the first word is the arm's name (letters, digits, '.', '_', '-'), got "
                              f"{name!r}")
        if name in seen:
            raise ConfigError(f"--arm: two arms are named {name!r}")
        seen.add(name)
        cfg = load_config(args.config, [*common, *overrides, f"eval.model_id={name}"])
        arms.append(Arm(name, cfg))
    if len(arms) < 2:
        raise ConfigError("--arm: give at least two arms (the first is the baseline)")
    unknown = [name for name in args.greedy_only if name not in seen]
    if unknown or arms[0].name in args.greedy_only:
        raise ConfigError(f"--greedy-only: give names of arms other than the baseline ({arms[0].name}), got "
                          f"{', '.join(args.greedy_only)}")
    return arms


def arms_at(arms: list[Arm], temperature: float, greedy_only: list[str]) -> list[Arm]:
    """The arms that answer at this temperature."""
    return [arm for arm in arms if temperature == 0 or arm.name not in greedy_only]


def with_temperature(cfg: JakiroConfig, temperature: float) -> JakiroConfig:
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, temperature=temperature))


def load_arms(arms: list[Arm]) -> None:
    """Load every arm's models once (they all stay in memory) and warm each up on a short prompt."""
    for arm in arms:
        _, max_new_tokens = settings(arm.cfg)
        print(f"loading arm {arm.name} ({arm.cfg.eval.method})", file=sys.stderr)
        arm.method, about = load_method(arm.cfg, max_new_tokens)
        arm.prompter = ChatPrompter(arm.method.tokenizer, arm.cfg.model.chat_template, arm.cfg.eval.system_prompt)
        arm.meta = answer_meta(arm.cfg, about)
        warmup = {"question_id": "warmup", "turns": ["Say hello."]}
        for _ in range(arm.cfg.eval.warmup):
            answer_choice(arm.method, arm.prompter, warmup, 0, arm.cfg.generation.seed, 0.0)


def run(args: argparse.Namespace) -> list[dict]:
    """Answer every question with every arm at every temperature (interleaved), then report; returns the reports."""
    arms = build_arms(args)
    first = arms[0].cfg
    questions = load_questions(question_path(first), first.eval.question_begin, first.eval.question_end)
    questions = pick_questions(questions, args.questions, args.every)
    if not questions:
        raise ValueError("no questions selected")
    out_dir = Path(args.out_dir)
    check_output(out_dir, "dir", force=True)  # a file there is refused; answer files in it resume by settings
    runs = {(arm.name, t): run_settings(with_temperature(arm.cfg, t))
            for t in args.temperatures for arm in arms_at(arms, t, args.greedy_only)}
    # read (and checked against the settings) before any model loads, so that a mixed-up file fails fast; a report
    # may read files that another machine (CPU, library versions, the dtype ``auto`` chose there) answered
    done = {(arm.name, t): done_questions(arm.answer_file(out_dir, t), runs[arm.name, t], args.report_only)
            for t in args.temperatures for arm in arms_at(arms, t, args.greedy_only)}
    todo = [q for q in spread_order(questions) if any(q["question_id"] not in answered for answered in done.values())]
    print(f"{len(questions) - len(todo)} of {len(questions)} questions done by every arm at every temperature, "
          f"{len(todo)} to go", file=sys.stderr)
    if args.report_only:
        empty = [f"{name} at T={t:g}" for (name, t), answered in done.items() if not answered]
        if empty:
            raise ValueError(f"nothing to report for {', '.join(empty)}: no answers in {out_dir}")
        todo = []
    else:
        load_arms(arms)
        for t in args.temperatures:  # a target replaced at the same path since the files were started
            for arm in arms_at(arms, t, args.greedy_only):
                check_same_target(arm.answer_file(out_dir, t), arm.meta["target_identity"])
    for number, question in enumerate(tqdm(todo, desc="benchmark", unit="q", disable=args.no_progress)):
        for temperature in args.temperatures:
            present = arms_at(arms, temperature, args.greedy_only)
            shift = number % len(present)
            for arm in present[shift:] + present[:shift]:
                if question["question_id"] in done[arm.name, temperature]:
                    continue
                cfg = with_temperature(arm.cfg, temperature)
                meta = {**arm.meta, "temperature": temperature, "settings": runs[arm.name, temperature]}
                file = arm.answer_file(out_dir, temperature)
                file.parent.mkdir(parents=True, exist_ok=True)
                append_record(file, answer_record(cfg, arm.method, arm.prompter, question, meta))
    reports = []
    for temperature in args.temperatures:
        present = arms_at(arms, temperature, args.greedy_only)
        files = {arm.name: arm.answer_file(out_dir, temperature) for arm in present}
        reports.append(report(present, files, out_dir, temperature, first.eval.bench_name))
    write_summary(reports, out_dir, args.plot)
    return reports


def spread_order(questions: list[dict]) -> list[dict]:
    """The questions reordered so that every prefix samples the list evenly: every 8th first, then the rest of every
    4th, of every 2nd, then the others. MT-bench's 80 questions come in blocks of 10 per category, so a run stopped
    after 10 questions has answered every category, and its partial results are a fair sample."""
    def stride(index: int) -> int:
        return next(k for k in (8, 4, 2, 1) if index % k == 0)

    return [q for _, q in sorted(enumerate(questions), key=lambda pair: (-stride(pair[0]), pair[0]))]


def report(arms: list[Arm], files: dict, out_dir: Path, temperature: float, bench: str) -> dict:
    """The speed report of one temperature over the samples that every arm answered (all of them after a complete
    run; a stopped run leaves out the question it was in), written to ``speed.json``."""
    answers = [load_answers(files[arm.name]) for arm in arms]  # labelled by file name = arm name
    shared = set.intersection(*(set(a.samples) for a in answers))
    if not shared:
        raise ValueError(f"no question answered by every arm at T={temperature:g} in {out_dir}: nothing to compare")
    left_out = sum(len(a.samples) - len(shared) for a in answers)
    answers = [dataclasses.replace(a, samples={k: v for k, v in a.samples.items() if k in shared}) for a in answers]
    baseline, *methods = answers
    result = build_report(baseline, methods, bench=f"{bench} T={temperature:g}")
    if left_out:
        result["notes"].append(f"{left_out} answers left out: only the {len(shared)} samples that every arm "
                               f"answered are compared")
    path = out_dir / bench / f"temperature-{temperature}" / "speed.json"
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    return result


def write_summary(reports: list[dict], out_dir: Path, plot: bool) -> None:
    text = "\n\n".join([format_side_by_side(reports)] + [format_report(r) for r in reports])
    print(text)
    atomic_write_text(out_dir / "report.md", text + "\n")
    if plot:
        from jakiro.evaluation.plot import PlotUnavailable, plot_reports

        try:
            plot_reports(reports, out_dir / "speed.png")
            print(f"plot: {out_dir / 'speed.png'}")
        except PlotUnavailable as err:
            print(f"skipping the plot: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ConfigError, AssetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
