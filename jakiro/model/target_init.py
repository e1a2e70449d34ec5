"""Initialise a draft's decoder layer from the target's last decoder layer (``draft.init_from_target``).

The draft's single layer has the shapes of a target layer's attention (it is sized from the target's config), so
the attention projections and the norms are copied as they are: the draft built for this has an input RMSNorm
(``DraftHeadConfig.input_norm``), because the copied attention expects the normalised inputs its own layer gave it.
The MLP is copied where the shapes allow: a dense target MLP (``mlp.{gate,up,down}_proj``) into every expert whose
width equals the target's intermediate size; a mixture-of-experts target (transformers' fused
``mlp.experts.gate_up_proj`` [E, 2I, H] and ``mlp.experts.down_proj`` [E, H, I]) expert by expert, and its router
into the draft's head-1 router rows when the expert counts match. What is not copied keeps its random
initialization and is named in the report: the target's input norm when the draft has none, attention biases the
draft lacks (Qwen2's), experts of another width, the draft's ``fc`` and the CEPD router rows (no counterpart in the
target).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class TargetInitReport:
    """What :func:`init_from_target_layer` copied (draft parameter names) and what it left (name: reason)."""

    layer: int
    copied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One log line naming the copied and the skipped tensors."""
        skipped = "; ".join(f"{name} ({why})" for name, why in self.skipped.items()) or "nothing"
        return (f"draft.init_from_target: copied {len(self.copied)} tensors from target layer {self.layer}: "
                f"{', '.join(self.copied)}; not copied: {skipped}")


def last_decoder_layer(target: nn.Module) -> tuple[int, nn.Module]:
    """(index, module) of a transformers causal LM's last decoder layer."""
    decoder = target.get_decoder() if hasattr(target, "get_decoder") else target
    layers = getattr(decoder, "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"cannot find the decoder layers of {type(target).__name__} (expected .get_decoder().layers)")
    return len(layers) - 1, layers[-1]


@torch.no_grad()
def init_from_target_layer(draft: nn.Module, layer_state: dict[str, torch.Tensor], layer_index: int
                           ) -> TargetInitReport:
    """Copy ``layer_state`` (a target decoder layer's state dict) into ``draft``'s layer where shapes match.

    Args:
        draft: a :class:`jakiro.model.draft.DraftHead`.
        layer_state: e.g. ``last_decoder_layer(target)[1].state_dict()``.
        layer_index: the layer's index in the target (for the report).
    """
    report = TargetInitReport(layer_index)
    params = dict(draft.named_parameters())
    prefix = "layers.0."

    def copy(draft_name: str, source: torch.Tensor | None, source_name: str) -> None:
        full = prefix + draft_name
        if source is None:
            report.skipped[full] = f"the target has no {source_name}"
        elif full not in params:
            report.skipped[source_name] = "the draft has no counterpart"
        elif params[full].shape != source.shape:
            report.skipped[full] = (f"shape {tuple(params[full].shape)}, the target's {source_name} is "
                                    f"{tuple(source.shape)}")
        else:
            params[full].copy_(source.to(params[full].dtype))
            report.copied.append(full)

    for name in _ATTENTION:
        copy(f"self_attn.{name}.weight", layer_state.get(f"self_attn.{name}.weight"), f"self_attn.{name}.weight")
        has_bias = f"self_attn.{name}.bias" in layer_state
        if has_bias or prefix + f"self_attn.{name}.bias" in params:
            copy(f"self_attn.{name}.bias", layer_state.get(f"self_attn.{name}.bias"), f"self_attn.{name}.bias")
    for norm in ("input_layernorm.weight", "post_attention_layernorm.weight"):
        if norm in layer_state and prefix + norm not in params:  # a draft without an input norm (the reference's)
            report.skipped[norm] = "the draft's layer has no input norm (DraftHeadConfig.input_norm)"
        else:
            copy(norm, layer_state.get(norm), norm)

    moe = draft.layers[0].mlp_moe
    width = moe.experts[0].gate_proj.weight.shape[0]
    router_copied, no_router = False, "the target's MLP is dense: no router"
    if "mlp.gate_proj.weight" in layer_state:  # a dense MLP: into every expert
        target_width = layer_state["mlp.gate_proj.weight"].shape[0]
        if target_width != width:
            report.skipped[f"{prefix}mlp_moe.experts"] = (f"{width} wide, the target's MLP {target_width}: "
                                                          f"draft.expert_intermediate_size={target_width} copies it")
        else:
            for e in range(moe.num_experts):
                for proj in _PROJECTIONS:
                    copy(f"mlp_moe.experts.{e}.{proj}.weight", layer_state[f"mlp.{proj}.weight"],
                         f"mlp.{proj}.weight")
    elif "mlp.experts.gate_up_proj" in layer_state:  # transformers' fused mixture of experts
        gate_up, down = layer_state["mlp.experts.gate_up_proj"], layer_state["mlp.experts.down_proj"]
        count, target_width = gate_up.shape[0], gate_up.shape[1] // 2
        if target_width != width:
            report.skipped[f"{prefix}mlp_moe.experts"] = (f"{width} wide, the target's experts {target_width}: "
                                                          f"draft.expert_intermediate_size={target_width} copies them")
        else:
            for e in range(min(moe.num_experts, count)):
                source = f"mlp.experts[{e}]"
                copy(f"mlp_moe.experts.{e}.gate_proj.weight", gate_up[e, :target_width], f"{source}.gate_proj")
                copy(f"mlp_moe.experts.{e}.up_proj.weight", gate_up[e, target_width:], f"{source}.up_proj")
                copy(f"mlp_moe.experts.{e}.down_proj.weight", down[e], f"{source}.down_proj")
            if moe.num_experts > count:
                report.skipped[f"{prefix}mlp_moe.experts.{count}-{moe.num_experts - 1}"] = (
                    f"the target has only {count} experts")
        router = layer_state.get("mlp.gate.weight")
        no_router = f"the target's router has {count} experts"
        if moe.gate is not None and router is not None and router.shape[0] == moe.num_experts:
            moe.gate.weight[: moe.num_experts].copy_(router.to(moe.gate.weight.dtype))
            report.copied.append(f"{prefix}mlp_moe.gate.weight[:{moe.num_experts}]")
            router_copied = True
    else:
        report.skipped[f"{prefix}mlp_moe.experts"] = "the target's MLP layout is not recognised"
        no_router = "the target's MLP layout is not recognised"
    if moe.gate is not None and not router_copied:
        report.skipped[f"{prefix}mlp_moe.gate.weight"] = no_router
    elif moe.gate is not None and moe.parallel_head:
        report.skipped[f"{prefix}mlp_moe.gate.weight[{moe.num_experts}:]"] = "the CEPD router has no counterpart"
    report.skipped["fc"] = "no counterpart in the target"
    return report
