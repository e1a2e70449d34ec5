"""Exact tree verification: every tree node's attention computed as plain decoding computes it, bit for bit.

A batched tree forward gives the same logits as one-token decoding only up to rounding: its attention kernels see
``prefix + n`` keys with a mask instead of ``prefix + depth + 1`` keys without one, so they block and accumulate
differently (in bfloat16 the features differ by ~0.1 after 30 layers, enough to flip near-tied greedy choices). The
other operations of a decoder layer (linear layers, norms, rotary embeddings, activations) treat the rows of a batch
independently; they give a row the same bits whatever the batch shape where their kernels do, and the linear
layers whose kernels do not are run one row at a time during exact verification (:mod:`jakiro.target.exact_linear`).

So, inside :func:`exact_tree_attention`, the model's own attention function (``sdpa``, ``eager``, ...) is called
once per tree node with that node's query alone and the keys / values of exactly the positions it would see when
decoded one token at a time: the cached prefix followed by its root-to-node path, in order, without a mask. The
node's output then equals that of a one-token decoding step at its position, so the verified logits, the kept KV
entries and hence the whole speculative generation equal plain decoding bit for bit (``tests/test_smollm2.py``
checks it on the embedded target in bf16, ``tests/test_exact_linear.py`` on tiny targets in fp32).

The price is one attention call per node and layer instead of one per layer, plus one matrix-vector product per
node for the row-inconsistent linear layers (the other work is still batched);
``python -m jakiro.evaluation.tree_costs --set generation.exact_verification=true`` measures it.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "jakiro_exact_tree"


def own_attention(module, implementation: str):
    """The attention function ``module`` runs under ``implementation`` (its modeling file's eager one for
    "eager", as transformers does)."""
    if implementation in ALL_ATTENTION_FUNCTIONS and implementation != NAME:
        return ALL_ATTENTION_FUNCTIONS[implementation]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if implementation != "eager" or eager is None:
        raise ValueError(f"exact verification cannot run attention implementation {implementation!r} of "
                         f"{type(module).__name__}")
    return eager


def exact_tree_attention(module, query, key, value, attention_mask, tree_key_positions=None,
                         tree_attention_implementation=None, **kwargs):
    """Attention for a tree of n nodes after a cached prefix, one node at a time.

    Args:
        query: [1, heads, n, head_dim] queries of the tree nodes.
        key, value: [1, kv_heads, prefix + n, head_dim] cached prefix followed by the tree nodes.
        attention_mask: ignored (the paths say what each node sees).
        tree_key_positions: n tensors; tensor i holds the key positions of node i's root-to-node path (root and
            node i included), i.e. prefix + the path's node indices.
        tree_attention_implementation: the model's own attention implementation ("sdpa", "eager", ...).
    Returns:
        ([1, n, heads, head_dim] outputs, None), the layout every transformers attention function returns.
    """
    if tree_key_positions is None or tree_attention_implementation is None:
        raise RuntimeError(f"{type(module).__name__} did not pass the tree to its attention function: exact "
                           "verification needs a model that forwards attention keyword arguments")
    inner_attention = own_attention(module, tree_attention_implementation)
    n = query.shape[2]
    prefix = key.shape[2] - n
    longest = max(len(positions) for positions in tree_key_positions)
    # scratch keys / values: the prefix once, then each node's path written behind it
    keys = key.new_empty(*key.shape[:2], prefix + longest, key.shape[3])
    values = value.new_empty(*value.shape[:2], prefix + longest, value.shape[3])
    keys[:, :, :prefix] = key[:, :, :prefix]
    values[:, :, :prefix] = value[:, :, :prefix]
    outputs = []
    for node, positions in enumerate(tree_key_positions):
        seen = prefix + len(positions)
        keys[:, :, prefix:seen] = key[:, :, positions]
        values[:, :, prefix:seen] = value[:, :, positions]
        out, _ = inner_attention(module, query[:, :, node:node + 1], keys[:, :, :seen], values[:, :, :seen], None,
                                 **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def _register() -> None:
    # no mask function is registered: transformers then builds no mask (the paths replace it)
    if NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, exact_tree_attention)


@contextlib.contextmanager
def exact_tree_attention_for(model: PreTrainedModel, tree_key_positions: list[torch.Tensor]):
    """Within the block, ``model``'s attention layers run :func:`exact_tree_attention` over ``tree_key_positions``
    (computed once per verification, used by every layer).

    Yields the keyword arguments to pass to the decoder's forward (they reach every attention call).
    """
    _register()
    config = model.config
    own = config._attn_implementation or "eager"
    config._attn_implementation = NAME
    try:
        yield {"tree_key_positions": tree_key_positions, "tree_attention_implementation": own}
    finally:
        config._attn_implementation = own
