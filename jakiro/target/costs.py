"""How much the target's forwards cost on its device: tree verification per tree size and one decoding step.

``tree.total_token: -1`` picks the tree size from these measurements (:func:`choose_tree_size`), and
``python -m jakiro.evaluation.tree_costs`` prints the whole curve. Timings synchronise CUDA before and after.
"""

from __future__ import annotations

import statistics
import time

import torch

from jakiro.decoding.tree import full_tree
from jakiro.target.adapter import TargetModel

TREE_SIZE_CANDIDATES = (8, 16, 24, 32, 48, 64)


def choose_tree_size(target: TargetModel, candidates=TREE_SIZE_CANDIDATES, context_len: int = 128,
                     repeats: int = 3, slack: float = 1.3) -> int:
    """Pick the tree size (``total_token``) by measuring verification cost on the target's device.

    Times the verification of an n-node tree after a cached context for each candidate n and returns the largest n whose
    cost stays within ``slack`` times the cost of the smallest candidate: beyond that knee, extra nodes cost more than
    the few extra accepted tokens they can add.
    """
    costs = measure_verification_costs(target, candidates, context_len, repeats)
    return pick_tree_size(costs, slack)


def pick_tree_size(costs: dict[int, float], slack: float = 1.3) -> int:
    """Largest size whose measured cost is at most ``slack`` x the cost of the smallest size."""
    smallest = min(costs)
    return max(n for n, cost in costs.items() if cost <= slack * costs[smallest])


def seconds_of(device: torch.device, run) -> float:
    """Wall time of one ``run()`` on ``device`` (CUDA work synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - begin


def _median_seconds(device: torch.device, run, repeats: int, reset) -> float:
    """Median wall time of ``run()`` over ``repeats`` timed calls after one warm-up, ``reset()`` after each call."""
    timings = []
    for _ in range(repeats + 1):
        timings.append(seconds_of(device, run))
        reset()
    return statistics.median(timings[1:])


@torch.inference_mode()
def measure_verification_costs(target: TargetModel, sizes, context_len: int = 128, repeats: int = 3) -> dict:
    """Median seconds of ``target.verify`` over a 4-ary tree of n nodes (LM head included) after a cached context of
    ``context_len`` random tokens, per n."""
    costs = {}
    for n, tree in random_verification_trees(target, sizes, context_len):
        costs[n] = _median_seconds(target.device, lambda: target.verify(tree), repeats,
                                   lambda: target.crop(context_len))
    return costs


def random_verification_trees(target: TargetModel, sizes, context_len: int):
    """Prefill ``context_len`` random tokens (seeded), then yield (n, a 4-ary tree of n random tokens) per size; the
    target's cache is dropped once all are consumed."""
    vocab = target.lm_head.weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    target.prefill(torch.randint(0, vocab, (1, context_len), generator=generator))
    for n in sizes:
        yield n, full_tree(torch.randint(0, vocab, (n,), generator=generator))
    target.cache = None


@torch.inference_mode()
def measure_decoding_step_cost(target: TargetModel, context_len: int = 128, repeats: int = 3) -> float:
    """Median seconds of one plain decoding step (``target.step``) after ``context_len`` cached random tokens."""
    vocab = target.lm_head.weight.shape[0]
    target.prefill(torch.randint(0, vocab, (1, context_len), generator=torch.Generator().manual_seed(1)))
    cost = _median_seconds(target.device, lambda: target.step(0), repeats, lambda: target.crop(context_len))
    target.cache = None
    return cost
