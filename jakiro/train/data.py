"""Training data for the draft: opening feature datasets, the train/test split, batching and input noise.

Items of a feature dataset are dicts ``{"input_ids": [L], "hidden_state": [L, H], "loss_mask": [L]}`` (the target's
tokens, final-normed last hidden states f_0..f_{L-1} and assistant-token mask; see :mod:`jakiro.ge_data`).
:func:`collate` turns them into the reference's training layout, per sequence truncated to ``max_len``:

    features  f_0 .. f_{L-1}                      [B, S, H]  (draft input)
    input_ids x_1 .. x_{L-1}, 0                   [B, S]     (token paired with f_t)
    target    f_1 .. f_{L-1}, 0                   [B, S, H]  (what head 1 predicts at t)
    loss_mask m_0 .. m_{L-2}, 0  (x sample weight) [B, S]

right-padded with zeros to the longest sequence S, with ``position_ids`` [B, S] = 0, 1, ... per row.
:func:`collate_packed` (``train.packing``) lays the same sequences one after another in one row instead, with no
padding: ``[1, T]`` (T = the sum of the lengths), ``position_ids`` restarting at 0 for each conversation and
``segments`` = the lengths, so the draft attends within each conversation only (see ``DraftHead.forward``); each
conversation's last position has target 0 and weight 0, so no shifted target crosses into the next one.

:class:`ShardedBatchSampler` cuts every epoch's shuffled order into global batches of ``batch_size x processes``
sequences and gives each process its slice, so a run's global batches are the same for any number of processes;
the last global batch is filled up with weight-0 repeats. :class:`TokenBudgetSampler` (``train.batch_tokens``) cuts
the order into global batches of at most ``batch_tokens x processes`` real tokens instead. Noise is seeded per
(seed, epoch, sequence), so it depends neither on the process layout nor on padded vs packed batches.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler, Subset

from jakiro.ge_data.dataset import FeatureShards, OnlineFeatures, read_manifest
from jakiro.ge_data.generate import MANIFEST, GeDataError
from jakiro.common.io import sha256_file
from jakiro.train.provenance import describe_features

ONLINE = "online"  # train.data_dir value selecting features computed on the fly


class DataError(ValueError):
    """The training data is missing, empty or does not belong to the target."""


def open_dataset(cfg) -> tuple[Dataset, dict]:
    """The feature dataset named by ``cfg.train.data_dir`` and its target's sizes.

    ``data_dir`` is a finished ``python -m jakiro.ge_data`` output directory (``manifest.json`` + shards), or
    ``"online"``: the conversations selected by ``cfg.data`` with features computed by ``cfg.model``'s target.
    Returns ``(dataset, {"hidden_size", "vocab_size", "target", "identity", "data_sha256", "about"})`` ("about":
    what a trained draft's ``training.json`` says of the data); raises :class:`DataError`.
    """
    data_dir = cfg.train.data_dir
    if data_dir == ONLINE:
        try:
            dataset = OnlineFeatures.from_config(cfg)
        except GeDataError as err:
            raise DataError(str(err)) from None
        text = dataset.model.config.get_text_config()
        data = cfg.data
        about = {"features": ONLINE, "source": {"file": Path(data.input_path).name if data.input_path else None,
                                                "content_sha256": dataset.input_sha256,
                                                "shuffle_seed": data.shuffle_seed, "start": data.start,
                                                "end": data.end}}
        return dataset, {"hidden_size": text.hidden_size, "vocab_size": text.vocab_size, "target": "online",
                         "identity": None, "data_sha256": dataset.input_sha256, "about": about}
    return open_feature_dir(data_dir, "train.data_dir", " or set train.data_dir=online")


def open_feature_dir(data_dir: str, setting: str, alternative: str = "") -> tuple[Dataset, dict]:
    """A finished ``python -m jakiro.ge_data`` output directory named by config key ``setting`` and its info, as
    :func:`open_dataset` returns them; DataError naming ``setting`` (and ``alternative``, a remedy) when it cannot be
    read."""
    path = Path(data_dir)
    if not path.is_dir() or not any(path.iterdir()):
        raise DataError(f"{setting} {data_dir} is {'empty' if path.is_dir() else 'missing'}: generate "
                        f"features first (python -m jakiro.ge_data){alternative}")
    try:
        manifest = read_manifest(path)
        dataset = FeatureShards(path)
    except (GeDataError, OSError, KeyError, ValueError) as err:
        raise DataError(f"{setting}: cannot read features in {data_dir}: {err}") from None
    if len(dataset) == 0:
        raise DataError(f"{setting} {data_dir} holds no conversations")
    target = manifest.get("target", {})
    return dataset, {"hidden_size": target.get("hidden_size"), "vocab_size": target.get("vocab_size"),
                     "target": target.get("path"), "identity": target.get("identity"),
                     "data_sha256": sha256_file(path / MANIFEST), "about": describe_features(path, manifest)}


def check_compatible(info: dict, hidden_size: int, vocab_size: int, target: str, what: str = "the training data"
                     ) -> None:
    """DataError unless features of size ``info["hidden_size"]`` over ``info["vocab_size"]`` fit the target
    (``what``: how the message names the data)."""
    for key, want in (("hidden_size", hidden_size), ("vocab_size", vocab_size)):
        if info.get(key) is not None and info[key] != want:
            raise DataError(f"{what} comes from another target ({info.get('target')}: {key} "
                            f"{info[key]}) than {target} ({key} {want}); regenerate the features with this target")


def check_same_target(info: dict, identity: str, target: str, what: str = "the training data") -> None:
    """DataError unless the features were made by the target of ``identity``
    (:func:`jakiro.ge_data.generate.target_identity`): same sizes are not enough (a cut or fine-tune of a model has
    the sizes of the original). Online features come from the target itself (``info["target"] == "online"``)."""
    if info.get("target") == ONLINE or info.get("identity") == identity:
        return
    if info.get("identity") is None:
        raise DataError(f"{what}'s manifest does not record which target made it (made by an older "
                        f"version): regenerate the features with python -m jakiro.ge_data and {target}")
    raise DataError(f"{what} was made by another target ({info.get('target')}, identity "
                    f"{info['identity']}) than {target} (identity {identity}), although of the same sizes; "
                    "regenerate the features with this target")


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle range(n) with ``seed``; the last ``round(n * test_fraction)`` indices (sorted) are the test set."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = min(n - 1, round(n * test_fraction)) if n > 1 else 0
    return sorted(order[: n - n_test]), sorted(order[n - n_test:])


class Selection(Dataset):
    """A feature dataset addressed by the ``(index, weight)`` pairs of :class:`ShardedBatchSampler`.

    Items gain ``index`` (which seeds the noise) and ``weight``.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, float]) -> dict:
        index, weight = key
        item = dict(self.dataset[index])
        item["index"], item["weight"] = index, weight
        return item


