"""The settings that decide a benchmark run's outputs, so that a resumed file never mixes two different runs.

Answer files (``gen_ea_answer``, ``gen_baseline_answer``, the benchmark) and greedy-check files resume by
skipping the questions they already hold. Each record therefore carries :func:`run_settings` (answers: in
``meta["settings"]``; greedy checks: in ``settings``), and :func:`check_resumable` refuses to add to a file whose
records were made with other settings: a changed draft (compared by a digest of its weights, so retraining into
the same directory counts), tree, dtype, hardware (speeds measured on two machines are not comparable), the torch and
transformers versions (a new release changes kernels and decoding code), temperature, token budget, the question
file's content and so on.
Records written before settings were recorded carry none and are not compared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
import transformers

from jakiro.common.config import JakiroConfig
from jakiro.drafts import resolve_draft_path
from jakiro.evaluation.methods import SPECULATIVE_METHODS
from jakiro.common.hardware import describe as describe_hardware
from jakiro.common.io import sha256_file

DRAFT_FILE_SUFFIXES = (".json", ".safetensors", ".bin")
# settings that files written before they were recorded lack
RECORDED_LATER = ("hardware", "torch", "transformers", "questions")
# settings that the machine decides (``model.dtype: auto`` resolves by CPU): a report may read files made elsewhere
MACHINE_SETTINGS = ("hardware", "torch", "transformers", "dtype")


def draft_digest(path: str | Path) -> str:
    """Short SHA-256 over a draft directory's config and weight files (names and bytes, in name order)."""
    folder = resolve_draft_path(path)
    if not folder.is_dir():
        raise ValueError(f"draft directory {folder} not found (model.draft_path)")
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DRAFT_FILE_SUFFIXES):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def question_digest(cfg: JakiroConfig) -> str | None:
    """Short SHA-256 of the question file a run answers (``eval.question_file``, else the embedded MT-bench), so
    that a resumed answer file never mixes two question sets whose ids overlap; None if there is no such file (the
    run then stops with its own message when it loads the questions)."""
    e = cfg.eval
    if e.question_file:
        path = Path(e.question_file)
    elif e.bench_name == "mt_bench":
        from jakiro.common.assets import ensure_mtbench

        path = ensure_mtbench(progress=False)
    else:
        return None
    return sha256_file(path)[:16] if path.is_file() else None


def settings(cfg: JakiroConfig) -> tuple[float, int]:
    """Effective (temperature, max_new_tokens): the eval section's values, else the generation section's."""
    e, gen = cfg.eval, cfg.generation
    temperature = e.temperature if e.temperature is not None else gen.temperature
    return temperature, e.max_new_tokens or gen.max_new_tokens


def run_settings(cfg: JakiroConfig, greedy_check: bool = False) -> dict:
    """Every config value the method of ``cfg.eval.method`` reads when answering, as a JSON-ready dict.

    With ``greedy_check`` the sampling settings (temperature, top-p/k, seed, choices) are left out: the greedy
    check always decodes at temperature 0. So are the hardware and the library versions: each of its records
    compares two decodings made on one machine (and names that machine and the versions), so records from several
    machines add up.
    """
    e, gen, model, tree = cfg.eval, cfg.generation, cfg.model, cfg.tree
    temperature, max_new_tokens = settings(cfg)
    out = {"method": e.method, "base_model": model.base_model_path or "embedded default", "dtype": model.dtype,
           "device": model.device, "chat_template": model.chat_template, "system_prompt": e.system_prompt,
           "max_new_tokens": max_new_tokens, "max_length": gen.max_length, "questions": question_digest(cfg)}
    if not greedy_check:
        out.update(hardware=describe_hardware(model.device), torch=torch.__version__,
                   transformers=transformers.__version__, temperature=temperature, top_p=gen.top_p,
                   top_k=gen.top_k, seed=gen.seed, num_choices=e.num_choices)
    if e.method in SPECULATIVE_METHODS:
        out["draft"] = (draft_digest(model.draft_path) if model.draft_path
                        else {"untrained": dataclasses.asdict(cfg.draft)})
        out["exact_verification"] = gen.exact_verification
        out["sibling_mode"] = tree.sibling_mode
        if e.method == "jakiro_star":
            out["static_tree"] = tree.static_tree
        else:
            out.update(total_token=tree.total_token, depth=tree.depth, top_k_tree=tree.top_k)
        if tree.lookup_tokens:  # absent when off, so files made before the option existed still resume
            out.update(lookup_tokens=tree.lookup_tokens, lookup_ngram=tree.lookup_ngram)
    elif e.method == "oracle":
        out["total_token"] = tree.total_token
    elif e.method == "pld":
        out["prompt_lookup_num_tokens"] = e.prompt_lookup_num_tokens
    elif e.method == "assisted":
        out["assistant_model"] = e.assistant_model_path
    return json.loads(json.dumps(out))


def check_resumable(path: Path, stored: Iterable[dict | None], current: dict, any_machine: bool = False) -> None:
    """Raise ValueError if any record's ``stored`` settings (None: not recorded) differ from ``current``; keys of
    :data:`RECORDED_LATER` are compared only where the record has them. With ``any_machine`` (reading files made on
    another machine, e.g. for a report) the :data:`MACHINE_SETTINGS` are taken from the file's first record instead
    of ``current``: the records must still agree with each other on them."""
    stored = list(stored)
    if any_machine:
        first = next((old for old in stored if old is not None), {})
        current = {**current, **{key: first[key] for key in MACHINE_SETTINGS if key in first}}
    for old in stored:
        if old is None:
            continue
        now = {key: value for key, value in current.items() if key in old or key not in RECORDED_LATER}
        if old == now:
            continue
        changed = [f"{key}: {old.get(key)!r} in the file, {now.get(key)!r} now"
                   for key in sorted(set(old) | set(now)) if old.get(key) != now.get(key)]
        raise ValueError(f"{path} holds results made with other settings ({'; '.join(changed)}): give another "
                         f"output file or directory, or delete it to start over")
