"""Data-generation throughput, previous path against the new one, alternated on the same inputs in one process.

    python -m jakiro.ge_data.throughput [--config regenerate_smollm2] [--prompts 48] [--max-new-tokens N]
                                        [--old-batch-size 48] [--repeats 1] [--threads N] [--alone]
                                        [--set key=value ...]

Self-distillation: the first ``--prompts`` conversations of the config's selection, first user turn, answered as a
round of ``jakiro.ge_data.regenerate`` answers them: by ``regenerate.decoder`` generate (the previous path, in
batches of ``--old-batch-size`` prompts in order of length, the previous recipe's 48) and static (the new one,
``regenerate.batch_size`` rows decoding at a time); tokens/s counts answer tokens.
The greedy answers of both are compared token for token and the number that differ is printed (``--alone``: also
against each prompt answered by itself, batch 1 without padding, the target's own answer; in bf16 batching and
padding change the rounding, which can flip near-tied greedy choices).

Each path runs ``--repeats`` times, alternating old/new so that other jobs on the machine slow both alike. Printed:
tokens/s of each (best repeat), the fraction of the machine's matmul throughput that reaches (2 x the linear layers'
weights FLOP per token, over a 1024 x 1024 matmul in the run's dtype timed here), and last ``ratio new/old: X.XX``.
Before the runs: the kernel and rows per call that each linear-layer shape of the new path got (``regenerate.kernels``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from jakiro.common.assets import AssetError
from jakiro.common.chat_templates import SkipConversation, TemplateError
from jakiro.common.config import ConfigError, JakiroConfig, add_config_arguments, config_from_args
from jakiro.ge_data.generate import GeDataError, load_conversations, load_target, select
from jakiro.ge_data.regenerate import Regenerator, start_conversation
from jakiro.common.hardware import describe

OLD_BATCH_SIZE = 48  # the previous recipe's regenerate.batch_size


def matmul_flops(dtype: torch.dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of a ``size`` x ``size`` matrix product in ``dtype`` on this CPU (best of runs for ~``seconds``)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def flop_per_token(model: nn.Module) -> int:
    """2 x the weights of the model's linear layers (its LM head included): the matmul work of one token."""
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def first_turn_prompts(cfg: JakiroConfig, count: int):
    """(regenerator, [prompt token lists]) for the first ``count`` usable conversations of the selection."""
    records, _ = load_conversations(cfg.data.input_path)
    model, tokenizer, _ = load_target(cfg.model)
    regenerator = Regenerator(cfg, model, tokenizer)
    prompts = []
    for row in select(len(records), cfg.data.shuffle_seed, cfg.data.start, cfg.data.end):
        try:
            ids = regenerator.prompt_ids(start_conversation(row, records[row]))
        except SkipConversation:
            continue
        if len(ids) < cfg.data.max_len:
            prompts.append(ids)
        if len(prompts) == count:
            break
    if not prompts:
        raise GeDataError("no usable conversation in the selection")
    return regenerator, sorted(prompts, key=len)


def _answer_length(answer: list[int], eos_ids: set[int]) -> int:
    end = next((i for i, t in enumerate(answer) if t in eos_ids), None)
    return len(answer) if end is None else end + 1


def run_regenerate(regenerator: Regenerator, prompts: list[list[int]], decoder: str,
                   batch_size: int | None = None) -> tuple[list, int, float]:
    """(answers truncated after their end token, answer tokens, seconds) of one pass with ``decoder`` (and
    ``regenerate.batch_size`` = ``batch_size`` if given)."""
    regenerator.settings.decoder = decoder
    regenerator.settings.batch_size = batch_size or regenerator.settings.batch_size
    size, answers = regenerator.settings.batch_size, []
    if decoder == "static":  # it schedules all prompts itself, batch_size rows at a time
        size = len(prompts)
    start = time.perf_counter()
    for b in range(0, len(prompts), size):
        answers += regenerator.generate(prompts[b:b + size], seed=b)
    seconds = time.perf_counter() - start
    answers = [a[:_answer_length(a, regenerator.eos_ids)] for a in answers]
    return answers, sum(map(len, answers)), seconds