class ShardedBatchSampler(Sampler):
    """This process's batches of ``(position, weight)`` pairs for one epoch.

    Global batch k of an epoch is ``order[k*G:(k+1)*G]`` with ``G = batch_size * world_size`` (``order`` = a
    permutation seeded by (seed, epoch), or the identity); process r takes its r-th ``batch_size`` slice. The number
    of global batches is ceil(n / G) rounded up to a multiple of ``multiple_of`` (gradient accumulation); missing
    entries repeat earlier sequences with weight 0, so every process runs the same number of equal-size batches.
    """

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int, seed: int, shuffle: bool,
                 multiple_of: int = 1):
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.num_batches = math.ceil(math.ceil(n / (batch_size * world_size)) / multiple_of) * multiple_of
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch``'s batches from batch ``start`` on (resume)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        size = self.batch_size * self.world_size
        for k in range(self.start, self.num_batches):
            first = k * size + self.rank * self.batch_size
            yield [(order[p % self.n], 1.0 if p < self.n else 0.0) for p in range(first, first + self.batch_size)]


class TokenBudgetSampler(Sampler):
    """This process's batches of ``(position, weight)`` pairs for one epoch, cut by a token budget.

    The epoch's order (a permutation seeded by (seed, epoch), or the identity) is cut greedily into global batches of
    at most ``budget * world_size`` tokens (``lengths``, already capped at max_len; a global batch takes at least
    ``world_size`` sequences, or one longer than the budget alone); process r takes sequences r, r + world_size, ...
    of each global batch, so the global batches are the same for any number of processes with the same total
    budget. A process left without a sequence, and the global batches added to reach a multiple of ``multiple_of``
    (gradient accumulation), get a weight-0 repeat, so every process runs the same number of batches.
    """

    def __init__(self, lengths: list[int], budget: int, world_size: int, rank: int, seed: int, shuffle: bool,
                 multiple_of: int = 1):
        if not lengths:
            raise ValueError("no sequences to batch")
        self.lengths, self.budget, self.world_size, self.rank = list(lengths), budget, world_size, rank
        self.seed, self.shuffle, self.multiple_of = seed, shuffle, multiple_of
        self.set_epoch(0)

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.lengths)))
        return torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch))
                              ).tolist()

    def global_batches(self, epoch: int) -> list[list[int]]:
        """Epoch ``epoch``'s global batches (positions), before the weight-0 filling."""
        limit, batches, current, tokens = self.budget * self.world_size, [], [], 0
        for position in self._order(epoch):
            length = self.lengths[position]
            if current and tokens + length > limit and len(current) >= self.world_size:
                batches.append(current)
                current, tokens = [], 0
            current.append(position)
            tokens += length
        batches.append(current)
        return batches

    def num_batches_in(self, epoch: int) -> int:
        """Batches of epoch ``epoch`` (a multiple of ``multiple_of``)."""
        return math.ceil(len(self.global_batches(epoch)) / self.multiple_of) * self.multiple_of

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch``'s batches from batch ``start`` on (resume)."""
        self.epoch, self.start = epoch, start
        self._batches = self.global_batches(epoch)
        self.num_batches = math.ceil(len(self._batches) / self.multiple_of) * self.multiple_of

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self):
        for k in range(self.start, self.num_batches):
            chosen = self._batches[k] if k < len(self._batches) else []
            mine = chosen[self.rank::self.world_size]
            yield [(p, 1.0) for p in mine] if mine else [(self._batches[0][0], 0.0)]


