"""Benchmark answer generation: one JSONL record per question, timed per turn, resumable.

Shared by ``python -m jakiro.evaluation.gen_ea_answer`` (method from the config, default ``jakiro``) and
``python -m jakiro.evaluation.gen_baseline_answer`` (method ``baseline`` unless ``--method`` says otherwise)::

    python -m jakiro.evaluation.gen_ea_answer --config smollm2 [--set eval.xxx=...] [--method pld]
        [--model-id ID] [--answer-file F] [--bench-name B] [--question-file F] [--max-new-tokens N]
        [--temperature T] [--base-model-path DIR] [--ea-model-path DIR] [--total-token N] [--depth D] [--top-k K]
        [--static-tree NAME] [--top-p P]

The reference's per-family scripts are thin aliases that only preset the chat template (``gen_ea_answer_vicuna``,
``_llama2chat``, ``_llama3chat``, the same for ``gen_baseline_answer`` and under ``jakiro_star.evaluation``), and
every flag also parses with the reference's underscores (``--ea_model_path``, ``--total_token``).
Each direct flag sets one config key (its help names it) and wins over ``--set``. Per question and choice i
(seed ``generation.seed + i``), each turn's prompt holds the earlier questions and the model's own answers; the
timed region is the generate call alone (prefill included), between device synchronisations. ``eval.warmup``
untimed runs over the first selected question come first. Questions already in the answer file are skipped (an
answer file made with other settings is refused, see :mod:`jakiro.evaluation.run_settings`), and a truncated last
line left by a killed run is dropped with a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import uuid
from pathlib import Path

import torch
from tqdm import tqdm

from jakiro.common.assets import AssetError, ensure_mtbench, load_questions
from jakiro.common.config import ConfigError, JakiroConfig, add_config_arguments, config_from_args
from jakiro.common.chat_templates import ChatPrompter
from jakiro.evaluation.methods import METHODS, load_method, synchronize
from jakiro.evaluation.records import FORWARDS_COUNTING, append_record, read_records
from jakiro.evaluation.run_settings import check_resumable, run_settings, settings
from jakiro.common.io import check_output

# direct flag -> (section, key, type, what it does); each also parses with underscores (the reference's spelling)
FLAGS = {
    "--method": ("eval", "method", str, "decoding method"),
    "--model-id": ("eval", "model_id", str, "name recorded in each answer record and used in the answer file name"),
    "--answer-file": ("eval", "answer_file", str,
                      "answer JSONL to write (resumed if it exists); an existing directory or a path ending in / "
                      "means DIR/<bench>/<model_id>-temperature-<T>.jsonl, as in the reference"),
    "--bench-name": ("eval", "bench_name", str, "benchmark name, used in the output path"),
    "--question-file": ("eval", "question_file", str, "FastChat question JSONL; unset = the embedded MT-bench"),
    "--question-begin": ("eval", "question_begin", int, "first question (index into the file); unset = the first"),
    "--question-end": ("eval", "question_end", int, "one past the last question; unset = to the end"),
    "--max-new-tokens": ("eval", "max_new_tokens", int, "new tokens per turn; unset = generation.max_new_tokens"),
    "--temperature": ("eval", "temperature", float, "0 = greedy, > 0 = sampling; unset = generation.temperature"),
    "--top-p": ("generation", "top_p", float, "nucleus sampling mass in (0, 1]; 1 = off (temperature > 0 only)"),
    "--num-choices": ("eval", "num_choices", int, "answers per question; choice i uses seed + i"),
    "--warmup": ("eval", "warmup", int, "untimed runs over the first question before timing"),
    "--assistant-model-path": ("eval", "assistant_model_path", str, "assistant model of method 'assisted'"),
    "--prompt-lookup-num-tokens": ("eval", "prompt_lookup_num_tokens", int, "tokens proposed per step by 'pld'"),
    "--system-prompt": ("eval", "system_prompt", str, "system prompt; unset = the chat template's default"),
    "--base-model-path": ("model", "base_model_path", str,
                          "target model directory or Hugging Face hub id; unset = the embedded SmolLM2"),
    "--ea-model-path": ("model", "draft_path", str,
                        "trained draft directory, hub id or shipped:NAME; unset = an untrained draft"),
    "--chat-template": ("model", "chat_template", str,
                        "prompt format: auto (the tokenizer's own), vicuna, llama-2 or llama-3"),
    "--dtype": ("model", "dtype", str, "weights and compute dtype: float32, bfloat16, float16 or auto"),
    "--device": ("model", "device", str, "torch device, e.g. cpu, cuda, cuda:1"),
    "--total-token": ("tree", "total_token", int, "tree nodes verified per step, root included; -1 = measure"),
    "--depth": ("tree", "depth", int, "draft tree depth below the root"),
    "--top-k": ("tree", "top_k", int, "children per tree node and nodes kept per tree layer"),
    "--static-tree": ("tree", "static_tree", str, "static tree of method jakiro_star (the reference's "
                                                   "--tree-choices, also accepted)"),
    "--seed": ("generation", "seed", int, "seed of the sampling generator"),
}
FLAG_ALIASES = {"--static-tree": ("--tree-choices", "--tree_choices")}  # the reference's name for the static tree
# the reference's multi-GPU flags: one process answers every question here, so only 1 is accepted
GPU_FLAGS = ("--num-gpus-per-model", "--num-gpus-total")


def flag_default(section: str, key: str):
    """The built-in default of ``section.key`` (before any config file)."""
    hints = {f.name: f for f in dataclasses.fields(getattr(JakiroConfig(), section))}
    return hints[key].default


def build_parser(default_method: str | None, prog: str = "python -m jakiro.evaluation.gen_ea_answer",
                 chat_template: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog="Defaults are the built-in config values; a --config file and --set change them, a flag given here "
               "wins over both. Every flag also parses with underscores (--ea_model_path), as the reference wrote.")
    add_config_arguments(parser)
    for flag, (section, key, kind, text) in FLAGS.items():
        extra = {"choices": METHODS} if flag == "--method" else {}
        default = flag_default(section, key)
        if flag == "--method" and default_method:
            default = default_method
        if flag == "--chat-template" and chat_template:
            default = chat_template
        names = [flag, "--" + flag[2:].replace("-", "_"), *FLAG_ALIASES.get(flag, ())]
        parser.add_argument(*dict.fromkeys(names), dest=flag[2:].replace("-", "_"), type=kind, default=None,
                            help=f"{text} (sets {section}.{key}; default: {'unset' if default is None else default})",
                            **extra)
    for flag in GPU_FLAGS:
        parser.add_argument(flag, "--" + flag[2:].replace("-", "_"), type=int, default=1,
                            help="accepted for the reference's scripts; only 1 (one process, one model) is supported "
                                 "(default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: a progress bar)")
    return parser


def config_from_cli(args: argparse.Namespace, default_method: str | None = None,
                    chat_template: str | None = None) -> JakiroConfig:
    """Config file and ``--set`` overrides, then the direct flags (validated like any config value).
    ``default_method`` / ``chat_template`` (the thin per-family aliases) apply unless a flag or ``--set`` gives
    the key."""
    for flag in GPU_FLAGS:
        if getattr(args, flag[2:].replace("-", "_"), 1) != 1:
            raise ValueError(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: only 1 is supported (one process "
                             f"answers every question); run several processes with --question-begin/--question-end")
    cfg = config_from_args(args)
    changes: dict[str, dict] = {}
    set_keys = {text.partition("=")[0].strip() for text in args.overrides}
    if chat_template and "model.chat_template" not in set_keys:
        changes["model"] = {"chat_template": chat_template}
    for flag, (section, key, *_) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if flag == "--method" and value is None:
            value = default_method
        if value is not None:
            changes.setdefault(section, {})[key] = value
    for section, values in changes.items():
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    return cfg


def answer_path(cfg: JakiroConfig) -> Path:
    temperature, _ = settings(cfg)
    e = cfg.eval
    if e.answer_file:
        if Path(e.answer_file).is_dir() or e.answer_file.endswith(("/", os.sep)):  # the reference's layout
            return Path(e.answer_file) / e.bench_name / f"{e.model_id}-temperature-{temperature}.jsonl"
        return Path(e.answer_file)
    return Path("outputs") / e.bench_name / f"{e.model_id}-{e.method}-temperature-{temperature}.jsonl"


def question_path(cfg: JakiroConfig) -> Path:
    e = cfg.eval
    if e.question_file:
        path = Path(e.question_file)
        if not path.is_file():
            raise ValueError(f"question file {path} not found (eval.question_file / --question-file)")
        return path
    if e.bench_name != "mt_bench":
        raise ValueError(f"bench {e.bench_name!r} needs a question file (--question-file); only MT-bench is embedded")
    return ensure_mtbench()


def pick_questions(questions: list[dict], number: int | None = None, every: int = 1) -> list[dict]:
    """Every ``every``-th question (MT-bench lists its 8 categories in blocks of 10, so ``every=4`` keeps 20
    questions from all of them), then the first ``number`` of those."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    picked = questions[::every]
    return picked[:number] if number is not None else picked


