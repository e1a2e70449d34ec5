"""Batched answer generation for self-distillation, built for CPUs: the fast path of ``jakiro.ge_data.regenerate``.

``decode_batch(model, prompts, ...)`` answers B prompts together, like ``model.generate`` with left padding, but:

* each prompt is prefilled alone (batch 1, no padding, ``sdpa`` causal attention), so a row's prompt state and first
  token do not depend on the other prompts of its batch;
* the KV cache is preallocated (:class:`StaticLayer`: [B, kv_heads, longest prompt + max_new_tokens, head_dim] per
  layer) instead of growing by ``torch.cat``, which copies the whole cache every step; each row starts at position 0
  (padding on the right, masked), so its keys sit where they would if it were decoded alone;
* a decoding step attends with :func:`grouped_attention`: PyTorch's SDPA kernel reading each key/value head for its
  group of query heads from the cache buffers, where transformers' ``sdpa`` and ``eager`` first copy the whole cache
  to every query head (``repeat_kv``) because a padding mask is given; one bf16 step of SmolLM2 at batch 24 after 500
  tokens took 297-433 ms instead of 604-642 (``sdpa``, growing cache) and 1,167-1,230 (``eager``) on an AMX Xeon
  (1 thread, busy machine), where the linear layers alone take ~270;
* rows that finished (an end token or ``max_new_tokens``) leave the batch, a quarter of it at a time, so the step
  cost follows the rows still going instead of the longest answer.

Greedy: the argmax of the float32 logits (first index on ties), as ``generate``. Sampled: softmax(logits / T) drawn
with ``torch.multinomial`` from the caller's generator: the target's distribution, though not ``generate``'s random
stream.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.nn import functional
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

GROUPED = "jakiro_grouped"
# finished rows leave the batch once they are 1 / COMPACT_EVERY of it (each time copies the cache of the rows left;
# until then they are computed and ignored: a step costs nearly the same for a few rows more)
COMPACT_EVERY = 4


def grouped_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """PyTorch's SDPA with grouped key/value heads handed to the kernel (``enable_gqa``) instead of repeated:
    query [B, H, Q, D], key/value [B, K, L, D] (H = K * G; views of the cache buffers, not copied), attention_mask
    bool [B, 1, Q, L] (True = attend) or None -> ([B, Q, H, D], None)."""
    out = functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                                  is_causal=attention_mask is None and query.shape[2] > 1,
                                                  enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED, grouped_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED, sdpa_mask)


@contextmanager
def attention(model, name: str):
    """Run ``model`` with attention implementation ``name`` (the model reads its config's at every forward)."""
    configs = {id(c): c for c in (model.config, model.config.get_text_config())}.values()
    before = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = name
    try:
        yield
    finally:
        for c, b in zip(configs, before):
            c._attn_implementation = b


class StaticLayer(DynamicLayer):
    """One layer's KV cache in preallocated buffers [B, kv_heads, capacity, head_dim], each row's positions from 0
    (right padding: a row's keys sit where they would if it were decoded alone). ``slots`` [B] is where each row
    writes its next key (= the row's length so far, set by the decoder); ``length`` is the width of the views handed
    to attention: the longest row's length (``max(slots)`` before an update; the padding past a row's own length
    is masked)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.keys_buffer, self.values_buffer, self.length = keys, values, length
        self.slots = torch.zeros(len(keys), dtype=torch.int64, device=keys.device)
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states, value_states [B, kv_heads, 1, head_dim]: row b's go to position slots[b]."""
        rows = torch.arange(len(self.slots), device=self.slots.device)
        self.keys_buffer[rows, :, self.slots] = key_states[:, :, 0]
        self.values_buffer[rows, :, self.slots] = value_states[:, :, 0]
        self.length += 1
        self.keys, self.values = self.keys_buffer[:, :, :self.length], self.values_buffer[:, :, :self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def keep_rows(self, rows: torch.Tensor, length: int) -> None:
        """Keep these rows (a copy of their buffers), whose longest has ``length`` positions filled."""
        self.keys_buffer = self.keys_buffer.index_select(0, rows)
        self.values_buffer = self.values_buffer.index_select(0, rows)
        self.length = length
        self.keys, self.values = self.keys_buffer[:, :, :length], self.values_buffer[:, :, :length]


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next tokens [B]: greedy at temperature 0, else sampled from softmax(logits / T)."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def decode_batch(model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], pad_id: int,
                 temperature: float = 0.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """The answers to ``prompts`` (token lists): each up to and including its first token of ``eos_ids``, or
    ``max_new_tokens`` tokens long."""
    device = model.get_input_embeddings().weight.device
    width = max(map(len, prompts))
    capacity = width + max_new_tokens
    layers, first = None, []
    with attention(model, "sdpa"):
        for row, prompt in enumerate(prompts):
            cache = Cache(layer_class_to_replicate=DynamicLayer)
            out = model(input_ids=torch.tensor([prompt], device=device), cache=cache, use_cache=True,
                        logits_to_keep=1)
            if layers is None:
                layers = [StaticLayer(*(c.keys.new_zeros((len(prompts), c.keys.shape[1], capacity, c.keys.shape[3]))
                                        for _ in range(2)), width) for c in cache.layers]
            for layer, c in zip(layers, cache.layers):
                layer.keys_buffer[row, :, :len(prompt)] = c.keys[0]
                layer.values_buffer[row, :, :len(prompt)] = c.values[0]
            first.append(_pick(out.logits[:, -1], temperature, generator))
    cache = Cache(layers=layers)
    answers: list[list[int]] = [[] for _ in prompts]
    rows = torch.arange(len(prompts))  # answers index of each batch row
    positions = torch.tensor([len(p) for p in prompts], device=device)  # of each row's next token = its length
    tokens = torch.cat(first)
    with attention(model, GROUPED):
        going = [True] * len(prompts)
        for step in range(max_new_tokens):
            for i, (row, token) in enumerate(zip(rows.tolist(), tokens.tolist())):
                if going[i]:
                    answers[row].append(token)
                    going[i] = token not in eos_ids and step + 1 < max_new_tokens
            if not any(going):
                break
            if (len(going) - sum(going)) * COMPACT_EVERY >= len(going):  # drop the finished rows
                keep = torch.tensor([i for i, g in enumerate(going) if g], device=device)
                rows, tokens, positions, going = rows[keep.cpu()], tokens[keep], positions[keep], [True] * len(keep)
                for layer in layers:
                    layer.keep_rows(keep, int(positions.max()))
            for layer in layers:
                layer.slots = positions
            mask = torch.arange(layers[0].length + 1, device=device)[None] <= positions[:, None]
            out = model(input_ids=tokens[:, None], attention_mask=mask.to(torch.int64), position_ids=positions[:, None],
                        cache=cache, use_cache=True)
            tokens, positions = _pick(out.logits[:, -1], temperature, generator), positions + 1
    return answers