def sequence_lengths(dataset: Dataset, max_len: int) -> list[int]:
    """min(length, max_len) of every item, read without features where the dataset allows (``tokens(i)``, also
    through a ``Subset``)."""
    inner, indices = dataset, range(len(dataset))
    if isinstance(dataset, Subset) and hasattr(dataset.dataset, "tokens"):
        inner, indices = dataset.dataset, dataset.indices
    if hasattr(inner, "tokens"):
        return [min(len(inner.tokens(i)[0]), max_len) for i in indices]
    return [min(len(dataset[i]["input_ids"]), max_len) for i in indices]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def collate(items: list[dict], max_len: int) -> dict[str, torch.Tensor]:
    """Items -> the shifted, right-padded training batch (see the module docstring).

    Returns ``features`` [B, S, H] and ``target`` [B, S, H] (stored dtype), ``input_ids`` [B, S] int64,
    ``loss_mask`` [B, S] float32, ``lengths``, ``index`` [B] int64 and ``weight`` [B] float32.
    """
    lengths = [min(len(item["input_ids"]), max_len) for item in items]
    batch, width = len(items), max(lengths)
    hidden = items[0]["hidden_state"]
    features = hidden.new_zeros(batch, width, hidden.shape[-1])
    target = hidden.new_zeros(batch, width, hidden.shape[-1])
    input_ids = torch.zeros(batch, width, dtype=torch.long)
    loss_mask = torch.zeros(batch, width, dtype=torch.float32)
    for row, (item, length) in enumerate(zip(items, lengths)):
        f = item["hidden_state"][:length]
        features[row, :length] = f
        target[row, : length - 1] = f[1:]
        input_ids[row, : length - 1] = item["input_ids"][1:length]
        loss_mask[row, : length - 1] = item["loss_mask"][: length - 1].float() * float(item.get("weight", 1.0))
    return {
        "features": features,
        "target": target,
        "input_ids": input_ids,
        "loss_mask": loss_mask,
        "position_ids": torch.arange(width).expand(batch, width),
        "lengths": torch.tensor(lengths),
        "index": torch.tensor([item.get("index", row) for row, item in enumerate(items)]),
        "weight": torch.tensor([float(item.get("weight", 1.0)) for item in items]),
    }