def answer_choice(method, prompter: ChatPrompter, question: dict, index: int, seed: int, temperature: float) -> dict:
    """All turns of one question for choice ``index``: texts, target forwards, token counts, timings."""
    turn_seeds = torch.Generator().manual_seed(seed)
    choice = {"index": index, "turns": [], "idxs": [], "new_tokens": [], "wall_time": []}
    accept_lengths = []
    for turn in range(len(question["turns"])):
        input_ids = prompter.input_ids(question["turns"][: turn + 1], choice["turns"])
        turn_seed = int(torch.randint(0, 2**62, (1,), generator=turn_seeds))
        synchronize(method.device)
        start = time.perf_counter()
        out = method.generate(input_ids, temperature, turn_seed)
        synchronize(method.device)
        choice["wall_time"].append(time.perf_counter() - start)
        choice["turns"].append(prompter.answer_text(out.tokens))
        choice["idxs"].append(out.forwards)
        choice["new_tokens"].append(len(out.tokens))
        accept_lengths.append(out.accept_lengths)
    if all(lengths is not None for lengths in accept_lengths):
        choice["accept_lengths"] = accept_lengths
    return choice


def done_questions(path: Path, current: dict, any_machine: bool = False) -> set:
    """Question ids already answered in ``path`` (a truncated last line is cut off the file); ValueError if its
    records were made with settings other than ``current`` (:func:`jakiro.evaluation.run_settings.run_settings`;
    ``any_machine``: but for the machine's own, see :func:`jakiro.evaluation.run_settings.check_resumable`)."""
    if not path.exists():
        return set()
    records = [record for _, record in read_records(path, repair_tail=True)]
    check_resumable(path, ((record.get("meta") or {}).get("settings") for record in records), current, any_machine)
    return {record["question_id"] for record in records}


