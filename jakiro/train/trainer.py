"""The draft-training loop: one loop for a single process, multi-process DDP (gloo on CPU) and DeepSpeed ZeRO.

    trainer = Trainer(cfg, draft_config, embed_tokens, lm_head, train_set, test_set)
    trainer.train(resume=False)        # -> output_dir/draft (config.json + model.safetensors)

What a run does (``cfg.train`` holds every number):

* AdamW (betas, weight decay) over the draft's parameters only (the target's embedding and LM head are frozen and
  never in the optimizer or a checkpoint); warmup + cosine / linear / constant schedule whose length is the real
  number of optimizer steps of ``num_epochs`` epochs; gradient clipping by value (reference) or norm.
* Batches: ``train.batch_size`` sequences per process, or up to ``train.batch_tokens`` real tokens per process;
  right-padded rows, or (``train.packing``) packed into one row with attention kept within each conversation,
  which gives the same losses without computing padding (:mod:`jakiro.train.data`); packed batches also score the
  LM head with the fused losses of :mod:`jakiro.train.fused_loss` (same values, no [N, V] logits kept), padded rows
  keep the previous plain-autograd losses. Evaluation uses padded rows.
* Each micro-batch: noise on the input features, draft forward (both heads), the losses of
  :mod:`jakiro.train.losses` normalised by the loss-weight sum of the *global* batch, so N processes with batch b
  compute the same update as one process with batch N b. ``train.unroll_steps`` K > 1 (training-time test): the
  draft also runs K - 1 steps on its own outputs (:mod:`jakiro.train.unroll`), each with those losses, weighted
  ``unroll_decay ** j``.
* A checkpoint (:mod:`jakiro.train.checkpoint`: tensors and JSON, no pickles; DeepSpeed: ``accelerator.save_state``
  with every file's hash recorded) to ``output_dir/checkpoints/step_N`` every ``checkpoint_steps`` optimizer
  steps, at evaluation epochs and at the end (written to a temporary folder, then renamed, so a killed run never
  leaves a half checkpoint under a final name; ``keep_checkpoints`` > 0 then deletes all but the newest that
  many). The loop position (epoch, batch, step) and the epoch's running sums are checkpointed too, so
  ``resume=True`` ends with bit-identical weights to an uninterrupted run; a finished run resumed keeps its export.
  A SIGINT or SIGTERM (Ctrl-C, ``kill``) checkpoints after the optimizer step under way and raises
  :class:`~jakiro.train.interrupts.Interrupted`, so an interrupted run loses no work (a second signal stops at once).
* ``output_dir/run.json`` records what decides the result (the config but for :data:`RESUMABLE`, and the inputs
  given by the caller: training data and target identity); a resume under anything else is refused, naming what
  differs. A non-finite loss or gradient stops the run with :class:`TrainingError` naming the step and batch.
* Metrics: per optimizer step and per epoch (losses and top-1/2/3 accuracy per head), and on the held-out set
  (the same plus the draft's k-step autoregressive accuracy): ``output_dir/metrics.jsonl``, the progress bar, and
  accelerate trackers when ``train.report_to`` names them.

Processes: one, DDP or DeepSpeed ZeRO, as :func:`jakiro.train.launch.make_accelerator` sets them up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from jakiro.common.config import ConfigError, JakiroConfig, save_config, to_dict
from jakiro.common.hardware import describe
from jakiro.common.io import atomic_write_text, differences
from jakiro.drafts import resolve_draft_path
from jakiro.train import checkpoint as ckpt
from jakiro.train import provenance
from jakiro.model.draft import CONFIG_NAME, DraftHead, DraftHeadConfig, packed_attention
from jakiro.model.target_init import init_from_target_layer
from jakiro.train.data import (Selection, ShardedBatchSampler, TokenBudgetSampler, add_noise, collate, collate_packed,
                               mix_seed, sequence_lengths)
from jakiro.train.interrupts import Interrupted, StopRequests
from jakiro.train.launch import make_accelerator
from jakiro.train.losses import EPS, draft_losses, head2_mask, load_balancing_loss
from jakiro.train.metrics import JsonlLog, Sums, draft_chain_accuracy, ratio
from jakiro.train.unroll import ahead, run_chain, step_targets

CHECKPOINTS = "checkpoints"
EXPORT = "draft"
METRICS = "metrics.jsonl"
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
KS = (1, 2, 3)
RUN_RECORD = "run.json"
RESUMABLE = {"train": ("stop_after_steps", "num_workers", "report_to", "checkpoint_steps", "keep_checkpoints",
                       "save_every", "eval_draft_steps")}  # may change on resume: the weights do not depend on them
OUTPUTS = (CHECKPOINTS, EXPORT, METRICS, "config.yaml", RUN_RECORD)  # what a run writes into output_dir


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss or gradient, an output dir or checkpoint it may not use)."""


