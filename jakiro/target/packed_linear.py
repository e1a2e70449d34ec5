"""Linear layers for batched CPU decoding that give every row the bits it gets alone: prepacked weights, row chunks.

Batched self-distillation (:mod:`jakiro.ge_data.decode`) multiplies many rows at once, yet each row must come out as
it does when its prompt is decoded alone (one row per call). Two things decide that on a CPU:

* **the kernel a row count selects.** oneDNN's bf16 kernels on an AMX Xeon give a row the same bits in a batch of up
  to 32 rows as alone, other bits from 48-64 rows on (``jakiro.target.exact_linear`` has the probe for one count).
  :func:`exact_row_limit` finds, per weight shape, the largest row count up to which every count keeps every row's
  bits, and :class:`PackedLinears` splits larger batches into chunks of that many rows.
* **the weight's layout.** ``F.linear`` reorders a bf16 weight into oneDNN's blocked layout at every call; a weight
  reordered once (``torch.ops.mkldnn._reorder_linear_weight``) and multiplied with
  ``torch.ops.mkldnn._linear_pointwise`` saves that work: 1.3-2x faster at 1-32 rows on an AMX Xeon. It is used
  (bf16 and float32) for the shapes where it returns ``F.linear``'s bits, checked on random rows when the layers are
  wrapped; other shapes, dtypes, devices and builds without oneDNN keep ``F.linear`` (chunked all the same).

**Batch-invariant mode** (``batch_invariant=True``): in float32 on an AVX2-only CPU, ``F.linear`` (MKL) gives a row
in any batch of 2 or more other bits than alone (row limit 1: one kernel call per row, every weight read once per
row), while oneDNN's prepacked float32 kernel gives each row the same bits in batches of up to 64 rows as alone —
bits that differ from ``F.linear``'s by rounding (~5e-6 relative). Where that kernel batches more rows exactly than
``F.linear`` does, this mode uses it: each row's result is then independent of the batch it is in, though not
``F.linear``'s bit for bit (SmolLM2's logits: up to ~1.4e-4 apart over 128 greedy steps, docs/pipeline-throughput.md).

Inference only: the wrapped forward runs without autograd.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional

from jakiro.target.exact_linear import forwards_replaced

PROBE_ROWS = 64  # row counts probed: 1 .. PROBE_ROWS
TRIALS = 4  # random batches per probe
PACKABLE_DTYPES = (torch.bfloat16, torch.float32)


class Kind(NamedTuple):
    """How the layers of one weight shape run: on the prepacked weight or ``F.linear``, at most ``rows`` rows per
    kernel call, and whether each row gets ``F.linear``'s bits alone (False only in batch-invariant mode)."""

    packed: bool
    rows: int
    f_linear_bits: bool


