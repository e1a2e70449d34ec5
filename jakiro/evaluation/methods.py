"""Decoding methods compared by the answer harness, behind one interface (``load_method``).

* ``jakiro``: :meth:`EaModel.eagenerate` (tree speculative decoding with the configured draft);
* ``jakiro_star``: :meth:`jakiro_star.model.StarEaModel.eagenerate` (Jakiro*: static tree ``tree.static_tree``
  whose children are drawn from the experts' distributions, ``tree.sibling_mode``);
* ``baseline``: :meth:`EaModel.naivegenerate` (one target forward per token);
* ``oracle``: :class:`jakiro.decoding.oracle.OracleEaModel`, drafting the best ``tree.total_token``-node tree under the
  target itself: its tau bounds what a deterministic draft can reach at that tree size (its wall time is
  meaningless);
* ``pld``: Hugging Face assisted generation with prompt lookup (``prompt_lookup_num_tokens``);
* ``assisted``: Hugging Face assisted generation with a user-given assistant model.

Every method returns the generated ids, the exact number of target forwards (prefill included; for the Hugging
Face methods counted by a forward hook on the target) and, for ``jakiro`` / ``jakiro_star`` / ``oracle``, the
accepted draft length per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from jakiro.common.assets import ensure_smollm2
from jakiro.common.config import JakiroConfig
from jakiro.common.hardware import describe as describe_hardware
from jakiro.common.io import check_model_files
from jakiro.model.ea_model import EaModel, default_stop_token_ids
from jakiro.model.init_draft import resolve_draft
from jakiro.target import target_identity

METHODS = ("jakiro", "jakiro_star", "baseline", "pld", "assisted", "oracle")
SPECULATIVE_METHODS = ("jakiro", "jakiro_star")  # the methods that draft with a Jakiro draft head


@dataclass
class TurnOutput:
    tokens: list[int]  # generated ids, stop token included
    forwards: int  # target forwards, prefill included
    accept_lengths: list[int] | None = None  # accepted draft tokens per verification step (speculative methods)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EaMethod:
    """``jakiro``, ``jakiro_star`` and ``baseline``: the two generate loops of one :class:`EaModel`."""

    def __init__(self, model: EaModel, speculative: bool, sampling: dict):
        self.model = model
        self.speculative = speculative
        self.sampling = sampling
        self.tokenizer = model.get_tokenizer()
        self.device = model.target.device

    def generate(self, input_ids: torch.Tensor, temperature: float, seed: int) -> TurnOutput:
        run = self.model.eagenerate if self.speculative else self.model.naivegenerate
        ids, new_tokens, forwards = run(input_ids, temperature=temperature, log=True, seed=seed, **self.sampling)
        tokens = ids[0, input_ids.shape[1]:].tolist()
        assert len(tokens) == new_tokens, (len(tokens), new_tokens)
        accepted = list(self.model.last_stats.accept_lengths) if self.speculative else None
        return TurnOutput(tokens, forwards, accepted)


class HFAssistedMethod:
    """``pld`` and ``assisted``: ``model.generate`` with prompt lookup or an assistant model."""

    def __init__(self, model, tokenizer, sampling: dict, prompt_lookup_num_tokens: int | None = None,
                 assistant=None, assistant_tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.device = model.device
        self.extra = {"assistant_model": assistant} if assistant is not None else {}
        if assistant_tokenizer is not None and assistant_tokenizer.get_vocab() != tokenizer.get_vocab():
            self.extra.update(tokenizer=tokenizer, assistant_tokenizer=assistant_tokenizer)  # universal assisted
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens
        self.stop_ids = default_stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.stop_ids or [0])[0]
        self.forwards = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.forwards += 1

    def generate(self, input_ids: torch.Tensor, temperature: float, seed: int) -> TurnOutput:
        budget = min(self.sampling["max_new_tokens"], self.sampling["max_length"] - input_ids.shape[1])
        if budget < 1:
            raise ValueError(f"the prompt has {input_ids.shape[1]} tokens, which leaves no room under max_length="
                             f"{self.sampling['max_length']}")
        options = dict(max_new_tokens=budget, eos_token_id=self.stop_ids or None, pad_token_id=self.pad_id,
                       do_sample=temperature > 0, prompt_lookup_num_tokens=self.prompt_lookup_num_tokens)
        if temperature > 0:
            options.update(temperature=temperature, top_p=self.sampling["top_p"], top_k=self.sampling["top_k"])
        torch.manual_seed(seed)
        ids = input_ids.to(self.device)
        self.forwards = 0
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                      generation_config=GenerationConfig(**options), **self.extra)
        return TurnOutput(out[0, ids.shape[1]:].tolist(), self.forwards)


def _sampling(cfg: JakiroConfig, max_new_tokens: int) -> dict:
    gen = cfg.generation
    return dict(top_p=gen.top_p, top_k=gen.top_k, max_new_tokens=max_new_tokens, max_length=gen.max_length)


def load_method(cfg: JakiroConfig, max_new_tokens: int):
    """Load the target (and draft or assistant) for ``cfg.eval.method``. Returns ``(method, description)``, the
    description being the settings recorded in each answer's ``meta``."""
    name = cfg.eval.method
    if name == "assisted" and not cfg.eval.assistant_model_path:
        raise ValueError("method 'assisted' needs an assistant model: --assistant-model-path DIR "
                         "(eval.assistant_model_path)")
    base = cfg.model.base_model_path or str(ensure_smollm2())
    load = dict(dtype=getattr(torch, cfg.model.dtype), device_map=cfg.model.device)
    about = {"method": name, "base_model": Path(base).name, "dtype": cfg.model.dtype}
    if name == "oracle":
        from jakiro.model.oracle import OracleEaModel

        draft, _ = resolve_draft(cfg, base)  # unused by the oracle, but an EaModel is built around a draft head
        model = OracleEaModel.from_pretrained(base, draft, total_token=cfg.tree.total_token, **load)
        method = EaMethod(model, True, _sampling(cfg, max_new_tokens))
        about.update(tree={"total_token": model.drafter.total_token})
    elif name in (*SPECULATIVE_METHODS, "baseline"):
        speculative = name != "baseline"
        draft, trained = resolve_draft(cfg, base)
        if speculative and not trained:
            print("note: no trained draft configured (model.draft_path / --ea-model-path); using an UNTRAINED "
                  "draft: output stays lossless but expect a slowdown")
        tree = cfg.tree
        exact = cfg.generation.exact_verification
        if name == "jakiro_star":
            from jakiro_star.model import StarEaModel

            model = StarEaModel.from_pretrained(base, draft, static_tree=tree.static_tree,
                                                sibling_mode=tree.sibling_mode, exact_verification=exact,
                                                lookup_tokens=tree.lookup_tokens, lookup_ngram=tree.lookup_ngram,
                                                **load)
            tree_about = {"static_tree": tree.static_tree, "total_token": model.drafter.total_token,
                          "depth": model.drafter.tree.depth, "sibling_mode": tree.sibling_mode,
                          "lookup_tokens": tree.lookup_tokens}
        else:
            model = EaModel.from_config(cfg, base, draft)
            tree_about = {"total_token": model.drafter.total_token, "depth": tree.depth, "top_k": tree.top_k,
                          "sibling_mode": tree.sibling_mode, "lookup_tokens": tree.lookup_tokens}
        method = EaMethod(model, speculative, _sampling(cfg, max_new_tokens))
        if speculative:
            about.update(draft=Path(draft).name, draft_trained=trained, tree=tree_about, exact_verification=exact)
    else:
        check_model_files(base)
        model = AutoModelForCausalLM.from_pretrained(base, **load).eval()
        tokenizer = AutoTokenizer.from_pretrained(base)
        if name == "pld":
            method = HFAssistedMethod(model, tokenizer, _sampling(cfg, max_new_tokens),
                                      prompt_lookup_num_tokens=cfg.eval.prompt_lookup_num_tokens)
            about.update(prompt_lookup_num_tokens=cfg.eval.prompt_lookup_num_tokens)
        else:
            path = cfg.eval.assistant_model_path
            check_model_files(path)
            assistant = AutoModelForCausalLM.from_pretrained(path, **load).eval()
            method = HFAssistedMethod(model, tokenizer, _sampling(cfg, max_new_tokens), assistant=assistant,
                                      assistant_tokenizer=AutoTokenizer.from_pretrained(path))
            about.update(assistant_model=Path(path).name)
    hf_model = model.base_model if isinstance(model, EaModel) else model
    about.update(device=str(method.device), hardware=describe_hardware(method.device), torch=torch.__version__,
                 transformers=transformers.__version__,
                 target_identity=target_identity(hf_model.config.get_text_config(),
                                                 hf_model.get_output_embeddings().weight))
    return method, about
