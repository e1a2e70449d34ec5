"""Greedy losslessness check on a benchmark: speculative vs plain decoding of the same target, token for token.

    python -m jakiro.evaluation.greedy_check --config smollm2 [--questions N] [--every K] [--max-new-tokens 256]
        [--tie 1e-4] [--out FILE.jsonl] [--set model.dtype=float32 ...]

For every question and turn, the target answers at temperature 0 with plain decoding (``naivegenerate``) and with
the config's speculative method (``eval.method``: ``jakiro`` or ``jakiro_star``). Turn t's prompt holds the earlier
questions and the *plain* answers, so every turn compares the two methods on the same prompt, also after an
earlier divergence.

Where the token sequences differ, the target scores prompt + common prefix in one forward, and the record gives
the two tokens' logits there. Plain and speculative decoding compute the same function with different kernels and
batch shapes, so their logits agree only up to rounding (~1e-6 in float32, ~1e-1 in bfloat16); a divergence whose
two logits differ by less than ``--tie`` is such a near-tie, anything else is a losslessness bug. Exit status 1
when any divergence is not a near-tie.

One JSONL record per question in ``--out``, naming the hardware it ran on (appended durably, so a killed run resumes
where it stopped, on any machine; a file made with other settings is refused, see
:mod:`jakiro.evaluation.run_settings`) and a summary JSON beside it
(``<out stem>.summary.json``, written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from jakiro.common.assets import AssetError, load_questions
from jakiro.common.config import ConfigError, JakiroConfig, add_config_arguments, config_from_args
from jakiro.evaluation.answers import pick_questions, question_path
from jakiro.common.chat_templates import ChatPrompter
from jakiro.evaluation.methods import SPECULATIVE_METHODS, load_method
from jakiro.evaluation.records import append_record, read_records
from jakiro.evaluation.run_settings import check_resumable, run_settings, settings
from jakiro.common.io import atomic_write_text, check_output


def _check_record(record, path: Path, number: int) -> None:
    if not isinstance(record, dict) or "question_id" not in record or not isinstance(record.get("turns"), list):
        raise ValueError(f"{path}:{number}: a greedy-check record needs 'question_id' and a list of 'turns'")


def read_results(path: Path) -> list[dict]:
    """The records of a results file (a truncated last line left by a killed run is cut off)."""
    return [record for _, record in read_records(path, repair_tail=True, check=_check_record)] if path.exists() else []


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where the sequences differ (a length difference counts), or None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def divergence(model, prompt: torch.Tensor, plain: list[int], speculative: list[int], at: int) -> dict:
    """The target's view of the first difference: its logits, after prompt + the common prefix, for the token each
    method chose there (None where one sequence simply ended), and their gap.

    Args:
        model: the EaModel both answers came from.
        prompt: [1, P] prompt ids.
        plain, speculative: the generated ids of the two methods; they agree before ``at``.
    """
    ids = torch.cat([prompt, torch.tensor([plain[:at]], dtype=prompt.dtype)], dim=1)
    logits, _ = model.target.prefill(ids)
    model.target.cache = None
    chosen = {name: (tokens[at] if at < len(tokens) else None) for name, tokens in
              (("plain", plain), ("speculative", speculative))}
    scores = {name: (float(logits[t]) if t is not None else None) for name, t in chosen.items()}
    top2 = logits.topk(2).values
    record = {"position": at, "plain_token": chosen["plain"], "speculative_token": chosen["speculative"],
              "plain_logit": scores["plain"], "speculative_logit": scores["speculative"],
              "top2_gap": float(top2[0] - top2[1])}
    both = None not in scores.values()
    record["logit_gap"] = abs(scores["plain"] - scores["speculative"]) if both else None
    return record


def check_question(method, prompter: ChatPrompter, question: dict, max_new_tokens: int, tie: float) -> dict:
    """All turns of one question, plain and speculative; returns the JSONL record."""
    model = method.model
    sampling = method.sampling
    plain_answers, turns = [], []
    for turn in range(len(question["turns"])):
        prompt = prompter.input_ids(question["turns"][: turn + 1], plain_answers)
        plain_ids = model.naivegenerate(prompt, temperature=0.0, max_new_tokens=max_new_tokens,
                                        max_length=sampling["max_length"])
        plain = plain_ids[0, prompt.shape[1]:].tolist()
        speculative = method.generate(prompt, 0.0, seed=0).tokens
        at = first_difference(plain, speculative)
        result = {"tokens": len(plain), "same": at is None}
        if at is not None:
            result["divergence"] = divergence(model, prompt, plain, speculative, at)
            gap = result["divergence"]["logit_gap"]
            result["near_tie"] = gap is not None and gap < tie
        turns.append(result)
        plain_answers.append(prompter.answer_text(plain))
    return {"question_id": question["question_id"], "turns": turns}


def summarize(records: list[dict], meta: dict) -> dict:
    """Counts over questions and turns, every divergence (near-ties and bugs) with where it happened, and how many
    questions ran on each machine (records may come from several: see :func:`run_settings`)."""
    turns = [t for r in records for t in r["turns"]]
    machines = Counter(r.get("hardware", "not recorded") for r in records)
    where = lambda r, i, t: {"question_id": r["question_id"], "turn": i + 1, **t["divergence"]}  # noqa: E731
    diverged = [(r, i, t) for r in records for i, t in enumerate(r["turns"]) if not t["same"]]
    return {
        **meta,
        "hardware": dict(machines.most_common()),
        "questions": len(records),
        "questions_identical": sum(all(t["same"] for t in r["turns"]) for r in records),
        "turns": len(turns),
        "turns_identical": sum(t["same"] for t in turns),
        "tokens": sum(t["tokens"] for t in turns),
        "near_ties": [where(*d) for d in diverged if d[2]["near_tie"]],
        "mismatches": [where(*d) for d in diverged if not d[2]["near_tie"]],
    }


def format_summary(summary: dict) -> str:
    q, t = summary["questions"], summary["turns"]
    lines = [
        f"{summary['method']} vs plain greedy decoding, {summary['dtype']}, {summary['base_model']}, "
        f"max_new_tokens {summary['max_new_tokens']}, near-tie threshold {summary['tie']:g}",
        f"questions identical (all turns): {summary['questions_identical']}/{q} "
        f"({100 * summary['questions_identical'] / max(q, 1):.1f}%)",
        f"turns identical: {summary['turns_identical']}/{t} ({summary['tokens']} plain tokens)",
        f"near-tie divergences: {len(summary['near_ties'])}; other divergences (bugs): {len(summary['mismatches'])}",
    ]
    for kind in ("near_ties", "mismatches"):
        for d in summary[kind]:
            gap = "n/a (one answer ended)" if d["logit_gap"] is None else f"{d['logit_gap']:.3g}"
            lines.append(f"  {kind[:-1].replace('_', '-')}: question {d['question_id']} turn {d['turn']} token "
                         f"{d['position']}: plain {d['plain_token']} vs speculative {d['speculative_token']}, logit "
                         f"gap {gap} (top-2 gap {d['top2_gap']:.3g})")
    return "\n".join(lines)


def default_out(cfg: JakiroConfig) -> Path:
    return Path("outputs") / "greedy_check" / f"{cfg.eval.bench_name}-{cfg.eval.method}-{cfg.model.dtype}.jsonl"


META_KEYS = ("method", "dtype", "base_model", "draft", "max_new_tokens", "tie", "torch", "transformers")


def _check_questions(cfg: JakiroConfig, todo: list[dict], max_new_tokens: int, tie: float, out: Path,
                     current: dict, progress: bool) -> dict:
    """Loads the method, appends one record per question in ``todo`` to ``out``; returns the summary's meta."""
    method, about = load_method(cfg, max_new_tokens)
    prompter = ChatPrompter(method.tokenizer, cfg.model.chat_template, cfg.eval.system_prompt)
    out.parent.mkdir(parents=True, exist_ok=True)
    for question in tqdm(todo, desc="greedy check", unit="q", disable=not progress):
        record = check_question(method, prompter, question, max_new_tokens, tie)
        append_record(out, {**record, "hardware": about["hardware"], "settings": current})
    about = {**about, "method": cfg.eval.method, "max_new_tokens": max_new_tokens, "tie": tie}
    return {key: about.get(key) for key in META_KEYS}


