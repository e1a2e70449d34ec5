"""Batched tree verification's linear layers on prepacked oneDNN weights: float32 targets on a CPU.

A tree verification multiplies every linear layer of the target by a few rows (the tree's nodes). For a few fp32
rows, the CPU GEMM behind ``F.linear`` (MKL in torch 2.13's CPU wheel) is slow per row: on an AVX2 EPYC, SmolLM2's
MLP projections take about twice as long for 2 rows as for 1. oneDNN's kernel on a weight reordered into its blocked
layout once (:func:`jakiro.target.packed_linear.pack_weight`) multiplies 2-8 rows for little more than one; a
verification of 2-48 nodes costs 0.70-0.86x as much (per-shape timings and whole verifications: ``docs/cpu.md``,
"CPU verification kernels"). One row is no faster on the packed weights.

:class:`PackedTreeLinears` holds those reordered copies of a target's linear layers (its decoder's and its LM head)
and, within ``applied()``, runs the decoder's layers on them for 2 .. :data:`MAX_ROWS` rows; :meth:`forward` does
the same for one layer (the LM head). One row (plain decoding), more rows (a prefill), autograd, autocast and layers
not packed keep ``F.linear``. :meth:`PackedTreeLinears.refresh`, called by each generation's prefill, keeps the
copies current: it packs again a layer whose weight or bias was replaced or changed in place (torch's version
counter) or whose weight differs in a fixed sample of its elements (edits made through ``.data``, e.g. a LoRA merged
into the weights, leave the version counter alone), and drops the copies of layers moved off the CPU or cast.

The results agree with ``F.linear``'s to fp32 rounding (~5e-6 relative per product), like MKL's own batched
kernels, which round a row differently inside a batch than alone too: batched fp32 verification is not bit-identical
to plain decoding either way (exact verification, which keeps every layer's own kernel, is). The copies cost the
memory of the weights once more, so targets whose linear weights exceed :data:`MAX_PACKED_BYTES` are not packed.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional

from jakiro.target.exact_linear import forwards_replaced
from jakiro.target.packed_linear import pack_weight, packable, packed_forward

MAX_ROWS = 64  # the most rows a decoder layer multiplies on its packed weight (a whole verification: faster to 48)
MAX_HEAD_ROWS = 128  # the LM head: faster up to the largest batch measured
MAX_PACKED_BYTES = 2 << 30  # targets whose linear weights are larger keep F.linear (the copy doubles their memory)
SAMPLED = 256  # elements of each weight compared by refresh()


class _Packed(NamedTuple):
    """A layer's packed forward and what its parameters were when it was packed."""

    forward: object
    source: tuple
    sample: torch.Tensor  # [SAMPLED] elements of the weight at fixed positions


def _source(layer: nn.Linear) -> tuple:
    """What identifies the parameters a packed copy was made from: their storage and in-place version."""
    return tuple((p.data_ptr(), p._version) if p is not None else None for p in (layer.weight, layer.bias))


def _sample(weight: torch.Tensor) -> torch.Tensor:
    """[SAMPLED] elements of ``weight`` at positions fixed by its size, spread over all of it."""
    flat = weight.detach().reshape(-1)
    count = min(SAMPLED, flat.numel())
    positions = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
    return flat[positions].clone()


def _fp32_cpu(layer: nn.Linear) -> bool:
    return layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32


def _eligible(layer: nn.Module) -> bool:
    """A plain fp32 ``nn.Linear`` on a CPU, its forward not replaced by a hook (e.g. accelerate's offloading)."""
    return type(layer) is nn.Linear and "forward" not in layer.__dict__ and _fp32_cpu(layer)


def _rows_on(packed_forward, layer: nn.Linear, x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """``layer(x)``: [..., in] -> [..., out], through ``packed_forward`` for 2 .. ``max_rows`` fp32 rows, else
    ``F.linear``."""
    rows = x.shape[:-1].numel()
    if not 1 < rows <= max_rows or x.dtype != torch.float32:
        return functional.linear(x, layer.weight, layer.bias)
    out = packed_forward(x.reshape(rows, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


class PackedTreeLinears:
    """Prepacked copies of a float32 CPU target's linear layers, for tree verification (see the module docstring).

    Build it with :meth:`for_target`, which returns None where packing does not apply."""

    def __init__(self, layers: list[nn.Linear], head: nn.Linear | None):
        self.layers = layers  # the decoder's
        self.head = head
        self._all = [*layers, *([head] if head is not None else [])]
        self._packed: dict[nn.Linear, _Packed] = {}
        self.refresh()

    @classmethod
    def for_target(cls, decoder: nn.Module, lm_head: nn.Module) -> PackedTreeLinears | None:
        """The packed linears of a target (its decoder and LM head), or None where they do not apply: a target that
        is not float32 on a CPU, a torch without oneDNN's prepacked linear, a CPU whose oneDNN refuses to pack, or
        linear weights larger than :data:`MAX_PACKED_BYTES` in all."""
        layers = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
        head = lm_head if isinstance(lm_head, nn.Linear) else None
        candidates = [*layers, *([head] if head is not None else [])]
        if not candidates or not all(_eligible(m) for m in candidates) or not packable(torch.float32):
            return None
        if sum(m.weight.numel() * m.weight.element_size() for m in candidates) > MAX_PACKED_BYTES:
            return None
        try:
            return cls(layers, head)
        except RuntimeError:  # oneDNN without a kernel for this CPU
            return None

    def _pack(self, layer: nn.Linear) -> _Packed:
        with torch.no_grad():
            packed = _Packed(packed_forward(pack_weight(layer.weight.detach()), layer.bias), _source(layer),
                             _sample(layer.weight))
        self._packed[layer] = packed
        return packed

    def refresh(self) -> None:
        """Pack every float32 CPU layer not packed yet or changed since (by the version counter or the sampled
        elements); drop the copies of layers no longer float32 on a CPU (a model moved to a GPU, or cast)."""
        with torch.no_grad():
            for layer in self._all:
                packed = self._packed.get(layer)
                if not _fp32_cpu(layer):
                    self._packed.pop(layer, None)
                elif (packed is None or packed.source != _source(layer)
                      or not torch.equal(packed.sample, _sample(layer.weight))):
                    self._pack(layer)

    def forward(self, layer: nn.Linear, x: torch.Tensor, max_rows: int = MAX_HEAD_ROWS) -> torch.Tensor:
        """``layer(x)``: [..., in] -> [..., out], on the packed weight for 2 .. ``max_rows`` fp32 rows outside
        autograd and autocast (as packed at the last :meth:`refresh`)."""
        packed = self._packed.get(layer)
        if packed is None or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return functional.linear(x, layer.weight, layer.bias)
        return _rows_on(packed.forward, layer, x, max_rows)

    @contextlib.contextmanager
    def applied(self):
        """Within the block the decoder's packed linear layers multiply 2 .. MAX_ROWS rows on their packed weights
        (nothing is replaced under autograd or autocast: the checks run once per block, not once per layer)."""
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            yield self
            return
        replacements = [(layer, functools.partial(_rows_on, self._packed[layer].forward, layer, max_rows=MAX_ROWS))
                        for layer in self.layers if layer in self._packed]
        with forwards_replaced(replacements):
            yield self
