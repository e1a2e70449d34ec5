"""The generate loops: speculative decoding over any :class:`jakiro.decoding.drafting.Drafter`, and plain decoding.

One speculative round: the drafter proposes a tree below the last committed token, the target verifies it in one
forward (:meth:`jakiro.target.TargetModel.verify`), :func:`jakiro.decoding.verify.verify` keeps an accepted path
plus one bonus token, the target's cache is compacted to that path, and the accepted path's features and tokens
are what the drafter sees next round. Both loops yield the tokens committed by each step and never stop by
themselves: the caller (:class:`jakiro.model.ea_model.EaModel`) cuts at its token budget and stop tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from jakiro.decoding.drafting import Drafter, DraftState, check_tree
from jakiro.decoding.verify import verify, warp_logits
from jakiro.target import TargetModel


@dataclass
class GenerationStats:
    """What the last generate call did: tokens generated, target forwards (prefill included), accepted lengths."""

    new_tokens: int = 0
    target_forwards: int = 0
    accept_lengths: list[int] = field(default_factory=list)  # draft tokens accepted per verification step
    wall_time: float = 0.0


def pick_token(logits: torch.Tensor, sampling: dict, generator: torch.Generator | None) -> int:
    """One token from [V] logits: the argmax at temperature 0, else a draw from the warped distribution."""
    if sampling["temperature"] == 0:
        return int(logits.argmax())
    probs = warp_logits(logits, **sampling).softmax(-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def speculative_tokens(target: TargetModel, drafter: Drafter, prompt: torch.Tensor, sampling: dict,
                       generator: torch.Generator | None, stats: GenerationStats) -> Iterator[list[int]]:
    """Speculative decoding after ``prompt`` [1, P] (on the target's device): yields the first token, then the
    tokens each verification step commits (accepted draft tokens + the bonus token). ``stats`` is updated in place
    (target forwards, accepted lengths)."""
    logits, features = target.prefill(prompt)
    stats.target_forwards = 1
    root = pick_token(logits, sampling, generator)
    yield [root]
    drafter.reset()
    # the draft pairs feature f_t with token x_{t+1}: prompt features with the prompt shifted by one + root
    tokens = torch.cat([prompt[0, 1:], torch.tensor([root], device=prompt.device)])
    state = DraftState(features, tokens, torch.cat([prompt[0], tokens[-1:]]), sampling, generator)
    while True:
        tree = drafter.propose(state)
        check_tree(tree, state, drafter)
        prefix_len = len(target)
        tree_logits, tree_features = target.verify(tree)
        stats.target_forwards += 1
        verdict = verify(tree, tree_logits, sampling, generator)
        path = torch.cat([torch.zeros(1, dtype=torch.long), verdict.accepted_nodes]).to(tree_features.device)
        target.commit(prefix_len, path)
        stats.accept_lengths.append(int(verdict.accepted_nodes.numel()))
        committed = tree.tokens[verdict.accepted_nodes].tolist() + [verdict.next_token]
        yield committed
        tokens = torch.tensor(committed, device=prompt.device)
        state = DraftState(tree_features[path], tokens, torch.cat([state.history, tokens]), sampling, generator)


@torch.inference_mode()
def plain_tokens(target: TargetModel, prompt: torch.Tensor, sampling: dict, generator: torch.Generator | None,
                 stats: GenerationStats) -> Iterator[list[int]]:
    """Plain autoregressive decoding after ``prompt`` [1, P]: yields one token per target forward."""
    logits, _ = target.prefill(prompt)
    stats.target_forwards = 1
    while True:
        token = pick_token(logits, sampling, generator)
        yield [token]
        logits, _ = target.step(token)
        stats.target_forwards += 1
