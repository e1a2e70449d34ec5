"""Train a Jakiro (or EAGLE-2) draft head on the target's features.

    python -m jakiro.train.main --config train_smollm2 [--set train.num_epochs=2 ...] [--resume]
    torchrun --nproc_per_node 2 -m jakiro.train.main --config ...                     # 2 processes (gloo on CPU)
    accelerate launch --multi_gpu --num_processes 2 -m jakiro.train.main --config ...  # the same (--multi_gpu is
                                                                                       # needed on a CPU-only host)
    torchrun --nproc_per_node 2 -m jakiro.train.main --config ... --set train.grad_clip_mode=norm
        --set train.deepspeed_config=configs/deepspeed_zero2.json                     # DeepSpeed ZeRO-2 (or _zero3)

The reference's flags work too: ``--basepath`` (model.base_model_path), ``--tmpdir`` (train.data_dir), ``--cpdir``
(train.output_dir), ``--configpath`` (train.draft_config), ``--lr``, ``--bs``, ``--gradient-accumulation-steps``;
``--set`` overrides win over them. ``--resume`` continues from the last checkpoint in train.output_dir.
``accelerate launch --mixed_precision X`` sets the precision unless the config or ``--set`` names another
``train.mixed_precision`` (then it is an error, not a silent override).
``--set train.init_from=DIR`` starts from a trained draft (its architecture, vocabulary and weights) instead of a
new one: a second training stage, e.g. on other data, with a fresh optimizer and schedule.
``--set draft.init_from_target=true`` starts a new draft's decoder layer from the target's last one (logged: what
was copied, what was not); ``--set train.unroll_steps=K`` trains with training-time test (docs/training.md).
Outputs in train.output_dir: ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``checkpoints/step_N`` and
the trained draft directory ``draft/`` (loads with ``EaModel.from_pretrained(base, ea_model_path=...)``).
Exit code 2 with a one-line message for a bad config key or value, missing / empty / foreign / corrupted training
data (shards are checked against the manifest's hashes), a target that cannot be loaded, an output dir holding
another run (``--resume`` continues the same run, refusing other settings or inputs; ``--force`` replaces it), a
damaged checkpoint, or a non-finite loss or gradient. Ctrl-C or ``kill`` (SIGINT / SIGTERM) checkpoints after the
optimizer step under way and exits with 128 + the signal's number (130 / 143) saying how to go on; a second one
stops at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Subset

from jakiro.common.config import (ConfigError, JakiroConfig, _read_file, _resolve_path, add_config_arguments,
                           config_from_args)
from jakiro.model.draft import CONFIG_NAME, DraftHead, DraftHeadConfig
from jakiro.model.target_init import last_decoder_layer
from jakiro.drafts import resolve_draft_path
from jakiro.common.io import OutputExists, check_model_files, sha256_file
from jakiro.target import target_identity
from jakiro.ge_data.generate import MANIFEST
from jakiro.train.data import (DataError, check_compatible, check_same_target, open_dataset, open_feature_dir,
                               split_indices)
from jakiro.train.interrupts import Interrupted
from jakiro.train.provenance import weights_digest
from jakiro.train.trainer import TrainingError
from jakiro.train.vocab import coverage, most_frequent_tokens, token_frequencies

REFERENCE_FLAGS = {  # reference flag -> (config key, what it sets)
    "basepath": ("model.base_model_path", "target model directory or hub id (default: the config's, else the "
                                          "embedded SmolLM2)"),
    "tmpdir": ("train.data_dir", "feature shards from python -m jakiro.ge_data (default: the config's, data/features)"),
    "cpdir": ("train.output_dir", "checkpoints and the trained draft (default: the config's, outputs/train)"),
    "configpath": ("train.draft_config", "draft config.json fixing the architecture, e.g. jakiro/train/"
                                         "vicuna_7B_config.json (default: sized from the target with draft.*)"),
    "lr": ("train.lr", "peak AdamW learning rate (default: the config's, 9e-5)"),
    "bs": ("train.batch_size", "sequences per process per step (default: the config's, 4)"),
    "gradient_accumulation_steps": ("train.gradient_accumulation_steps",
                                    "micro-batches per optimizer step (default: the config's, 1)"),
}


def parse_args(argv: list[str] | None = None, prog: str = "python -m jakiro.train.main",
               epilog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=epilog)
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in train.output_dir (default: start a new run)")
    parser.add_argument("--force", action="store_true",
                        help="replace a previous run's outputs in train.output_dir (default: refuse)")
    for flag, (key, text) in REFERENCE_FLAGS.items():
        names = dict.fromkeys((f"--{flag.replace('_', '-')}", f"--{flag}"))
        parser.add_argument(*names, dest=flag, default=None, help=f"{text}; = --set {key}=...")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace, preset: Sequence[str] = ()) -> JakiroConfig:
    """The config file, then ``preset`` overrides (an alias's settings), the reference flags and ``--set``."""
    reference = [f"{key}={getattr(args, flag)}" for flag, (key, _) in REFERENCE_FLAGS.items()
                 if getattr(args, flag) is not None]
    args.overrides = list(preset) + reference + list(args.overrides)
    cfg = config_from_args(args)
    apply_launcher_precision(cfg, args)
    return cfg


def given_mixed_precision(args: argparse.Namespace) -> str | None:
    """``train.mixed_precision`` as the config file or a ``--set`` gives it (the last one wins), None if neither."""
    value = None
    if args.config is not None:
        value = _read_file(_resolve_path(args.config)).get("train", {}).get("mixed_precision")
    for text in args.overrides:
        key, _, raw = text.partition("=")
        if key.strip() == "train.mixed_precision":
            value = raw.strip()
    return value


def apply_launcher_precision(cfg: JakiroConfig, args: argparse.Namespace) -> None:
    """Respect ``accelerate launch --mixed_precision X`` (the launcher exports ``ACCELERATE_MIXED_PRECISION``).

    The launcher's value replaces ``train.mixed_precision`` when the config leaves it at its default or ``auto``;
    a config file or ``--set`` that names another value is a ConfigError rather than silently overriding the
    launcher. ``no`` is also what the launcher exports when given no flag, so it is not treated as a request.
    """
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    if launched in ("", "no") or launched == cfg.train.mixed_precision:
        return
    given = given_mixed_precision(args)
    if given not in (None, "auto"):
        raise ConfigError(f"train.mixed_precision: {given!r} conflicts with the launcher's --mixed_precision "
                          f"{launched}; drop one, or make them agree (--set train.mixed_precision={launched})")
    try:
        cfg.train = dataclasses.replace(cfg.train, mixed_precision=launched)
    except ConfigError as err:
        raise ConfigError(f"accelerate launch --mixed_precision {launched}: {err}") from None


def target_path(cfg: JakiroConfig) -> str:
    """``model.base_model_path``, or the embedded SmolLM2 directory when it is null."""
    if cfg.model.base_model_path is not None:
        return cfg.model.base_model_path
    from jakiro.common.assets import AssetError, ensure_smollm2

    try:
        return str(ensure_smollm2())
    except AssetError as err:
        raise ConfigError(f"model.base_model_path: null selects the embedded SmolLM2 target, which failed: "
                          f"{err}") from None


def target_config(path: str):
    """The target's text config (read before any weights, so a data mismatch is reported at once)."""
    from transformers import AutoConfig

    try:
        check_model_files(path)
        return AutoConfig.from_pretrained(path).get_text_config()
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.base_model_path: cannot read a model config from {path}: "
                          f"{str(err).splitlines()[0]}") from None


