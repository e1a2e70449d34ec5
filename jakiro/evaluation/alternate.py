"""Two values of one setting on one loaded model, alternating turn by turn: which is faster here.

    python -m jakiro.evaluation.alternate --config smollm2 --setting lookup_tokens --values 6 10 [--every 8]
        [--questions N] [--max-new-tokens 256] [--temperature 0] [--set ...]

The settings: the prompt-lookup branch's ``lookup_tokens`` and ``lookup_ngram``, and ``packed_weights`` (0 / 1:
tree verification's linear layers on ``F.linear`` / on prepacked weights, :mod:`jakiro.target.packed_verification`;
a float32 target on a CPU).

Both values run on the same ``EaModel`` (the same weights in memory, the same draft) and answer every MT-bench turn
one after the other, A first where question index + turn index is even and B first where it is odd (so each goes
first on half of the first turns and half of the second turns), so that machine drift and running first or second
hit both alike: on a shared 2-core CPU, separate runs of the same method drift by 10-20%, more than the effects
measured here. A question's later turns follow A's earlier answers. At temperature 0 both answers must be identical
(checked: this is also a greedy-equality test of B against A). After every question it prints the cumulative
tokens/s and τ (tokens per verification step) of both values and the ratio B / A of their tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from jakiro.common.assets import AssetError, load_questions
from jakiro.common.config import ConfigError, add_config_arguments, config_from_args
from jakiro.evaluation.answers import pick_questions, question_path
from jakiro.common.chat_templates import ChatPrompter
from jakiro.evaluation.methods import load_method, synchronize

SETTINGS = ("lookup_tokens", "lookup_ngram", "packed_weights")  # read at every generate


def apply_setting(model, setting: str, value: int) -> None:
    """Set ``setting`` to ``value`` on an EaModel (``packed_weights`` lives on its target)."""
    if setting == "packed_weights":
        model.target.packed_weights = bool(value)
    else:
        setattr(model, setting, value)


class Tally:
    """Tokens, seconds and verification steps of one value, summed over turns."""

    def __init__(self):
        self.tokens, self.seconds, self.steps = 0, 0.0, 0

    def add(self, tokens: int, seconds: float, steps: int) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.steps += steps

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def tau(self) -> float:
        return self.tokens / max(self.steps, 1)


def alternate(model, prompter: ChatPrompter, questions: list[dict], setting: str, values: tuple[int, int],
              temperature: float, max_new_tokens: int, seed: int = 0):
    """Yields (question id, {value: Tally}) after each question; the tallies accumulate over the questions."""
    tallies = {value: Tally() for value in values}
    warmup = prompter.input_ids(["Hi"], [])
    for value in values:
        apply_setting(model, setting, value)
        model.eagenerate(warmup, max_new_tokens=8)
    for index, question in enumerate(questions):
        answers: list[str] = []
        for turn in range(len(question["turns"])):
            input_ids = prompter.input_ids(question["turns"][: turn + 1], answers)
            outputs = {}
            for value in (values if (index + turn) % 2 == 0 else values[::-1]):
                apply_setting(model, setting, value)
                synchronize(model.target.device)
                start = time.perf_counter()
                outputs[value] = model.eagenerate(input_ids, temperature=temperature, max_new_tokens=max_new_tokens,
                                                  seed=seed)
                synchronize(model.target.device)
                stats = model.last_stats
                tallies[value].add(stats.new_tokens, time.perf_counter() - start, len(stats.accept_lengths))
            first, second = (outputs[value][0, input_ids.shape[1]:] for value in values)
            if temperature == 0 and not torch.equal(first, second):
                raise AssertionError(f"question {question['question_id']} turn {turn + 1}: greedy answers differ "
                                     f"between {setting}={values[0]} and {setting}={values[1]}")
            answers.append(prompter.answer_text(first.tolist()))
        yield question["question_id"], tallies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.evaluation.alternate", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--setting", required=True, choices=SETTINGS, help="the setting compared")
    parser.add_argument("--values", type=int, nargs=2, required=True, metavar=("A", "B"), help="its two values")
    parser.add_argument("--every", type=int, default=8, help="every K-th MT-bench question (default 8: 10 questions)")
    parser.add_argument("--questions", type=int, default=None, help="only the first N of those (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="per turn (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy, answers checked equal)")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if cfg.eval.method not in ("jakiro", "jakiro_star"):
            raise ValueError(f"eval.method must be jakiro or jakiro_star, got {cfg.eval.method!r}")
        if args.values[0] == args.values[1]:
            raise ValueError(f"--values must differ, got {args.values[0]} twice")
        lowest = 1 if args.setting == "lookup_ngram" else 0
        if min(args.values) < lowest or (args.setting == "packed_weights" and max(args.values) > 1):
            raise ValueError(f"--values for {args.setting} must be " +
                             ("0 or 1" if args.setting == "packed_weights" else f">= {lowest}"))
        if args.setting == "lookup_ngram" and cfg.tree.lookup_tokens == 0:
            raise ValueError("comparing lookup_ngram values needs the lookup branch on: add --set tree.lookup_tokens=N")
        if args.max_new_tokens < 1 or args.temperature < 0:
            raise ValueError("--max-new-tokens must be >= 1 and --temperature >= 0")
        questions = pick_questions(load_questions(question_path(cfg)), args.questions, args.every)
        method, _ = load_method(cfg, args.max_new_tokens)
    except (ConfigError, AssetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = method.model
    if args.setting == "packed_weights" and model.target.packed is None:
        print("error: packed_weights: this target has no packed weights (it is not float32 on a CPU, too large, or "
              "this torch has no oneDNN prepacked linear)", file=sys.stderr)
        return 2
    prompter = ChatPrompter(method.tokenizer, cfg.model.chat_template, cfg.eval.system_prompt)
    a, b = args.values
    print(f"{args.setting}: A={a}, B={b}; {len(questions)} questions, T={args.temperature:g}, "
          f"{args.max_new_tokens} tokens a turn, {cfg.model.dtype}, {torch.get_num_threads()} threads")
    for question_id, tallies in alternate(model, prompter, questions, args.setting, (a, b), args.temperature,
                                          args.max_new_tokens, cfg.generation.seed):
        first, second = tallies[a], tallies[b]
        print(f"after question {question_id}: A {first.tokens_per_second:.2f} tok/s (τ {first.tau:.2f}), "
              f"B {second.tokens_per_second:.2f} tok/s (τ {second.tau:.2f}), "
              f"B/A {second.tokens_per_second / first.tokens_per_second:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
