"""Lossless multi-candidate speculative sampling for trees whose children were *sampled* from draft proposals.

Greedy decoding (temperature 0) uses :func:`jakiro.decoding.verify.verify_greedy` unchanged. This module covers
temperature > 0, where Jakiro* draws every child from a proposal distribution (:mod:`jakiro_star.proposals`).

The rule (recursive rejection sampling, as in SpecInfer's multi-step speculative sampling)
-----------------------------------------------------------------------------------------
At a node with target distribution p (the target's logits warped by temperature / top-k / top-p, exactly as in
plain sampling) and children x_1 .. x_K in drawing order, where child i was drawn from q_i:

    r_1 = p
    for i = 1 .. K:   accept x_i with probability  min(1, r_i(x_i) / q_i(x_i))
                      on rejection:  r_{i+1} = (r_i - q_i)^+ / Z_i,   Z_i = sum_v (r_i(v) - q_i(v))^+
    if none accepted: emit the bonus token y ~ r_{K+1}

and after accepting x_i the walk continues at that child, with the target's distribution there.

Why it is lossless
------------------
Let x_{<i} be the earlier siblings. The proposals satisfy: conditioned on x_{<i} (and on the tree drafted above
this level), x_i ~ q_i, where q_i may depend on x_{<i} — drawing without replacement makes q_i the slot
distribution restricted to the tokens not drawn yet, renormalised, and that *conditional* is what is recorded —
and K may depend on x_{<K} too (a slot with no mass left is skipped). r_{i+1} depends on x_{<i} only, through
q_i, and **not** on the rejected value x_i.

Claim: conditioned on reaching stage i with history x_{<i}, the emitted token is distributed as r_i.
Backward induction over i. Stage K+1 samples r_{K+1}. At stage i <= K, for every token y:

    P(emit y) = q_i(y) * min(1, r_i(y)/q_i(y))  +  P(reject) * r_{i+1}(y)
              = min(q_i(y), r_i(y))             +  Z_i * (r_i(y) - q_i(y))^+ / Z_i
              = r_i(y),

using P(reject) = 1 - sum_v min(q_i(v), r_i(v)) = sum_v (r_i(v) - q_i(v))^+ = Z_i (both sum to 1), and the
induction hypothesis for stage i+1 conditioned on x_{<=i}, whose distribution r_{i+1} is the same whatever x_i
was. At i = 1 the emitted token follows p. The subtree of the accepted child was drafted from the draft's state
along that child's path with randomness independent of this level's draws and coins, so conditioned on the
emitted token the next level starts afresh with the target's distribution at the child: every committed token
follows the target's processed conditional distribution, the bonus token included.

Deterministic candidates (the prompt-lookup branch, :mod:`jakiro.decoding.lookup`) fit the same rule: a child whose token
c was fixed before the step, from the committed text alone, is a draw from q_i = delta_c. It is accepted with
probability r_i(c), and on rejection r_{i+1} is r_i with c removed, renormalised. :func:`graft_fixed_chain` adds
such children after a node's sampled ones, so they are tried last, only where the token is not already a sibling
(whether it is depends on x_{<i} only, which the argument allows).

Two remarks. (1) A token rejected at stage i has r_{i+1}(x_i) = 0 (rejection needs r_i(x_i) < q_i(x_i)), so a
duplicate sibling could never be accepted; drawing without replacement avoids wasting tree nodes on them.
(2) Using the *unconditional* slot distribution as q_i for siblings drawn without replacement, a q(x) taken from
another distribution than the one x was drawn from (the reference Jakiro*: the lower-gated expert's share of a
joint 2V softmax), or a residual that subtracts anything but q_i (the reference: a near-uniform vector) breaks the
identity above; the tests show the chi-square test catching that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jakiro.decoding.tree import DraftTree, graft_chain
from jakiro.decoding.verify import Verdict, warp_logits


@dataclass
class SampledDraftTree(DraftTree):
    """A :class:`jakiro.decoding.tree.DraftTree` whose children were drawn from recorded proposals.

    Attributes:
        proposals: [n, V] the distribution node i's token was drawn from (row 0, the root, is unused); None for a
            greedy (temperature 0) tree.
    """

    proposals: torch.Tensor | None = None


def graft_fixed_chain(tree: SampledDraftTree, chain: torch.Tensor) -> SampledDraftTree:
    """:func:`jakiro.decoding.tree.graft_chain` for a sampled tree: the chain's new nodes get one-hot proposals (a token fixed in
    advance is a draw from delta_token), so :func:`verify_recursive` stays lossless; they come after the old nodes
    and hence after their sampled siblings. A greedy tree (no proposals) is grafted as is.

    Args:
        tree: n nodes, ``proposals`` [n, V] or None.
        chain: [m] token ids proposed after the root, in order.
    Returns:
        The tree with n + (unmatched part of the chain) nodes, proposals [n + new, V].
    """
    grafted = graft_chain(tree, chain)
    if grafted is tree:
        return tree
    proposals = tree.proposals
    if proposals is not None:
        new_tokens = grafted.tokens[len(tree):].to(proposals.device)
        fixed = torch.zeros(new_tokens.shape[0], proposals.shape[1], dtype=proposals.dtype, device=proposals.device)
        fixed[torch.arange(new_tokens.shape[0]), new_tokens] = 1.0
        proposals = torch.cat([proposals, fixed])
    return SampledDraftTree(grafted.tokens, grafted.parents, grafted.depths, grafted.mask, grafted.retrieve_indices,
                            proposals)


def acceptance_probability(residual: torch.Tensor, proposal: torch.Tensor, token: int) -> float:
    """min(1, r(x) / q(x)) for a token x drawn from q (so q(x) > 0). residual, proposal: [V]."""
    q = float(proposal[token])
    if q <= 0:
        raise ValueError(f"token {token} has proposal probability {q}: it cannot have been drawn from it")
    return min(1.0, float(residual[token]) / q)


def rejection_residual(residual: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
    """(r - q)^+ renormalised: the target mass the rejected proposal did not cover. residual, proposal: [V].

    If nothing is left (r == q up to rounding, where a rejection has probability 0 and only rounding gets here)
    the residual is returned unchanged.
    """
    left = (residual - proposal).clamp(min=0)
    mass = left.sum()
    return left / mass if mass > 0 else residual


def verify_recursive(
    tree: SampledDraftTree,
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> Verdict:
    """Recursive rejection sampling down a sampled tree (see the module docstring).

    Args:
        tree: n nodes; children of a node are tried in node order (= drawing order); ``tree.proposals`` [n, V].
        logits: [n, V] target logits at the tree nodes.
        temperature, top_p, top_k: the target's sampling distribution (:func:`jakiro.decoding.verify.warp_logits`).
        generator: CPU torch generator for the acceptance coins and the bonus token.
    """
    if tree.proposals is None:
        raise ValueError("this tree carries no proposals (drafted at temperature 0): verify it greedily")
    if tree.proposals.shape != logits.shape:
        raise ValueError(f"proposals {tuple(tree.proposals.shape)} and logits {tuple(logits.shape)} differ in shape")
    target = warp_logits(logits, temperature, top_p, top_k).softmax(dim=-1).double().cpu()
    proposals = tree.proposals.double().cpu()
    tokens = tree.tokens.cpu().tolist()
    parents = tree.parents.cpu().tolist()
    children: list[list[int]] = [[] for _ in tokens]
    for node in range(1, len(tokens)):
        children[parents[node]].append(node)

    accepted: list[int] = []
    node = 0
    while True:
        residual = target[node]
        next_node = None
        for child in children[node]:
            chance = acceptance_probability(residual, proposals[child], tokens[child])
            if float(torch.rand((), generator=generator, dtype=torch.float64)) < chance:
                next_node = child
                break
            residual = rejection_residual(residual, proposals[child])
        if next_node is None:
            token = int(torch.multinomial(residual, 1, generator=generator))
            return Verdict(torch.tensor(accepted, dtype=torch.long), token)
        accepted.append(next_node)
        node = next_node
