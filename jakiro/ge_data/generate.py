"""Training-data generation: the target's features for ShareGPT conversations, written as resumable shards.

    python -m jakiro.ge_data --config ge_data_smollm2 [--set data.end=1000 ...] [--max-shards K] [--quiet]
    accelerate launch --multi_gpu --num_processes 2 -m jakiro.ge_data --config ...  # 2 CPU processes (gloo)
    accelerate launch --multi_gpu --num_processes 4 -m jakiro.ge_data --config ... --set model.device=cuda  # 4 GPUs

(``--multi_gpu`` only picks accelerate's multi-process launcher; with ``model.device=cpu`` the processes form a
CPU group. ``accelerate launch --cpu`` always starts a single process.)

Pipeline: load conversations (``data.input_path``: JSON list, JSONL or a ``datasets.load_from_disk`` directory;
None = the recovered ShareGPT set of ``jakiro.common.assets``), shuffle with ``data.shuffle_seed``, select
``[start, end)``, cut into shards of ``data.shard_size`` conversations. Process ``r`` of ``N`` takes shards
``r, r + N, ...``. Each conversation is formatted and masked (:func:`jakiro.common.chat_templates.encode`), truncated to
``data.max_len`` tokens and run through the target one at a time; empty or malformed ones are skipped and counted.

Shard ``shard_{i:05d}.safetensors`` (written to a temporary file, then renamed) holds, for its ``n`` kept
conversations with ``T`` tokens in all:

* ``input_ids`` int32 [T], ``loss_mask`` uint8 [T], ``hidden_state`` [T, H] in ``data.features_dtype``:
  the conversations concatenated; conversation ``j`` is rows ``offsets[j]:offsets[j + 1]``;
* ``offsets`` int64 [n + 1]; ``index`` int64 [n]: each conversation's row in the input file;
* metadata key ``jakiro``: JSON with the run's ``fingerprint`` (without ``data.end``), the shard's counts and the
  SHA-256 of its tensors (checked when the manifest is written, so a shard damaged after it was written is not
  given a manifest hash).

A shard already present with the same fingerprint and conversation count is skipped, so a killed run restarted with the
same command continues and ends with the same files, and a run with a larger (or smaller) ``data.end`` reuses the
finished shards: the data set grows without recomputing it. When every shard exists, the main process writes
``manifest.json`` (last, atomically; no timestamps): the fingerprint (format, target with its ``identity``
(:func:`target_identity`), features_dtype, template, system_prompt, max_len, input with the SHA-256 of the input file's
content, shard_size), one entry per shard (file, conversations, tokens, assistant_tokens, skipped, bytes, sha256) and
the totals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from jakiro.common.assets import AssetError, ensure_sharegpt, ensure_smollm2
from jakiro.common.config import ConfigError, JakiroConfig, ModelConfig, add_config_arguments, config_from_args
from jakiro.target import target_identity
from jakiro.common.io import (
    atomic_write,
    atomic_write_text,
    check_model_files,
    check_output,
    differences,
    sha256_file,
    sha256_path,
)
from jakiro.common.chat_templates import (
    SkipConversation,
    TemplateError,
    check_template_name,
    encode,
    get_template,
    special_tokens,
    to_messages,
)

FORMAT = "jakiro-features/1"
MANIFEST = "manifest.json"
META_KEY = "jakiro"


class GeDataError(RuntimeError):
    """Bad input data or output directory; the message says what to fix."""


def _say(message: str) -> None:
    print(f"[jakiro.ge_data] {message}", flush=True)


def load_conversations(path: str | os.PathLike | None) -> tuple[list, str]:
    """Records of a ShareGPT-format file: a JSON list, JSONL (one record a line) or a ``datasets`` directory
    saved with ``save_to_disk``; None = the recovered ShareGPT set. Returns (records, resolved path)."""
    path = Path(path) if path is not None else ensure_sharegpt(progress=False)
    if not path.exists():
        raise GeDataError(f"input not found: {path} (set data.input_path to a JSON / JSONL file or a datasets "
                          "directory, or null for the embedded ShareGPT set)")
    if path.is_dir():
        records = _load_from_disk(path)
    elif path.suffix == ".jsonl":
        records = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise GeDataError(f"{path}, line {number}: not JSON: {e}") from e
    else:
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise GeDataError(f"{path}: not JSON: {e} (a truncated ShareGPT file can be recovered with "
                              "jakiro.common.assets.recover_json_records)") from e
        if not isinstance(records, list):
            raise GeDataError(f"{path}: expected a JSON list of conversations, got {type(records).__name__}")
    if not records:
        raise GeDataError(f"{path}: no conversations")
    return records, str(path)


def _load_from_disk(path: Path) -> list:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise GeDataError(f"{path}: not a datasets directory saved with save_to_disk ({e})") from e
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1 and "train" not in data:
            raise GeDataError(f"{path}: several splits ({', '.join(data)}) and none named 'train'")
        data = data["train"] if "train" in data else next(iter(data.values()))
    return data.to_list()


def select(num_records: int, seed: int, start: int, end: int | None) -> list[int]:
    """Record indices in shuffled order (``random.Random(seed)``), restricted to positions [start, end)."""
    order = list(range(num_records))
    random.Random(seed).shuffle(order)
    return order[start:end]


def load_target(model_cfg: ModelConfig, device: torch.device | str | None = None):
    """(model, tokenizer, path) of the target named by ``model.base_model_path`` (None = embedded SmolLM2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_cfg.base_model_path or str(ensure_smollm2(progress=False))
    check_model_files(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.is_fast:
        raise GeDataError(f"{path}: the loss mask needs a fast tokenizer (character offsets)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, model_cfg.dtype))
    return model.to(device or model_cfg.device).eval(), tokenizer, path


@torch.no_grad()
def target_features(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The target's final-normed last hidden state (what its lm_head reads): input_ids [L] -> [L, H].

    ``no_grad`` rather than ``inference_mode``: the online dataset's features feed a trained draft, and inference
    tensors cannot be saved for backward."""
    device = model.get_input_embeddings().weight.device
    return model.get_decoder()(input_ids=input_ids[None].to(device), use_cache=False).last_hidden_state[0]


class _Progress:
    """A tqdm bar over conversations that also shows tokens/s."""

    def __init__(self, total: int, rank: int, world: int, enabled: bool):
        self.bar = tqdm(total=total, unit="conv", position=rank, desc=f"features [{rank + 1}/{world}]",
                        disable=not enabled)
        self.tokens, self.start = 0, time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def update(self, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(1)
        self.bar.set_postfix_str(f"{self.tokens / max(self.seconds, 1e-9):.0f} tok/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensors' names and raw bytes (in name order): what a shard held when it was written."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + b"\0")
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def stored_tensors_digest(path: Path, rows: int = 4096) -> str:
    """:func:`tensors_digest` of a shard file's tensors, read ``rows`` rows at a time."""
    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        for name in sorted(f.keys()):
            digest.update(name.encode() + b"\0")
            part = f.get_slice(name)
            for start in range(0, part.get_shape()[0], rows):
                digest.update(part[start:start + rows].contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def read_shard_meta(path: Path) -> dict:
    """A shard's ``jakiro`` metadata; GeDataError naming the file if it is truncated or not a shard."""
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()[META_KEY])
    except Exception as err:  # safetensors raises its own error types for truncated headers
        raise GeDataError(f"{path} is not a readable feature shard (truncated or corrupted: {err}); delete it and "
                          "run the same python -m jakiro.ge_data command again to recompute it") from None


class _Job:
    """Everything one process needs to turn conversation records into shards."""

    def __init__(self, cfg: JakiroConfig, device: torch.device):
        data = cfg.data
        self.template_name = data.chat_template or cfg.model.chat_template
        check_template_name(self.template_name)
        records, input_path = load_conversations(data.input_path)
        self.order = select(len(records), data.shuffle_seed, data.start, data.end)
        if not self.order:
            raise GeDataError(f"{input_path}: no conversations in [{data.start}, {data.end}) of {len(records)}")
        self.records = records
        self.model, self.tokenizer, target_path = load_target(cfg.model, device)
        self.template = get_template(self.template_name, self.tokenizer, data.system_prompt)
        self.specials = special_tokens(self.tokenizer)
        self.data = data
        self.features_dtype = getattr(torch, data.features_dtype)
        text = self.model.config.get_text_config()
        identity = target_identity(text, self.model.get_output_embeddings().weight)
        selected = json.dumps([records[i] for i in self.order], sort_keys=True, ensure_ascii=False)
        self.fingerprint = {
            "format": FORMAT,
            "target": {"path": target_path, "name": Path(target_path).name, "model_type": text.model_type,
                       "hidden_size": text.hidden_size, "vocab_size": text.vocab_size, "dtype": cfg.model.dtype,
                       "identity": identity},
            "features_dtype": data.features_dtype,
            "template": self.template_name,
            "system_prompt": data.system_prompt,
            "max_len": data.max_len,
            "input": {"path": input_path, "records": len(records), "shuffle_seed": data.shuffle_seed,
                      "content_sha256": sha256_path(input_path), "start": data.start, "end": data.end,
                      "selected": len(self.order),
                      "sha256": hashlib.sha256(selected.encode("utf-8")).hexdigest()},
            "shard_size": data.shard_size,
        }
        self.num_shards = math.ceil(len(self.order) / data.shard_size)
        self.out = Path(data.output_dir)

    def shard_rows(self, shard: int) -> list[int]:
        size = self.data.shard_size
        return self.order[shard * size:(shard + 1) * size]

    def is_done(self, shard: int) -> bool:
        """Whether the shard file exists with this shard's conversations; GeDataError if it is from other settings.

        ``data.end`` is not part of a shard's identity: shard i holds the same conversations whatever ``end`` is,
        except a last shard that ``end`` cuts short, so raising or lowering ``end`` reuses every finished full shard
        and recomputes only a last shard whose conversation count changed.
        """
        path = self.out / shard_name(shard)
        if not path.exists():
            return False
        meta = read_shard_meta(path)
        found, wanted = _shard_identity(meta["fingerprint"]), _shard_identity(self.fingerprint)
        if found != wanted:
            raise GeDataError(f"{path} was written with other settings ({'; '.join(differences(found, wanted))}); "
                              "use another data.output_dir or delete the old shards")
        return meta["conversations"] + sum(meta["skipped"].values()) == len(self.shard_rows(shard))

    def write_shard(self, shard: int, progress: _Progress) -> None:
        """Compute and write one shard."""
        ids, masks, feats, kept, skipped = [], [], [], [], Counter()
        for row in self.shard_rows(shard):
            try:
                input_ids, mask = encode(self.template, self.tokenizer, to_messages(self.records[row]),
                                         self.data.max_len, self.specials)
            except SkipConversation as e:
                skipped[e.reason] += 1
                progress.update(0)
                continue
            feats.append(target_features(self.model, input_ids).to("cpu", self.features_dtype))
            ids.append(input_ids.to(torch.int32))
            masks.append(mask)
            kept.append(row)
            progress.update(len(input_ids))
        hidden = self.fingerprint["target"]["hidden_size"]
        lengths = torch.tensor([0] + [len(x) for x in ids], dtype=torch.int64)
        tensors = {
            "input_ids": torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int32),
            "loss_mask": torch.cat(masks) if masks else torch.zeros(0, dtype=torch.uint8),
            "hidden_state": torch.cat(feats) if feats else torch.zeros(0, hidden, dtype=self.features_dtype),
            "offsets": lengths.cumsum(0),
            "index": torch.tensor(kept, dtype=torch.int64),
        }
        counts = {"conversations": len(kept), "tokens": int(lengths.sum()),
                  "assistant_tokens": int(tensors["loss_mask"].sum()), "skipped": dict(sorted(skipped.items()))}
        meta = {"fingerprint": _shard_identity(self.fingerprint), "shard": shard, **counts,
                "tensors_sha256": tensors_digest(tensors)}
        metadata = {META_KEY: json.dumps(meta, sort_keys=True)}
        atomic_write(self.out / shard_name(shard), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def manifest(self) -> dict:
        shards, skipped = [], Counter()
        for shard in range(self.num_shards):
            path = self.out / shard_name(shard)
            meta = read_shard_meta(path)
            if "tensors_sha256" in meta and stored_tensors_digest(path) != meta["tensors_sha256"]:
                raise GeDataError(f"{path}: its tensors changed since the shard was written (corrupted?); delete it "
                                  "and run the same python -m jakiro.ge_data command again to recompute it")
            skipped.update(meta["skipped"])
            shards.append({"file": path.name, **{k: meta[k] for k in ("conversations", "tokens", "assistant_tokens",
                                                                         "skipped")},
                           "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        totals = {"shards": len(shards), "skipped": dict(sorted(skipped.items()))}
        totals.update({k: sum(s[k] for s in shards) for k in ("conversations", "tokens", "assistant_tokens", "bytes")})
        return {**self.fingerprint, "shards": shards, "totals": totals}


def _shard_identity(fingerprint: dict) -> dict:
    """The settings a shard's content depends on: the run's fingerprint without the selection's end."""
    selection = {k: v for k, v in fingerprint["input"].items() if k not in ("end", "selected", "sha256")}
    return {**fingerprint, "input": selection}


def generate_features(cfg: JakiroConfig, max_shards: int | None = None, progress: bool = True) -> dict | None:
    """Write this process's missing shards (at most ``max_shards`` of them), then, in the main process and once all
    shards exist, ``manifest.json``. Returns the manifest, or None while shards are missing."""
    on_cpu = torch.device(cfg.model.device).type == "cpu"
    state = PartialState(cpu=on_cpu)
    job = _Job(cfg, torch.device(cfg.model.device) if on_cpu or state.num_processes == 1 else state.device)
    check_output(job.out, "dir", force=True)  # a file there is refused; shards of other settings are, one by one
    job.out.mkdir(parents=True, exist_ok=True)
    mine = range(state.process_index, job.num_shards, state.num_processes)
    todo = [s for s in mine if not job.is_done(s)]
    done_before = len(mine) - len(todo)
    todo = todo[:max_shards] if max_shards is not None else todo
    meter = _Progress(sum(len(job.shard_rows(s)) for s in todo), state.process_index, state.num_processes, progress)
    for shard in todo:
        job.write_shard(shard, meter)
    meter.close()
    run = {"written": len(todo), "before": done_before, "tokens": meter.tokens, "seconds": meter.seconds}
    runs = gather_object([run]) if state.num_processes > 1 else [run]
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    missing = [s for s in range(job.num_shards) if not (job.out / shard_name(s)).exists()]
    tokens, seconds = sum(r["tokens"] for r in runs), max(r["seconds"] for r in runs)
    _say(f"this run: {sum(r['written'] for r in runs)} shards written, {sum(r['before'] for r in runs)} already "
         f"done, {tokens} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.0f} tokens/s, "
         f"{state.num_processes} process(es))")
    if missing:
        _say(f"{len(missing)} of {job.num_shards} shards still missing; run the same command again to continue")
        return None
    manifest = job.manifest()
    atomic_write_text(job.out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _say(summary(manifest) + f" -> {job.out / MANIFEST}")
    return manifest


def summary(manifest: dict) -> str:
    t = manifest["totals"]
    skipped = ", ".join(f"{k} {v}" for k, v in t["skipped"].items()) or "none"
    per_token = t["bytes"] / max(t["tokens"], 1)
    return (f"{t['conversations']} conversations (skipped {sum(t['skipped'].values())}: {skipped}), "
            f"{t['tokens']} tokens, {t['assistant_tokens']} assistant tokens, {t['shards']} shards, "
            f"{t['bytes'] / 1e6:.1f} MB ({per_token:.0f} bytes/token)")


def cli_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--max-shards", type=int, default=None, metavar="K",
                        help="write at most K shards per process, then stop (the same command continues later; "
                             "default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: show one)")
    return parser


def run_cli(args: argparse.Namespace, output_dir: str | None = None) -> int:
    """Run ``generate`` for parsed CLI arguments; ``output_dir`` overrides ``data.output_dir``."""
    try:
        cfg = config_from_args(args)
        if output_dir is not None:
            cfg.data.output_dir = output_dir
        generate_features(cfg, args.max_shards, progress=not args.quiet)
    except (ConfigError, GeDataError, TemplateError, AssetError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(cli_parser("python -m jakiro.ge_data").parse_args(argv))