def run_identity(cfg: JakiroConfig, inputs: dict | None) -> dict:
    """What decides a run's weights: the model, draft and train sections (but for :data:`RESUMABLE`), the data
    section when features are computed online, and ``inputs`` (e.g. the data's and the target's digests)."""
    sections = to_dict(cfg)
    config = {name: dict(sections[name]) for name in ("model", "draft", "train")}
    config["model"] = {k: config["model"][k] for k in ("base_model_path", "dtype")}
    if cfg.train.data_dir == "online":
        config["data"] = sections["data"]
    for name, keys in RESUMABLE.items():
        for key in keys:
            config[name].pop(key, None)
    return json.loads(json.dumps({"config": config, "inputs": inputs or {}}))


class HeadsForward(torch.nn.Module):
    """The module accelerate prepares: the draft forward returning a tuple of tensors (head1, head2, router logits)
    per draft step, which DDP's unused-parameter search and ZeRO-3's backward hooks can follow (they do not look into
    dataclasses). head1 / head2 are [B, S, H], router logits [B, S, E]; head2 and the router logits are left out when
    not used. ``segments``: the conversation lengths of a packed batch (a list of ints), or None for padded rows.
    ``steps`` > 1 (training-time test, ``train.unroll_steps``): the draft also runs steps 1..steps-1 on its own
    outputs with the true next tokens (:func:`jakiro.train.unroll.run_chain`), all inside this one forward (DDP
    expects one forward per backward); outputs are indexed by start position. ``steps`` = 1 is the plain forward."""

    def __init__(self, draft: DraftHead, with_head2: bool, with_router: bool, steps: int = 1):
        super().__init__()
        self.draft, self.with_head2, self.with_router, self.steps = draft, with_head2, with_router, steps

    def forward(self, features, input_ids, position_ids, segments=None, steps=None):
        steps = self.steps if steps is None else steps
        if steps == 1:
            attend = None if segments is None else packed_attention(segments)
            outputs = [self.draft(features, input_ids, position_ids, with_head2=self.with_head2, attend=attend)]
        else:
            def true_tokens(k: int, previous) -> torch.Tensor:  # the token at position t + k of start t
                return ahead(input_ids, k, 0)

            outputs = run_chain(self.draft, features, input_ids, steps, true_tokens, position_ids, segments,
                                with_head2=self.with_head2)
        flat = ()
        for out in outputs:
            flat += (out.head1,) + ((out.head2,) if self.with_head2 else ()) + (
                (out.router_logits,) if self.with_router else ())
        return flat

    def unpack(self, outputs: tuple) -> list[tuple]:
        """[(head1, head2 or None, router logits or None) per step] from :meth:`forward`'s tuple."""
        rest, steps = list(outputs), []
        while rest:
            head1 = rest.pop(0)
            head2 = rest.pop(0) if self.with_head2 else None
            steps.append((head1, head2, rest.pop(0) if self.with_router else None))
        return steps


class TrainState:
    """Loop position and the current epoch's running sums; saved with every checkpoint."""

    def __init__(self):
        self.epoch, self.batch, self.step, self.log_lines = 0, 0, 0, 0
        self.epoch_sums: dict[str, float] = {}

    @property
    def position(self) -> tuple[int, int, int]:
        return self.epoch, self.batch, self.step

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "log_lines": self.log_lines,
                "epoch_sums": dict(self.epoch_sums)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.log_lines, self.epoch_sums = state["log_lines"], dict(state["epoch_sums"])


def saved_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoints/step_N`` folders, oldest (smallest N) first."""
    folder = Path(output_dir) / CHECKPOINTS
    return [p for _, p in sorted((int(p.name[5:]), p) for p in folder.glob("step_*")
                                 if p.is_dir() and p.name[5:].isdigit())]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoints/step_N`` folder with the largest N, or None."""
    found = saved_checkpoints(output_dir)
    return found[-1] if found else None


