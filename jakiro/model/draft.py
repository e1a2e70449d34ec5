"""The Jakiro draft head: fc([embedding; target feature]) -> one Llama decoder layer whose MLP is a mixture of experts.

Shapes (B = batch, S = positions, H = target hidden size, V = target vocabulary):

    input_ids      [B, S]   token x_{t+1} paired with ...
    features       [B, S, H] ... the target's final-normed last hidden state f_t
    z = fc([Emb(x_{t+1}); f_t])                        [B, S, H]
    x = z + Attn(z)              (no input norm, as in the reference; Attn(RMSNorm_in(z)) with input_norm)
    u = RMSNorm_post(x)
    head1 = x + MoE_mix(u)       predicts f_{t+1}       [B, S, H]
    head2 = x + b_top E_top(u) - b_low E_low(u)   predicts f_{t+2} (CEPD parallel head)

The draft owns no embedding and no LM head: it borrows the target's frozen ``embed_tokens`` and ``lm_head`` through
:meth:`DraftHead.bind_target_modules` (they are not part of its state dict). With ``draft_vocab_size`` set, the draft
scores only a subset of the vocabulary (the buffer ``d2t``: [V_d] target token ids, chosen from training-data
frequencies): its logits are the target head's rows ``d2t``, which makes drafting and training several times cheaper for
a large vocabulary while verification stays exact (tokens outside the subset are simply never proposed). Attention and
RoPE are transformers' own Llama modules. ``num_experts=1`` without a parallel head is the EAGLE-2 draft.

A draft directory holds ``config.json`` (see :class:`DraftHeadConfig`) and ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm, LlamaRotaryEmbedding

from jakiro.common.cpu_linear import few_row_linear
from jakiro.drafts import resolve_draft_path
from jakiro.common.hf_compat import cache_keyword
from jakiro.common.io import atomic_write
from jakiro.common.masks import additive_mask
from jakiro.model.moe import MixtureOfExperts, MoEOutput

WEIGHTS_NAME = "model.safetensors"
CACHE_KEYWORD = cache_keyword(LlamaAttention.forward)  # how the installed transformers names the attention's cache
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
# keys of the reference checkpoints that belong to the target, not the draft
_TARGET_KEYS = ("embed_tokens.weight", "lm_head.weight")
# buffers older checkpoints may hold that are derived from the config (RoPE frequencies), not weights
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


# the layer's attention computed by a caller (DraftHead.forward's ``attend``)
AttendFn = Callable[[LlamaAttention, torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


@dataclass
class DraftHeadConfig:
    """Architecture of a draft head; serialised as the draft directory's ``config.json``.

    Field names follow the reference draft configs, so their ``config.json`` files load too.
    """

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    rope_parameters: dict = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    bias: bool = True  # fc bias
    num_local_experts: int = 2
    num_experts_per_tok: int = 2
    expert_intermediate_size: int | None = None  # None = hidden_size (the reference)
    parallel_head: bool = True
    draft_vocab_size: int | None = None  # None = the target's vocabulary; else a subset of this many token ids
    input_norm: bool = False  # an RMSNorm before attention (the reference has none; drafts initialised from the
    # target's last layer get one, since its attention expects normalised inputs)
    num_hidden_layers: int = 1
    architectures: list = field(default_factory=lambda: ["JakiroDraftHead"])

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.expert_intermediate_size is None:
            self.expert_intermediate_size = self.hidden_size
        if self.num_hidden_layers != 1:
            raise ValueError(f"only one-layer draft heads are supported, config has {self.num_hidden_layers}")
        if self.draft_vocab_size is not None and not 1 <= self.draft_vocab_size <= self.vocab_size:
            raise ValueError(f"draft_vocab_size must be in [1, vocab_size={self.vocab_size}], "
                             f"got {self.draft_vocab_size}")

    @classmethod
    def from_dict(cls, raw: dict) -> "DraftHeadConfig":
        """Build from a ``config.json`` dict; reference-style keys (``rope_theta``, ``rope_scaling``) are converted."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "rope_parameters" not in raw and "rope_theta" in raw:
            rope = {"rope_type": "default", "rope_theta": float(raw["rope_theta"])}
            if raw.get("rope_scaling"):
                scaling = dict(raw["rope_scaling"])
                scaling["rope_type"] = scaling.pop("type", scaling.get("rope_type", "default"))
                rope.update(scaling)
            values["rope_parameters"] = rope
        if "parallel_head" not in raw:  # reference checkpoints: two experts always carry the contrastive head
            values["parallel_head"] = values.get("num_local_experts", 2) >= 2
        missing = [f.name for f in fields(cls) if f.name in ("hidden_size", "num_attention_heads", "vocab_size")
                   and f.name not in values]
        if missing:
            raise ValueError(f"draft config is missing required keys: {missing}")
        values.setdefault("num_key_value_heads", values["num_attention_heads"])
        return cls(**values)

    @classmethod
    def for_target(
        cls,
        target_config,
        num_experts: int = 2,
        experts_per_token: int = 2,
        parallel_head: bool = True,
        expert_intermediate_size: int | None = None,
        bias: bool = True,
        draft_vocab_size: int | None = None,
        input_norm: bool = False,
    ) -> "DraftHeadConfig":
        """Size a draft from a transformers target config (attention shapes, RoPE, norm eps, vocabulary)."""
        text_config = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
        rope = getattr(text_config, "rope_parameters", None)
        if not rope:
            rope = {"rope_type": "default", "rope_theta": float(getattr(text_config, "rope_theta", 10000.0))}
        heads = text_config.num_attention_heads
        return cls(
            hidden_size=text_config.hidden_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(text_config, "num_key_value_heads", None) or heads,
            vocab_size=text_config.vocab_size,
            head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // heads,
            rms_norm_eps=float(getattr(text_config, "rms_norm_eps", 1e-6)),
            max_position_embeddings=int(getattr(text_config, "max_position_embeddings", 2048)),
            rope_parameters=dict(rope),
            bias=bias,
            num_local_experts=num_experts,
            num_experts_per_tok=experts_per_token,
            expert_intermediate_size=expert_intermediate_size,
            parallel_head=parallel_head,
            draft_vocab_size=draft_vocab_size,
            input_norm=input_norm,
        )

    def to_llama_config(self) -> LlamaConfig:
        """The Llama config that transformers' attention and RoPE modules are built from."""
        config = LlamaConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.expert_intermediate_size,
            num_hidden_layers=1,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab_size,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters=dict(self.rope_parameters),
        )
        config._attn_implementation = "sdpa"
        return config


