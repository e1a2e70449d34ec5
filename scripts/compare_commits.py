"""Time two checkouts of Jakiro against each other, alternately, and check they generate the same text.

A refactor must not change behaviour: for fixed seeds the outputs are identical and generation speed is unchanged.
This driver runs one worker process per (run, checkout), alternating ``A B A B ...``, each with ``PYTHONPATH``
pointing at its checkout; a worker loads the embedded SmolLM2 and that checkout's shipped Jakiro draft, times
speculative decoding (T = 0) on the first N of every 4th MT-bench question, then (untimed) records a sampled
answer (T = 1, fixed seed). Usage (make the other checkout with ``git worktree add ../old COMMIT``)::

    python scripts/compare_commits.py ../old . --runs 3 --questions 5

Prints tokens/s per run and checkout, the mean ratio B/A, and whether every greedy and sampled output matched.
Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(args) -> None:
    import torch

    from jakiro.model.ea_model import EaModel

    try:
        from jakiro.common.assets import ensure_mtbench, ensure_smollm2, load_questions
    except ImportError:  # checkouts from before the layout move
        from jakiro.assets import ensure_mtbench, ensure_smollm2, load_questions
    torch.set_num_threads(args.threads)
    model = EaModel.from_pretrained(str(ensure_smollm2()), "shipped:smollm2-jakiro", total_token=8, depth=3, top_k=4,
                                    lookup_tokens=args.lookup_tokens, exact_verification=args.exact,
                                    dtype=getattr(torch, args.dtype))
    tokenizer = model.get_tokenizer()
    questions = load_questions(ensure_mtbench())[::4][: args.questions]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)["input_ids"] for q in questions]
    model.eagenerate(prompts[0], max_new_tokens=8)  # warm-up
    tokens, seconds, digests = 0, 0.0, []
    for ids in prompts:
        start = time.perf_counter()
        out, new, _ = model.eagenerate(ids, temperature=0.0, max_new_tokens=args.max_new_tokens, log=True)
        seconds += time.perf_counter() - start
        tokens += new
        digests.append(hashlib.sha256(str(out[0].tolist()).encode()).hexdigest()[:12])
    for ids in prompts[:2]:
        out = model.eagenerate(ids, temperature=1.0, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=7)
        digests.append(hashlib.sha256(str(out[0].tolist()).encode()).hexdigest()[:12])
    print(json.dumps({"tokens_per_s": tokens / seconds, "tokens": tokens, "digests": digests}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout_a", help="the first checkout (e.g. the commit before a refactor)")
    parser.add_argument("checkout_b", help="the second checkout")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per checkout (default: 3)")
    parser.add_argument("--questions", type=int, default=5, help="MT-bench questions (every 4th; default: 5)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per answer (default: 128)")
    parser.add_argument("--dtype", default="bfloat16", help="target dtype (default: bfloat16)")
    parser.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True,
                        help="exact verification (default: on)")
    parser.add_argument("--lookup-tokens", type=int, default=0, help="prompt-lookup branch size (default: 0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    checkouts = {"A": Path(args.checkout_a).resolve(), "B": Path(args.checkout_b).resolve()}
    for name, path in checkouts.items():
        if not (path / "jakiro" / "model" / "ea_model.py").is_file():
            print(f"error: {path} is not a Jakiro checkout", file=sys.stderr)
            return 2
    flags = [f"--questions={args.questions}", f"--max-new-tokens={args.max_new_tokens}", f"--dtype={args.dtype}",
             "--exact" if args.exact else "--no-exact", f"--lookup-tokens={args.lookup_tokens}",
             f"--threads={args.threads}"]
    results: dict[str, list[dict]] = {"A": [], "B": []}
    for run in range(args.runs):
        for name, path in checkouts.items():
            env = dict(os.environ, PYTHONPATH=str(path))
            done = subprocess.run([sys.executable, __file__, "a", "b", "--worker", *flags], env=env, cwd=path,
                                  capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[name].append(result)
            print(f"run {run + 1} {name}: {result['tokens_per_s']:.2f} tok/s ({result['tokens']} tokens)", flush=True)
    means = {name: statistics.mean(r["tokens_per_s"] for r in rows) for name, rows in results.items()}
    same = all(r["digests"] == results["A"][0]["digests"] for rows in results.values() for r in rows)
    print(f"A {checkouts['A']}: {means['A']:.2f} tok/s; B {checkouts['B']}: {means['B']:.2f} tok/s "
          f"(means of {args.runs} runs)")
    print(f"outputs identical (greedy {args.questions}, sampled 2, every run): {'yes' if same else 'NO'}")
    print(f"ratio B/A: {means['B'] / means['A']:.3f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
