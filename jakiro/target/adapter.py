"""Adapter over any Hugging Face causal LM used as the verification target.

It runs transformers' own model code (Llama, Qwen2, Mistral, Mixtral, ...) with a ``DynamicCache``:

* ``prefill``: the prompt, causally; returns the last position's logits and every position's feature.
* ``verify``: a whole draft tree in one forward, with an additive float 4D mask (prefix + ancestors) and explicit
  position ids ``prefix_len + depth`` (on a CPU, grouped KV heads go to the attention kernel uncopied:
  :mod:`jakiro.target.gqa_attention`, and a float32 target's linear layers multiply the nodes on prepacked weights:
  :mod:`jakiro.target.packed_verification`).
  With ``exact_verification``, each node's attention is instead computed as one-token decoding computes it
  (:mod:`jakiro.target.exact_attention`), and the linear layers whose kernels round a row differently inside a batch
  compute one row at a time (:mod:`jakiro.target.exact_linear`), so verification reproduces plain decoding bit for bit.
* ``commit``: KV-cache compaction — keep the prefix plus the accepted root-to-node path, drop the rejected nodes,
  with no re-prefill.

"Feature" means the final-normed last hidden state, the vector the target's ``lm_head`` consumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json

import torch
from transformers import DynamicCache, PreTrainedModel

from jakiro.common.cpu_linear import few_row_linear
from jakiro.target.exact_attention import exact_tree_attention_for
from jakiro.target.exact_linear import one_row_at_a_time, row_inconsistent_linears
from jakiro.target.gqa_attention import gqa_tree_attention_for
from jakiro.target.packed_verification import PackedTreeLinears
from jakiro.common.hf_compat import cache_keyword
from jakiro.decoding.tree import DraftTree, additive_tree_mask, root_paths


_VOLATILE_CONFIG_KEYS = ("dtype", "torch_dtype", "transformers_version", "use_cache")


def target_identity(text_config, lm_head_weight: torch.Tensor) -> str:
    """Short SHA-256 naming a target: its text config (without the loading dtype, versions and private keys) and
    its LM head weights [V, H] rounded to bfloat16 (the same digest whatever dtype the target was loaded in).

    Two targets of the same hidden and vocabulary size but other layers (a cut of a model) or other weights (a
    fine-tune) get different identities, so features made by one are not used to train a draft for the other."""
    config = {k: v for k, v in text_config.to_dict().items()
              if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    weight = lm_head_weight.detach().to("cpu", torch.bfloat16).contiguous()
    digest.update(weight.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


class TargetModel:
    """Stateful wrapper holding one generation's target KV cache (batch size 1)."""

    def __init__(self, model: PreTrainedModel, exact_verification: bool = False):
        self.model = model
        self.exact_verification = exact_verification
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self._cache_keyword = cache_keyword(type(self.decoder).forward)
        self.cache: DynamicCache | None = None
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        window = getattr(config, "sliding_window", None)
        uses_window = getattr(config, "use_sliding_window", True)
        self.sliding_window = window if (window and uses_window) else None
        if exact_verification and self.sliding_window:
            raise ValueError(f"exact verification does not support sliding-window attention (sliding_window="
                             f"{self.sliding_window}); use the default batched verification")
        # probed once: the layers exact verification runs one row at a time on this device
        self.row_by_row = row_inconsistent_linears(model) if exact_verification else []
        # batched verification's CPU kernels (jakiro.common.cpu_linear, jakiro.target.gqa_attention,
        # jakiro.target.packed_verification); off only to measure them
        self.cpu_kernels = True
        self.packed = None if exact_verification else PackedTreeLinears.for_target(self.decoder, self.lm_head)
        self.packed_weights = True  # the packed copies in use (when cpu_kernels is on too); off only to measure them

    @property
    def device(self) -> torch.device:
        return self.decoder.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def __len__(self) -> int:
        return 0 if self.cache is None else self.cache.get_seq_length()

    def _features(self, input_ids, position_ids, attention_mask, **attention_kwargs) -> torch.Tensor:
        out = self.decoder(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            **{self._cache_keyword: self.cache},
            use_cache=True,
            **attention_kwargs,
        )
        return out.last_hidden_state

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[..., H] features -> [..., V] float32 logits (a tree's rows on a CPU:
        :mod:`jakiro.target.packed_verification` or :mod:`jakiro.common.cpu_linear`; exact verification keeps the head's
        own kernel, row by row where it must)."""
        features = features.to(self.lm_head.weight.device)
        if type(self.lm_head) is torch.nn.Linear and self.cpu_kernels and not self.exact_verification:
            if self.packed is not None and self.packed_weights:  # packed: the head is a plain nn.Linear
                return self.packed.forward(self.lm_head, features).float()
            return few_row_linear(features, self.lm_head.weight, self.lm_head.bias).float()
        return self.lm_head(features).float()

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start a new cache with the prompt.

        Args:
            input_ids: [1, P] prompt.
        Returns:
            (logits [V] at the last position, features [P, H]).
        """
        self.cache = DynamicCache()
        if self.packed is not None:
            self.packed.refresh()  # a weight changed since the last generation: pack it again
        ids = input_ids.to(self.device)
        positions = torch.arange(ids.shape[1], device=self.device)[None]
        features = self._features(ids, positions, None)[0]
        return self.logits(features[-1]), features

    @torch.inference_mode()
    def step(self, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain one-token decoding step. Returns (logits [V], feature [H])."""
        ids = torch.tensor([[token]], device=self.device)
        positions = torch.tensor([[len(self)]], device=self.device)
        features = self._features(ids, positions, None)  # [1, 1, H]: the shape exact verification reproduces
        return self.logits(features)[0, -1], features[0, -1]

    @torch.inference_mode()
    def verify(self, tree: DraftTree) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over all tree nodes after the cached prefix.

        Returns:
            (logits [n, V], features [n, H]) at the tree nodes.
        """
        prefix = len(self)
        positions = (tree.depths.to(self.device) + prefix)[None]
        ids = tree.tokens.to(self.device)[None]
        if self.exact_verification:
            key_positions = [prefix + path for path in root_paths(tree.mask.to(self.device))]
            with exact_tree_attention_for(self.model, key_positions) as attention_kwargs, \
                    one_row_at_a_time(self.row_by_row):
                features = self._features(ids, positions, None, **attention_kwargs)
                logits = self.logits(features)
        else:
            mask = additive_tree_mask(tree.mask.to(self.device), prefix, self.dtype)
            with contextlib.ExitStack() as kernels:
                if self.cpu_kernels:
                    kernels.enter_context(gqa_tree_attention_for(self.model))
                    if self.packed is not None and self.packed_weights and len(tree) > 1:  # 1 node: F.linear
                        kernels.enter_context(self.packed.applied())
                features = self._features(ids, positions, mask)
            logits = self.logits(features)
        return logits[0], features[0]

    def crop(self, length: int) -> None:
        """Drop every cached position from ``length`` on (a tree or token that was only measured or scored)."""
        self.commit(length, torch.empty(0, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def commit(self, prefix_len: int, keep_nodes: torch.Tensor) -> None:
        """Compact the cache to the prefix plus the given tree nodes (in path order).

        The prefix stays where it is: the kept nodes' keys and values [..., m, D] are copied into positions
        ``prefix_len ..`` of the same tensors, and the cache becomes a view of their first ``prefix_len + m``
        positions (the next forward's concatenation makes new tensors), so a step moves m positions, not the whole
        cache.

        Args:
            prefix_len: cache length before the tree was verified.
            keep_nodes: [m] indices of tree nodes to keep (root first).
        """
        end = prefix_len + len(keep_nodes)
        for layer in self.cache.layers:
            index = (keep_nodes + prefix_len).to(layer.keys.device)
            for name in ("keys", "values"):
                cached = getattr(layer, name)
                kept = cached.index_select(-2, index)  # before the write below: nodes may move to lower positions
                cached = cached[..., :end, :]
                cached[..., prefix_len:, :] = kept
                setattr(layer, name, cached)