def load_target(cfg: JakiroConfig, path: str):
    """The target causal LM in ``model.dtype``."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.model.dtype))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.base_model_path: cannot load a causal LM from {path}: "
                          f"{str(err).splitlines()[0]}") from None


def load_target_modules(cfg: JakiroConfig, path: str):
    """The target's (input embedding, LM head) as float32 modules; the rest of the model is dropped."""
    model = load_target(cfg, path)
    return model.get_input_embeddings().float(), model.get_output_embeddings().float()


def draft_architecture(cfg: JakiroConfig, text_config) -> DraftHeadConfig:
    """From ``train.draft_config`` (a config.json or a draft dir), else sized from the target with ``draft.*``."""
    source = cfg.train.draft_config
    if source is None:
        d = cfg.draft
        if d.vocab_size is not None and d.vocab_size > text_config.vocab_size:
            raise ConfigError(f"draft.vocab_size: {d.vocab_size} exceeds the target's vocabulary of "
                              f"{text_config.vocab_size}")
        config = DraftHeadConfig.for_target(text_config, d.num_experts, d.experts_per_token, d.parallel_head,
                                            d.expert_intermediate_size, d.bias, d.vocab_size,
                                            input_norm=d.init_from_target)
    else:
        path = Path(source) / CONFIG_NAME if Path(source).is_dir() else Path(source)
        try:
            config = DraftHeadConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(f"train.draft_config: cannot read a draft config from {path}: {err}") from None
    for key in ("hidden_size", "vocab_size"):
        if getattr(config, key) != getattr(text_config, key):
            raise ConfigError(f"train.draft_config: the draft's {key} {getattr(config, key)} does not match the "
                              f"target's {getattr(text_config, key)}")
    return config


def initial_draft(cfg: JakiroConfig, text_config) -> DraftHead | None:
    """The draft named by ``train.init_from`` (None when unset), checked against the target."""
    source = cfg.train.init_from
    if source is None:
        return None
    if cfg.train.draft_config is not None:
        raise ConfigError("train.init_from and train.draft_config both fix the architecture; set only one")
    if cfg.draft.init_from_target:
        raise ConfigError("train.init_from and draft.init_from_target both set the initial weights; set only one")
    if cfg.draft.vocab_extra_data:
        raise ConfigError("draft.vocab_extra_data picks a new draft's vocabulary; a draft continued with "
                          "train.init_from keeps its own: unset one")
    try:
        draft = DraftHead.from_pretrained(source)
    except ValueError as err:
        raise ConfigError(f"train.init_from: {err}") from None
    for key in ("hidden_size", "vocab_size"):
        if getattr(draft.config, key) != getattr(text_config, key):
            raise ConfigError(f"train.init_from: the draft's {key} {getattr(draft.config, key)} does not match the "
                              f"target's {getattr(text_config, key)}")
    return draft


