"""Training checkpoints that resume without unpickling anything: tensors in safetensors files, the rest in JSON.

A checkpoint folder ``checkpoints/step_N`` of a single-process or DDP run holds:

* ``model.safetensors``: the trained module's state dict (the draft's weights and buffers);
* ``optimizer.safetensors``: the optimizer's per-parameter tensors as ``state/{param}/{name}`` (AdamW: ``step``,
  ``exp_avg``, ``exp_avg_sq``), with its param groups and non-tensor state as JSON in the file's metadata;
* ``state.json``: the loop position and running sums, the scheduler's and the gradient scaler's state.

A crafted or damaged folder can therefore not run code; a truncated file is an error naming it. DeepSpeed writes
its own (pickled) format through ``accelerate.save_state``: for it :func:`file_hashes` records every file's SHA-256
in the run record when the checkpoint is written, and :func:`check_hashes` refuses to load a folder holding any
file that the run did not write.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from jakiro.common.io import atomic_write, atomic_write_text, sha256_file

FORMAT = "jakiro-train-checkpoint/1"
MODEL, OPTIMIZER, STATE = "model.safetensors", "optimizer.safetensors", "state.json"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from; the message names the file and what to do."""


def _tensors(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save(folder: str | Path, model_state: dict, optimizer_state: dict, extra: dict) -> None:
    """Write a checkpoint folder (see the module docstring); ``extra`` must be JSON-ready."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MODEL, lambda tmp: save_file(_tensors(model_state), str(tmp)))
    tensors, scalars = {}, {}
    for param, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{param}/{name}"] = value
            else:
                scalars.setdefault(str(param), {})[name] = value
    metadata = {"format": FORMAT, "param_groups": json.dumps(optimizer_state["param_groups"]),
                "scalars": json.dumps(scalars)}
    atomic_write(folder / OPTIMIZER, lambda tmp: save_file(_tensors(tensors), str(tmp), metadata=metadata))
    atomic_write_text(folder / STATE, json.dumps({"format": FORMAT, **extra}, indent=1) + "\n")


def _read_tensors(path: Path) -> tuple[dict, dict]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; delete {path.parent} to resume "
                              "from the one before")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as err:  # safetensors' own error types for a truncated or overwritten file
        raise CheckpointError(f"{path} is truncated or corrupted ({err}); delete {path.parent} to resume from the "
                              "checkpoint before it") from None


def load(folder: str | Path) -> tuple[dict, dict, dict]:
    """(model state, optimizer state, extra) of a checkpoint folder written by :func:`save`."""
    folder = Path(folder)
    if not (folder / STATE).is_file() and any(folder.glob("*.pkl")):
        raise CheckpointError(f"{folder} is a checkpoint in accelerate's pickled format (written by an older "
                              "version); it is not loaded, since unpickling can run code: train again from scratch "
                              "in a new train.output_dir")
    model_state, _ = _read_tensors(folder / MODEL)
    tensors, metadata = _read_tensors(folder / OPTIMIZER)
    try:
        extra = json.loads((folder / STATE).read_text(encoding="utf-8"))
        groups = json.loads(metadata["param_groups"])
        scalars = json.loads(metadata["scalars"])
    except (OSError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}: {STATE} or {OPTIMIZER} is missing, truncated or corrupted ({err}); "
                              f"delete {folder} to resume from the checkpoint before it") from None
    if extra.get("format") != FORMAT:
        raise CheckpointError(f"{folder / STATE}: format {extra.get('format')!r}, expected {FORMAT!r}")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, param, name = key.split("/", 2)
        state.setdefault(int(param), {})[name] = value
    for param, values in scalars.items():
        state.setdefault(int(param), {}).update(values)
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return model_state, {"state": state, "param_groups": groups}, extra


def file_hashes(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def check_hashes(folder: str | Path, recorded: dict[str, str] | None) -> None:
    """CheckpointError unless ``folder`` holds exactly the files the run recorded, with the recorded hashes."""
    folder = Path(folder)
    if not recorded:
        raise CheckpointError(f"{folder}: the run record holds no file hashes for this checkpoint, so its pickled "
                              "files are not loaded (unpickling can run code); train again in a new "
                              "train.output_dir")
    found = file_hashes(folder)
    changed = sorted(set(found) ^ set(recorded)) + sorted(k for k in found if k in recorded and found[k] !=
                                                          recorded[k])
    if changed:
        raise CheckpointError(f"{folder}: files added, missing or changed since the run wrote them "
                              f"({', '.join(changed[:5])}); they are not loaded (unpickling can run code): delete "
                              f"{folder} to resume from the checkpoint before it")
