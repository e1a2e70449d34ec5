"""A "trained-like" draft for tiny targets, so that tests exercise acceptance instead of rejecting everything.

The draft is built, not trained: with its attention switched off (o_proj = 0) and its fc reading only the token
embedding, head 1 at a node with token x is z = W emb(x) + MoE(norm(z)). W is solved by least squares so that
W emb(x) equals the target's own feature after the one-token context [x]; the experts' output is scaled down, so
each expert is a small, different perturbation. The draft therefore predicts what the target predicts from the
last token alone, which agrees with the target often when the target's attention is weak (``attention_scale``).
"""

from __future__ import annotations

import torch

from jakiro.model.draft import DraftHead
from tiny_models import tiny_draft, tiny_target


def weak_context_target(family: str = "llama", vocab_size: int = 16, attention_scale: float = 0.3, seed: int = 0):
    """A tiny target whose attention output is scaled down: its next token depends mostly on the last token."""
    target = tiny_target(family, vocab_size, seed)
    with torch.no_grad():
        for layer in target.get_decoder().layers:
            layer.self_attn.o_proj.weight.mul_(attention_scale)
    return target


def imitating_draft(target, num_experts: int = 2, experts_per_token: int = 2, expert_scale: float = 0.3,
                    seed: int = 1, draft_vocab_size: int | None = None) -> DraftHead:
    """A draft (no parallel head) whose head 1 imitates the target's one-token-context prediction; with
    ``draft_vocab_size`` it proposes only a random subset of the target's tokens."""
    draft = tiny_draft(target, num_experts, experts_per_token, parallel_head=False, seed=seed,
                       draft_vocab_size=draft_vocab_size)
    vocab, hidden = target.config.vocab_size, target.config.hidden_size
    with torch.no_grad():
        one_token_features = target.get_decoder()(torch.arange(vocab)[:, None]).last_hidden_state[:, 0]  # [V, H]
        embeddings = target.get_input_embeddings().weight  # [V, H]
        solution = torch.linalg.lstsq(embeddings, one_token_features).solution  # emb @ solution ~ features
        draft.fc.weight.zero_()
        draft.fc.weight[:, :hidden] = solution.T
        draft.fc.bias.zero_()
        draft.layers[0].self_attn.o_proj.weight.zero_()
        for expert in draft.layers[0].mlp_moe.experts:
            expert.down_proj.weight.mul_(expert_scale)
    return draft