def _previous_meta(summary_path: Path) -> dict | None:
    """The meta of the last summary, so that a finished check is summarized without loading the model; None if
    there is no readable summary."""
    try:
        previous = json.loads(summary_path.read_text())
        return {key: previous[key] for key in META_KEYS}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run(cfg: JakiroConfig, out: Path, num_questions: int | None, tie: float, every: int = 1,
        progress: bool = True) -> dict:
    if cfg.eval.method not in SPECULATIVE_METHODS:
        raise ValueError(f"eval.method must be one of {', '.join(SPECULATIVE_METHODS)} (the method checked against "
                         f"plain decoding), got {cfg.eval.method!r}")
    _, max_new_tokens = settings(cfg)
    questions = load_questions(question_path(cfg), cfg.eval.question_begin, cfg.eval.question_end)
    questions = pick_questions(questions, num_questions, every)
    if not questions:
        raise ValueError("no questions selected")
    current = {**run_settings(cfg, greedy_check=True), "tie": tie}
    check_output(out, "file", force=True)  # a directory there is refused; a file of this check is resumed
    records = read_results(out)
    check_resumable(out, (record.get("settings") for record in records), current)
    done = {record["question_id"] for record in records}
    todo = [q for q in questions if q["question_id"] not in done]
    print(f"{len(questions) - len(todo)} of {len(questions)} questions already in {out}, {len(todo)} to check",
          file=sys.stderr)
    summary_path = out.with_name(out.stem + ".summary.json")
    meta = (None if todo else _previous_meta(summary_path)) or _check_questions(
        cfg, todo, max_new_tokens, tie, out, current, progress)
    wanted = {q["question_id"] for q in questions}
    records = [r for r in read_results(out) if r["question_id"] in wanted]
    summary = summarize(records, meta)
    atomic_write_text(summary_path, json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.evaluation.greedy_check",
                                     description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--out", default=None, help="JSONL of per-question results (default: "
                        "outputs/greedy_check/<bench>-<method>-<dtype>.jsonl)")
    parser.add_argument("--questions", type=int, default=None, help="only the first N questions (default: all)")
    parser.add_argument("--every", type=int, default=1,
                        help="only every K-th question, before --questions (K=4: 20 MT-bench questions, all "
                             "categories; default 1: all)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per turn (default: the config's)")
    parser.add_argument("--tie", type=float, default=1e-4,
                        help="a divergence whose two logits differ by less than this is a near-tie (default 1e-4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: show them)")
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None:
        args.overrides = [*args.overrides, f"eval.max_new_tokens={args.max_new_tokens}"]
    try:
        cfg = config_from_args(args)
        summary = run(cfg, Path(args.out) if args.out else default_out(cfg), args.questions, args.tie, args.every,
                      progress=not args.no_progress)
    except (ConfigError, AssetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 1 if summary["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