def compare(cfg: JakiroConfig, prompts: int, repeats: int, alone: bool = False, say=print,
            old_batch_size: int = OLD_BATCH_SIZE) -> float:
    """Alternate the previous (``generate``, batches of ``old_batch_size``) and new (``static``,
    ``regenerate.batch_size`` rows) decoders; returns new/old tokens/s. ``alone``: also answer each prompt by itself
    and count the answers of each path that differ from those."""
    sizes = {"generate": old_batch_size, "static": cfg.regenerate.batch_size}
    regenerator, batch = first_turn_prompts(cfg, prompts)
    model = regenerator.model
    dtype = next(model.parameters()).dtype
    peak = matmul_flops(dtype)
    per_token = flop_per_token(model)
    say(f"{describe(cfg.model.device)}; {dtype}: 1024^2 matmul "
        f"{peak / 1e12:.3f} TFLOP/s; model {per_token / 1e9:.3f} GFLOP/token")
    say(f"{len(batch)} prompts of {min(map(len, batch))}-{max(map(len, batch))} tokens, old: batches of "
        f"{old_batch_size}, new: {cfg.regenerate.batch_size} rows, max_new_tokens {cfg.regenerate.max_new_tokens}, "
        f"temperature "
        f"{cfg.regenerate.temperature}")
    kinds = regenerator.packed_linears().kinds  # probed here, before any timing
    say(f"new path's linear layers ({cfg.regenerate.kernels} kernels; rows per call): " + ", ".join(
        f"{i}->{o} {'prepacked' if kind.packed else 'F.linear'} x{kind.rows}"
        f"{'' if kind.f_linear_bits else ' (not F.linear bits)'}" for (i, o, _, _), kind in kinds.items()))
    best, answers = {}, {}
    for _ in range(repeats):
        for decoder in ("generate", "static"):
            out, tokens, seconds = run_regenerate(regenerator, batch, decoder, sizes[decoder])
            answers[decoder] = out
            best[decoder] = max(best.get(decoder, 0.0), tokens / seconds)
            say(f"  {decoder:8s} {tokens} tokens in {seconds:.1f} s: {tokens / seconds:.1f} tokens/s")
    for name, decoder in (("old", "generate"), ("new", "static")):
        say(f"{name} ({decoder}): {best[decoder]:.1f} tokens/s, {best[decoder] * per_token / peak:.1%} of the "
            "matmul throughput")
    differ = sum(a != b for a, b in zip(answers["generate"], answers["static"]))
    say(f"answers that differ between the two: {differ} of {len(batch)}")
    if alone:  # the reference: each prompt answered by itself (batch 1, no padding)
        answers["alone"] = run_regenerate(regenerator, batch, "generate", 1)[0]
        for name, decoder in (("old", "generate"), ("new", "static")):
            differ = sum(a != b for a, b in zip(answers[decoder], answers["alone"]))
            say(f"{name} answers that differ from each prompt answered alone: {differ} of {len(batch)}")
    ratio = best["static"] / best["generate"]
    say(f"ratio new/old: {ratio:.2f}")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.ge_data.throughput", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--prompts", type=int, default=48, help="prompts answered per pass (default 48)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="regenerate.max_new_tokens for the measurement (default: the config's)")
    parser.add_argument("--old-batch-size", type=int, default=OLD_BATCH_SIZE,
                        help=f"the previous path's batch (default {OLD_BATCH_SIZE}, the previous recipe's)")
    parser.add_argument("--repeats", type=int, default=1, help="passes of each path, alternated (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); on a machine shared with other jobs 1 thread "
                             "measures steadier than 2")
    parser.add_argument("--alone", action="store_true",
                        help="also answer each prompt alone (batch 1) and count the answers that differ from those "
                             "(default: off)")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = "regenerate_smollm2"
    try:
        if min(args.prompts, args.repeats, args.old_batch_size, args.max_new_tokens or 1, args.threads or 1) < 1:
            raise ConfigError("--prompts, --repeats, --max-new-tokens and --threads must be >= 1")
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = config_from_args(args)
        cfg.regenerate.max_new_tokens = args.max_new_tokens or cfg.regenerate.max_new_tokens
        compare(cfg, args.prompts, args.repeats, args.alone, old_batch_size=args.old_batch_size)
    except (ConfigError, GeDataError, TemplateError, AssetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
