"""Batched answer generation for self-distillation on CPUs: the fast path of ``jakiro.ge_data.regenerate``.

``decode_batch(model, prompts, ...)`` answers all ``prompts`` with up to ``max_rows`` of them decoding together,
each answer the one the target gives the prompt alone (transformers, batch 1, no padding) — token for token where
the CPU's kernels allow it (below) — at a fraction of the cost of ``generate`` on a padded batch:

* **Cohorts of equal length.** Rows whose KV caches hold the same number of positions form a cohort and share one
  attention call per layer (``sdpa`` without a mask over the cohort's [G, kv_heads, n, head_dim] cache): the kernel
  computes each (row, head) as it does for a batch of one, so a row gets the bits of decoding it alone. Rows of
  unequal lengths never share a call: padding the shorter ones changes the kernel's reduction order (in bf16 that
  flipped near-tied greedy choices in 6 of 12 SmolLM2 answers).
* **Admission by length.** Prompts wait sorted by length; every step a cohort admits the waiting prompts as long as
  its own (each prompt prefilled alone, batch 1, its cache copied into the cohort's preallocated buffers). A cohort
  sweeps upward one position per step, so it picks up the prompts ahead of it as it passes them; a new cohort opens
  only for prompts no cohort can reach any more (shorter than all of them, left behind while the batch was full) or
  when none is running, at most ``max_cohorts`` at a time.
* **Finished rows leave** (an end token or ``max_new_tokens``): a cohort drops them once they are a quarter of its
  rows (each compaction copies the cache of the rows left), and their places go to waiting prompts.
* **Linear layers** of a decoding step (:class:`jakiro.target.packed_linear.PackedLinears`): prepacked oneDNN
  weights where they give ``F.linear``'s bits, and at most as many rows per kernel call as keep each row's bits equal
  to the row alone (32 on an AMX Xeon in bf16; probed when decoding starts). ``regenerate.kernels:
  batch_invariant`` (:class:`jakiro.ge_data.regenerate.Regenerator`) also allows a kernel that batches rows exactly
  but rounds unlike ``F.linear`` (float32 on AVX2-only CPUs, where ``F.linear`` batches no rows exactly): each answer
  is then independent of the batch, and the prompt's answer alone except at a near-tie of the greedy choice.

Greedy: the argmax of the logits (first index on ties), as ``generate``. Sampled: softmax(logits / T) drawn with
``torch.multinomial`` from the caller's generator: the target's distribution, though not ``generate``'s random stream.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from jakiro.target.packed_linear import PackedLinears

COHORTS = "jakiro_cohorts"
MAX_ROWS = 64  # rows decoding together
MAX_COHORTS = 4  # cohorts at a time (each costs one attention call per layer and step)
COMPACT_EVERY = 4  # a cohort drops its finished rows once they are 1 / COMPACT_EVERY of it


@dataclass
class Cohort:
    """Rows whose caches all hold ``length`` positions. ``keys[l]`` / ``values[l]``: layer l's buffers
    [row capacity, kv_heads, position capacity, head_dim]; rows 0 .. len(members) - 1 are in use, row i answering
    prompt ``members[i]`` (None once it finished) with next input token ``tokens[i]``."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    members: list[int | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    start: int = 0  # its first row in the step's batch

    @property
    def rows(self) -> int:
        return len(self.members)

    def live(self) -> int:
        return sum(m is not None for m in self.members)

    def add(self, member: int, token: int, keys: list[torch.Tensor], values: list[torch.Tensor],
            headroom: int) -> None:
        """Append a row: ``keys[l]`` / ``values[l]`` [kv_heads, length, head_dim] its prefilled cache."""
        capacity, positions = self.keys[0].shape[0], self.keys[0].shape[2]
        if self.rows == capacity or self.length + headroom > positions:
            self._grow(max(4, 2 * capacity) if self.rows == capacity else capacity,
                       max(positions, self.length + 2 * headroom))
        for buffer, new in zip(self.keys + self.values, keys + values):
            buffer[self.rows, :, :self.length] = new
        self.members.append(member)
        self.tokens.append(token)

    def _grow(self, rows: int, positions: int) -> None:
        def grown(buffer):
            out = buffer.new_zeros((rows, buffer.shape[1], positions, buffer.shape[3]))
            out[:self.rows, :, :self.length] = buffer[:self.rows, :, :self.length]
            return out
        self.keys, self.values = list(map(grown, self.keys)), list(map(grown, self.values))

    def compact(self) -> None:
        """Drop the finished rows (copies the buffers of the rows left)."""
        keep = [i for i, m in enumerate(self.members) if m is not None]
        index = torch.tensor(keep, dtype=torch.int64)
        self.keys = [b.index_select(0, index) for b in self.keys]
        self.values = [b.index_select(0, index) for b in self.values]
        self.members = [self.members[i] for i in keep]
        self.tokens = [self.tokens[i] for i in keep]


def cohort_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                     cohorts: list[Cohort] | None = None, **kwargs):
    """One decoding step's attention, one ``sdpa`` call per cohort on its own cache. query [B, H, 1, D]; key / value
    [B, kv_heads, 1, D] this step's, written at each row's position first -> ([B, 1, H, D], None)."""
    if cohorts is None:
        raise RuntimeError("cohort_attention needs the cohorts (decode_batch passes them)")
    layer, outputs = module.layer_idx, []
    for c in cohorts:
        rows = slice(c.start, c.start + c.rows)
        keys, values = c.keys[layer], c.values[layer]
        keys[:c.rows, :, c.length] = key[rows, :, 0]
        values[:c.rows, :, c.length] = value[rows, :, 0]
        n = c.length + 1
        outputs.append(sdpa_attention_forward(module, query[rows], keys[:c.rows, :, :n], values[:c.rows, :, :n],
                                              None, **kwargs)[0])
    return torch.cat(outputs), None


