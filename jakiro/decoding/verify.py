"""Verification of a draft tree against the target's logits: one entry, :func:`verify`. Pure tensor functions.

Greedy (temperature 0)
----------------------
The committed tokens are exactly the target's argmax chain: a draft token is accepted only if it equals the
target's argmax at its parent, and the bonus token is the argmax after the last accepted node
(:func:`verify_greedy`).

Sampling (temperature > 0): recursive rejection sampling
--------------------------------------------------------
At a node with target distribution p (the target's logits warped by temperature / top-k / top-p, exactly as in
plain sampling, :func:`warp_logits`) and children x_1 .. x_K in node order, where child i was drawn from q_i:

    r_1 = p
    for i = 1 .. K:   accept x_i with probability  min(1, r_i(x_i) / q_i(x_i))
                      on rejection:  r_{i+1} = (r_i - q_i)^+ / Z_i,   Z_i = sum_v (r_i(v) - q_i(v))^+
    if none accepted: emit the bonus token y ~ r_{K+1}

and after accepting x_i the walk continues at that child, with the target's distribution there (SpecInfer's
multi-step speculative sampling). q_i is the tree's recorded row ``proposals[i]`` (Jakiro*'s drawn children), or
q_i = delta_{x_i} for a node chosen without randomness: a tree without ``proposals`` (the dynamic tree, the
oracle) and the one-hot rows :func:`jakiro.decoding.tree.graft_chain` gives a prompt-lookup branch. With
q = delta_x the rule reads: accept x with probability r(x); on rejection zero x and renormalise.

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

A deterministic candidate c, fixed before the step from the committed text and the draft alone, is a draw from
q = delta_c whatever the earlier siblings were, so deterministic and drawn children mix freely; a lookup token is
grafted only where it is not already a sibling (whether it is depends on x_{<i} only, which the argument allows).
Remarks: (1) a token rejected at stage i has r_{i+1}(x_i) = 0 (rejection needs r_i(x_i) < q_i(x_i)), so a
duplicate sibling could never be accepted; drafters keep siblings distinct. (2) Using the *unconditional* slot
distribution as q_i for siblings drawn without replacement, a q(x) taken from another distribution than the one
x was drawn from (the reference Jakiro*: the lower-gated expert's share of a joint 2V softmax), or a residual that
subtracts anything but q_i (the reference: a near-uniform vector) breaks the identity above; the tests show the
chi-square test catching that.

Numerics (why the walk has two arithmetics)
-------------------------------------------
The walk is one; the arithmetic follows whether the tree records proposals, so that fixed-seed outputs are those
of the verifiers this replaced, bit for bit:

* no ``proposals`` (every q one-hot): float32, on the *unnormalised* residual r with mass Z = sum(r): accept x iff
  u * Z * q(x) < r(x), i.e. u * Z < r(x), with one float32 coin u; on rejection r <- (r - Z * q)^+, which with
  q = delta_x is r with r(x) set to 0 (r(x) <= Z, every other entry unchanged), so it is computed as that one
  write instead of a pass over the vocabulary. The bonus token is drawn from the unnormalised r.
* recorded ``proposals``: float64, on the *normalised* residual: accept iff u < min(1, r(x) / q(x)) with one
  float64 coin u, then r <- (r - q)^+ / Z (:func:`acceptance_probability`, :func:`rejection_residual`).

Both are the rule above; they differ only in rounding and in how many random bits a coin takes.
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


def verify(tree: DraftTree, logits: torch.Tensor, sampling: dict,
           generator: torch.Generator | None = None) -> Verdict:
    """The verdict on a drafted tree: greedy at temperature 0, recursive rejection sampling otherwise (see the
    module docstring).

    Args:
        tree: n nodes; children of a node are tried in node order; ``tree.proposals`` [n, V] or None (all one-hot).
        logits: [n, V] target logits at the tree nodes.
        sampling: ``temperature``, ``top_p``, ``top_k`` (:func:`warp_logits`).
        generator: CPU torch generator for the acceptance coins and the bonus token.
    """
    temperature = sampling["temperature"]
    if temperature == 0:
        return verify_greedy(tree, logits)
    probs = warp_logits(logits, temperature, sampling.get("top_p", 1.0), sampling.get("top_k", 0)).softmax(dim=-1)
    residuals = _OneHotResiduals(probs) if tree.proposals is None else _RecordedResiduals(probs, tree.proposals)
    tokens = tree.tokens.cpu().tolist()
    parents = tree.parents.cpu().tolist()
    children: list[list[int]] = [[] for _ in tokens]
    for node in range(1, len(tokens)):
        children[parents[node]].append(node)

    accepted: list[int] = []
    node = 0
    while True:
        residual = residuals.at(node)
        next_node = None
        for child in children[node]:
            if residuals.accepts(residual, child, tokens[child], generator):
                next_node = child
                break
            residual = residuals.reject(residual, child, tokens[child])
        if next_node is None:
            token = int(torch.multinomial(residual, 1, generator=generator))
            return Verdict(torch.tensor(accepted, dtype=torch.long), token)
        accepted.append(next_node)
        node = next_node


class _OneHotResiduals:
    """Residual arithmetic for a tree without proposals (every q = delta_x): float32, unnormalised."""

    def __init__(self, probs: torch.Tensor):
        self.probs = probs.cpu()  # [n, V] float32

    def at(self, node: int) -> torch.Tensor:
        return self.probs[node].clone()

    def accepts(self, residual: torch.Tensor, child: int, token: int, generator: torch.Generator | None) -> bool:
        mass = float(residual.sum())
        return float(torch.rand((), generator=generator)) * mass < float(residual[token])

    def reject(self, residual: torch.Tensor, child: int, token: int) -> torch.Tensor:
        residual[token] = 0.0  # (r - Z * delta_token)^+
        return residual


class _RecordedResiduals:
    """Residual arithmetic for a tree with recorded proposals: float64, normalised."""

    def __init__(self, probs: torch.Tensor, proposals: torch.Tensor):
        if proposals.shape != probs.shape:
            raise ValueError(f"proposals {tuple(proposals.shape)} and logits {tuple(probs.shape)} differ in shape")
        self.probs = probs.double().cpu()  # [n, V]
        self.proposals = proposals.double().cpu()  # [n, V]

    def at(self, node: int) -> torch.Tensor:
        return self.probs[node]

    def accepts(self, residual: torch.Tensor, child: int, token: int, generator: torch.Generator | None) -> bool:
        chance = acceptance_probability(residual, self.proposals[child], token)
        return float(torch.rand((), generator=generator, dtype=torch.float64)) < chance

    def reject(self, residual: torch.Tensor, child: int, token: int) -> torch.Tensor:
        return rejection_residual(residual, self.proposals[child])


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