def collate_packed(items: list[dict], max_len: int) -> dict[str, torch.Tensor]:
    """Items -> one packed row: the sequences of :func:`collate` one after another, without padding.

    Returns ``features`` [1, T, H] and ``target`` [1, T, H] (stored dtype), ``input_ids`` [1, T] int64,
    ``loss_mask`` [1, T] float32, ``position_ids`` [1, T] (0 .. L_i - 1 per conversation), ``segments`` = ``lengths``
    [n] (the conversations' lengths, T = their sum), ``index`` [n] and ``weight`` [n]. Row-for-row the values of
    :func:`collate` with the padding cut out.
    """
    lengths = [min(len(item["input_ids"]), max_len) for item in items]
    f = torch.cat([item["hidden_state"][:length] for item, length in zip(items, lengths)])
    target = torch.zeros_like(f)
    input_ids = torch.zeros(len(f), dtype=torch.long)
    loss_mask = torch.zeros(len(f), dtype=torch.float32)
    start = 0
    for item, length in zip(items, lengths):
        end = start + length
        target[start:end - 1] = f[start + 1:end]
        input_ids[start:end - 1] = item["input_ids"][1:length]
        loss_mask[start:end - 1] = item["loss_mask"][: length - 1].float() * float(item.get("weight", 1.0))
        start = end
    lengths_tensor = torch.tensor(lengths)
    return {
        "features": f[None],
        "target": target[None],
        "input_ids": input_ids[None],
        "loss_mask": loss_mask[None],
        "position_ids": torch.cat([torch.arange(length) for length in lengths])[None],
        "lengths": lengths_tensor,
        "segments": lengths_tensor,
        "index": torch.tensor([item.get("index", row) for row, item in enumerate(items)]),
        "weight": torch.tensor([float(item.get("weight", 1.0)) for item in items]),
    }


def add_noise(features: torch.Tensor, lengths: torch.Tensor, seeds: list[int], kind: str, mean: float,
              std: float, packed: bool = False) -> torch.Tensor:
    """Input-feature augmentation, one seeded generator per sequence; returns a new float32 [B, S, H] tensor.

    ``uniform``: f + (U(0, 1) - 0.5) * std * 512 / L (the reference; the amplitude shrinks with the length L);
    ``gaussian``: f + N(mean, std); ``none``: f. Padding rows stay zero. ``packed``: the sequences lie one after
    another in row 0 (:func:`collate_packed`) and get the same noise as in their own padded rows.
    """
    noisy = features.float()
    if noisy is features:  # already float32: do not add to the caller's tensor
        noisy = noisy.clone()
    if kind == "none":
        return noisy
    start = 0
    for row, (length, seed) in enumerate(zip(lengths.tolist(), seeds)):
        rows = (0, slice(start, start + length)) if packed else (row, slice(0, length))
        noisy[rows] += _noise((length, features.shape[-1]), seed, kind, mean, std).to(noisy.device)
        start += length
    return noisy


def _noise(shape: tuple[int, int], seed: int, kind: str, mean: float, std: float) -> torch.Tensor:
    """[L, H] float32 noise of one sequence of length L = shape[0] (see :func:`add_noise`)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return (torch.rand(shape, generator=generator) - 0.5) * (std * 512 / shape[0])
    if kind == "gaussian":
        return torch.randn(shape, generator=generator) * std + mean
    raise ValueError(f"unknown noise kind {kind!r}")
