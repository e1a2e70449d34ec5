"""Mixture-of-experts MLP of the draft head, with the CEPD contrastive parallel head.

Notation (per token position; u = RMSNorm(x), x = the post-attention residual stream):

    gate logits g = W_g u,   W_g: [E (+ E if parallel head), H]
    head 1 (next feature):   h1 = sum_{e in topk(g[:E])}  softmax(g[topk])_e * E_e(u)
    head 2 (two ahead):      h2 = b_top * E_top(u) - b_low * E_low(u),
                             (top, low) = the two largest of g[E:], (b_top, b_low) = softmax over those two logits

With E = 2 experts and top-2 routing this is exactly the reference (a 4-logit gate, two separate softmaxes).
Only the experts some position actually routes to are evaluated, each once per position set.
Parameter names follow the reference checkpoint layout (``gate.weight``, ``experts.{i}.{gate,up,down}_proj.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class SwiGLUExpert(nn.Module):
    """One expert: down(SiLU(gate(u)) * up(u)), bias-free, H -> I -> H."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(u)) * self.up_proj(u))


@dataclass
class MoEOutput:
    """Outputs of :class:`MixtureOfExperts` for N flattened positions.

    Attributes:
        head1: [N, H] routed mixture (next-feature head).
        head2: [N, H] contrastive combination (two-ahead head), or None when not requested.
        expert_ids: [N, k] experts chosen by head-1 routing, strongest first.
        expert_outputs: [N, k, H] raw outputs E_e(u) of those experts, or None when not requested.
        expert_weights: [N, k] float32 head-1 routing weights of those experts (softmax over the chosen logits;
            head1 = sum_slot expert_weights * expert_outputs).
        router_logits: [N, E] float32 head-1 gate logits (for a load-balancing loss), or None with one expert.
    """

    head1: torch.Tensor
    head2: torch.Tensor | None
    expert_ids: torch.Tensor
    expert_outputs: torch.Tensor | None
    expert_weights: torch.Tensor
    router_logits: torch.Tensor | None


class MixtureOfExperts(nn.Module):
    """Top-k routed SwiGLU experts with an optional second gate group for the contrastive parallel head."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        experts_per_token: int,
        parallel_head: bool,
    ):
        super().__init__()
        if not 1 <= experts_per_token <= num_experts:
            raise ValueError(f"experts_per_token must be in [1, num_experts={num_experts}], got {experts_per_token}")
        if parallel_head and num_experts < 2:
            raise ValueError("the contrastive parallel head needs at least 2 experts")
        self.num_experts = num_experts
        self.experts_per_token = experts_per_token
        self.parallel_head = parallel_head
        self.experts = nn.ModuleList(SwiGLUExpert(hidden_size, intermediate_size) for _ in range(num_experts))
        gate_rows = num_experts * (2 if parallel_head else 1)
        self.gate = nn.Linear(hidden_size, gate_rows, bias=False) if gate_rows > 1 else None

    def forward(self, u: torch.Tensor, with_head2: bool = False, with_experts: bool = False) -> MoEOutput:
        """Args:
            u: [N, H] normalised inputs.
            with_head2: also compute the contrastive head (needs ``parallel_head``).
            with_experts: also return the chosen experts' individual outputs (per-expert sibling mode).
        """
        n, e, k = u.shape[0], self.num_experts, self.experts_per_token
        if with_head2 and not self.parallel_head:
            raise ValueError("this draft has no parallel head")
        if self.gate is None:
            logits = u.new_zeros(n, 1, dtype=torch.float32)
        else:
            logits = self.gate(u).float()
        top_logits, ids1 = torch.topk(logits[:, :e], k, dim=-1)
        routing = top_logits.softmax(-1)  # [N, k]
        w1 = torch.zeros(n, e, device=u.device, dtype=torch.float32).scatter(-1, ids1, routing)
        weights = [w1]
        if with_head2:
            pair_logits, ids2 = torch.topk(logits[:, e:], 2, dim=-1)
            b = pair_logits.softmax(-1) * torch.tensor([1.0, -1.0], device=u.device)
            weights.append(torch.zeros(n, e, device=u.device, dtype=torch.float32).scatter(-1, ids2, b))
        combined = torch.stack(weights)  # [heads, N, E]

        heads = u.new_zeros(len(weights), n, u.shape[-1])
        expert_outputs = u.new_zeros(n, k, u.shape[-1]) if with_experts else None
        used = combined.ne(0).any(dim=0)  # [N, E]
        for expert_id in range(e):
            rows = used[:, expert_id].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            if rows.numel() == n:  # every position uses this expert (2 experts, top-2): no gather and scatter
                y = self.experts[expert_id](u)
                heads += combined[:, :, expert_id, None].to(y.dtype) * y
            else:
                y = self.experts[expert_id](u[rows])
                heads[:, rows] += combined[:, rows, expert_id, None].to(y.dtype) * y
            if with_experts:
                slot_rows, slot = (ids1[rows] == expert_id).nonzero(as_tuple=True)
                expert_outputs[rows[slot_rows], slot] = y[slot_rows]
        router_logits = None if self.gate is None else logits[:, :e]
        return MoEOutput(heads[0], heads[1] if with_head2 else None, ids1, expert_outputs, routing, router_logits)