@dataclass
class DraftOutput:
    """Draft forward results.

    Attributes:
        head1: [B, S, H] predicted next features.
        head2: [B, S, H] predicted two-ahead features (CEPD), or None.
        expert_features: [B, S, k, H] x + E_e(u) for each routed expert (strongest first), or None.
        expert_weights: [B, S, k] float32 routing weights of those experts (they sum to 1), or None.
        router_logits: [B, S, E] float32 head-1 gate logits, or None for a one-expert draft.
    """

    head1: torch.Tensor
    head2: torch.Tensor | None = None
    expert_features: torch.Tensor | None = None
    expert_weights: torch.Tensor | None = None
    router_logits: torch.Tensor | None = None


class DraftCache:
    """Key/value cache of the draft's single attention layer (the ``update`` protocol transformers' attention calls).

    Tensors are [B, kv_heads, T, head_dim]. :meth:`crop` drops speculative tree entries after a drafting round.
    """

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=-2)
            self.values = torch.cat([self.values, values], dim=-2)
        return self.keys, self.values

    def crop(self, length: int) -> None:
        if self.keys is not None:
            self.keys = self.keys[..., :length, :]
            self.values = self.values[..., :length, :]


class DraftHead(nn.Module):
    """Jakiro / EAGLE-2 draft head (see the module docstring for the equations)."""

    def __init__(self, config: DraftHeadConfig):
        super().__init__()
        self.config = config
        llama = config.to_llama_config()
        hidden = config.hidden_size
        self.fc = nn.Linear(2 * hidden, hidden, bias=config.bias)
        self.layers = nn.ModuleList([_DecoderLayer(llama, config)])
        self.rotary_emb = LlamaRotaryEmbedding(config=llama)
        # [V_d] target token ids of the draft vocabulary (sorted), or None for the full target vocabulary
        vocab = None if config.draft_vocab_size is None else torch.arange(config.draft_vocab_size)
        self.register_buffer("d2t", vocab)
        self._target_modules: tuple[nn.Module, nn.Module] | None = None
        self._restricted_head: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    # -- target modules -------------------------------------------------------------------------------------------
    def bind_target_modules(self, embed_tokens: nn.Module, lm_head: nn.Module) -> None:
        """Borrow the target's input embedding and LM head (kept outside this module's parameters) and freeze them."""
        embed_tokens.requires_grad_(False)
        lm_head.requires_grad_(False)
        self._target_modules = (embed_tokens, lm_head)

    @property
    def embed_tokens(self) -> nn.Module:
        return self._bound()[0]

    @property
    def lm_head(self) -> nn.Module:
        return self._bound()[1]

    def _bound(self) -> tuple[nn.Module, nn.Module]:
        if self._target_modules is None:
            raise RuntimeError("call bind_target_modules(embed_tokens, lm_head) before using the draft head")
        return self._target_modules

    # -- draft vocabulary ----------------------------------------------------------------------------------------
    def set_draft_vocabulary(self, token_ids: torch.Tensor) -> None:
        """Use these ``draft_vocab_size`` distinct target token ids (any order) as the draft's vocabulary."""
        if self.d2t is None:
            raise ValueError("this draft uses the full target vocabulary (draft_vocab_size is None)")
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten().sort().values
        if ids.shape != self.d2t.shape or ids.unique().numel() != ids.numel():
            raise ValueError(f"expected {self.d2t.numel()} distinct token ids, got {token_ids.numel()} "
                             f"({ids.unique().numel()} distinct)")
        if ids[0] < 0 or ids[-1] >= self.config.vocab_size:
            raise ValueError(f"draft vocabulary ids must be in [0, {self.config.vocab_size})")
        self.d2t.copy_(ids.to(self.d2t.device))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """[...] indices into :meth:`compact_logits` -> [...] target token ids."""
        return draft_ids if self.d2t is None else self.d2t[draft_ids]

    def compact_logits(self, features: torch.Tensor) -> torch.Tensor:
        """[..., H] draft features -> [..., V_d] logits over the draft vocabulary: the target's LM head restricted to
        the rows ``d2t`` (all V rows for a full-vocabulary draft). Softmax over them is the target head's distribution
        conditioned on the draft vocabulary."""
        head = self.lm_head
        x = features.to(head.weight.device, head.weight.dtype)
        if self.d2t is None:
            return few_row_linear(x, head.weight, head.bias) if type(head) is nn.Linear else head(x)
        weight, bias = self._restricted_weights(head)
        return few_row_linear(x, weight, bias)  # a few rows per drafting layer: :mod:`jakiro.common.cpu_linear`

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[..., H] draft features -> [..., V] logits over the target vocabulary (-inf outside the draft vocabulary)."""
        compact = self.compact_logits(features)
        if self.d2t is None:
            return compact
        full = compact.new_full((*compact.shape[:-1], self.config.vocab_size), float("-inf"))
        return full.index_copy_(-1, self.d2t.to(compact.device), compact)

    def compact_head(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The [V_d, H] weight and [V_d] bias (or None) of :meth:`compact_logits` (the LM head's rows ``d2t``),
        or None when the bound LM head is not a plain ``nn.Linear``."""
        head = self.lm_head
        if type(head) is not nn.Linear:
            return None
        return (head.weight, head.bias) if self.d2t is None else self._restricted_weights(head)

    def _restricted_weights(self, head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head's rows ``d2t`` (and bias entries), cached until the head or the vocabulary changes."""
        key = (head.weight.data_ptr(), head.weight.dtype, head.weight._version, self.d2t.data_ptr(),
               self.d2t._version)
        if self._restricted_head is None or self._restricted_head[0] != key:
            rows = self.d2t.to(head.weight.device)
            bias = getattr(head, "bias", None)
            self._restricted_head = (key, head.weight.detach().index_select(0, rows),
                                     None if bias is None else bias.detach().index_select(0, rows))
        return self._restricted_head[1], self._restricted_head[2]

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: DraftCache | None = None,
        last_position_only: bool = False,
        with_head2: bool = False,
        with_experts: bool = False,
        attend: AttendFn | None = None,
    ) -> DraftOutput:
        """Run the draft on S new positions.

        Args:
            features: [B, S, H] target (or draft) features f_t.
            input_ids: [B, S] tokens x_{t+1}.
            position_ids: [B, S] draft positions.
            attention_mask: [B, 1, S, T] additive float mask over cached + new positions; None = causal.
            cache: the draft KV cache to read and extend.
            last_position_only: evaluate the MoE only at the last position (inference context pass: the KV cache
                depends only on attention inputs, so earlier positions' MLP outputs are never needed).
            with_head2: also compute the CEPD parallel head.
            with_experts: also return per-expert features (per-expert sibling mode).
            attend: (attention module, z [B, S, H], (cos, sin)) -> [B, S, H]: the layer's attention computed by the
                caller instead of masked attention over the cache (training: :func:`packed_attention` for
                conversations packed along S, :class:`jakiro.train.unroll.ChainAttention` for training-time test's
                chains). Needs ``attention_mask`` and ``cache`` None.
        """
        if attend is not None and (attention_mask is not None or cache is not None):
            raise ValueError("attend takes neither an attention mask nor a cache")
        embed = self.embed_tokens
        with torch.no_grad():
            tokens = embed(input_ids.to(embed.weight.device)).to(features.device, features.dtype)
        z = self.fc(torch.cat([tokens, features], dim=-1))
        position_embeddings = self.rotary_emb(z, position_ids)
        if attention_mask is None and z.shape[1] > 1 and attend is None:
            past = 0 if cache is None else len(cache)
            attention_mask = causal_additive_mask(z.shape[1], past, z.dtype, z.device)
        layer = self.layers[0]
        a = layer.input_layernorm(z) if self.config.input_norm else z  # the attention's input
        if attend is not None:
            x = z + attend(layer.self_attn, a, position_embeddings)
        else:
            x = z + layer.self_attn(
                a, position_embeddings=position_embeddings, attention_mask=attention_mask,
                **{CACHE_KEYWORD: cache},
            )[0]
        if last_position_only:
            x = x[:, -1:]
        b, s, h = x.shape
        u = layer.post_attention_layernorm(x)
        moe: MoEOutput = layer.mlp_moe(u.reshape(b * s, h), with_head2=with_head2, with_experts=with_experts)
        head2 = None if moe.head2 is None else x + moe.head2.view(b, s, h)
        expert_features = expert_weights = None
        if moe.expert_outputs is not None:
            expert_features = x.unsqueeze(2) + moe.expert_outputs.view(b, s, -1, h)
            expert_weights = moe.expert_weights.view(b, s, -1)
        router_logits = None if moe.router_logits is None else moe.router_logits.view(b, s, -1)
        return DraftOutput(x + moe.head1.view(b, s, h), head2, expert_features, expert_weights, router_logits)

    # -- persistence ----------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` atomically into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous().cpu()
                 for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(state, path, metadata={"format": "pt"}))
        text = json.dumps(asdict(self.config), indent=2, sort_keys=True) + "\n"
        atomic_write(directory / CONFIG_NAME, lambda path: Path(path).write_text(text))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "DraftHead":
        """Load a draft directory (``config.json`` + ``model.safetensors`` or a legacy ``pytorch_model.bin``).

        ``shipped:<name>`` names a draft shipped with the package (:mod:`jakiro.drafts`). Raises ValueError naming
        the file for a missing directory, config or weights, a corrupted file, weights whose names or shapes do
        not match the config, or weights holding NaN or infinite values.
        """
        directory = resolve_draft_path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise ValueError(f"draft directory {directory} has no {CONFIG_NAME}")
        try:
            config = DraftHeadConfig.from_dict(json.loads(config_path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path} is not valid JSON: {err}") from None
        model = cls(config)
        state = _load_state(directory)
        state = {k: v for k, v in state.items()
                 if k not in _TARGET_KEYS and not k.endswith(_DERIVED_SUFFIXES)}
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"draft weights in {directory} do not match its config: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}"
            )
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(
                    f"draft weight {name} in {directory} has shape {tuple(tensor.shape)}, "
                    f"config implies {tuple(expected[name].shape)}"
                )
        broken = [name for name, tensor in state.items() if tensor.is_floating_point() and
                  not bool(torch.isfinite(tensor).all())]
        if broken:
            raise ValueError(f"draft weights in {directory} hold NaN or infinite values ({', '.join(broken[:4])}"
                             f"{' ...' if len(broken) > 4 else ''}): the training that wrote them diverged or the "
                             "file was damaged; train again or use another draft")
        model.load_state_dict(state, strict=True)
        return model


