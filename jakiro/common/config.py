"""One typed config system for every Jakiro entry point.

A run is described by a `JakiroConfig` with eight sections (model, draft, tree, generation, data, regenerate, train,
eval), each a dataclass whose defaults are the reference settings. A YAML or JSON file may set any subset of keys; the
command line overrides single keys with `--set section.key=value`. Unknown keys, wrong types and out-of-range
values raise `ConfigError`, whose message names the dotted key, what was expected and what was given.

    cfg = load_config("smollm2", ["tree.depth=6", "train.lr=1e-4"])
    save_config(cfg, "outputs/run/config.yaml")  # record the resolved config next to a run's outputs
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import yaml

from jakiro.common.io import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DTYPES = ("float32", "bfloat16", "float16")
# how a node's children are proposed by the draft's experts (tree.sibling_mode): the merged mixture's top-k, or each
# routed expert its own share (the dynamic tree, jakiro.decoding.drafter; Jakiro*'s draws, jakiro_star.proposals)
SIBLING_MODES = ("mixture", "per_expert")


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or holds a value out of range."""


# YAML loader with YAML 1.2-style scalars: only true/false are booleans (not yes/no/on/off), and exponent floats
# without a dot ("9e-5") are floats rather than strings.
class _Loader(yaml.SafeLoader):
    pass


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"list of {len(typing.get_args(tp))} ({', '.join(_type_name(a) for a in typing.get_args(tp))})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp` (int -> float, list -> tuple) or raise a ConfigError naming `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, float) and not math.isfinite(value):  # no setting means anything by NaN or infinity
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if origin in (typing.Union, types.UnionType):  # only Optional[X] is used
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _coerce(value, inner, key)
        except ConfigError:
            pass  # re-raise below with the full expected type
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):  # str, bool, config sections
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