def extra_vocabulary_counts(cfg: JakiroConfig, identity: str, target: str, draft_config: DraftHeadConfig
                            ) -> torch.Tensor:
    """[V] answer-token counts of the training split of ``draft.vocab_extra_data`` (split as ``train.data_dir``'s,
    so a later stage training on that data never picks its vocabulary from its own held-out conversations)."""
    extra, info = open_feature_dir(cfg.draft.vocab_extra_data, "draft.vocab_extra_data")
    what = f"draft.vocab_extra_data {cfg.draft.vocab_extra_data}"
    check_compatible(info, draft_config.hidden_size, draft_config.vocab_size, target, what)
    check_same_target(info, identity, target, what)
    extra_train, _ = split_indices(len(extra), cfg.train.test_fraction, cfg.train.seed)
    return token_frequencies(extra, extra_train, draft_config.vocab_size, progress=os.environ.get("RANK", "0") == "0")


def build_trainer(cfg: JakiroConfig):
    """Open the data, load the target's frozen modules, size the draft and create the :class:`Trainer`."""
    from jakiro.train.trainer import Trainer

    dataset, info = open_dataset(cfg)
    path = target_path(cfg)
    text_config = target_config(path)
    check_compatible(info, text_config.hidden_size, text_config.vocab_size, path)
    init = initial_draft(cfg, text_config)
    draft_config = draft_architecture(cfg, text_config) if init is None else init.config
    model = load_target(cfg, path)
    embed, head = model.get_input_embeddings().float(), model.get_output_embeddings().float()
    target_layer = None
    if cfg.draft.init_from_target:
        index, layer = last_decoder_layer(model)
        target_layer = (index, {k: v.float() for k, v in layer.state_dict().items()})
    del model
    identity = target_identity(text_config, head.weight)
    check_same_target(info, identity, path)
    train_idx, test_idx = split_indices(len(dataset), cfg.train.test_fraction, cfg.train.seed)
    vocabulary = None
    if init is not None:
        vocabulary = init.d2t
    elif draft_config.draft_vocab_size is not None:
        counts = token_frequencies(dataset, train_idx, draft_config.vocab_size,
                                   progress=os.environ.get("RANK", "0") == "0")
        extra = None
        if cfg.draft.vocab_extra_data:
            extra = extra_vocabulary_counts(cfg, identity, path, draft_config)
        vocabulary = most_frequent_tokens(counts if extra is None else counts + extra, draft_config.draft_vocab_size)
        if os.environ.get("RANK", "0") == "0":
            also = "" if extra is None else f" and {coverage(extra, vocabulary):.1%} of draft.vocab_extra_data's"
            print(f"draft vocabulary: {draft_config.draft_vocab_size} of {draft_config.vocab_size} tokens, covering "
                  f"{coverage(counts, vocabulary):.1%} of the training answers' tokens{also}", file=sys.stderr)
    init_digest = None if init is None else weights_digest(resolve_draft_path(cfg.train.init_from))
    inputs = {"data_sha256": info["data_sha256"], "target_identity": identity, "init_from": init_digest}
    if cfg.draft.vocab_extra_data and draft_config.draft_vocab_size is not None:
        inputs["vocab_extra_data_sha256"] = sha256_file(Path(cfg.draft.vocab_extra_data) / MANIFEST)
    return Trainer(cfg, draft_config, embed, head, Subset(dataset, train_idx), Subset(dataset, test_idx), vocabulary,
                   None if init is None else init.state_dict(),
                   run_inputs=inputs, target_layer=target_layer, about_data=info["about"])


def main(argv: list[str] | None = None, prog: str = "python -m jakiro.train.main", preset: Sequence[str] = (),
         epilog: str | None = None) -> int:
    """Command line entry point; ``prog``, ``preset`` overrides and ``epilog`` serve the thin aliases
    (``jakiro_star.train.main``, ``jakiro/train/main_deepspeed.py``)."""
    args = parse_args(argv, prog, epilog)
    try:
        cfg = resolve_config(args, preset)
        trainer = build_trainer(cfg)
        out = trainer.train(resume=args.resume, force=args.force)
    except (ConfigError, DataError, TrainingError, OutputExists, OSError) as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        if os.environ.get("RANK", "0") == "0":
            print(stop, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C / kill while the first was being honoured
        if os.environ.get("RANK", "0") == "0":
            print("stopped at once: rerun the same command with --resume to go on from the last checkpoint, if "
                  "any", file=sys.stderr)
        return 130
    if trainer.accelerator.is_main_process:
        print(f"trained draft: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
