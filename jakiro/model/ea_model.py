"""``EaModel``: a Hugging Face causal LM plus a Jakiro draft head, with speculative and plain generation.

The import paths reference users write keep working::

    from jakiro.model.ea_model import EaModel
    model = EaModel.from_pretrained(base_model_path=..., ea_model_path=..., total_token=60, depth=5, top_k=10,
                                    dtype=torch.bfloat16)
    ids = model.eagenerate(input_ids, temperature=0.0, max_new_tokens=256)

One speculative step: the drafter grows a tree below the last committed token (with ``lookup_tokens``, a branch
copied by prompt lookup joins it: :mod:`jakiro.decoding.lookup`), the target verifies it in one forward, the verifier keeps
the longest acceptable path plus one bonus token, and the target cache is compacted to that path. Output is the
target's own greedy output at temperature 0, and the target's exact sampling distribution (temperature / top-k /
top-p) otherwise; see :mod:`jakiro.decoding.verify`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from jakiro.common.config import JakiroConfig
from jakiro.decoding.drafter import TreeDrafter
from jakiro.common.io import check_model_files
from jakiro.model.draft import DraftHead
from jakiro.target import TargetModel, choose_tree_size
from jakiro.decoding.lookup import lookup_continuation
from jakiro.decoding.tree import graft_chain
from jakiro.decoding.verify import Verdict, verify_greedy, verify_sampling, warp_logits

# tokens that end an assistant turn in common chat formats, added to the EOS ids when the tokenizer knows them
CHAT_STOP_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>")


@dataclass
class GenerationStats:
    """What the last generate call did: tokens generated, target forwards (prefill included), accepted lengths."""

    new_tokens: int = 0
    target_forwards: int = 0
    accept_lengths: list[int] = field(default_factory=list)  # draft tokens accepted per verification step
    wall_time: float = 0.0


class EaModel(nn.Module):
    """Target model (``base_model``) + draft head (``ea_layer``) + tokenizer."""

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
    ):
        super().__init__()
        if lookup_tokens < 0 or lookup_ngram < 1:
            raise ValueError(f"lookup_tokens must be >= 0 (0 = off) and lookup_ngram >= 1, got {lookup_tokens} and "
                             f"{lookup_ngram}")
        target_config = base_model.config.get_text_config()
        if draft.config.hidden_size != target_config.hidden_size:
            raise ValueError(
                f"draft hidden size {draft.config.hidden_size} != target hidden size {target_config.hidden_size}"
            )
        if draft.config.vocab_size != base_model.get_output_embeddings().weight.shape[0]:
            raise ValueError(
                f"draft vocabulary {draft.config.vocab_size} != target vocabulary "
                f"{base_model.get_output_embeddings().weight.shape[0]}"
            )
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.target = TargetModel(base_model, exact_verification)
        last_layer_device = next(self.target.decoder.layers[-1].parameters()).device
        self.ea_layer = draft.to(device=last_layer_device, dtype=self.target.dtype).eval()
        self.ea_layer.bind_target_modules(base_model.get_input_embeddings(), base_model.get_output_embeddings())
        self.sibling_mode = sibling_mode
        self.set_tree(total_token, depth, top_k)
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
        """Use a new tree shape from the next generate call on: ``total_token`` nodes verified per step (-1 =
        measure the target and pick), ``depth`` draft layers, ``top_k`` children per node. Only the drafter is
        rebuilt (no weights move); invalid values raise ValueError and keep the current tree."""
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
        return self._stream(self._speculative_tokens, input_ids, temperature, top_p, top_k, max_new_tokens,
                            max_length, seed)

    def naive_generate(self, input_ids, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=512, max_length=2048,
                       log=False, is_llama3=False, seed=None) -> Iterator[torch.Tensor]:
        """Streaming :meth:`naivegenerate`: yields the ids after every token."""
        return self._stream(self._naive_tokens, input_ids, temperature, top_p, top_k, max_new_tokens, max_length,
                            seed)

    # -- internals ------------------------------------------------------------------------------------------------
    def _result(self, ids, log):
        if log:
            return ids, self.last_stats.new_tokens, self.last_stats.target_forwards
        return ids

    def _stream(self, token_source, input_ids, temperature, top_p, top_k, max_new_tokens, max_length, seed):
        input_ids = as_input_ids(input_ids)
        budget = self._check_inputs(input_ids, temperature, top_p, top_k, max_new_tokens, max_length)
        sampling = dict(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        generator = torch.Generator().manual_seed(int(seed))
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

    def _pick(self, logits: torch.Tensor, sampling: dict, generator: torch.Generator) -> int:
        if sampling["temperature"] == 0:
            return int(logits.argmax())
        probs = warp_logits(logits, **sampling).softmax(-1).cpu()
        return int(torch.multinomial(probs, 1, generator=generator))

    @torch.inference_mode()
    def _naive_tokens(self, prompt, sampling, generator, stats) -> Iterator[list[int]]:
        logits, _ = self.target.prefill(prompt)
        stats.target_forwards = 1
        while True:
            token = self._pick(logits, sampling, generator)
            yield [token]
            logits, _ = self.target.step(token)
            stats.target_forwards += 1

    @torch.inference_mode()
    def _speculative_tokens(self, prompt, sampling, generator, stats) -> Iterator[list[int]]:
        logits, features = self.target.prefill(prompt)
        stats.target_forwards = 1
        root = self._pick(logits, sampling, generator)
        yield [root]
        self.drafter.reset()
        # the draft pairs feature f_t with token x_{t+1}: prompt features with the prompt shifted by one + root
        new_features = features
        new_tokens = torch.cat([prompt[0, 1:], torch.tensor([root], device=prompt.device)])
        # every committed token, kept only for prompt lookup
        history = torch.cat([prompt[0], new_tokens[-1:]]) if self.lookup_tokens else None
        while True:
            tree = self._draft(new_features, new_tokens, sampling, generator)
            if history is not None:
                tree = self._graft(tree, lookup_continuation(history, self.lookup_ngram, self.lookup_tokens))
            prefix_len = len(self.target)
            tree_logits, tree_features = self.target.verify(tree)
            stats.target_forwards += 1
            verdict = self._verify(tree, tree_logits, sampling, generator)
            path = torch.cat([torch.zeros(1, dtype=torch.long), verdict.accepted_nodes]).to(tree_features.device)
            self.target.commit(prefix_len, path)
            stats.accept_lengths.append(int(verdict.accepted_nodes.numel()))
            accepted_tokens = tree.tokens[verdict.accepted_nodes].tolist()
            yield accepted_tokens + [verdict.next_token]
            new_features = tree_features[path]
            new_tokens = torch.tensor(accepted_tokens + [verdict.next_token], device=prompt.device)
            if history is not None:
                history = torch.cat([history, new_tokens])

    def _draft(self, features: torch.Tensor, tokens: torch.Tensor, sampling: dict, generator: torch.Generator):
        """One draft tree below ``tokens[-1]`` (features [S, H] and tokens [S] of the newly committed positions).
        Drafting here is deterministic; subclasses with a sampling drafter (Jakiro*) use ``sampling``/``generator``."""
        return self.drafter.draft_tree(features, tokens)

    def _graft(self, tree, chain: torch.Tensor):
        """The drafted tree with the prompt-lookup ``chain`` [m] merged in as a branch below the root."""
        return graft_chain(tree, chain)

    def _verify(self, tree, logits: torch.Tensor, sampling: dict, generator: torch.Generator) -> Verdict:
        """Verdict on a drafted tree given the target's logits [n, V] at its nodes (greedy at temperature 0)."""
        if sampling["temperature"] == 0:
            return verify_greedy(tree, logits)
        return verify_sampling(tree, logits, generator=generator, **sampling)

    def _check_inputs(self, input_ids, temperature, top_p, top_k, max_new_tokens, max_length) -> int:
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
        tree_size = self.drafter.total_token + self.lookup_tokens
        if window and input_ids.shape[1] + budget + tree_size > window:
            raise ValueError(
                f"prompt + new tokens + tree ({input_ids.shape[1]} + {budget} + {tree_size}) exceed the "
                f"target's sliding window {window}; tree verification does not implement sliding windows"
            )
        return budget


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