def check_same_target(path: Path, identity: str) -> None:
    """ValueError if ``path`` holds answers of a target other than the one of ``identity``
    (:func:`jakiro.target.target_identity`: its config and LM head, so a model replaced in the same directory
    counts); records written before the identity was recorded are not compared."""
    if not path.exists():
        return
    found = {(record.get("meta") or {}).get("target_identity") for _, record in read_records(path)} - {None}
    if found - {identity}:
        raise ValueError(f"{path} holds answers of another target (identity {', '.join(sorted(found))}) than the one "
                         f"loaded now ({identity}), although at the same path: give another answer file, or delete it "
                         "to start over")


def run(cfg: JakiroConfig, progress: bool = True) -> Path:
    """Answer the selected questions into the answer file; returns its path."""
    e = cfg.eval
    temperature, max_new_tokens = settings(cfg)
    questions = load_questions(question_path(cfg), e.question_begin, e.question_end)
    if not questions:
        raise ValueError(f"no questions selected (question_begin={e.question_begin}, question_end={e.question_end})")
    path = answer_path(cfg)
    check_output(path, "file", force=True)  # a directory there is refused; a file of this run is resumed
    done = done_questions(path, run_settings(cfg))
    todo = [q for q in questions if q["question_id"] not in done]
    print(f"{e.bench_name}: {len(questions) - len(todo)} of {len(questions)} questions already in {path}, "
          f"{len(todo)} to answer with {e.method} (temperature {temperature}, max_new_tokens {max_new_tokens})")
    if not todo:
        return path
    method, about = load_method(cfg, max_new_tokens)
    check_same_target(path, about["target_identity"])
    prompter = ChatPrompter(method.tokenizer, cfg.model.chat_template, e.system_prompt)
    meta = answer_meta(cfg, about)
    for _ in tqdm(range(e.warmup), desc="warm-up", disable=not progress or not e.warmup, leave=False):
        answer_choice(method, prompter, questions[0], 0, cfg.generation.seed, temperature)
    path.parent.mkdir(parents=True, exist_ok=True)
    for question in tqdm(todo, desc=f"{e.bench_name} {e.method}", unit="q", disable=not progress):
        append_record(path, answer_record(cfg, method, prompter, question, meta))
    return path


def answer_meta(cfg: JakiroConfig, about: dict) -> dict:
    """The ``meta`` field of every record: how the answers were produced (method settings from ``load_method``)."""
    temperature, max_new_tokens = settings(cfg)
    return {"idxs": FORWARDS_COUNTING, "bench": cfg.eval.bench_name, **about, "temperature": temperature,
            "top_p": cfg.generation.top_p, "top_k": cfg.generation.top_k, "max_new_tokens": max_new_tokens,
            "max_length": cfg.generation.max_length, "chat_template": cfg.model.chat_template,
            "seed": cfg.generation.seed, "settings": run_settings(cfg)}


def answer_record(cfg: JakiroConfig, method, prompter: ChatPrompter, question: dict, meta: dict) -> dict:
    """One question answered ``eval.num_choices`` times: the JSONL record of the answer file."""
    temperature, _ = settings(cfg)
    seed = cfg.generation.seed
    choices = [answer_choice(method, prompter, question, i, seed + i, temperature)
               for i in range(cfg.eval.num_choices)]
    return {"question_id": question["question_id"], "answer_id": uuid.uuid4().hex, "model_id": cfg.eval.model_id,
            "choices": choices, "tstamp": time.time(), "meta": meta}


def main(argv: list[str] | None = None, method: str | None = None, chat_template: str | None = None,
         prog: str = "python -m jakiro.evaluation.gen_ea_answer") -> int:
    """Command line entry point; a given ``method`` replaces the config's ``eval.method`` unless ``--method`` is
    given, a given ``chat_template`` (the per-family aliases: vicuna, llama-2, llama-3) the config's
    ``model.chat_template`` unless ``--chat-template`` or ``--set`` gives one."""
    args = build_parser(method, prog, chat_template).parse_args(argv)
    try:
        cfg = config_from_cli(args, method, chat_template)
        path = run(cfg, progress=not args.no_progress)
    except (ConfigError, AssetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"answers: {path}")
    return 0
