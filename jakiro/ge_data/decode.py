"""Batched answer generation for self-distillation, built for CPUs: the fast path of ``jakiro.ge_data.regenerate``.

``decode_batch(model, prompts, ...)`` answers B prompts together, like ``model.generate`` with left padding, but:

* each prompt is prefilled alone (batch 1, no padding, ``sdpa`` causal attention), as decoding it alone does;
* the KV cache is preallocated (:class:`StaticLayer`: [B, kv_heads, longest prompt + max_new_tokens, head_dim] per
  layer) instead of growing by ``torch.cat``, which copies the whole cache every step; each row starts at position 0
  (padding on the right), so its keys sit where they would if it were decoded alone;
* a decoding step attends one row at a time (:func:`row_attention`: transformers' ``sdpa`` on the row's own keys,
  read in place, no mask), with exactly the shapes of decoding the row alone. Batched attention over padded keys
  rounds differently, and in bf16 that flipped near-tied greedy choices in 6 of 12 SmolLM2 answers of 32 tokens;
  one row at a time none differed from ``generate`` on each prompt alone, at a cost within the noise of the
  measurement (transformers' batched ``sdpa``/``eager`` with a padding mask copy the cache to every query head
  first, ``repeat_kv``). The other operations of a decoder layer treat rows independently, but a linear layer's kernel
  may round a row differently in a batch than alone (``jakiro.target.exact_linear.row_inconsistent_linears`` finds them):
  on an AMX Xeon in bf16 none of SmolLM2's for up to 32 rows, all of them from 48 rows on, where 18 of 48 answers
  of 32 tokens differed from the prompts answered alone (31 of 48 with ``generate`` batched);
* rows that finished (an end token or ``max_new_tokens``) leave the batch, a quarter of it at a time, so the step
  cost follows the rows still going instead of the longest answer.

Greedy: the argmax of the float32 logits (first index on ties), as ``generate``. Sampled: softmax(logits / T) drawn
with ``torch.multinomial`` from the caller's generator: the target's distribution, though not ``generate``'s random
stream.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ROWS = "jakiro_rows"
# finished rows leave the batch once they are 1 / COMPACT_EVERY of it (each time copies the cache of the rows left;
# until then they are computed and ignored: a step costs nearly the same for a few rows more)
COMPACT_EVERY = 4


def row_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                  row_lengths: list[int] | None = None, **kwargs):
    """Each row's attention computed as decoding it alone computes it: transformers' ``sdpa`` on the row's query
    [1, H, 1, D] and its first ``row_lengths[b]`` keys/values, no mask. query [B, H, 1, D], key/value [B, K, L, D]
    -> ([B, 1, H, D], None). Costs B kernel calls per layer instead of one."""
    if row_lengths is None:
        raise RuntimeError("row_attention needs the rows' lengths (decode_batch passes them)")
    outputs = [sdpa_attention_forward(module, query[b:b + 1], key[b:b + 1, :, :n], value[b:b + 1, :, :n], None,
                                      **kwargs)[0] for b, n in enumerate(row_lengths)]
    return torch.cat(outputs), None


AttentionInterface.register(ROWS, row_attention)  # no mask function: transformers builds no mask for it


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
    to attention: the longest row's length (``max(slots)`` before an update; :func:`row_attention` reads each row's
    own length only)."""

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
    with attention(model, ROWS):
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
            out = model(input_ids=tokens[:, None], position_ids=positions[:, None], cache=cache, use_cache=True,
                        row_lengths=(positions + 1).tolist())
            tokens, positions = _pick(out.logits[:, -1], temperature, generator), positions + 1
    return answers