class _DecoderLayer(nn.Module):
    """The single draft decoder layer: attention (after an input RMSNorm only with ``config.input_norm``) +
    post-attention RMSNorm + mixture of experts."""

    def __init__(self, llama: LlamaConfig, config: DraftHeadConfig):
        super().__init__()
        if config.input_norm:
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(llama, layer_idx=0)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp_moe = MixtureOfExperts(
            config.hidden_size,
            config.expert_intermediate_size,
            config.num_local_experts,
            config.num_experts_per_tok,
            config.parallel_head,
        )


def packed_attention(segments: Sequence[int]) -> AttendFn:
    """The ``attend`` of :meth:`DraftHead.forward` for conversations of lengths ``segments`` packed one after another
    along S (B = 1, sum = S; training): [1, S, H] -> [1, S, H], the attention run on each conversation on its own
    (causal, positions and RoPE as given), outputs concatenated; the same values as running the conversations as
    separate rows, and nothing crosses from one conversation into another."""
    lengths = [int(n) for n in segments]

    def attend(attention: LlamaAttention, z: torch.Tensor,
               position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if z.shape[0] != 1 or sum(lengths) != z.shape[1]:
            raise ValueError(f"segments {lengths} must cover the S={z.shape[1]} positions of one packed row "
                             f"(got B={z.shape[0]})")
        cos, sin = position_embeddings
        outputs, start = [], 0
        for length in lengths:
            end = start + length
            # no mask: transformers' sdpa path runs the causal kernel (measured several times faster than a float
            # mask in bf16 and fp32 on an AMX CPU at 1,000 positions)
            outputs.append(attention(z[:, start:end], position_embeddings=(cos[:, start:end], sin[:, start:end]),
                                     attention_mask=None)[0])
            start = end
        return torch.cat(outputs, dim=1)

    return attend


def causal_additive_mask(new: int, past: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 1, new, past + new] additive mask: new position i sees every cached position and new positions <= i."""
    allowed = torch.ones(new, past + new, dtype=torch.bool, device=device).tril(diagonal=past)
    return additive_mask(allowed, dtype)[None, None]


def _load_state(directory: Path) -> dict[str, torch.Tensor]:
    safetensors_path = directory / WEIGHTS_NAME
    legacy_path = directory / LEGACY_WEIGHTS_NAME
    if safetensors_path.is_file():
        try:
            return load_file(safetensors_path)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"cannot read draft weights {safetensors_path} (corrupted?): {err}") from None
    if legacy_path.is_file():
        try:
            return torch.load(legacy_path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a bad pickle
            raise ValueError(f"cannot read draft weights {legacy_path} (corrupted?): {err}") from None
    raise ValueError(f"draft directory {directory} has no weights ({WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME})")
