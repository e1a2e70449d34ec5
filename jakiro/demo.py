"""The README's main job: speculative vs plain decoding on MT-bench questions with the embedded default target.

    python -m jakiro.demo [--questions N] [--config smollm2] [--set section.key=value ...]

Materialises the embedded assets (SmolLM2-135M-Instruct, MT-bench questions) into the cache if needed, loads the
target and a draft (``model.draft_path``; without one, an untrained draft is created in the cache — it keeps the
output lossless but cannot speed anything up, and the run says so), answers the first turn of N questions with
both methods in the same process, and prints tokens/s, speedup and τ (tokens per target forward) per question.

By default (``--verification identical``) the dtype and the verification mode are the ones that give plain
decoding's text on this hardware and still pay (:func:`jakiro.common.hardware.identical_text_settings`; per-CPU
measurements in docs/cpu.md), unless ``--set model.dtype=...`` or ``--set generation.exact_verification=...``
names them; ``--verification config`` takes both from the config as they are. The summary line says which ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from jakiro.common.assets import AssetError, ensure_mtbench, ensure_smollm2, load_questions
from jakiro.common.config import ConfigError, JakiroConfig, add_config_arguments, config_from_args
from jakiro.common.hardware import identical_text_settings
from jakiro.model.ea_model import EaModel
from jakiro.model.init_draft import resolve_draft


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def identical_config(cfg: JakiroConfig, overrides: list[str]) -> tuple[JakiroConfig, str]:
    """``cfg`` with the dtype and verification mode of :func:`identical_text_settings` for its device, except the
    keys ``overrides`` (``--set`` texts) name; returns (config, why)."""
    dtype, exact, why = identical_text_settings(cfg.model.device)
    given = {text.partition("=")[0].strip() for text in overrides}
    if "model.dtype" not in given:
        cfg.model = dataclasses.replace(cfg.model, dtype=dtype)
    if "generation.exact_verification" not in given:
        cfg.generation = dataclasses.replace(cfg.generation, exact_verification=exact)
    if {"model.dtype", "generation.exact_verification"} & given:
        why += ", with your --set"
    return cfg, f"identical-text settings for {why}"


def run(cfg: JakiroConfig, num_questions: int, mode: str = "as configured") -> list[dict]:
    base = cfg.model.base_model_path or str(ensure_smollm2())
    questions = load_questions(cfg.eval.question_file or ensure_mtbench())[:num_questions]
    draft_path, trained = resolve_draft(cfg, base)
    if not trained:
        print("note: no trained draft configured (model.draft_path); using an UNTRAINED draft. Output stays "
              "lossless, but expect a slowdown, not a speedup.")
    torch.manual_seed(cfg.generation.seed)
    model = EaModel.from_config(cfg, base, draft_path)
    tokenizer = model.get_tokenizer()
    gen = cfg.generation
    sampling = dict(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                    max_new_tokens=gen.max_new_tokens, max_length=gen.max_length)
    warmup = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
    model.eagenerate(warmup, max_new_tokens=8)
    model.naivegenerate(warmup, max_new_tokens=8)
    rows = []
    print(f"{'question':>8} {'tokens':>6} {'plain tok/s':>11} {'jakiro tok/s':>12} {'speedup':>7} {'tau':>5} same")
    for q in questions:
        messages = [{"role": "user", "content": q["turns"][0]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        (plain, n_plain, _), t_plain = timed(model.naivegenerate, ids, log=True, seed=gen.seed, **sampling)
        (spec, n_spec, forwards), t_spec = timed(model.eagenerate, ids, log=True, seed=gen.seed, **sampling)
        row = dict(question_id=q["question_id"], tokens=n_spec, plain_tps=n_plain / t_plain,
                   spec_tps=n_spec / t_spec, tau=n_spec / forwards, same=torch.equal(plain, spec))
        row["speedup"] = row["spec_tps"] / row["plain_tps"]
        rows.append(row)
        print(f"{row['question_id']:>8} {n_spec:>6} {row['plain_tps']:>11.1f} {row['spec_tps']:>12.1f} "
              f"{row['speedup']:>6.2f}x {row['tau']:>5.2f} {'yes' if row['same'] else 'no'}")
    if rows:
        mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        print(f"{'mean':>8} {'':>6} {mean('plain_tps'):>11.1f} {mean('spec_tps'):>12.1f} "
              f"{mean('spec_tps') / mean('plain_tps'):>6.2f}x {mean('tau'):>5.2f} "
              f"{sum(r['same'] for r in rows)}/{len(rows)}")
        print(f"target {Path(base).name}, {cfg.model.dtype}, draft {'trained' if trained else 'UNTRAINED'}, tree "
              f"total_token={model.drafter.total_token} depth={cfg.tree.depth} top_k={cfg.tree.top_k} "
              f"lookup_tokens={cfg.tree.lookup_tokens}, "
              f"temperature={gen.temperature}, {torch.get_num_threads()} CPU threads, "
              f"{'exact' if gen.exact_verification else 'batched'} verification ({mode})")
        if gen.temperature == 0 and not all(r["same"] for r in rows):
            print(different_output_note(cfg))
    return rows


def different_output_note(cfg: JakiroConfig) -> str:
    """Why greedy outputs can differ although both decodings are exact, and how to get identical ones."""
    if cfg.model.dtype != "float32" and not cfg.generation.exact_verification:
        return (f"note: in {cfg.model.dtype} a batched tree forward rounds differently from one-token decoding, so "
                "near-tied tokens can flip and the texts part ways (both are the target's greedy decoding up to "
                "rounding); --set generation.exact_verification=true makes them identical bit for bit (slower)")
    return ("note: the outputs differ; check whether each divergence is a numerical near-tie with "
            "python -m jakiro.evaluation.greedy_check --config smollm2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=3, help="how many MT-bench questions (default 3)")
    parser.add_argument("--verification", choices=("identical", "config"), default="identical",
                        help="identical: the dtype and verification mode that give plain decoding's text on this "
                             "hardware (a --set of model.dtype / generation.exact_verification still wins); config: "
                             "both as the config says (default: identical)")
    add_config_arguments(parser)
    parser.set_defaults(config="smollm2")
    args = parser.parse_args(argv)
    if args.questions < 1:
        parser.error("--questions must be >= 1")
    try:
        cfg = config_from_args(args)
        mode = "as configured"
        if args.verification == "identical":
            cfg, mode = identical_config(cfg, args.overrides)
        run(cfg, args.questions, mode)
    except (ConfigError, AssetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
