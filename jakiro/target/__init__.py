"""The target side: a Hugging Face causal LM behind one adapter (prefill, step, tree verification, KV compaction).

* :mod:`jakiro.target.adapter` — :class:`TargetModel`, the only code that calls the Hugging Face model;
* :mod:`jakiro.target.exact_attention`, :mod:`jakiro.target.exact_linear` — exact verification (bit-equal to plain
  decoding); :mod:`jakiro.target.gqa_attention` — the CPU tree-attention kernel;
  :mod:`jakiro.target.packed_verification` — a float32 target's linear layers on prepacked weights for tree
  rows (CPU);
* :mod:`jakiro.target.packed_linear` — prepacked, row-chunked linear layers for batched self-distillation;
* :mod:`jakiro.target.costs` — verification and decoding-step timings, and the tree size they pick.
"""

from jakiro.target.adapter import TargetModel, target_identity
from jakiro.target.costs import TREE_SIZE_CANDIDATES, choose_tree_size, measure_verification_costs

__all__ = ["TREE_SIZE_CANDIDATES", "TargetModel", "choose_tree_size", "measure_verification_costs",
           "target_identity"]
