"""Training metrics: top-k agreement with the target, the draft's k-step autoregressive accuracy, sums, the JSONL log.

``draft_chain_accuracy`` is the held-out metric that matters for speculative decoding: from every position t of a
test sequence (true features f_0..f_t as context), the draft runs ``steps`` greedy steps on its *own* predicted
features, with its KV cache, and step k is scored against the target's greedy token at t + k + 1. Step k counts
as correct only if steps 0..k all were, and only positions where the test text itself follows the target's greedy
tokens (and carries loss weight) for those k + 1 tokens are scored: there the true features are what the target
would produce on the draft's (correct) path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from jakiro.train.unroll import ahead, run_chain

ROW_CHUNK = 1024  # rows per LM-head call when only the argmax is needed (bounds the [rows, V] memory)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, ks=(1, 2, 3)) -> torch.Tensor:
    """[N, V] logits, [N] labels, [N] weights -> [len(ks)] weighted counts of labels among the top-k logits."""
    if logits.shape[0] == 0:
        return torch.zeros(len(ks))
    top = torch.topk(logits, max(ks), dim=-1).indices
    hits = (top == labels[:, None]).float()
    w = weights.float()
    return torch.stack([(hits[:, :k].sum(-1) * w).sum() for k in ks]).cpu()


@torch.no_grad()
def greedy_tokens(lm_head: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
                  where: torch.Tensor | None = None) -> torch.Tensor:
    """[..., H] features -> [...] argmax of the LM head, computed ROW_CHUNK rows at a time; with ``where`` ([...]
    bool) only there (-1 elsewhere)."""
    rows = features.reshape(-1, features.shape[-1]) if where is None else features[where]
    picked = (torch.cat([lm_head(rows[i:i + ROW_CHUNK]).argmax(-1) for i in range(0, rows.shape[0], ROW_CHUNK)])
              if rows.shape[0] else torch.zeros(0, dtype=torch.long, device=features.device))
    if where is None:
        return picked.reshape(features.shape[:-1])
    out = torch.full(features.shape[:-1], -1, dtype=torch.long, device=features.device)
    out[where] = picked
    return out


@torch.no_grad()
def draft_chain(draft, features: torch.Tensor, input_ids: torch.Tensor, steps: int, chains: torch.Tensor | None = None,
                follow: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """[steps, B, S] greedy tokens of the draft's autoregressive steps from every start position at once.

    Step 0 at start t is the draft's token after its head-1 feature at t (true inputs 0..t); step k >= 1 feeds the
    draft its own previous feature and token at position t + k, attending to the true context <= t and to its own
    chain (:func:`jakiro.train.unroll.run_chain`). Chains are independent of each other, so a chain nobody follows
    any more can be fed anything.

    Args:
        draft: a :class:`DraftHead` with bound target modules.
        features: [B, S, H] true features f_t (model dtype); input_ids: [B, S] tokens x_{t+1}.
        chains: [B, S] bool, the chains whose tokens are wanted (None: all); the LM head runs only for those, the
            others' tokens are -1.
        follow: None (the same chains at every step), or (k, step k's tokens [B, S]) -> [B, S] bool, the chains
            whose step k + 1 is wanted.
    """
    b, s, _ = features.shape
    if steps == 0:
        return input_ids.new_zeros(0, b, s)
    tokens: list[torch.Tensor] = []

    def step_tokens(k: int, out) -> torch.Tensor:  # step k's greedy tokens of the followed chains
        nonlocal chains
        tokens.append(greedy_tokens(draft.logits, out.head1, chains))
        if follow is not None:
            chains = follow(k, tokens[-1])
        return tokens[-1]

    last = run_chain(draft, features, input_ids, steps, lambda k, out: step_tokens(k - 1, out).clamp_min(0))[-1]
    step_tokens(steps - 1, last)
    return torch.stack(tokens)


@torch.no_grad()
def draft_chain_accuracy(draft, features: torch.Tensor, input_ids: torch.Tensor, target: torch.Tensor,
                         mask: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct / scored counts of the draft's autoregressive steps k = 0..steps-1 (see the module docstring).

    Cost: the target's full-vocabulary LM head runs once per weighted position (and the one after it): the target's
    token after f_{t+1} is read from ``features[:, t + 1]``, which equals ``target[:, t]`` in the training data's
    layout (``target`` itself only in the last column); the draft's head runs only for chains still correct and
    scored (a chain that failed at step k is never scored again).

    Args:
        draft: a :class:`DraftHead` with bound target modules.
        features: [B, S, H] true features f_t (model dtype); input_ids: [B, S] x_{t+1}; target: [B, S, H] f_{t+1};
        mask: [B, S] loss weights.
    Returns:
        two float [steps] tensors on the CPU.
    """
    correct, total = torch.zeros(steps), torch.zeros(steps)
    if steps == 0 or features.shape[1] == 0:
        return correct, total

    def target_head(h: torch.Tensor) -> torch.Tensor:  # the full vocabulary: a reduced-vocabulary draft can miss
        return draft.lm_head(h.to(draft.lm_head.weight.dtype))

    weighted = mask > 0
    needed = weighted.clone()
    needed[:, 1:] |= weighted[:, :-1]
    greedy = greedy_tokens(target_head, features, needed)  # [B, S]: the target's token after f_t
    target_tokens = ahead(greedy, 1, -1)  # the target's token after f_{t+1}
    target_tokens[:, -1] = greedy_tokens(target_head, target[:, -1], weighted[:, -1])
    on_greedy = weighted & (input_ids == greedy)
    scored = [on_greedy]  # scored[k]: the test text follows the target's greedy tokens for steps 0..k
    for k in range(1, steps):
        scored.append(scored[-1] & ahead(on_greedy, k, False))
    alive = [scored[0]]  # alive[k]: scored at step k and correct at steps 0..k

    def follow(k: int, tokens: torch.Tensor) -> torch.Tensor:
        alive[k] = alive[k] & (tokens == ahead(target_tokens, k, -1))
        if k + 1 < steps:
            alive.append(alive[k] & scored[k + 1])
            return alive[k + 1]
        return torch.zeros_like(alive[k])

    draft_chain(draft, features, input_ids, steps, scored[0], follow)
    for k in range(steps):
        total[k] = scored[k].sum().item()
        correct[k] = alive[k].sum().item()
    return correct, total


class Sums:
    """Named float sums, reduced over processes on demand (``accelerator.reduce``)."""

    def __init__(self, values: dict[str, float] | None = None):
        self.values: dict[str, float] = dict(values or {})

    def add(self, name: str, value) -> None:
        self.values[name] = self.values.get(name, 0.0) + float(value)

    def reduced(self, accelerator) -> dict[str, float]:
        """The sums over all processes (every process must call this with the same names)."""
        names = sorted(self.values)
        if accelerator.num_processes == 1 or not names:
            return {n: self.values[n] for n in names}
        packed = torch.tensor([self.values[n] for n in names], dtype=torch.float64, device=accelerator.device)
        packed = accelerator.reduce(packed, reduction="sum")
        return dict(zip(names, packed.tolist()))


def ratio(sums: dict[str, float], num: str, den: str) -> float | None:
    """sums[num] / sums[den], or None when nothing was counted."""
    return sums[num] / sums[den] if sums.get(den) else None


class JsonlLog:
    """Append-only metrics log (one JSON object a line) that can be cut back to a checkpoint's line count."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lines = 0

    def restart(self, lines: int) -> None:
        """Keep the first ``lines`` records (those written before the checkpoint being resumed)."""
        kept = self.path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines] if self.path.exists() else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(kept), encoding="utf-8")
        self.lines = len(kept)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1
