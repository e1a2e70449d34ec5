"""Tiny random targets (Llama, Qwen2, Mistral, Mixtral) and untrained drafts for fast CPU tests."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from jakiro.decoding.drafting import DraftState
from jakiro.model.draft import DraftHead, DraftHeadConfig
from jakiro.model.ea_model import EaModel

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "mixtral": (MixtralConfig, MixtralForCausalLM, {"num_local_experts": 4, "num_experts_per_tok": 2,
                                                     "sliding_window": None}),
}


def tiny_target(family: str = "llama", vocab_size: int = 128, seed: int = 0, **overrides):
    """A randomly initialised fp32 causal LM of the given family (eager float math, deterministic)."""
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_cls(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                        **{**COMMON, **extra, **overrides})
    model = model_cls(config).eval()
    # random init gives near-uniform logits; sharpen them so greedy chains are not decided by float noise
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.generation_config.eos_token_id = None
    return model


def tiny_draft(target, num_experts=2, experts_per_token=2, parallel_head=True, seed=1,
               draft_vocab_size=None) -> DraftHead:
    """An untrained draft; with ``draft_vocab_size`` its vocabulary is a random subset of the target's."""
    torch.manual_seed(seed)
    config = DraftHeadConfig.for_target(target.config, num_experts, experts_per_token, parallel_head,
                                        draft_vocab_size=draft_vocab_size)
    draft = DraftHead(config)
    if draft_vocab_size is not None:
        draft.set_draft_vocabulary(torch.randperm(config.vocab_size)[:draft_vocab_size])
    return draft


def tiny_ea_model(family="llama", vocab_size=128, total_token=12, depth=3, top_k=3, sibling_mode="mixture",
                  num_experts=2, experts_per_token=2, parallel_head=True, seed=0, draft_vocab_size=None,
                  exact_verification=False, lookup_tokens=0) -> EaModel:
    target = tiny_target(family, vocab_size, seed)
    draft = tiny_draft(target, num_experts, experts_per_token, parallel_head, seed + 1, draft_vocab_size)
    return EaModel(target, draft, None, total_token, depth, top_k, sibling_mode, stop_token_ids=[],
                   exact_verification=exact_verification, lookup_tokens=lookup_tokens)


def draft_state(features, tokens, sampling=None, generator=None) -> DraftState:
    """A drafter's first-round input for tests: features [S, H] and tokens [S] of the context (history = tokens),
    greedy unless ``sampling`` is given."""
    sampling = sampling or dict(temperature=0.0, top_p=1.0, top_k=0)
    return DraftState(features, tokens, tokens, sampling, generator)


def save_tiny_target_with_smollm2_tokenizer(directory, eos_every: int):
    """Save a tiny random Llama with SmolLM2's tokenizer (the embedded asset) to ``directory``; every
    ``eos_every``-th token id ends a generation, so tiny greedy answers stop early and at different lengths.
    Returns (model, tokenizer)."""
    from transformers import AutoTokenizer

    from jakiro.common import assets

    tokenizer = AutoTokenizer.from_pretrained(assets.ensure_smollm2(progress=False))
    model = tiny_target("llama", vocab_size=len(tokenizer))
    model.generation_config.eos_token_id = list(range(0, len(tokenizer), eos_every))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so that the next trainer starts as in a fresh process."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
