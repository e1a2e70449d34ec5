"""Verification cost curve of the configured target on this device: what one forward over n tree nodes costs.

    python -m jakiro.evaluation.tree_costs --config smollm2 [--context 300] [--sizes 1 2 4 8 16 32 64]
        [--repeats 5] [--set model.dtype=float32 ...] [--set generation.exact_verification=true] [--compare-kernels]

For each n: the median time of verifying a 4-ary tree of n nodes (``TargetModel.verify``: tree mask, LM head) after
``--context`` cached tokens, and its ratio to one plain decoding step (a cached forward of one token). A speculative
step pays the verification of its tree plus the drafting, and gains tau tokens, so the curve bounds the tree size worth
trying: past the knee, extra nodes cost more than the few extra accepted tokens they can bring. The last line names the
size ``tree.total_token: -1`` picks.
Choose depth and top_k with the interleaved benchmark (``python -m jakiro.evaluation.benchmark``, one arm per tree).

``--compare-kernels`` instead times every size with transformers' kernels, with batched verification's CPU kernels
(:mod:`jakiro.common.cpu_linear`, :mod:`jakiro.target.gqa_attention`) and, for a float32 target, with those and its
linear layers on prepacked weights (:mod:`jakiro.target.packed_verification`), alternating run by run so that drift
hits all alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys

import torch
from transformers import AutoModelForCausalLM

from jakiro.common.assets import AssetError, ensure_smollm2
from jakiro.common.config import ConfigError, add_config_arguments, config_from_args
from jakiro.common.hardware import describe as describe_hardware
from jakiro.common.io import check_model_files
from jakiro.target.costs import (measure_decoding_step_cost, measure_verification_costs, pick_tree_size,
                                random_verification_trees, seconds_of)
from jakiro.target import TargetModel

DEFAULT_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def format_costs(costs: dict[int, float], step: float) -> str:
    """Markdown table: nodes, milliseconds, cost relative to one plain decoding step."""
    rows = ["| nodes verified | ms | x one decoding step |", "|---|---|---|",
            f"| (decoding step) | {1000 * step:.1f} | 1.00 |"]
    rows += [f"| {n} | {1000 * cost:.1f} | {cost / step:.2f} |" for n, cost in sorted(costs.items())]
    return "\n".join(rows)


KERNEL_ARMS = {  # column name: (TargetModel.cpu_kernels, TargetModel.packed_weights)
    "plain kernels": (False, False),
    "CPU kernels": (True, False),
    "CPU kernels + packed weights": (True, True),
}


@torch.inference_mode()
def compare_kernels(target: TargetModel, sizes, context_len: int, repeats: int) -> dict[int, dict[str, float]]:
    """{n: {arm: median seconds}} of verifying a 4-ary tree of n nodes after ``context_len`` cached random tokens,
    per arm of :data:`KERNEL_ARMS` (the packed one only where the target has packed weights); the arms alternate
    run by run (one warm-up run each)."""
    arms = {name: arm for name, arm in KERNEL_ARMS.items() if not arm[1] or target.packed is not None}
    medians = {}
    for n, tree in random_verification_trees(target, sizes, context_len):
        timings = {name: [] for name in arms}
        for _ in range(repeats + 1):
            for name, (cpu_kernels, packed_weights) in arms.items():
                target.cpu_kernels, target.packed_weights = cpu_kernels, packed_weights
                timings[name].append(seconds_of(target.device, lambda: target.verify(tree)))
                target.crop(context_len)
        medians[n] = {name: statistics.median(times[1:]) for name, times in timings.items()}
    target.cpu_kernels = target.packed_weights = True
    return medians


def format_comparison(medians: dict[int, dict[str, float]]) -> str:
    """Markdown table: nodes, milliseconds per arm, and each later arm's ratio to the plain kernels."""
    names = list(next(iter(medians.values())))
    rows = ["| nodes verified | " + " | ".join(f"{name}, ms" for name in names) + " | "
            + " | ".join(f"ratio {name}" for name in names[1:]) + " |", "|---" * (2 * len(names)) + "|"]
    for n, times in sorted(medians.items()):
        plain = times[names[0]]
        rows.append(f"| {n} | " + " | ".join(f"{1000 * times[name]:.1f}" for name in names) + " | "
                    + " | ".join(f"{times[name] / plain:.2f}" for name in names[1:]) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.evaluation.tree_costs",
                                     description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--context", type=int, default=300, help="cached tokens before the tree (default 300)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help=f"tree sizes to time (default: {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per size (median; default 5)")
    parser.add_argument("--compare-kernels", action="store_true",
                        help="time each size with transformers' kernels, the CPU kernels and (float32) the CPU "
                             "kernels with packed weights, interleaved (default: off)")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.context < 1 or args.repeats < 1 or min(args.sizes) < 1:
            raise ValueError("--context, --repeats and every --sizes value must be >= 1")
        base = cfg.model.base_model_path or str(ensure_smollm2())
        check_model_files(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, cfg.model.dtype),
                                                     device_map=cfg.model.device).eval()
    except (ConfigError, AssetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    target = TargetModel(model, cfg.generation.exact_verification)
    header = (f"{base.rstrip('/').split('/')[-1]}, {cfg.model.dtype}, batch 1, context {args.context}, "
              f"{describe_hardware(target.device)}, {platform.python_implementation()} "
              f"{platform.python_version()}, torch {torch.__version__}, "
              f"{'exact' if target.exact_verification else 'batched'} verification")
    if args.compare_kernels:
        print(header)
        print(format_comparison(compare_kernels(target, sorted(set(args.sizes)), args.context, args.repeats)))
        return 0
    costs = measure_verification_costs(target, sorted(set(args.sizes)), args.context, args.repeats)
    step = measure_decoding_step_cost(target, args.context, args.repeats)
    print(header)
    print(format_costs(costs, step))
    print(f"tree.total_token: -1 would pick {pick_tree_size(costs)} (largest size within 1.3x the smallest's cost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
