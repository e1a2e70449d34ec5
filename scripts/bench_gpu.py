"""Verification cost curve and per-cycle overhead of drafting and bookkeeping on a Vicuna-7B-shaped target.

    python scripts/bench_gpu.py [--context 512] [--steps 300] [--repeats 10] [--device cuda]
    python scripts/bench_gpu.py --small        # tiny random model on the CPU: a smoke run of a few seconds

The target is a LlamaForCausalLM with Vicuna-7B's shape (32 layers, hidden 4096, 32 heads, intermediate 11008,
vocabulary 32000) and random fp16 weights: timings do not depend on the weights' values. Two measurements:

1. Verification cost curve: the median time of ``TargetModel.verify`` over a tree of n = 1, 2, 4, ..., 128 nodes
   (a 4-ary tree, additive tree mask) after a cached context of ``--context`` tokens.
2. One speculative cycle, with an untrained 2-expert CEPD draft (acceptance is near 0, the costs are not): median
   times of ``drafter.propose``, ``target.verify`` and the bookkeeping (``verify_greedy`` + KV ``commit`` + next inputs)
   over ``--steps`` cycles, each also relative to one target forward (the n = 1 point of the curve).

Prints markdown tables with the hardware, dtype and batch size (1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from jakiro.common.hardware import describe as describe_hardware
from jakiro.model.draft import DraftHead, DraftHeadConfig
from jakiro.model.ea_model import EaModel
from jakiro.target.costs import measure_verification_costs
from jakiro.decoding.drafting import DraftState
from jakiro.decoding.verify import verify_greedy

VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-6)
SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-6)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: dict, dtype: torch.dtype, device: torch.device, tree: dict) -> EaModel:
    """Random-weight target plus an untrained 2-expert CEPD draft."""
    config = LlamaConfig(**shape, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        target = LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    draft = DraftHead(DraftHeadConfig.for_target(config, num_experts=2, experts_per_token=2, parallel_head=True))
    return EaModel(target, draft, None, stop_token_ids=[], **tree)


@torch.inference_mode()
def cycle_costs(model: EaModel, context: int, steps: int) -> tuple[dict[str, float], float]:
    """Median seconds per part of a greedy speculative cycle, and the mean accepted draft length."""
    target, drafter, device = model.target, model.drafter, model.target.device
    vocab = target.lm_head.weight.shape[0]
    prompt = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(1)).to(device)
    logits, features = target.prefill(prompt)
    drafter.reset()
    greedy = dict(temperature=0.0, top_p=1.0, top_k=0)
    tokens = torch.cat([prompt[0, 1:], logits.argmax().reshape(1)])
    state = DraftState(features, tokens, torch.cat([prompt[0], tokens[-1:]]), greedy)
    parts = {"drafter.propose": [], "target.verify": [], "verify_greedy + commit": []}
    accepted = []
    warmup = min(5, steps // 4)
    for step in range(steps + warmup):
        sync(device)
        t0 = time.perf_counter()
        tree = drafter.propose(state)
        sync(device)
        t1 = time.perf_counter()
        prefix_len = len(target)
        tree_logits, tree_features = target.verify(tree)
        sync(device)
        t2 = time.perf_counter()
        verdict = verify_greedy(tree, tree_logits)
        path = torch.cat([torch.zeros(1, dtype=torch.long), verdict.accepted_nodes]).to(tree_features.device)
        target.commit(prefix_len, path)
        tokens = torch.tensor(tree.tokens[verdict.accepted_nodes].tolist() + [verdict.next_token], device=device)
        state = DraftState(tree_features[path], tokens, torch.cat([state.history, tokens]), greedy)
        sync(device)
        t3 = time.perf_counter()
        if step >= warmup:
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[name].append(seconds)
            accepted.append(int(verdict.accepted_nodes.numel()))
    return {name: statistics.median(values) for name, values in parts.items()}, statistics.mean(accepted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny random model on the CPU (smoke run)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--context", type=int, default=None, help="cached context tokens (default 512; small 64)")
    parser.add_argument("--steps", type=int, default=None, help="speculative cycles timed (default 300; small 20)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per tree size (default 10; small 3)")
    parser.add_argument("--total-token", type=int, default=60)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.small:
        print("error: no CUDA device: a 7B-shaped model is impractical on the CPU; use --small for a smoke run",
              file=sys.stderr)
        return 2
    context = args.context or (64 if args.small else 512)
    steps = args.steps or (20 if args.small else 300)
    repeats = args.repeats or (3 if args.small else 10)
    dtype = torch.float32 if args.small and device.type == "cpu" else torch.float16
    tree = dict(total_token=args.total_token, depth=args.depth, top_k=args.top_k)
    shape = SMALL if args.small else VICUNA_7B
    model = build_model(shape, dtype, device, tree)
    curve = measure_verification_costs(model.target, SIZES, context, repeats)
    parts, mean_accepted = cycle_costs(model, context, steps)
    one = curve[1]
    print(f"hardware: {describe_hardware(device)}; dtype {str(dtype).removeprefix('torch.')}; batch size 1; torch "
          f"{torch.__version__}; transformers {transformers.__version__}")
    print(f"target: Llama, {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
          f"{shape['num_attention_heads']} heads, vocabulary {shape['vocab_size']}, random weights; cached context "
          f"{context} tokens\n")
    print(f"Verification cost (median of {repeats}):\n")
    print("| tree tokens n | ms | x cost of n = 1 |\n|---|---|---|")
    for n, seconds in curve.items():
        print(f"| {n} | {seconds * 1e3:.2f} | {seconds / one:.2f} |")
    cycle = sum(parts.values())
    print(f"\nOne cycle (median of {steps}; tree total_token={model.drafter.total_token} depth={args.depth} "
          f"top_k={args.top_k}; untrained 2-expert CEPD draft, mean accepted {mean_accepted:.2f}):\n")
    print("| part | ms | x one target forward (n = 1) | share of cycle |\n|---|---|---|---|")
    for name, seconds in [*parts.items(), ("whole cycle", cycle)]:
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / one:.2f} | {seconds / cycle:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