class _Section:
    """Base of the section dataclasses: coerces every field to its declared type, then runs `validate`."""

    SECTION: ClassVar[str]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f"{self.SECTION}.{f.name}"))
        self.validate()

    def validate(self) -> None:
        pass

    def _require(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{self.SECTION}.{name}: expected {expected}, got {getattr(self, name)!r}")

    def _require_choice(self, name: str, choices: Sequence[str]) -> None:
        self._require(name, getattr(self, name) in choices, "one of " + ", ".join(map(repr, choices)))


@dataclass
class ModelConfig(_Section):
    SECTION: ClassVar[str] = "model"
    base_model_path: str | None = None  # target model dir or hub id; None = the embedded default target
    draft_path: str | None = None  # trained draft dir (config.json + weights); None = no draft / train a new one
    dtype: str = "bfloat16"  # weights and compute dtype: float32, bfloat16, float16; auto: hardware.auto_dtype
    device: str = "cpu"  # torch device string, e.g. "cpu", "cuda", "cuda:1"
    chat_template: str = "auto"  # "auto" = the tokenizer's own; or a FastChat name: "vicuna", "llama-2", "llama-3"

    def validate(self) -> None:
        self._require("device", bool(self.device), "a non-empty device string")
        from jakiro.common.hardware import device_problem

        problem = device_problem(self.device)
        if problem:
            raise ConfigError(f"model.device: {problem}")
        for name in ("base_model_path", "draft_path"):
            path = getattr(self, name)
            if path and str(path).startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir():
                what = "not a directory" if Path(path).expanduser().exists() else "not found"
                raise ConfigError(f"model.{name}: {path} is {what} (give a model directory, a hub id, or null)")
        if self.dtype == "auto":  # resolved here, so every user of the config (and every record) sees the real dtype
            from jakiro.common.hardware import auto_dtype

            self.dtype = auto_dtype(self.device)
        self._require_choice("dtype", (*DTYPES, "auto"))
        self._require("chat_template", bool(self.chat_template), "'auto' or a template name")


@dataclass
class DraftConfig(_Section):
    SECTION: ClassVar[str] = "draft"
    num_experts: int = 2  # experts in the draft's MoE block (1 = a dense EAGLE-2 style draft)
    experts_per_token: int = 2  # experts routed per token (top-k of the router)
    expert_intermediate_size: int | None = None  # width of each expert's SwiGLU MLP; None = the target's hidden
    # size (the reference's choice); the target's intermediate_size gives EAGLE-2's width (docs/training.md)
    parallel_head: bool = True  # second (contrastive / CEPD) head predicting the token after next
    bias: bool = True  # biases in the draft's fc and attention projections (reference: false for LLaMA-3)
    vocab_size: int | None = None  # draft vocabulary: the N most frequent training tokens; None = the target's own
    vocab_extra_data: str | None = None  # a features dir whose training split's answer tokens are counted too when
    # picking that vocabulary (e.g. the target's own answers of a later stage); None = train.data_dir's only
    init_from_target: bool = False  # a new draft's decoder layer starts from the target's last decoder layer
    # (attention and both norms -- the draft gets an input norm for it --; experts where the shapes match); false =
    # random initialization, no input norm (the reference)

    def validate(self) -> None:
        self._require("num_experts", self.num_experts >= 1, "an integer >= 1")
        self._require("vocab_size", self.vocab_size is None or self.vocab_size >= 1, "null or an integer >= 1")
        self._require(
            "experts_per_token", 1 <= self.experts_per_token <= self.num_experts,
            f"an integer in [1, num_experts={self.num_experts}]",
        )
        sz = self.expert_intermediate_size
        self._require("expert_intermediate_size", sz is None or sz >= 1, "null or an integer >= 1")
        self._require("parallel_head", not self.parallel_head or self.num_experts >= 2,
                      f"false when num_experts < 2 (num_experts={self.num_experts})")


@dataclass
class TreeConfig(_Section):
    SECTION: ClassVar[str] = "tree"
    total_token: int = 60  # nodes verified per step, root included; -1 = choose by timing the target on this device
    depth: int = 5  # drafting steps (tree depth below the root)
    top_k: int = 10  # children expanded per node and nodes kept per layer
    sibling_mode: str = "mixture"  # how experts propose children: "mixture" (merged top-k) or "per_expert"
    static_tree: str = "mc_sim_7b_63"  # method jakiro_star: static tree name (total_token/depth/top_k unused)
    lookup_tokens: int = 0  # methods jakiro, jakiro_star: also verify up to this many prompt-lookup tokens (0 = off)
    lookup_ngram: int = 3  # longest n-gram matched by the prompt lookup

    def validate(self) -> None:
        from jakiro_star.tree_choices import STATIC_TREES

        self._require("total_token", self.total_token == -1 or self.total_token >= 2, "-1 or an integer >= 2")
        self._require("depth", self.depth >= 1, "an integer >= 1")
        self._require("top_k", self.top_k >= 1, "an integer >= 1")
        self._require("lookup_tokens", self.lookup_tokens >= 0, "an integer >= 0 (0 = off)")
        self._require("lookup_ngram", self.lookup_ngram >= 1, "an integer >= 1")
        self._require_choice("sibling_mode", SIBLING_MODES)
        self._require_choice("static_tree", tuple(STATIC_TREES))


@dataclass
class GenerationConfig(_Section):
    SECTION: ClassVar[str] = "generation"
    temperature: float = 0.0  # 0 = greedy; > 0 = lossless sampling verification
    top_p: float = 1.0  # nucleus sampling mass in (0, 1]; 1 = off
    top_k: int = 0  # sample from the k most likely tokens; 0 = off
    max_new_tokens: int = 512  # stop after this many generated tokens
    max_length: int = 2048  # hard cap on prompt + generated tokens (KV cache size)
    seed: int = 0  # seed of the torch generator used for sampling and acceptance
    exact_verification: bool = False  # attention per tree node as in one-token decoding, row-inconsistent linear
    # layers one row at a time: output equal to plain decoding bit for bit; costs speed (docs/cpu.md)

    def validate(self) -> None:
        self._require("temperature", self.temperature >= 0, "a number >= 0")
        self._require("top_p", 0 < self.top_p <= 1, "a number in (0, 1]")
        self._require("top_k", self.top_k >= 0, "an integer >= 0")
        self._require("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1")
        self._require("max_length", self.max_length >= 2, "an integer >= 2")


@dataclass
class DataConfig(_Section):
    SECTION: ClassVar[str] = "data"
    input_path: str | None = None  # ShareGPT conversations: JSON, JSONL or datasets dir; None = recovered ShareGPT
    output_dir: str = "data/features"  # where feature shards are written
    shuffle_seed: int = 42  # conversations are shuffled with this seed before selecting [start, end)
    start: int = 0  # first conversation index (after shuffling)
    end: int | None = None  # one past the last index; None = all (the reference uses 68000)
    max_len: int = 2048  # truncate tokenized conversations to this many tokens
    chat_template: str | None = None  # None = model.chat_template
    system_prompt: str | None = None  # None = the template's default system prompt
    shard_size: int = 100  # conversations per shard file (the reference writes one file per conversation)
    features_dtype: str = "bfloat16"  # dtype of the stored hidden states: float32, bfloat16 or float16

    def validate(self) -> None:
        self._require("start", self.start >= 0, "an integer >= 0")
        self._require("end", self.end is None or self.end > self.start, f"null or an integer > start={self.start}")
        self._require("max_len", self.max_len >= 2, "an integer >= 2")
        self._require("shard_size", self.shard_size >= 1, "an integer >= 1")
        self._require_choice("features_dtype", DTYPES)


@dataclass
class RegenerateConfig(_Section):
    SECTION: ClassVar[str] = "regenerate"
    output_path: str = "data/regenerated.jsonl"  # the conversations with the target's own answers (JSONL)
    max_new_tokens: int = 256  # new tokens per assistant turn
    temperature: float = 0.0  # 0 = the target's greedy answers; > 0 = sampled answers
    batch_size: int = 32  # rows decoding together (static) / prompts per left-padded batch (generate)
    seed: int = 0  # sampling seed (each batch is seeded with seed + its index, so a resumed run matches)
    # "static": jakiro.ge_data.decode (prompts prefilled one by one, preallocated KV cache, finished rows leave the
    # batch); "generate": transformers' generate on the left-padded batch (the previous path, slower on CPUs)
    decoder: str = "static"
    # the static decoder's linear kernels: "reference" = each row gets the bits F.linear gives it alone (every answer
    # the prompt's answer alone, bit for bit; one row per call where F.linear batches none exactly, as in float32 on
    # AVX2-only CPUs); "batch_invariant" = also a kernel that batches rows exactly but rounds unlike F.linear, where
    # it batches more (answers independent of the batch, faster on AVX2 CPUs in float32: docs/pipeline-throughput.md)
    kernels: str = "batch_invariant"

    def validate(self) -> None:
        self._require_choice("decoder", ("static", "generate"))
        self._require_choice("kernels", ("batch_invariant", "reference"))
        self._require("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1")
        self._require("temperature", self.temperature >= 0, "a number >= 0")
        self._require("batch_size", self.batch_size >= 1, "an integer >= 1")


@dataclass
class TrainConfig(_Section):
    SECTION: ClassVar[str] = "train"
    data_dir: str = "data/features"  # feature shards from data generation
    output_dir: str = "outputs/train"  # checkpoints and the final draft dir
    lr: float = 9e-5  # peak AdamW learning rate
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 1e-3  # AdamW weight decay
    schedule: str = "cosine"  # learning-rate schedule after warmup: "cosine", "linear" or "constant"
    warmup_steps: int = 2000  # linear warmup steps
    num_epochs: int = 20  # epochs (run exactly this many; the reference ran one extra)
    batch_size: int = 4  # sequences per process per step
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    v_w: float = 1.0  # weight of the feature regression (SmoothL1) losses
    p_w: float = 0.1  # weight of the token distillation (soft cross-entropy) losses
    parallel_w: float = 0.5  # weight c of the parallel head's losses: v_w(V1 + c V2) + p_w(P1 + c P2)
    grad_clip: float = 0.5  # gradient clipping threshold; 0 = off
    grad_clip_mode: str = "value"  # "value" (reference, clip_grad_value_) or "norm"
    noise: str = "uniform"  # input-feature noise: "uniform" (amplitude std*512/L), "gaussian" or "none"
    noise_mean: float = 0.0  # mean of the gaussian noise
    noise_std: float = 0.2  # noise scale
    max_len: int = 2048  # truncate stored sequences to this many tokens
    packing: bool = False  # true: a batch's conversations packed into one row (no padding, attention kept within each
    # conversation); false: right-padded rows (the reference); same losses either way
    batch_tokens: int = 0  # > 0: batches of at most this many real tokens per process (batch_size unused); 0 = batches
    # of batch_size sequences
    # accelerate mixed precision: "no", "bf16" or "fp16"; auto: "bf16" where hardware.auto_dtype picks bf16 for the
    # training device (a GPU, a CPU with AMX / AVX512-BF16), else "no" (an AVX2 CPU emulates bf16 products)
    mixed_precision: str = "bf16"
    deepspeed_config: str | None = None  # DeepSpeed JSON for accelerate's plugin; None = plain DDP / single process
    num_workers: int = 0  # DataLoader workers
    test_fraction: float = 0.05  # share of sequences held out for evaluation (split shuffled with the seed)
    save_every: int = 5  # save a checkpoint (and evaluate) every this many epochs, and after the last
    seed: int = 0  # seed for initialization, shuffling and noise
    draft_config: str | None = None  # draft config.json (or draft dir) fixing the architecture; None = from draft.*
    init_from: str | None = None  # draft dir (or shipped:NAME) to continue training from: its architecture,
    # vocabulary and weights (a new run with a fresh optimizer and schedule); None = a new draft
    checkpoint_steps: int = 1000  # also checkpoint every this many optimizer steps; 0 = only at epoch ends
    stop_after_steps: int = 0  # stop (with a checkpoint) after this many optimizer steps; 0 = run every epoch
    keep_checkpoints: int = 0  # delete all but the newest this many checkpoints after each save; 0 = keep all
    load_balance_w: float = 0.0  # weight of the Switch load-balancing loss on head-1 routing; 0 = off
    eval_draft_steps: int = 4  # autoregressive draft steps k = 0..n-1 scored on the test set
    unroll_steps: int = 1  # training-time test: the draft runs this many steps per training position, every step
    # after the first on its own previous output (as when drafting), with a loss at each; 1 = no unrolling
    unroll_decay: float = 0.8  # loss weight of unrolled step j (0-based) = unroll_decay ** j (step 0 weighs 1)
    report_to: str = "none"  # accelerate trackers: "none", "tensorboard", "wandb" or "tensorboard,wandb"

    def validate(self) -> None:
        self._require("lr", self.lr > 0, "a number > 0")
        self._require("betas", all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
        self._require("weight_decay", self.weight_decay >= 0, "a number >= 0")
        self._require_choice("schedule", ("cosine", "linear", "constant"))
        for name in ("warmup_steps", "num_workers"):
            self._require(name, getattr(self, name) >= 0, "an integer >= 0")
        for name in ("num_epochs", "batch_size", "gradient_accumulation_steps", "max_len", "save_every",
                     "unroll_steps"):
            self._require(name, getattr(self, name) >= 1, "an integer >= 1")
        for name in ("checkpoint_steps", "stop_after_steps", "keep_checkpoints", "eval_draft_steps",
                     "batch_tokens"):
            self._require(name, getattr(self, name) >= 0, "an integer >= 0")
        for name in ("v_w", "p_w", "parallel_w", "grad_clip", "noise_std", "load_balance_w"):
            self._require(name, getattr(self, name) >= 0, "a number >= 0")
        self._require("unroll_decay", self.unroll_decay > 0, "a number > 0 (step j's loss weight is "
                      "unroll_decay ** j)")
        self._require_choice("grad_clip_mode", ("value", "norm"))
        self._require_choice("noise", ("uniform", "gaussian", "none"))
        if self.mixed_precision == "auto":  # resolved here, like model.dtype, so records carry what ran
            from jakiro.common.hardware import auto_dtype

            self.mixed_precision = "bf16" if auto_dtype("auto") == "bfloat16" else "no"  # "auto": GPU if any, else CPU
        self._require_choice("mixed_precision", ("no", "bf16", "fp16", "auto"))
        self._require("test_fraction", 0 <= self.test_fraction < 1, "a number in [0, 1)")
        trackers = self.report_to.split(",")
        self._require("report_to", self.report_to == "none" or all(t in ("tensorboard", "wandb") for t in trackers),
                      "'none' or a comma-separated list of 'tensorboard', 'wandb'")


@dataclass
class EvalConfig(_Section):
    SECTION: ClassVar[str] = "eval"
    bench_name: str = "mt_bench"  # benchmark name, used in the output path
    question_file: str | None = None  # FastChat question jsonl; None = the embedded MT-bench questions
    answer_file: str | None = None  # output jsonl; None = outputs/<bench>/<model_id>-<method>-temperature-<T>.jsonl
    model_id: str = "jakiro"  # name recorded in each answer record
    # "jakiro", "jakiro_star" (static sampled tree), "baseline" (plain), "pld", "assisted", "oracle" (the target
    # drafts for itself: the tau bound of a deterministic tree of tree.total_token nodes)
    method: str = "jakiro"
    assistant_model_path: str | None = None  # assistant model for method "assisted" (Hugging Face assisted generation)
    prompt_lookup_num_tokens: int = 10  # tokens proposed per step by method "pld"
    system_prompt: str | None = None  # None = the chat template's default (Llama-2 safety prompt for llama-2/llama-3)
    max_new_tokens: int | None = None  # per turn; None = generation.max_new_tokens
    temperature: float | None = None  # None = generation.temperature
    num_choices: int = 1  # answers per question; choice i is generated with seed generation.seed + i
    warmup: int = 3  # untimed runs over the first question before timing
    question_begin: int | None = None  # first question (index into the file); None = from the start
    question_end: int | None = None  # one past the last question; None = to the end

    def validate(self) -> None:
        self._require_choice("method", ("jakiro", "jakiro_star", "baseline", "pld", "assisted", "oracle"))
        self._require("prompt_lookup_num_tokens", self.prompt_lookup_num_tokens >= 1, "an integer >= 1")
        self._require("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1,
                      "null or an integer >= 1")
        self._require("temperature", self.temperature is None or self.temperature >= 0, "null or a number >= 0")
        self._require("num_choices", self.num_choices >= 1, "an integer >= 1")
        self._require("warmup", self.warmup >= 0, "an integer >= 0")
        self._require("question_begin", self.question_begin is None or self.question_begin >= 0,
                      "null or an integer >= 0")


@dataclass
class JakiroConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # target and draft checkpoints, dtype, device
    draft: DraftConfig = field(default_factory=DraftConfig)  # architecture of a new draft
    tree: TreeConfig = field(default_factory=TreeConfig)  # dynamic tree size
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # decoding settings
    data: DataConfig = field(default_factory=DataConfig)  # training-data generation
    regenerate: RegenerateConfig = field(default_factory=RegenerateConfig)  # self-distilled conversations
    train: TrainConfig = field(default_factory=TrainConfig)  # draft training
    eval: EvalConfig = field(default_factory=EvalConfig)  # answer generation for benchmarks

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _coerce(getattr(self, f.name), hints[f.name], f.name)


def _suggest(name: str, valid: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"


def _section_fields(section: str) -> dict[str, Any]:
    """Field name -> type hint of a section; ConfigError if the section doesn't exist."""
    sections = {f.name: f for f in dataclasses.fields(JakiroConfig)}
    if section not in sections:
        raise ConfigError(f"unknown section {section!r}{_suggest(section, list(sections))}")
    cls = typing.get_type_hints(JakiroConfig)[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_key(section: str, key: str) -> Any:
    """Type hint of `section.key`; ConfigError if the key doesn't exist."""
    hints = _section_fields(section)
    if key not in hints:
        raise ConfigError(f"unknown key '{section}.{key}'{_suggest(key, list(hints), f'{section}.')}")
    return hints[key]


def _resolve_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    candidates = [p]
    if not p.is_absolute():
        candidates += [CONFIG_DIR / (p.name + ext) for ext in ("", ".yaml", ".yml", ".json")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {str(path)!r} not found (also looked for it by name in configs/)")


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot parse: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        _section_fields(str(section))
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a mapping of keys, got {type(values).__name__} {values!r}")
        for key in values:
            _check_key(section, str(key))
    return data


def _parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value); the value is a YAML scalar or flow list."""
    dotted, sep, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not key:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    tp = _check_key(section, key)
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else raw
    except yaml.YAMLError as e:
        raise ConfigError(f"{section}.{key}: cannot parse value {raw!r}: {e}") from e
    # A string field takes the text as written, so `eval.model_id=123` means "123"; "null" still clears an Optional.
    if value is not None and not isinstance(value, str) and (tp is str or str in typing.get_args(tp)):
        value = raw.strip()
    return section, key, value


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> JakiroConfig:
    """Defaults, updated by the file at `path` (YAML or JSON; a bare name is looked up in configs/), then by
    `section.key=value` overrides, in order."""
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        values = {s: dict(v) for s, v in _read_file(_resolve_path(path)).items()}
    for text in overrides:
        section, key, value = _parse_override(text)
        values.setdefault(section, {})[key] = value
    hints = typing.get_type_hints(JakiroConfig)
    return JakiroConfig(**{s: hints[s](**v) for s, v in values.items()})


def to_dict(cfg: JakiroConfig) -> dict[str, dict[str, Any]]:
    """Plain nested dict (tuples as lists), ready for YAML or JSON."""
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {s: {k: plain(v) for k, v in dataclasses.asdict(sec).items()}
            for s, sec in ((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))}


def save_config(cfg: JakiroConfig, path: str | os.PathLike) -> None:
    """Write `cfg` as JSON (for a .json path) or YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(cfg)
    text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config PATH` and repeatable `--set section.key=value` to an entry point's parser."""
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="YAML/JSON config file, or the name of one in configs/ (e.g. smollm2); "
                             "default: %(default)s (None: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override one config key, e.g. --set tree.depth=6 (repeatable; default: none)")


def config_from_args(args: argparse.Namespace) -> JakiroConfig:
    """The config named by arguments added with `add_config_arguments`."""
    return load_config(args.config, args.overrides)