def packable(dtype: torch.dtype) -> bool:
    return (dtype in PACKABLE_DTYPES and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight [out, in] reordered once into oneDNN's layout."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [None], "")
    return forward


def _plain_forward(layer: nn.Linear):
    return functools.partial(functional.linear, weight=layer.weight, bias=layer.bias)


def _same_bits(forward, layer: nn.Linear, generator: torch.Generator) -> bool:
    """Does ``forward`` give ``F.linear``'s bits on random rows (1 and 8 rows)?"""
    for n in (1, 8):
        x = torch.randn(n, layer.in_features, generator=generator).to(layer.weight.dtype)
        if not torch.equal(forward(x), functional.linear(x, layer.weight, layer.bias)):
            return False
    return True


def exact_row_limit(forward, in_features: int, dtype: torch.dtype, probe_rows: int = PROBE_ROWS,
                    generator: torch.Generator | None = None, trials: int = TRIALS) -> int:
    """The largest power of two n <= ``probe_rows`` such that for every count m <= n, each row of an [m, in] batch
    got the bits it gets alone ([1, in]) from ``forward`` in ``trials`` random batches; 1 when 2 rows already
    differ. A kernel that rounds a row differently does so for a few rows only (one of 48 in a probe of SmolLM2's
    576 -> 192 layer on an AMX Xeon), hence several trials, and kernels switch at block sizes, hence powers of two."""
    generator = generator or torch.Generator().manual_seed(0)
    limit = probe_rows
    for _ in range(trials):
        x = torch.randn(probe_rows, in_features, generator=generator).to(dtype)
        alone = torch.cat([forward(x[i:i + 1]) for i in range(probe_rows)])
        limit = next((m - 1 for m in range(2, limit + 1) if not torch.equal(forward(x[:m]), alone[:m])), limit)
    return 1 << (limit.bit_length() - 1)


def _chunked(forward, rows: int, x: torch.Tensor) -> torch.Tensor:
    """``forward`` over x [..., in] in chunks of at most ``rows`` rows (all leading dimensions flattened)."""
    flat = x.reshape(-1, x.shape[-1])
    if len(flat) <= rows:
        out = forward(flat)
    else:
        out = torch.cat([forward(flat[i:i + rows]) for i in range(0, len(flat), rows)])
    return out.reshape(*x.shape[:-1], out.shape[-1])


class PackedLinears:
    """Every CPU ``nn.Linear`` of ``model`` on its prepacked weight where that keeps ``F.linear``'s bits (or, with
    ``batch_invariant``, where that batches more rows exactly), in chunks of at most :func:`exact_row_limit` rows
    (probed once per weight shape, when this is made). ``kinds``: {(in, out, bias, dtype): :class:`Kind`}. Nothing
    changes outside ``with packs.applied():``."""

    def __init__(self, model: nn.Module, probe_rows: int = PROBE_ROWS, batch_invariant: bool = False):
        generator = torch.Generator().manual_seed(0)
        self.kinds: dict[tuple, Kind] = {}
        self.forwards: list[tuple[nn.Linear, object]] = []
        with torch.inference_mode():
            for layer in model.modules():
                if not isinstance(layer, nn.Linear) or layer.weight.device.type != "cpu":
                    continue
                key = (layer.in_features, layer.out_features, layer.bias is not None, layer.weight.dtype)
                if key not in self.kinds:
                    self.kinds[key] = _probe(layer, probe_rows, generator, batch_invariant)
                packed, rows, _ = self.kinds[key]
                forward = packed_forward(pack_weight(layer.weight), layer.bias) if packed else _plain_forward(layer)
                self.forwards.append((layer, functools.partial(_chunked, forward, rows)))

    @contextlib.contextmanager
    def applied(self):
        """Within the block the layers run the packed, chunked forwards (inference only); restored on exit."""
        with forwards_replaced(self.forwards), torch.inference_mode():
            yield self


def _probe(layer: nn.Linear, probe_rows: int, generator: torch.Generator, batch_invariant: bool) -> Kind:
    """How the layers of ``layer``'s shape run: the prepacked weight where it gives ``F.linear``'s bits; else, with
    ``batch_invariant``, the prepacked weight where it keeps more rows exact than ``F.linear`` does; else
    ``F.linear``; each with its row limit."""
    def row_limit(forward) -> int:
        return exact_row_limit(forward, layer.in_features, layer.weight.dtype, probe_rows, generator)

    plain = _plain_forward(layer)
    if not packable(layer.weight.dtype):
        return Kind(False, row_limit(plain), True)
    try:
        packed = packed_forward(pack_weight(layer.weight), layer.bias)
    except RuntimeError:  # e.g. bf16 on a CPU without AVX-512 or AVX-NE-CONVERT: oneDNN has no kernel for it
        return Kind(False, row_limit(plain), True)
    if _same_bits(packed, layer, generator):
        return Kind(True, row_limit(packed), True)
    plain_rows = row_limit(plain)
    if batch_invariant:
        packed_rows = row_limit(packed)
        if packed_rows > plain_rows:
            return Kind(True, packed_rows, False)
    return Kind(False, plain_rows, True)