class Trainer:
    """Trains a draft head of ``draft_config`` on feature datasets (items as in :mod:`jakiro.train.data`).

    Args:
        cfg: the run config (``train`` section, plus ``draft`` / ``model`` recorded with the outputs).
        draft_config: the draft architecture.
        embed_tokens, lm_head: the target's input embedding and LM head (frozen here).
        train_set, test_set: map-style feature datasets.
        draft_vocabulary: [draft_vocab_size] target token ids of a reduced draft vocabulary (see
            :func:`jakiro.train.vocab.most_frequent_tokens`); needed exactly when the config sets draft_vocab_size.
        initial_weights: a draft state dict (``train.init_from``) to start from instead of a fresh initialization.
        run_inputs: JSON-ready digests of what else decides the result (training data, target), recorded in
            ``run.json`` and compared on resume.
        target_layer: (index, state dict) of the target's last decoder layer, copied into the new draft's layer
            where shapes match (``draft.init_from_target``; :mod:`jakiro.model.target_init`), or None.
        about_data: what the exported draft's ``training.json`` says of the training data
            (:func:`jakiro.train.provenance.describe_features`), or None.
    """

    def __init__(self, cfg: JakiroConfig, draft_config: DraftHeadConfig, embed_tokens: torch.nn.Module,
                 lm_head: torch.nn.Module, train_set: Dataset, test_set: Dataset,
                 draft_vocabulary: torch.Tensor | None = None, initial_weights: dict | None = None,
                 run_inputs: dict | None = None, target_layer: tuple[int, dict] | None = None,
                 about_data: dict | None = None):
        self.cfg, self.train_cfg = cfg, cfg.train
        self.about_data = about_data
        train = self.train_cfg
        self.accelerator = acc = make_accelerator(cfg, draft_config)
        self.output_dir = Path(train.output_dir)
        self.identity = run_identity(cfg, run_inputs)
        self.embed_tokens = embed_tokens.to(acc.device).requires_grad_(False)
        self.lm_head = lm_head.to(acc.device).requires_grad_(False)
        torch.manual_seed(train.seed)
        draft = DraftHead(draft_config)
        if (draft_vocabulary is None) != (draft_config.draft_vocab_size is None):
            raise ValueError("pass draft_vocabulary exactly when the draft config sets draft_vocab_size")
        if draft_vocabulary is not None:
            draft.set_draft_vocabulary(draft_vocabulary)
        if initial_weights is not None and target_layer is not None:
            raise ValueError("pass initial_weights or target_layer, not both")
        if initial_weights is not None:
            draft.load_state_dict(initial_weights)
        if target_layer is not None:
            self._say(init_from_target_layer(draft, target_layer[1], target_layer[0]).summary())
        draft.to(acc.device).bind_target_modules(self.embed_tokens, self.lm_head)
        self.draft, self.draft_config = draft, draft_config
        self.with_head2 = draft_config.parallel_head
        self.balance = train.load_balance_w > 0 and draft.layers[0].mlp_moe.gate is not None
        optimizer = torch.optim.AdamW(draft.parameters(), lr=train.lr, betas=train.betas,
                                      weight_decay=train.weight_decay)
        world, rank = acc.num_processes, acc.process_index
        if train.batch_tokens:
            self.train_sampler = TokenBudgetSampler(sequence_lengths(train_set, train.max_len), train.batch_tokens,
                                                    world, rank, train.seed, True, train.gradient_accumulation_steps)
            batches = [self.train_sampler.num_batches_in(epoch) for epoch in range(train.num_epochs)]
        else:
            self.train_sampler = ShardedBatchSampler(len(train_set), train.batch_size, world, rank, train.seed, True,
                                                     train.gradient_accumulation_steps)
            batches = [self.train_sampler.num_batches] * train.num_epochs
        self.test_sampler = ShardedBatchSampler(len(test_set), train.batch_size, world, rank, train.seed, False)
        self.total_steps = sum(batches) // train.gradient_accumulation_steps
        self.scheduler = get_scheduler(SCHEDULES[train.schedule], optimizer, num_warmup_steps=train.warmup_steps,
                                       num_training_steps=self.total_steps)
        heads = HeadsForward(draft, self.with_head2, self.balance, train.unroll_steps)
        plugin = acc.state.deepspeed_plugin
        self.zero3 = plugin is not None and plugin.zero_stage == 3
        if self.zero3:
            # ZeRO-3 hooks every submodule; the rotary embedding's outputs need no gradient while its input does, which
            # trips DeepSpeed's backward bookkeeping (deepspeedai/DeepSpeed#5524). The one-layer draft is small:
            # gather all its parameters once per forward by making the whole model a ZeRO-3 leaf.
            from deepspeed.utils import set_z3_leaf_modules

            set_z3_leaf_modules(heads, [HeadsForward])
        self.heads = heads
        self.model, self.optimizer = acc.prepare(heads, optimizer)
        self.state = TrainState()
        self._saved_at: tuple | None = None  # loop position of the last checkpoint written or loaded
        self._bad: tuple | None = None  # (what, batch, sequences) of the first non-finite loss / gradient
        self._bar = None  # the progress bar of a running train()
        self._stopping = False  # a SIGINT / SIGTERM asked the running train() to checkpoint and stop
        acc.register_for_checkpointing(self.scheduler, self.state)
        self.train_set, self.test_set = Selection(train_set), Selection(test_set)
        self.log = JsonlLog(self.output_dir / METRICS)

    # -- data -------------------------------------------------------------------------------------------------------
    def _loader(self, dataset: Selection, sampler, packed: bool) -> DataLoader:
        """Batches of ``sampler``: packed rows (:func:`collate_packed`) or padded rows (:func:`collate`)."""
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.train_cfg.num_workers,
                          collate_fn=partial(collate_packed if packed else collate, max_len=self.train_cfg.max_len))

    @property
    def param_dtype(self) -> torch.dtype:
        return next(self.draft.parameters()).dtype

    def _full_parameters(self):
        """Context in which ``self.draft`` can run outside the prepared model (ZeRO-3: gather its partitions)."""
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.draft.parameters()), modifier_rank=None)

    def _inputs(self, batch: dict, epoch: int | None) -> dict:
        """Move a collated batch to the device; ``epoch`` not None = training (adds the seeded feature noise)."""
        train, device = self.train_cfg, self.accelerator.device
        features = batch["features"]
        if epoch is not None:
            seeds = [mix_seed(train.seed, epoch, int(i)) for i in batch["index"]]
            features = add_noise(features, batch["lengths"], seeds, train.noise, train.noise_mean, train.noise_std,
                                 packed="segments" in batch)
        features = features.to(device, self.param_dtype)
        if self.zero3 and epoch is not None:
            # ZeRO-3 frees a module's parameters in its post-backward hook, which fires too early (before the
            # parameters' own gradients) when no input of the module requires a gradient
            features.requires_grad_(True)
        return {
            "features": features,
            "target": batch["target"].to(device, torch.float32),
            "input_ids": batch["input_ids"].to(device),
            "mask": batch["loss_mask"].to(device),
            "positions": batch["position_ids"].to(device),
            "segments": batch["segments"].tolist() if "segments" in batch else None,
            "tokens": float((batch["lengths"].float() * batch["weight"]).sum()),
        }

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, V_d]: draft and target rows are both scored over the draft vocabulary."""
        return self.draft.compact_logits(x)

    def _head_weight(self) -> torch.Tensor | None:
        """[V_d, H] the weight of :meth:`_head` for the fused losses of packed batches, or None where the head is
        not a bias-free linear map (then the plain losses run)."""
        compact = self.draft.compact_head()
        return None if compact is None or compact[1] is not None else compact[0]

    # -- one forward ------------------------------------------------------------------------------------------------
    def _losses(self, model, inputs: dict, normalizers, steps: int | None = None):
        """Forward of ``model`` (a :class:`HeadsForward`, prepared or not) + losses, inside autocast.

        ``normalizers``: one (head 1, head 2) pair per draft step; ``steps``: None = ``train.unroll_steps``.
        Returns (LossTerms, HeadScores) of step 0, whose ``total`` is the whole loss sum_j unroll_decay^j L_j, and
        [(LossTerms, HeadScores)] of the unrolled steps 1.. (empty without unrolling)."""
        train = self.train_cfg
        mask, positions = inputs["mask"], inputs["positions"]
        steps = train.unroll_steps if steps is None else steps
        # packed batches (the new path) score the heads with the fused losses; padded rows keep the previous code
        head_weight = None if inputs["segments"] is None else self._head_weight()
        with self.accelerator.autocast():
            outputs = self.heads.unpack(model(inputs["features"], inputs["input_ids"], positions,
                                              inputs["segments"], steps))
            results = []
            for k, (head1, head2, router_logits) in enumerate(outputs):
                target, weights = step_targets(inputs["target"], mask, positions, k)
                balance = None
                if self.balance and k == 0:
                    rows = mask > 0
                    balance = load_balancing_loss(router_logits[rows], mask[rows],
                                                  self.draft_config.num_experts_per_tok)
                results.append(draft_losses(head1, head2, target, weights, self._head, train.v_w, train.p_w,
                                            train.parallel_w, normalizers[k], balance, train.load_balance_w,
                                            positions, head_weight))
        (first, scores), later = results[0], results[1:]
        if later:
            total = first.total + sum(train.unroll_decay ** k * terms.total for k, (terms, _) in enumerate(later, 1))
            first = dataclasses.replace(first, total=total)
        return first, scores, later

    @staticmethod
    def _add_scores(sums: Sums, terms, scores) -> None:
        for name in ("total", "v1", "p1", "v2", "p2", "balance"):
            sums.add(name, getattr(terms, name).detach())
        for head in (1, 2):
            if not scores.scored(head):
                continue
            for k, hits in zip(KS, scores.topk_hits(head, KS)):
                sums.add(f"head{head}_top{k}_hits", hits)
            sums.add(f"head{head}_count", getattr(scores, f"weights{head}").sum())

    def _global_normalizers(self, mask: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor,
                                                                                            torch.Tensor]]:
        """Per draft step, (sum of head-1 weights + eps, sum of head-2 weights + eps) over all processes, divided by
        their number."""
        counts = []
        for k in range(self.train_cfg.unroll_steps):
            weights = step_targets(mask, mask, positions, k)[1]
            counts += [weights.sum(), head2_mask(weights, positions).sum()]
        counts = torch.stack(counts).double()
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        normal = ((counts + EPS) / self.accelerator.num_processes).float()
        return [(normal[2 * k], normal[2 * k + 1]) for k in range(self.train_cfg.unroll_steps)]

    # -- training ---------------------------------------------------------------------------------------------------
    def train(self, resume: bool = False, force: bool = False) -> Path:
        """Run (or continue) training; returns the exported draft directory. ``force``: replace a previous run's
        outputs in ``train.output_dir`` instead of refusing."""
        acc, train, state = self.accelerator, self.train_cfg, self.state
        checkpoint = self._check_output_dir(resume, force)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for stale in (self.output_dir / CHECKPOINTS).glob("*.tmp"):
                shutil.rmtree(stale)
            save_config(self.cfg, self.output_dir / "config.yaml")
            if not (self.output_dir / RUN_RECORD).exists():
                self._write_record({**self.identity, "checkpoints": {}})
        acc.wait_for_everyone()
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
            self._saved_at = state.position
            self._say(f"resumed from {checkpoint} (epoch {state.epoch}, step {state.step})")
        elif resume:
            self._say(f"no checkpoint in {self.output_dir / CHECKPOINTS}: starting from scratch")
        if acc.is_main_process:
            self.log.restart(state.log_lines)
        if acc.log_with:
            acc.init_trackers("jakiro-train", config={f"{s}.{k}": str(v) for s, sec in to_dict(self.cfg).items()
                                                     for k, v in sec.items()})
        stop = min(self.total_steps, train.stop_after_steps or self.total_steps)
        started_at = state.position
        bar = tqdm(total=stop, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not acc.is_main_process)
        self._bar = bar  # closed before an error is raised inside the loop, so its message starts a line
        loader = self._loader(self.train_set, self.train_sampler, train.packing)
        step_sums, micro, tick, self._stopping = Sums(), 0, time.perf_counter(), False
        with StopRequests() as stops:
            while state.epoch < train.num_epochs and state.step < stop:
                self.train_sampler.set_epoch(state.epoch, state.batch)
                self.model.train()
                for batch in loader:
                    self._micro_step(batch, step_sums)
                    state.batch, micro = state.batch + 1, micro + 1
                    if not acc.sync_gradients:
                        continue
                    self.scheduler.step()
                    state.step += 1
                    step_sums.add("stop_signals", stops.asked)  # summed over processes with the step's sums
                    sums = step_sums.reduced(acc)
                    self._stopping = self._stopping or sums["stop_signals"] > 0
                    record = self._step_record(sums, micro, time.perf_counter() - tick)
                    self._log(record)
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}",
                                    acc=f"{record.get('head1_top1', float('nan')):.3f}", refresh=False)
                    step_sums, micro, tick = Sums(), 0, time.perf_counter()
                    inside_epoch = state.batch < self.train_sampler.num_batches
                    if state.step >= stop and inside_epoch:
                        break  # stopped inside an epoch (an epoch's last step still gets its epoch end below)
                    if train.checkpoint_steps and state.step % train.checkpoint_steps == 0:
                        self.save_checkpoint()
                    if inside_epoch and self._stopping:
                        break
                else:
                    self._end_epoch()
                if self._stop_asked(stops):
                    bar.close()
                    raise self._interrupted(stops)
        bar.close()
        self.save_checkpoint()
        if state.position == started_at and self._exported_at(state.step):
            export = self.output_dir / EXPORT
            self._say(f"nothing left to train: {export} stays as exported")
        else:
            export = self.export()
        acc.end_training()
        return export

    def _stop_asked(self, stops: StopRequests) -> bool:
        """Whether to stop for a SIGINT / SIGTERM at an epoch's end; with several processes, whether any of them got
        one (every process calls this at the same point, so they all stop after the same step). Within an epoch the
        flag travels with each optimizer step's sums instead."""
        if not self._stopping:
            asked = stops.asked
            if self.accelerator.num_processes > 1:
                flag = torch.tensor([float(asked)], device=self.accelerator.device)
                asked = bool(self.accelerator.reduce(flag, reduction="sum").item())
            self._stopping = asked
        return self._stopping

    def _interrupted(self, stops: StopRequests) -> Interrupted:
        """Checkpoint the run (every process) and say how to go on."""
        checkpoint = self.save_checkpoint()
        self.accelerator.end_training()
        cause = stops.name or "a signal to another process"
        return Interrupted(stops.signum or signal.SIGTERM,
                           f"stopped by {cause} after step {self.state.step} of {self.total_steps}, checkpoint "
                           f"{checkpoint}: rerun the same command with --resume to go on")

    def _check_output_dir(self, resume: bool, force: bool) -> Path | None:
        """The checkpoint to resume from (None: start afresh) after refusing an output dir this run may not use:
        another run's outputs without ``resume`` or ``force``, a run of other settings, a file."""
        out, record_path = self.output_dir, self.output_dir / RUN_RECORD
        if out.exists() and not out.is_dir():
            raise ConfigError(f"train.output_dir: {out} is an existing file; give a directory")
        checkpoint = latest_checkpoint(out)
        if force and not resume:
            if self.accelerator.is_main_process:
                for name in OUTPUTS:
                    path = out / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            return None
        ours = [name for name in OUTPUTS if (out / name).exists()]
        if not resume:
            if checkpoint is not None:
                raise ConfigError(f"train.output_dir: {out} already holds checkpoints ({checkpoint.name}); pass "
                                  "--resume to continue that run, --force to replace it, or choose another "
                                  "train.output_dir")
            if ours:
                raise ConfigError(f"train.output_dir: {out} already holds a run's outputs ({', '.join(ours)}); pass "
                                  "--resume to continue it, --force to replace it, or choose another "
                                  "train.output_dir")
            return None
        if not record_path.is_file():
            if ours:
                raise ConfigError(f"train.output_dir: {out} holds outputs ({', '.join(ours)}) but no {RUN_RECORD} "
                                  "recording the settings that made them (an older version, or not a training "
                                  "run): it cannot be resumed; pass --force to start over there or choose another "
                                  "train.output_dir")
            return None
        recorded = self._read_record()
        # a setting added after the run was recorded reads as its default, which is what the older code did; one
        # that became resumable after it was recorded is not compared
        for section, values in run_identity(JakiroConfig(), None)["config"].items():
            kept = recorded.get("config", {}).get(section)
            if isinstance(kept, dict):
                for key, value in values.items():
                    kept.setdefault(key, value)
                for key in RESUMABLE.get(section, ()):
                    kept.pop(key, None)
        changed = differences({k: recorded.get(k) for k in self.identity}, self.identity)
        if changed:
            raise ConfigError(f"--resume: {out} was trained with other settings or inputs ({'; '.join(changed)}); "
                              "resume with the recorded ones (see its config.yaml), or train in another "
                              "train.output_dir")
        return checkpoint

    def _read_record(self) -> dict:
        path = self.output_dir / RUN_RECORD
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path} is unreadable ({err}); the run cannot be resumed: train in another "
                              "train.output_dir") from None

    def _write_record(self, record: dict) -> None:
        atomic_write_text(self.output_dir / RUN_RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")

    def _check_finite(self, loss: torch.Tensor, batch: dict) -> None:
        """Stop (every process together) with a :class:`TrainingError` naming the optimizer step, epoch, batch and
        sequences once a micro-batch's loss, or at a step a gradient, is not finite: the weights are not updated
        with it, and the last checkpoint stays the last good one."""
        acc = self.accelerator
        if not torch.isfinite(loss.detach()).all():
            self._bad = self._bad or ("loss", self.state.batch, batch["index"].tolist())
        if not acc.sync_gradients:
            return
        bad_grad = False
        if acc.scaler is None:  # fp16's gradient scaler skips steps with infinite gradients by design
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            bad_grad = bool(grads) and not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if bad_grad and self._bad is None:
            self._bad = ("gradient", self.state.batch, batch["index"].tolist())
        flag = torch.tensor([float(self._bad is not None)], device=acc.device)
        if acc.num_processes > 1:
            flag = acc.reduce(flag, reduction="sum")
        if flag.item() == 0:
            return
        if self._bar is not None:
            self._bar.close()
        what, position, sequences = self._bad or ("loss or gradient on another process", self.state.batch, [])
        raise TrainingError(
            f"non-finite {what} at optimizer step {self.state.step + 1} (epoch {self.state.epoch}, batch "
            f"{position} of the epoch, sequences {sequences}): training stopped without exporting a draft; check "
            f"the training data (its manifest's hashes are verified on opening) and the settings (train.lr, "
            f"train.mixed_precision); the last good checkpoint is in {self.output_dir / CHECKPOINTS}")

    def _micro_step(self, batch: dict, sums: Sums) -> None:
        acc, train = self.accelerator, self.train_cfg
        inputs = self._inputs(batch, self.state.epoch)
        with acc.accumulate(self.model):
            terms, scores, later = self._losses(self.model, inputs, self._global_normalizers(inputs["mask"],
                                                                                             inputs["positions"]))
            acc.backward(terms.total)
            self._check_finite(terms.total, batch)
            if acc.sync_gradients and train.grad_clip > 0 and not train.deepspeed_config:
                if train.grad_clip_mode == "value":
                    acc.clip_grad_value_(self.model.parameters(), train.grad_clip)
                else:
                    acc.clip_grad_norm_(self.model.parameters(), train.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad()
        self._add_scores(sums, terms, scores)
        for j, (step_terms, step_scores) in enumerate(later, 1):  # unrolled steps: their loss and head-1 top-1
            sums.add(f"unroll{j}_total", step_terms.total.detach())
            sums.add(f"unroll{j}_top1_hits", step_scores.topk_hits(1, (1,))[0])
            sums.add(f"unroll{j}_count", step_scores.weights1.sum())
        sums.add("tokens", inputs["tokens"])

    def _step_record(self, sums: dict, micro: int, seconds: float) -> dict:
        state = self.state
        record = {"type": "step", "step": state.step, "epoch": state.epoch, "lr": self.scheduler.get_last_lr()[0]}
        # each process's terms carry a factor num_processes (see _global_normalizers): the global mean is their mean
        per = micro * self.accelerator.num_processes
        record["loss"] = sums["total"] / per
        record.update({name: sums[name] / per for name in ("v1", "p1", "v2", "p2", "balance")})
        record.update({f"unroll{j}_loss": sums[f"unroll{j}_total"] / per for j in self._unrolled})
        record.update(self._accuracies(sums))
        record["tokens"] = sums["tokens"]
        record["tokens_per_s"] = sums["tokens"] / max(seconds, 1e-9)
        for name in (*self._loss_names, "tokens"):
            state.epoch_sums[name] = state.epoch_sums.get(name, 0.0) + record[name]
        for name, value in sums.items():
            if name.startswith("head") or name.endswith(("_hits", "_count")):
                state.epoch_sums[name] = state.epoch_sums.get(name, 0.0) + value
        state.epoch_sums["steps"] = state.epoch_sums.get("steps", 0.0) + 1
        return record

    @property
    def _unrolled(self) -> range:
        """The unrolled draft steps j >= 1 of training-time test (empty without it)."""
        return range(1, self.train_cfg.unroll_steps)

    @property
    def _loss_names(self) -> tuple[str, ...]:
        """The loss entries of a step or epoch record."""
        return ("loss", "v1", "p1", "v2", "p2", "balance", *(f"unroll{j}_loss" for j in self._unrolled))

    def _accuracies(self, sums: dict) -> dict:
        """head{h}_top{k} = weighted top-k hits / weighted count, for the heads that were scored; unroll{j}_top1 the
        same for head 1 at unrolled step j."""
        out = {}
        for head in (1, 2):
            for k in KS:
                value = ratio(sums, f"head{head}_top{k}_hits", f"head{head}_count")
                if value is not None:
                    out[f"head{head}_top{k}"] = value
        for j in self._unrolled:
            value = ratio(sums, f"unroll{j}_top1_hits", f"unroll{j}_count")
            if value is not None:
                out[f"unroll{j}_top1"] = value
        return out

    def _end_epoch(self) -> None:
        state, train = self.state, self.train_cfg
        sums = state.epoch_sums
        steps = max(sums.get("steps", 0.0), 1.0)
        record = {"type": "epoch", "step": state.step, "epoch": state.epoch}
        record.update({name: sums.get(name, 0.0) / steps for name in self._loss_names})
        record.update(self._accuracies(sums))
        record["tokens"] = sums.get("tokens", 0.0)
        self._log(record, say=True)
        state.epoch, state.batch, state.epoch_sums = state.epoch + 1, 0, {}
        if state.epoch % train.save_every == 0 or state.epoch == train.num_epochs:
            self._log({"type": "eval", "step": state.step, "epoch": state.epoch - 1, **self.evaluate()}, say=True)
            self.save_checkpoint()

    # -- evaluation -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out losses, top-k accuracy per head and the draft's k-step accuracy ``acc_step{k}``."""
        acc, train = self.accelerator, self.train_cfg
        model = self.heads  # the bare module: no DDP / DeepSpeed forward
        was_training = self.draft.training
        self.draft.eval()
        sums = Sums()
        chain_correct = torch.zeros(train.eval_draft_steps)
        chain_total = torch.zeros(train.eval_draft_steps)
        for batch in self._loader(self.test_set, self.test_sampler, packed=False):  # the k-step chains need rows
            inputs = self._inputs(batch, None)
            with self._full_parameters():
                # step 0 only (the k-step accuracy below measures the later steps); weighted sums, normalised after
                # the reduce
                terms, scores, _ = self._losses(model, inputs, [(1.0, 1.0)], steps=1)
                with acc.autocast():
                    correct, total = draft_chain_accuracy(self.draft, inputs["features"], inputs["input_ids"],
                                                          inputs["target"], inputs["mask"], train.eval_draft_steps)
            self._add_scores(sums, terms, scores)
            sums.add("count2", head2_mask(inputs["mask"], inputs["positions"]).sum())
            chain_correct += correct
            chain_total += total
        for k in range(train.eval_draft_steps):
            sums.add(f"chain{k}_correct", chain_correct[k])
            sums.add(f"chain{k}_total", chain_total[k])
        self.draft.train(was_training)
        reduced = sums.reduced(acc)
        count1, count2 = reduced.get("head1_count", 0.0) + EPS, reduced.get("count2", 0.0) + EPS
        out = {f"test_{n}": reduced.get(n, 0.0) / count1 for n in ("v1", "p1")}
        out.update({f"test_{n}": reduced.get(n, 0.0) / count2 for n in ("v2", "p2")})
        out["test_loss"] = train.v_w * (out["test_v1"] + train.parallel_w * out["test_v2"]) + train.p_w * (
            out["test_p1"] + train.parallel_w * out["test_p2"])
        out.update({f"test_{n}": v for n, v in self._accuracies(reduced).items()})
        for k in range(train.eval_draft_steps):
            out[f"test_acc_step{k}"] = ratio(reduced, f"chain{k}_correct", f"chain{k}_total")
        out["test_tokens_scored"] = reduced.get("head1_count", 0.0)
        return out

    # -- outputs ----------------------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(text)

    def _log(self, record: dict, say: bool = False) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            self.log.write(record)
            self.state.log_lines = self.log.lines
            if say:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if acc.log_with:
            numbers = {f"{record['type']}/{k}": v for k, v in record.items()
                       if isinstance(v, (int, float)) and k not in ("type", "step")}
            acc.log(numbers, step=record["step"])

    def save_checkpoint(self) -> Path:
        """``accelerator.save_state`` into ``checkpoints/step_N`` (every process calls it; no-op if unchanged)."""
        acc = self.accelerator
        final = self.output_dir / CHECKPOINTS / f"step_{self.state.step}"
        if self._saved_at == self.state.position:
            return final
        self._saved_at = self.state.position
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        if self.train_cfg.deepspeed_config:
            acc.save_state(str(tmp))
        elif acc.is_main_process:
            extra = {"train_state": self.state.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
            ckpt.save(tmp, acc.unwrap_model(self.model).state_dict(), self.optimizer.state_dict(), extra)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            record = self._read_record()
            record.setdefault("checkpoints", {})[final.name] = (ckpt.file_hashes(tmp)
                                                                if self.train_cfg.deepspeed_config else None)
            os.replace(tmp, final)
            self._drop_old_checkpoints(record)
            self._write_record(record)
        acc.wait_for_everyone()
        return final

    def _drop_old_checkpoints(self, record: dict) -> None:
        """Delete all but the newest ``train.keep_checkpoints`` checkpoint folders (0: keep every one) and their
        entries in ``record``."""
        keep = self.train_cfg.keep_checkpoints
        if not keep:
            return
        for old in saved_checkpoints(self.output_dir)[:-keep]:
            shutil.rmtree(old)
            record.get("checkpoints", {}).pop(old.name, None)

    def load_checkpoint(self, folder: Path) -> None:
        """Restore weights, optimizer, schedule and loop position from a checkpoint folder, never unpickling a file
        that the run did not write itself (:mod:`jakiro.train.checkpoint`)."""
        acc = self.accelerator
        try:
            if self.train_cfg.deepspeed_config:
                ckpt.check_hashes(folder, self._read_record().get("checkpoints", {}).get(folder.name))
                acc.load_state(str(folder))
                return
            weights, optimizer, extra = ckpt.load(folder)
        except ckpt.CheckpointError as err:
            raise TrainingError(str(err)) from None
        try:
            acc.unwrap_model(self.model).load_state_dict(weights)
            self.optimizer.load_state_dict(optimizer)
            self.scheduler.load_state_dict(extra["scheduler"])
            self.state.load_state_dict(extra["train_state"])
            if acc.scaler is not None and extra.get("scaler"):
                acc.scaler.load_state_dict(extra["scaler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise TrainingError(f"{folder} does not fit this run ({str(err).splitlines()[0]}); delete it to resume "
                                "from the checkpoint before it, or train in another train.output_dir") from None

    def _exported_at(self, step: int) -> bool:
        """Whether ``output_dir/draft`` holds this run's export after ``step`` optimizer steps (weights, config and a
        training.json saying so)."""
        out = self.output_dir / EXPORT
        record = provenance.read_training_record(out)
        return (record is not None and record.get("steps") == step and (out / "model.safetensors").is_file()
                and (out / CONFIG_NAME).is_file())

    def export(self) -> Path:
        """Write the trained draft as ``output_dir/draft``: ``config.json`` + ``model.safetensors`` (float32) and
        ``training.json``, what made it (:mod:`jakiro.train.provenance`)."""
        acc = self.accelerator
        weights = acc.get_state_dict(self.model)  # every process: ZeRO-3 gathers the partitions
        out = self.output_dir / EXPORT
        if acc.is_main_process:
            draft = DraftHead(self.draft_config)
            draft.load_state_dict({k.removeprefix("draft."): v.float() if v.is_floating_point() else v
                                   for k, v in weights.items()}, strict=True)
            draft.save_pretrained(out)
            init_from = self.train_cfg.init_from
            record = provenance.training_record(
                self._read_record(), self.about_data, self.output_dir / METRICS, init_from,
                None if init_from is None else resolve_draft_path(init_from), describe(acc.device))
            atomic_write_text(out / provenance.FILE, json.dumps(record, indent=1) + "\n")
            self._say(f"exported the draft to {out} ({record['training_tokens']:,.0f} training tokens in "
                      f"{record['steps']} steps)")
        acc.wait_for_everyone()
        return out

