"""Batched tree verification on a CPU: grouped-query attention inside PyTorch's SDPA kernel, without copying the
KV cache.

Given a mask (a tree always has one), transformers' ``sdpa`` attention expands a GQA model's keys and values to
every query head (``repeat_kv``: a copy of the whole cached context, per layer and call), because CUDA's fused
kernels take no mask with grouped heads. PyTorch's CPU kernel does (``enable_gqa``), so on a CPU
:func:`gqa_tree_attention_for` lets the model's attention layers call it directly. The copy grows with the
context (timings in ``docs/cpu.md``, "CPU verification kernels"). Plain decoding never pays it (one query:
transformers packs the heads instead). Masked attention of grouped heads computes the same products as of repeated
ones; the logits agreed bit for bit there.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "jakiro_gqa_sdpa"


def gqa_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       **kwargs):
    """transformers' ``sdpa`` attention, with grouped KV heads handed to the kernel where a mask is given.

    Args:
        query: [B, heads, q, head_dim]; key, value: [B, kv_heads, k, head_dim].
        attention_mask: [B, 1, q, >= k] additive float mask, or None.
    Returns:
        ([B, q, heads, head_dim] outputs, None), the layout every transformers attention function returns.
    """
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    plain = not kwargs.get("output_attentions") and kwargs.get("position_bias") is None and \
        kwargs.get("softcap") is None and key.shape[-1] == value.shape[-1]
    if not (grouped and plain and attention_mask is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal,
                                      **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask[:, :, :, : key.shape[-2]], dropout_p=dropout, scale=scaling,
        enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def gqa_tree_attention_for(model: PreTrainedModel):
    """Within the block, ``model``'s attention runs :func:`gqa_sdpa_attention` if it is a CPU model using ``sdpa``
    (else nothing changes)."""
    config = model.config
    own = config._attn_implementation
    if own != "sdpa" or model.device.type != "cpu":
        yield
        return
    if NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, gqa_sdpa_attention)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = own
