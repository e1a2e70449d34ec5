"""Draft-training throughput: the padded path (``train.packing: false``) and the packed path, side by side.

    python -m jakiro.train.throughput                                  # the SmolLM2 recipe on 24 fresh conversations
    python -m jakiro.train.throughput --data outputs/features/smollm2-sharegpt --conversations 64 --rounds 4
    python -m jakiro.train.throughput --config train_smollm2 --set draft.num_experts=1 ...   # another draft

Both paths train the same draft (one optimizer; each micro-step is a real training step) on the same conversations,
alternately, in one process: a round runs one epoch of the data with the old path, then one with the new, so load
from other processes hits both alike. Old = ``train.batch_size`` sequences padded to the longest (the previous
recipe, with the [N, V] logits of plain autograd); new = the same conversations packed into rows of
``train.batch_tokens`` real tokens (``--batch-tokens`` overrides; 0 = the old batches, packed), scored by the fused
LM-head losses of :mod:`jakiro.train.fused_loss`. Printed: tokens/s of each path (real tokens, padding not counted), the
useful FLOP rate of its draft steps (:func:`draft_step_flops`) as a fraction of a ``matmul_size``-square matmul
measured on the spot in the run's dtype (before the first round and after each, the best counts: other jobs on the
cores lower single measurements), and as the last line ``ratio new/old: X.XX``. Exit status 2 with a
one-line message for a bad config or data directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from jakiro.common.config import ConfigError, add_config_arguments, config_from_args
from jakiro.common.hardware import cpu_name
from jakiro.model.draft import DraftHeadConfig
from jakiro.train.data import DataError, ShardedBatchSampler, TokenBudgetSampler, check_compatible, open_dataset

DEFAULT_CONFIG = "train_smollm2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jakiro.train.throughput", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.set_defaults(config=DEFAULT_CONFIG)
    parser.add_argument("--data", default=None, help="a python -m jakiro.ge_data output dir; default: features of "
                        "the first --conversations recovered ShareGPT conversations, computed now by the target")
    parser.add_argument("--conversations", type=int, default=24, help="conversations per epoch (default 24)")
    parser.add_argument("--max-len", type=int, default=1024, help="tokens per conversation at most (default 1024, "
                        "the SmolLM2 recipe's data)")
    parser.add_argument("--rounds", type=int, default=3, help="old/new epochs alternated (default 3; the first "
                        "round of each path is a warmup, not counted, when there are 2 or more)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="the new path's token budget per batch "
                        "(default: train.batch_tokens of the config)")
    parser.add_argument("--matmul-size", type=int, default=1024, help="side of the reference matmul (default 1024)")
    return parser.parse_args(argv)


def draft_step_flops(config: DraftHeadConfig, lengths: list[int], rows1: int, rows2: int) -> float:
    """Useful FLOPs of one training micro-step (forward + backward) of a draft on conversations of ``lengths``.

    Per token: fc (2H -> H), q / k / v / o projections, the experts a token is routed to (all of them up to
    ``num_experts_per_tok``, or 2 with the parallel head, whichever is more) and the gate, 3x for forward + both
    backward products; causal attention L(L+1)/2 query-key pairs per conversation (QK^T and PV, 3x); the LM head over
    the draft vocabulary for the ``rows1`` scored head-1 rows and ``rows2`` head-2 rows (forward + input gradient:
    2x) and for the target rows (forward only). A multiply-add counts 2. Padding is not counted.
    """
    h, heads, kv, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    inter, experts = config.expert_intermediate_size, config.num_local_experts
    used = min(experts, max(config.num_experts_per_tok, 2 if config.parallel_head else 1))
    per_token = 2 * h * h + h * heads * d * 2 + h * kv * d * 2 + used * 3 * h * inter + h * experts * 2
    tokens = sum(lengths)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    vocab = config.draft_vocab_size or config.vocab_size
    macs = 3 * (per_token * tokens + pairs * heads * d * 2) + vocab * h * (2 * (rows1 + rows2) + rows1)
    return 2.0 * macs


def matmul_flops_per_s(size: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on this machine, measured now (best of its repeats)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
    return 2.0 * size ** 3 / best


def fresh_items(cfg, conversations: int, max_len: int) -> list[dict]:
    """Features of the first ``conversations`` selected conversations, computed by the target now."""
    from jakiro.ge_data.dataset import OnlineFeatures

    cfg.data.start, cfg.data.end, cfg.data.max_len = 0, conversations, max_len
    online = OnlineFeatures.from_config(cfg, progress=False)
    return [online[i] for i in range(len(online))]


def stored_items(cfg, data_dir: str, conversations: int, max_len: int) -> tuple[list[dict], dict]:
    cfg.train.data_dir = data_dir
    dataset, info = open_dataset(cfg)
    items = []
    for i in range(min(conversations, len(dataset))):
        item = dict(dataset[i])
        items.append({k: v[:max_len] for k, v in item.items()})
    return items, info


def draft_vocabulary(items: list[dict], config: DraftHeadConfig) -> torch.Tensor | None:
    """The most frequent answer tokens of ``items`` (as ``python -m jakiro.train.main`` picks them), or None."""
    if config.draft_vocab_size is None:
        return None
    from jakiro.train.vocab import most_frequent_tokens

    counts = torch.zeros(config.vocab_size, dtype=torch.long)
    for item in items:
        counts += torch.bincount(item["input_ids"][item["loss_mask"] > 0], minlength=config.vocab_size)
    return most_frequent_tokens(counts, config.draft_vocab_size)


def build(args):
    """(trainer, items, old sampler, new sampler, description of the draft) for the arguments."""
    from jakiro.train.main import draft_architecture, load_target_modules, target_config, target_path
    from jakiro.train.trainer import Trainer

    cfg = config_from_args(args)
    for name in ("conversations", "max_len", "rounds", "matmul_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= 1")
    path = target_path(cfg)
    text = target_config(path)
    if args.data is not None:
        items, info = stored_items(cfg, args.data, args.conversations, args.max_len)
        check_compatible(info, text.hidden_size, text.vocab_size, path)
    else:
        items = fresh_items(cfg, args.conversations, args.max_len)
    if not items:
        raise DataError("no conversations to train on")
    draft_config = draft_architecture(cfg, text)
    embed, head = load_target_modules(cfg, path)
    budget = cfg.train.batch_tokens if args.batch_tokens is None else args.batch_tokens
    cfg.train.output_dir = str(Path(tempfile.gettempdir()) / "jakiro-throughput")  # never written: nothing is saved
    cfg.train.packing, cfg.train.batch_tokens = True, budget
    trainer = Trainer(cfg, draft_config, embed, head, items, items[:1], draft_vocabulary(items, draft_config))
    lengths = [min(len(item["input_ids"]), cfg.train.max_len) for item in items]
    old = ShardedBatchSampler(len(items), cfg.train.batch_size, 1, 0, cfg.train.seed, True)
    new = (TokenBudgetSampler(lengths, budget, 1, 0, cfg.train.seed, True) if budget else
           ShardedBatchSampler(len(items), cfg.train.batch_size, 1, 0, cfg.train.seed, True))
    return trainer, items, old, new, budget


def run_epoch(trainer, sampler, packed: bool) -> tuple[int, float, float]:
    """One epoch of training steps; returns (real tokens, useful FLOPs, seconds)."""
    from jakiro.train.losses import head2_mask
    from jakiro.train.metrics import Sums

    sampler.set_epoch(0)
    tokens, flops, seconds = 0, 0.0, 0.0
    loader = iter(trainer._loader(trainer.train_set, sampler, packed))
    while True:
        tick = time.perf_counter()
        batch = next(loader, None)
        if batch is None:
            break
        trainer._micro_step(batch, Sums())
        seconds += time.perf_counter() - tick
        mask = batch["loss_mask"]
        rows2 = int((head2_mask(mask, batch["position_ids"]) > 0).sum()) if trainer.with_head2 else 0
        tokens += int(batch["lengths"].sum())
        flops += draft_step_flops(trainer.draft_config, batch["lengths"].tolist(), int((mask > 0).sum()), rows2)
    return tokens, flops, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trainer, items, old, new, budget = build(args)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train, config = trainer.train_cfg, trainer.draft_config
    dtype = torch.bfloat16 if train.mixed_precision == "bf16" else torch.float32
    peak = matmul_flops_per_s(args.matmul_size, dtype)  # remeasured after every round: the best one counts
    total = sum(min(len(item["input_ids"]), train.max_len) for item in items)
    print(f"draft training throughput on {cpu_name()}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if dtype == torch.bfloat16 else 'float32'}; draft: {config.num_local_experts} experts "
          f"(top-{config.num_experts_per_tok}){', parallel head' if config.parallel_head else ''}, vocabulary "
          f"{config.draft_vocab_size or config.vocab_size}; {len(items)} conversations, {total} tokens an epoch")
    names = {"old": f"padded, {train.batch_size} sequences a batch",
             "new": f"packed, {f'{budget} tokens' if budget else f'{train.batch_size} sequences'} a batch"}
    sums = {"old": [0, 0.0, 0.0], "new": [0, 0.0, 0.0]}
    for round_ in range(args.rounds):
        line = []
        for name, sampler, packed in (("old", old, False), ("new", new, True)):
            tokens, flops, seconds = run_epoch(trainer, sampler, packed)
            if round_ > 0 or args.rounds == 1:
                for i, value in enumerate((tokens, flops, seconds)):
                    sums[name][i] += value
            line.append(f"{name} {tokens / seconds:,.0f} tokens/s")
        print(f"round {round_ + 1}{' (warmup)' if round_ == 0 and args.rounds > 1 else ''}: {'  '.join(line)}")
        peak = max(peak, matmul_flops_per_s(args.matmul_size, dtype))
    print(f"matmul {args.matmul_size}x{args.matmul_size} {str(dtype).removeprefix('torch.')}: "
          f"{peak / 1e12:.3f} TFLOP/s (the best of {args.rounds + 1} measurements during the run)")
    rates = {}
    for name, (tokens, flops, seconds) in sums.items():
        rates[name] = tokens / seconds
        print(f"{name} ({names[name]}): {rates[name]:,.0f} tokens/s, {flops / seconds / 1e9:,.1f} GFLOP/s = "
              f"{flops / seconds / peak:.1%} of the matmul rate")
    print(f"ratio new/old: {rates['new'] / rates['old']:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
