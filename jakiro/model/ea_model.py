"""``EaModel``: a Hugging Face causal LM plus a Jakiro draft head, with speculative and plain generation.

The import paths reference users write keep working::

    from jakiro.model.ea_model import EaModel
    model = EaModel.from_pretrained(base_model_path=..., ea_model_path=..., total_token=60, depth=5, top_k=10,
                                    dtype=torch.bfloat16)
    ids = model.eagenerate(input_ids, temperature=0.0, max_new_tokens=256)

One speculative step (:func:`jakiro.decoding.loop.speculative_tokens`): the drafter proposes a tree below the last
committed token (with ``lookup_tokens``, a branch copied by prompt lookup joins it: :mod:`jakiro.decoding.lookup`),
the target verifies it in one forward, the verifier keeps an acceptable path plus one bonus token, and the target
cache is compacted to that path. Output is the target's own greedy output at temperature 0, and the target's exact
sampling distribution (temperature / top-k / top-p) otherwise; see :mod:`jakiro.decoding.verify`.

The drafter is any :class:`jakiro.decoding.drafting.Drafter`: by default the EAGLE-2 dynamic tree with CEPD built
from the draft head (:class:`jakiro.decoding.drafter.TreeDrafter`); ``EaModel(..., drafter=...)`` or
``model.drafter = ...`` plugs in another one (docs/drafters.md).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from jakiro.common.config import JakiroConfig
from jakiro.common.io import check_model_files
from jakiro.decoding.drafter import TreeDrafter
from jakiro.decoding.drafting import Drafter, check_drafter
from jakiro.decoding.lookup import PromptLookup
from jakiro.decoding.loop import GenerationStats, plain_tokens, speculative_tokens
from jakiro.model.draft import DraftHead
from jakiro.target import TargetModel, choose_tree_size

# tokens that end an assistant turn in common chat formats, added to the EOS ids when the tokenizer knows them
CHAT_STOP_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>")


class EaModel(nn.Module):
    """Target model (``base_model``) + draft head (``ea_layer``) + tokenizer + drafter.

    ``total_token``, ``depth``, ``top_k`` and ``sibling_mode`` shape the default drafter, the dynamic tree over
    ``draft``. ``drafter``: any :class:`jakiro.decoding.drafting.Drafter` to use instead (the tree arguments are then
    unused and ``draft`` may be None). ``lookup_tokens`` > 0 wraps whichever drafter in
    :class:`jakiro.decoding.lookup.PromptLookup` at every generate call (``lookup_tokens`` and ``lookup_ngram`` may
    be changed between calls).
    """

    def __init__(
        self,
        base_model: PreTrainedModel,
        draft: DraftHead,
        tokenizer=None,
        total_token: int = 60,
        depth: int = 5,
        top_k: int = 10,
        sibling_mode: str = "mixture",
        stop_token_ids: list[int] | None = None,
        exact_verification: bool = False,
        lookup_tokens: int = 0,
        lookup_ngram: int = 3,
        drafter: Drafter | None = None,
    ):
        super().__init__()
        if lookup_tokens < 0 or lookup_ngram < 1:
            raise ValueError(f"lookup_tokens must be >= 0 (0 = off) and lookup_ngram >= 1, got {lookup_tokens} and "
                             f"{lookup_ngram}")
        if drafter is not None:
            check_drafter(drafter)
        if draft is not None:
            check_draft_fits(draft, base_model)
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.target = TargetModel(base_model, exact_verification)
        self.ea_layer = None
        if draft is not None:
            last_layer_device = next(self.target.decoder.layers[-1].parameters()).device
            self.ea_layer = draft.to(device=last_layer_device, dtype=self.target.dtype).eval()
            self.ea_layer.bind_target_modules(base_model.get_input_embeddings(), base_model.get_output_embeddings())
        self.sibling_mode = sibling_mode
        if drafter is None:
            self.set_tree(total_token, depth, top_k)
        else:
            self.drafter = drafter
        self.lookup_tokens = lookup_tokens
        self.lookup_ngram = lookup_ngram
        if stop_token_ids is None:
            stop_token_ids = default_stop_token_ids(base_model, tokenizer)
        self.stop_token_ids = sorted(set(stop_token_ids))
        self.last_stats = GenerationStats()

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        base_model_path: str,
        ea_model_path: str,
        total_token: int = 60,
        depth: int = 5,
        top_k: int = 10,
        sibling_mode: str = "mixture",
        exact_verification: bool = False,
        lookup_tokens: int = 0,
        lookup_ngram: int = 3,
        **hf_kwargs,
    ) -> "EaModel":
        """Load a target with ``AutoModelForCausalLM.from_pretrained(base_model_path, **hf_kwargs)`` and a draft
        directory. ``total_token=-1`` measures the target on its device and picks the tree size.
        ``exact_verification``: compute each tree node's attention as one-token decoding does, and the linear
        layers whose rows round differently inside a batch one row at a time, so that the output equals plain
        decoding bit for bit; costs one attention call per node (:mod:`jakiro.target.exact_attention`,
        :mod:`jakiro.target.exact_linear`). ``lookup_tokens`` > 0: every
        step also verifies up to that many tokens copied from an earlier occurrence of the text's last
        ``lookup_ngram``-gram (:mod:`jakiro.decoding.lookup`), one extra branch of the tree."""
        if "torch_dtype" in hf_kwargs:  # the name reference users write; transformers 5 calls it dtype
            hf_kwargs["dtype"] = hf_kwargs.pop("torch_dtype")
        draft = DraftHead.from_pretrained(ea_model_path)
        check_model_files(base_model_path)
        base_model = AutoModelForCausalLM.from_pretrained(base_model_path, **hf_kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained(base_model_path)
        return cls(base_model, draft, tokenizer, total_token, depth, top_k, sibling_mode,
                   exact_verification=exact_verification, lookup_tokens=lookup_tokens, lookup_ngram=lookup_ngram)

    @classmethod
    def from_config(cls, cfg: JakiroConfig, base_model_path: str, ea_model_path: str) -> "EaModel":
        """:meth:`from_pretrained` with the tree (``tree.*``), verification (``generation.exact_verification``),
        dtype and device (``model.*``) of a Jakiro config."""
        tree = cfg.tree
        return cls.from_pretrained(
            base_model_path, ea_model_path, total_token=tree.total_token, depth=tree.depth, top_k=tree.top_k,
            sibling_mode=tree.sibling_mode, exact_verification=cfg.generation.exact_verification,
            lookup_tokens=tree.lookup_tokens, lookup_ngram=tree.lookup_ngram, dtype=getattr(torch, cfg.model.dtype),
            device_map=cfg.model.device)

    def get_tokenizer(self):
        return self.tokenizer

    def set_tree(self, total_token: int, depth: int, top_k: int) -> None:
        """Draft the dynamic tree of this shape from the next generate call on: ``total_token`` nodes verified per
        step (-1 = measure the target and pick), ``depth`` draft layers, ``top_k`` children per node. Only the
        drafter is rebuilt (no weights move); invalid values raise ValueError and keep the current drafter."""
        if self.ea_layer is None:
            raise ValueError("the dynamic tree needs a draft head: this EaModel was built with draft=None")
        if total_token == -1:
            total_token = choose_tree_size(self.target)
        self.drafter = TreeDrafter(self.ea_layer, total_token, depth, top_k, self.sibling_mode)

    # -- public generation API ------------------------------------------------------------------------------------
    def eagenerate(self, input_ids, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=512, max_length=2048,
                   log=False, is_llama3=False, seed=None):
        """Speculative generation.

        Args:
            input_ids: [1, P] prompt.
            temperature: 0 = greedy; > 0 samples from the target's processed distribution.
            top_p, top_k: nucleus / top-k filtering (1.0 / 0 = off).
            max_new_tokens: cap on generated tokens; max_length: cap on prompt + generated tokens.
            log: also return the number of new tokens and of target forwards (prefill included).
            is_llama3: accepted for compatibility; ``<|eot_id|>`` always stops when the tokenizer has it.
            seed: seed of the sampling generator (default: drawn from torch's global RNG).
        Returns:
            [1, P + N] ids (generation ends after the first stop token), or (ids, N, target_forwards) with ``log``.
        """
        ids = input_ids
        for ids in self.ea_generate(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, seed=seed):
            pass
        return self._result(ids, log)

    def naivegenerate(self, input_ids, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=512, max_length=2048,
                      log=False, is_llama3=False, seed=None):
        """Plain autoregressive decoding with the same arguments and return values as :meth:`eagenerate`."""
        ids = input_ids
        for ids in self.naive_generate(input_ids, temperature, top_p, top_k, max_new_tokens, max_length, seed=seed):
            pass
        return self._result(ids, log)

    def ea_generate(self, input_ids, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=512, max_length=2048,
                    log=False, is_llama3=False, seed=None) -> Iterator[torch.Tensor]:
        """Streaming :meth:`eagenerate`: yields the [1, P + n] ids after every verification step."""
        return self._stream(True, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, seed)

    def naive_generate(self, input_ids, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=512, max_length=2048,
                       log=False, is_llama3=False, seed=None) -> Iterator[torch.Tensor]:
        """Streaming :meth:`naivegenerate`: yields the ids after every token."""
        return self._stream(False, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, seed)

    def active_drafter(self) -> Drafter:
        """The drafter a generate call uses now: ``drafter``, wrapped in prompt lookup when ``lookup_tokens`` > 0."""
        check_drafter(self.drafter)
        if self.lookup_tokens:
            return PromptLookup(self.drafter, self.lookup_tokens, self.lookup_ngram)
        return self.drafter

    # -- internals ------------------------------------------------------------------------------------------------
    def _result(self, ids, log):
        if log:
            return ids, self.last_stats.new_tokens, self.last_stats.target_forwards
        return ids

    def _stream(self, speculative, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, seed):
        """Check everything, then return the (lazy) stream of ids: speculative or plain decoding."""
        input_ids = as_input_ids(input_ids)
        drafter = self.active_drafter()
        budget = self._check_inputs(input_ids, temperature, top_p, top_k, max_new_tokens, max_length,
                                    drafter.total_token)
        sampling = dict(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        generator = torch.Generator().manual_seed(int(seed))
        if speculative:
            token_source = functools.partial(speculative_tokens, self.target, drafter)
        else:
            token_source = functools.partial(plain_tokens, self.target)
        return self._run(token_source, input_ids, budget, sampling, generator)

    def _run(self, token_source, input_ids, budget, sampling, generator):
        stats = self.last_stats = GenerationStats()
        start = time.perf_counter()
        prompt = input_ids.to(self.target.device)
        generated: list[int] = []
        stops = set(self.stop_token_ids)
        for chunk in token_source(prompt, sampling, generator, stats):
            chunk = chunk[: budget - len(generated)]
            stop_at = next((i for i, t in enumerate(chunk) if t in stops), None)
            if stop_at is not None:
                chunk = chunk[: stop_at + 1]
            generated.extend(chunk)
            stats.new_tokens = len(generated)
            stats.wall_time = time.perf_counter() - start
            yield torch.cat([prompt, torch.tensor([generated], dtype=prompt.dtype, device=prompt.device)], dim=1)
            if stop_at is not None or len(generated) >= budget:
                return

    def _check_inputs(self, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, tree_size) -> int:
        """Validate arguments before any work; returns how many tokens may be generated."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a [batch, length] tensor")
        if input_ids.shape[0] != 1:
            raise ValueError(f"batch size must be 1 (got {input_ids.shape[0]}); batched generation is not supported")
        if input_ids.shape[1] == 0:
            raise ValueError("the prompt is empty: input_ids needs at least one token")
        if input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
        vocab = self.base_model.get_input_embeddings().weight.shape[0]
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"input_ids hold token id {low if low < 0 else high}, outside the target's vocabulary "
                             f"[0, {vocab}): the prompt was tokenized for another model?")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        room = int(max_length) - input_ids.shape[1]
        if room < 1:
            raise ValueError(
                f"the prompt has {input_ids.shape[1]} tokens, which leaves no room under max_length={max_length}"
            )
        budget = min(int(max_new_tokens), room)
        window = self.target.sliding_window
        if window and input_ids.shape[1] + budget + tree_size > window:
            raise ValueError(
                f"prompt + new tokens + tree ({input_ids.shape[1]} + {budget} + {tree_size}) exceed the "
                f"target's sliding window {window}; tree verification does not implement sliding windows"
            )
        return budget


