"""How a training run's processes work together: the Accelerator for one process, DDP or DeepSpeed ZeRO.

``make_accelerator(cfg, draft_config)`` picks from ``cfg.train``: with ``train.deepspeed_config`` (a DeepSpeed JSON,
see ``configs/deepspeed_zero{2,3}.json``) accelerate's DeepSpeed plugin, its ``"auto"`` batch size, accumulation and
clipping entries filled from the train config (:func:`deepspeed_settings`); otherwise DDP, which tolerates experts no
position routes to. On a machine without CUDA the processes talk over gloo; a plain ``python -m`` run gets the
single-process environment DeepSpeed expects, and a stale torch-extension build lock is named before DeepSpeed's JIT
builds could hang on it. Without CUDA, DeepSpeed is told the CPU is its accelerator (``DS_ACCELERATOR=cpu``, unless
the user set it): accelerate imports DeepSpeed lazily, at the first checkpoint, and DeepSpeed's own guess would print
"Setting accelerator to CPU. If you have GPU ..., we were unable to detect it" into every CPU run's log.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, is_tensorboard_available
from accelerate.utils import is_wandb_available

from jakiro.common.config import ConfigError, JakiroConfig
from jakiro.model.draft import DraftHeadConfig
from jakiro.train.extension_locks import warn_stale_extension_locks


def deepspeed_settings(path: str, train) -> dict:
    """Read a DeepSpeed JSON and fill its ``"auto"`` micro-batch, accumulation and clipping entries from ``train``.

    Explicit values must agree with the train config (one source of truth); DeepSpeed clips by norm only.
    """
    try:
        settings = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"train.deepspeed_config: cannot read {path}: {err}") from None
    if train.grad_clip > 0 and train.grad_clip_mode == "value":
        raise ConfigError("train.grad_clip_mode: DeepSpeed clips gradients by norm only; set train.grad_clip_mode="
                          "norm (or train.grad_clip=0) with train.deepspeed_config")
    wanted = {"train_micro_batch_size_per_gpu": train.batch_size,
              "gradient_accumulation_steps": train.gradient_accumulation_steps,
              "gradient_clipping": train.grad_clip}
    for key, value in wanted.items():
        found = settings.get(key, "auto")
        if found == "auto":
            settings[key] = value
        elif found != value:
            raise ConfigError(f"train.deepspeed_config: {path} sets {key}={found} but the train config implies "
                              f"{value}; use \"auto\" in the JSON")
    for key in ("optimizer", "scheduler"):
        if key in settings:
            raise ConfigError(f"train.deepspeed_config: remove {key!r} from {path}; the train config sets it")
    return settings


def _trackers(report_to: str) -> list[str]:
    if report_to == "none":
        return []
    names = report_to.split(",")
    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    missing = [n for n in names if not available[n]]
    if missing:
        raise ConfigError(f"train.report_to: {', '.join(missing)} not installed (pip install {' '.join(missing)})")
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_accelerator(cfg: JakiroConfig, draft_config: DraftHeadConfig) -> Accelerator:
    """The Accelerator for ``cfg.train``: DeepSpeed plugin, or DDP (``cpu=True`` without CUDA, so that several CPU
    processes really form one gloo group)."""
    train = cfg.train
    on_cuda = torch.cuda.is_available()
    common = dict(mixed_precision=train.mixed_precision, gradient_accumulation_steps=train.gradient_accumulation_steps,
                  project_dir=train.output_dir, log_with=_trackers(train.report_to) or None)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if not on_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if train.deepspeed_config:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
            raise ConfigError("train.deepspeed_config: accelerate's --cpu / ACCELERATE_USE_CPU turns DeepSpeed off; "
                              "launch with torchrun or `accelerate launch --num_processes N` without --cpu")
        settings = deepspeed_settings(train.deepspeed_config, train)
        if os.environ.get("LOCAL_RANK", "0") == "0":
            warn_stale_extension_locks()  # before DeepSpeed's JIT builds, which would hang on such a lock
        if "LOCAL_RANK" not in os.environ:  # plain `python -m`: DeepSpeed wants a launcher's environment
            os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
        handlers = [] if on_cuda else [InitProcessGroupKwargs(backend="gloo")]
        accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=settings), kwargs_handlers=handlers,
                                  **common)
    else:
        # DDP must tolerate experts that no position of a batch routes to
        sparse = draft_config.num_experts_per_tok < draft_config.num_local_experts or (
            draft_config.parallel_head and draft_config.num_local_experts > 2)
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=sparse)]
        accelerator = Accelerator(cpu=not on_cuda, kwargs_handlers=handlers, **common)
    if accelerator.num_processes != launched:
        raise ConfigError(f"{launched} processes were launched but accelerate formed a group of "
                          f"{accelerator.num_processes}; launch with torchrun or `accelerate launch --num_processes N`")
    return accelerator
