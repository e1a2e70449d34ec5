"""Verification of a draft tree against the target's logits: greedy and lossless sampling. Pure tensor functions.

The lossless contract
---------------------
Greedy (temperature 0): the committed tokens are exactly the target's argmax chain — a draft token is accepted only
if it equals the target's argmax at its parent, and the bonus token is the argmax after the last accepted node.

Sampling (temperature > 0): drafts are *deterministic* (top-k of the draft, no randomness), i.e. the proposal puts
probability q(x) = 1 on each candidate. At a node with target distribution p and children x_1, x_2, ... (distinct):

    for each child x_i in order:  accept x_i with probability p(x_i)            (= min(1, p/q) with q = 1)
                                  on rejection: p(x_i) <- 0, p <- p / sum(p)    (remove and renormalise)
    if every child was rejected:  sample the bonus token from the residual p

By induction over the children, the token leaving a node is distributed exactly as p: the chance that x is emitted
is P(reach x untouched) * p(x) / (mass left) summed over the stages, which telescopes to p(x). The walk continues
from an accepted child with that child's own distribution, so every committed token follows the target's
(temperature / top-k / top-p processed) conditional distribution. The same processing is applied at every node,
the bonus token included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jakiro.decoding.tree import DraftTree


@dataclass
class Verdict:
    """Outcome of verifying one tree.

    Attributes:
        accepted_nodes: [a] node indices of the accepted draft tokens, root excluded, in path order.
        next_token: the bonus token sampled (or argmax-ed) from the target after the accepted path.
    """

    accepted_nodes: torch.Tensor
    next_token: int


def warp_logits(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p (nucleus) to logits; removed entries become -inf.

    This is the single definition of the sampling distribution used by speculative and plain decoding alike.

    Args:
        logits: [..., V] raw target logits.
        temperature: > 0.
        top_p: nucleus mass in (0, 1]; 1 disables it.
        top_k: keep the k most likely tokens; 0 disables it.
    Returns:
        [..., V] float32 processed logits.
    """
    out = logits.float() / temperature
    if 0 < top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (the first token always stays)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """Longest root-to-leaf prefix on which every draft token equals the target's argmax.

    Args:
        tree: the verified tree (n nodes).
        logits: [n, V] target logits at the tree nodes.
    """
    argmax = logits.argmax(dim=-1)  # [n]
    paths = tree.retrieve_indices  # [leaves, L]
    valid = paths[:, 1:] >= 0
    draft = tree.tokens[paths[:, 1:].clamp(min=0)]
    predicted = argmax[paths[:, :-1].clamp(min=0)]
    match = (draft == predicted) & valid
    accept_len = match.int().cumprod(dim=1).sum(dim=1)  # [leaves]
    best = int(accept_len.argmax())
    length = int(accept_len[best])
    accepted = paths[best, 1 : 1 + length]
    last = int(paths[best, length])
    return Verdict(accepted, int(argmax[last]))


def verify_sampling(
    tree: DraftTree,
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    child_order: torch.Tensor | None = None,
) -> Verdict:
    """Lossless multi-candidate speculative sampling with deterministic drafts (see the module docstring).

    Args:
        tree: the verified tree (n nodes).
        logits: [n, V] target logits at the tree nodes.
        temperature, top_p, top_k: the sampling distribution (see :func:`warp_logits`).
        generator: torch generator on the CPU for reproducible draws.
        child_order: optional [n] priority per node (higher first) deciding in which order siblings are tried;
            default: node order. Any order fixed before the draws keeps the result lossless.
    """
    probs = warp_logits(logits, temperature, top_p, top_k).softmax(dim=-1).cpu()
    tokens = tree.tokens.cpu().tolist()
    parents = tree.parents.cpu().tolist()
    children: list[list[int]] = [[] for _ in tokens]
    for node in range(1, len(tokens)):
        children[parents[node]].append(node)
    if child_order is not None:
        priority = child_order.cpu().tolist()
        for kids in children:
            kids.sort(key=lambda c: -priority[c])

    accepted: list[int] = []
    node = 0
    while True:
        p = probs[node].clone()
        next_node = None
        for child in children[node]:
            token = tokens[child]
            mass = float(p.sum())
            u = float(torch.rand((), generator=generator))
            if u * mass < float(p[token]):
                next_node = child
                break
            p[token] = 0.0
        if next_node is None:
            token = int(torch.multinomial(p, 1, generator=generator))
            return Verdict(torch.tensor(accepted, dtype=torch.long), token)
        accepted.append(next_node)
        node = next_node