def check_draft_fits(draft: DraftHead, base_model: PreTrainedModel) -> None:
    """Raise ValueError when the draft head was made for a target of another hidden size or vocabulary."""
    target_config = base_model.config.get_text_config()
    if draft.config.hidden_size != target_config.hidden_size:
        raise ValueError(
            f"draft hidden size {draft.config.hidden_size} != target hidden size {target_config.hidden_size}"
        )
    vocab = base_model.get_output_embeddings().weight.shape[0]
    if draft.config.vocab_size != vocab:
        raise ValueError(f"draft vocabulary {draft.config.vocab_size} != target vocabulary {vocab}")


def as_input_ids(input_ids) -> torch.Tensor:
    """A prompt as a [1, P] tensor: a tensor is kept, a list of ids (``tokenizer(prompt).input_ids``) or a list
    holding one such list (``tokenizer([prompt]).input_ids``, as reference users write) becomes a tensor."""
    if isinstance(input_ids, torch.Tensor):
        return input_ids
    if isinstance(input_ids, (list, tuple)):
        rows = input_ids if input_ids and isinstance(input_ids[0], (list, tuple)) else [input_ids]
        if all(isinstance(t, int) and not isinstance(t, bool) for row in rows for t in row):
            if len({len(row) for row in rows}) > 1:
                raise ValueError("input_ids: rows of different lengths; batched generation is not supported")
            return torch.tensor(rows, dtype=torch.long)
    raise ValueError(f"input_ids must be a [batch, length] tensor or a list of token ids, got "
                     f"{type(input_ids).__name__}")


def default_stop_token_ids(model: PreTrainedModel, tokenizer=None) -> list[int]:
    """EOS ids of the model's configs and the tokenizer, plus the chat end tokens the tokenizer knows."""
    ids: list[int] = []
    sources = [model.generation_config.eos_token_id, model.config.eos_token_id]
    if tokenizer is not None:
        sources.append(tokenizer.eos_token_id)
    for source in sources:
        if source is not None:
            ids.extend(source if isinstance(source, list) else [source])
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        ids.extend(vocab[token] for token in CHAT_STOP_TOKENS if token in vocab)
    return sorted(set(ids))
