"""Exact verification, linear layers: give every tree node's row the bits one-token decoding gives it.

A linear layer's kernel may depend on how many rows it multiplies: oneDNN's bf16 kernels on some CPUs, MKL's fp32
ones (a single row takes a matrix-vector kernel), GPU libraries. Where it does, a row computed inside a batch of
tree nodes is rounded differently from the same row computed alone, as plain decoding computes it, and near-tied
greedy choices can flip after a few hundred tokens. Which layers are affected depends on the device, the dtype and
the layer's shape: on an Intel Xeon with AMX no bf16 layer of SmolLM2, on an AMD EPYC (AVX-512 BF16) its MLP down
projection (1536 -> 576) only.

:func:`row_inconsistent_linears` finds those layers by probing one layer of each shape with random rows, alone and
in batches; :func:`one_row_at_a_time` makes them compute a batch of rows as single rows, the shape ``[..., 1, in]``
one-token decoding gives them. Exact verification (:mod:`jakiro.target.exact_attention` for attention) uses both, paying
one matrix-vector product per node for the affected layers only.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

PROBE_BATCH_SIZES = (2, 8, 32)


def _row_consistent(layer: nn.Linear, batch_sizes, generator: torch.Generator) -> bool:
    weight = layer.weight
    for n in batch_sizes:
        rows = torch.randn(1, n, layer.in_features, generator=generator).to(weight.device, weight.dtype)
        batched = layer(rows)
        if not all(torch.equal(layer(rows[:, i:i + 1]), batched[:, i:i + 1]) for i in range(n)):
            return False
    return True


@torch.inference_mode()
def row_inconsistent_linears(model: nn.Module, batch_sizes=PROBE_BATCH_SIZES, seed: int = 0) -> list[nn.Linear]:
    """The linear layers of ``model`` that give some row of a ``[1, n, in]`` batch other bits than the same row
    alone (``[1, 1, in]``), on their device and dtype. Kernels are chosen by shape, so one layer of each (in, out,
    bias, dtype, device) is probed, with random rows, and its verdict holds for the others."""
    generator = torch.Generator().manual_seed(seed)
    verdicts: dict[tuple, bool] = {}
    found = []
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        kind = (module.in_features, module.out_features, module.bias is not None, weight.dtype, weight.device)
        if kind not in verdicts:
            verdicts[kind] = _row_consistent(module, batch_sizes, generator)
        if not verdicts[kind]:
            found.append(module)
    return found


def _rows_alone(forward, x: torch.Tensor) -> torch.Tensor:
    """``forward`` over x [..., n, in] one row at a time ([..., 1, in] each), concatenated back to [..., n, out]."""
    if x.dim() < 2 or x.shape[-2] == 1:
        return forward(x)
    return torch.cat([forward(x[..., i:i + 1, :]) for i in range(x.shape[-2])], dim=-2)


@contextlib.contextmanager
def forwards_replaced(replacements):
    """Within the block, each ``(layer, forward)`` of ``replacements`` runs ``forward`` as its forward; the layers'
    own forwards (an instance attribute, e.g. accelerate's hook, or the class's) are restored on exit."""
    saved = []
    for layer, forward in replacements:
        saved.append((layer, layer.__dict__.get("forward")))
        layer.forward = forward
    try:
        yield
    finally:
        for layer, own in saved:
            if own is None:
                del layer.forward
            else:
                layer.forward = own


def one_row_at_a_time(layers: list[nn.Linear]):
    """Within the block (a context manager), each of ``layers`` computes its input's rows (dimension -2) one at a
    time. Wraps whatever forward the layer has (hooks that replace ``forward``, e.g. accelerate's, keep working)."""
    return forwards_replaced([(layer, functools.partial(_rows_alone, layer.forward)) for layer in layers])