AttentionInterface.register(COHORTS, cohort_attention)  # no mask function: transformers builds no mask for it


class _PassThrough(DynamicLayer):
    """A cache layer that keeps nothing: :func:`cohort_attention` stores the keys in the cohorts."""

    def __init__(self):
        super().__init__()
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0


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


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next tokens [B]: greedy at temperature 0, else sampled from softmax(logits / T)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class _Waiting:
    """Prompt indices waiting, by prompt length (ascending; equal lengths in the caller's order)."""

    def __init__(self, prompts: list[list[int]]):
        self.by_length: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            self.by_length[len(p)].append(i)
        self.lengths = sorted(self.by_length)

    def __bool__(self) -> bool:
        return bool(self.lengths)

    def take(self, length: int, count: int) -> list[int]:
        """Up to ``count`` prompts of exactly ``length`` tokens."""
        queue = self.by_length.get(length)
        if not queue or count <= 0:
            return []
        taken, self.by_length[length] = queue[:count], queue[count:]
        if not self.by_length[length]:
            del self.by_length[length]
            self.lengths.pop(bisect.bisect_left(self.lengths, length))
        return taken

    def unclaimed(self, cohorts: list[int], reach: int) -> int | None:
        """The shortest waiting length that no cohort at one of ``cohorts`` lengths reaches within ``reach`` steps
        (None if there is none)."""
        return next((n for n in self.lengths if not any(0 <= n - c <= reach for c in cohorts)), None)


@torch.no_grad()
def decode_batch(model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], pad_id: int | None = None,
                 temperature: float = 0.0, generator: torch.Generator | None = None, max_rows: int = MAX_ROWS,
                 max_cohorts: int = MAX_COHORTS, reach: int | None = None,
                 linears: PackedLinears | None = None) -> list[list[int]]:
    """The answers to ``prompts`` (token lists): each up to and including its first token of ``eos_ids``, or
    ``max_new_tokens`` tokens long. ``pad_id`` is not needed (nothing is padded); kept for the decoders' common
    signature. A new cohort opens (while fewer than ``max_cohorts`` run and rows are free) at the shortest waiting
    prompt that no cohort will reach within ``reach`` steps (default ``max_new_tokens // 2``). ``linears``: the
    model's :class:`PackedLinears` (made here if None; probing them takes seconds, so callers that decode many
    times make them once)."""
    reach = max_new_tokens // 2 if reach is None else reach
    device = model.get_input_embeddings().weight.device
    answers: list[list[int]] = [[] for _ in prompts]
    waiting, cohorts = _Waiting(prompts), []

    def finished(i: int, token: int) -> bool:
        answers[i].append(token)
        return token in eos_ids or len(answers[i]) >= max_new_tokens

    def admit(cohort: Cohort | None, length: int, room: int) -> Cohort | None:
        for i in waiting.take(length, room):
            cache = Cache(layer_class_to_replicate=DynamicLayer)
            with attention(model, "sdpa"):
                out = model(input_ids=torch.tensor([prompts[i]], device=device), cache=cache, use_cache=True,
                            logits_to_keep=1)
            token = int(_pick(out.logits[:, -1], temperature, generator))
            if finished(i, token):
                continue
            keys = [layer.keys[0] for layer in cache.layers]
            values = [layer.values[0] for layer in cache.layers]
            if cohort is None:
                empty = [k.new_zeros((4, k.shape[0], length + max_new_tokens, k.shape[2])) for k in keys]
                cohort = Cohort(length, empty, [torch.zeros_like(b) for b in empty])
                cohorts.append(cohort)
            cohort.add(i, token, keys, values, max_new_tokens)
        return cohort

    linears = linears or PackedLinears(model)
    step_cache = Cache(layers=[_PassThrough() for _ in range(model.config.get_text_config().num_hidden_layers)])
    while waiting or cohorts:
        room = max_rows - sum(c.live() for c in cohorts)
        for c in cohorts:
            before = c.rows
            admit(c, c.length, room)
            room -= c.rows - before
        cohorts = [c for c in cohorts if c.live()]
        while room > 0 and len(cohorts) < max_cohorts:
            length = waiting.unclaimed([c.length for c in cohorts], reach)
            if length is None:
                break
            cohort = admit(None, length, room)
            if cohort is not None:
                room -= cohort.rows
        if not cohorts:
            continue
        start = 0
        for c in cohorts:
            c.start, start = start, start + c.rows
        tokens = torch.tensor([t for c in cohorts for t in c.tokens], device=device)
        positions = torch.tensor([c.length for c in cohorts for _ in range(c.rows)], device=device)
        with attention(model, COHORTS), linears.applied():
            out = model(input_ids=tokens[:, None], position_ids=positions[:, None], cache=step_cache,
                        use_cache=True, cohorts=cohorts)
        picked = _pick(out.logits[:, -1], temperature, generator).tolist()
        for c in cohorts:
            c.length += 1
            for r in range(c.rows):
                member, token = c.members[r], picked[c.start + r]
                if member is not None:
                    c.tokens[r] = token
                    if finished(member, token):
                        c.members[r] = None
            done = c.rows - c.live()
            if done and done * COMPACT_EVERY >= c.rows:
                c.compact()
    return answers
