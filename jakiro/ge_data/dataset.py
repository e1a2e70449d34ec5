"""Training items from target features: read back from shards, or computed on the fly from conversations.

Both datasets yield the same items, in the same order (selected conversations in shuffled order, skipped ones
left out)::

    {"input_ids": int64 [L], "hidden_state": [L, H] (features dtype), "loss_mask": int64 [L]}

on the CPU. ``FeatureShards`` reads what ``python -m jakiro.ge_data`` wrote (needs its ``manifest.json``), about
``2 H`` bytes of disk per token in bf16. ``OnlineFeatures`` needs no disk: it tokenizes every conversation once at
construction and runs the target for each item (use it with ``num_workers=0``; the target lives in the main
process). ``docs/training.md`` ("Training data") gives the measured disk / compute trade-off.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from jakiro.common.config import JakiroConfig
from jakiro.common.io import check_file_hash, sha256_path
from jakiro.ge_data.generate import (
    MANIFEST,
    GeDataError,
    load_conversations,
    load_target,
    select,
    target_features,
)
from jakiro.common.chat_templates import (ChatTemplate, SkipConversation, encode, get_template, special_tokens,
                                          to_messages)


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise GeDataError(f"no {MANIFEST} in {data_dir}: the data generation has not finished there (run "
                          "python -m jakiro.ge_data again with the same settings to complete it)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GeDataError(f"{path} is truncated or corrupted ({err}); delete it and run python -m jakiro.ge_data "
                          "again with the same settings to rewrite it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise GeDataError(f"{path} is not a jakiro.ge_data manifest (no list of shards)")
    return manifest


def open_shard(file: str | Path, expected_sha256: str | None):
    """``safe_open`` a feature shard after checking its bytes against the manifest's SHA-256 (GeDataError naming
    the file and what to do if it was truncated, overwritten or is no shard)."""
    remedy = ("delete it and run python -m jakiro.ge_data again with the same settings to recompute it, "
              "then train again")
    try:
        check_file_hash(file, expected_sha256, remedy)
        return safe_open(str(file), "pt")
    except (ValueError, OSError) as err:
        raise GeDataError(str(err)) from None
    except Exception as err:  # safetensors' own error types
        raise GeDataError(f"{file} is not a readable feature shard ({err}); {remedy}") from None


class FeatureShards(Dataset):
    """The conversations stored in a finished ``jakiro.ge_data`` output directory.

    Every shard's SHA-256 is checked against the manifest once, when the dataset is opened: a truncated or
    overwritten shard is a :class:`GeDataError` naming it, never silently wrong training data.

    Args:
        data_dir: the directory holding ``manifest.json`` and the shards.
        shards: indices into the manifest's shard list to use (e.g. a train / test split); None = all.
    """

    def __init__(self, data_dir: str | Path, shards: Sequence[int] | None = None):
        self.manifest = read_manifest(data_dir)
        entries = self.manifest["shards"]
        chosen = range(len(entries)) if shards is None else shards
        self.files = [str(Path(data_dir) / entries[i]["file"]) for i in chosen]
        self.offsets = []  # per shard: int64 [n + 1]
        for i, file in zip(chosen, self.files):  # each file's bytes are checked once, here
            with open_shard(file, entries[i].get("sha256")) as f:
                self.offsets.append(f.get_tensor("offsets"))
        self.starts = [0]  # first item of each shard, then the total
        for offsets in self.offsets:
            self.starts.append(self.starts[-1] + len(offsets) - 1)

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, i: int) -> tuple[str, int, int]:
        """(shard file, first token, end token) of item ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard = bisect.bisect_right(self.starts, i) - 1
        offsets = self.offsets[shard]
        j = i - self.starts[shard]
        return self.files[shard], int(offsets[j]), int(offsets[j + 1])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        file, a, b = self._locate(i)
        with safe_open(file, "pt") as f:
            return {
                "input_ids": f.get_slice("input_ids")[a:b].long(),
                "hidden_state": f.get_slice("hidden_state")[a:b],
                "loss_mask": f.get_slice("loss_mask")[a:b].long(),
            }

    def tokens(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``i``'s (input_ids [L], loss_mask [L]) without reading its features."""
        file, a, b = self._locate(i)
        with safe_open(file, "pt") as f:
            return f.get_slice("input_ids")[a:b].long(), f.get_slice("loss_mask")[a:b].long()


class OnlineFeatures(Dataset):
    """Conversations whose features are computed by the target when an item is read.

    Args:
        records: ShareGPT records (``{"conversations": [{"from", "value"}]}``), in item order.
        model, tokenizer: the target (any causal LM with ``get_decoder``) and its fast tokenizer.
        template: how to format and mask (:func:`jakiro.common.chat_templates.get_template`).
        max_len: truncate conversations to this many tokens.
        features_dtype: dtype of the returned hidden states (the stored dataset's ``features_dtype``).
    Attributes:
        skipped: Counter of skip reasons over ``records``.
    """

    def __init__(self, records: Sequence, model, tokenizer, template: ChatTemplate, max_len: int,
                 features_dtype: torch.dtype = torch.bfloat16, progress: bool = False):
        self.model, self.features_dtype = model, features_dtype
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input_ids int32 [L], loss_mask uint8 [L])
        self.skipped = Counter()
        specials = special_tokens(tokenizer)
        for record in tqdm(records, desc="tokenizing", unit="conv", disable=not progress):
            try:
                ids, mask = encode(template, tokenizer, to_messages(record), max_len, specials)
            except SkipConversation as e:
                self.skipped[e.reason] += 1
                continue
            self.items.append((ids.to(torch.int32), mask))

    @classmethod
    def from_config(cls, cfg: JakiroConfig, progress: bool = True) -> "OnlineFeatures":
        """The conversations ``python -m jakiro.ge_data`` would store for ``cfg`` (same selection and order)."""
        data = cfg.data
        records, path = load_conversations(data.input_path)
        model, tokenizer, _ = load_target(cfg.model)
        template = get_template(data.chat_template or cfg.model.chat_template, tokenizer, data.system_prompt)
        chosen = [records[i] for i in select(len(records), data.shuffle_seed, data.start, data.end)]
        dataset = cls(chosen, model, tokenizer, template, data.max_len, getattr(torch, data.features_dtype), progress)
        dataset.input_sha256 = sha256_path(path)  # what a resumed training run checks it still reads
        return dataset

    def __len__(self) -> int:
        return len(self.items)

    def tokens(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``i``'s (input_ids [L], loss_mask [L]) without running the target."""
        ids, mask = self.items[i]
        return ids.long(), mask.long()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, mask = self.items[i]
        features = target_features(self.model, ids.long())
        return {"input_ids": ids.long(), "hidden_state": features.to("cpu", self.features_dtype),
                "loss_mask": mask.long()}
