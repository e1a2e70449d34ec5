"""Self-distilled training conversations: the ``data.*`` selection of ShareGPT, answered by the target itself.

    python -m jakiro.ge_data.regenerate --config regenerate_smollm2 [--set regenerate.batch_size=16 ...]
    python -m jakiro.ge_data --config ge_data_smollm2_selfdistill    # then features of the result, as usual

Why: a draft is trained to predict the target's features on some text, and at inference it drafts on the target's
own text. ShareGPT's answers were written by ChatGPT; a small target writes differently (shorter, simpler, more
repetitive), so training on the target's own answers matches what the draft sees when it is used.

Selection as ``python -m jakiro.ge_data`` (``data.input_path``, ``shuffle_seed``, ``start``, ``end``). Each
conversation keeps its user turns; assistant turn k is replaced by the target's answer to the conversation so far
(its own earlier answers included, rendered with the chat template of ``data.chat_template`` /
``model.chat_template``): greedy at ``regenerate.temperature`` 0, sampled otherwise, at most
``regenerate.max_new_tokens`` new tokens. A conversation ends early when its prompt reaches ``data.max_len``
tokens (its features would be truncated there), when an answer is empty, or after an answer cut off at
``max_new_tokens``. Conversations are taken in parts of 4 batches; within a part, round r asks turn r of every
conversation still going, answered by ``regenerate.decoder``: ``static`` (:mod:`jakiro.ge_data.decode`: the whole
round, ``regenerate.batch_size`` rows decoding at a time) or ``generate`` (transformers', left-padded batches of
``regenerate.batch_size`` prompts in order of prompt length).

Output ``regenerate.output_path``: JSONL, one ShareGPT record per line, ``{"id", "source_index" (row in the input
file), "conversations": [{"from": "human" | "gpt", "value"}, ...]}``. Each part is first written, atomically, to
``<output_path>.parts/part_{i:05d}.jsonl``; a killed run restarted with the same command skips the finished parts
(refusing parts written with other settings or from another input file content), and the output file is written
(atomically) once all parts exist. An existing output file that is not this run's is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from jakiro.common.assets import AssetError
from jakiro.common.chat_templates import (
    Messages,
    SkipConversation,
    TemplateError,
    check_template_name,
    get_template,
    to_messages,
)
from jakiro.common.config import ConfigError, JakiroConfig, add_config_arguments, config_from_args
from jakiro.ge_data.decode import decode_batch
from jakiro.ge_data.generate import GeDataError, load_conversations, load_target, select
from jakiro.target import target_identity
from jakiro.target.packed_linear import PackedLinears
from jakiro.common.io import atomic_write_text, check_output, differences, sha256_path

PARTS_META = "settings.json"
PART_BATCHES = 4  # a part (the unit of resumption) holds this many batches of conversations


def _say(message: str) -> None:
    print(f"[jakiro.ge_data.regenerate] {message}", flush=True)


@dataclass
class Conversation:
    """One conversation being answered: its source row, user turns and the messages so far."""

    index: int
    record_id: object
    user_turns: list[str]
    messages: Messages
    done: bool = False


@dataclass
class Counts:
    """What a batch did: answers written, answers cut at max_new_tokens, new tokens, prompts that reached max_len."""

    answers: int = 0
    cut: int = 0
    tokens: int = 0
    prompts_too_long: int = 0

    def add(self, other: "Counts") -> None:
        for key in vars(self):
            setattr(self, key, getattr(self, key) + getattr(other, key))


def start_conversation(index: int, record: object) -> Conversation:
    """Raises SkipConversation for records ``python -m jakiro.ge_data`` would skip too."""
    messages = to_messages(record)
    users = [m["content"] for m in messages if m["role"] == "user"]
    record_id = record.get("id", index) if isinstance(record, dict) else index
    return Conversation(index, record_id, users, [])


def to_record(conversation: Conversation) -> dict:
    roles = {"user": "human", "assistant": "gpt"}
    turns = [{"from": roles[m["role"]], "value": m["content"]} for m in conversation.messages]
    return {"id": conversation.record_id, "source_index": conversation.index, "conversations": turns}


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids [B, L], attention_mask [B, L]), left-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.int64)
        mask[i, width - len(row):] = 1
    return ids, mask


class Regenerator:
    """The target, its tokenizer and chat template, and the settings of one regeneration run."""

    def __init__(self, cfg: JakiroConfig, model, tokenizer):
        template_name = cfg.data.chat_template or cfg.model.chat_template
        check_template_name(template_name)
        self.template = get_template(template_name, tokenizer, cfg.data.system_prompt)
        self.model, self.tokenizer = model, tokenizer
        self.settings = cfg.regenerate
        self.max_len = cfg.data.max_len
        generation = model.generation_config
        ends = generation.eos_token_id if generation.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = set(ends if isinstance(ends, list) else [ends]) - {None}
        if not self.eos_ids:
            raise GeDataError("the target has no end-of-sequence token (generation_config.eos_token_id, "
                              "tokenizer.eos_token_id): its answers could not end")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.pad_id = pad
        self._packed_linears: PackedLinears | None = None

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        turn = len(conversation.messages) // 2
        messages = conversation.messages + [{"role": "user", "content": conversation.user_turns[turn]}]
        text = self.template.render(messages, True)
        return self.tokenizer(text, add_special_tokens=self.template.add_special_tokens)["input_ids"]

    def packed_linears(self) -> PackedLinears:
        """The target's linear layers for the static decoder, probed once per run."""
        if self._packed_linears is None:
            self._packed_linears = PackedLinears(self.model,
                                                 batch_invariant=self.settings.kernels == "batch_invariant")
        return self._packed_linears

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], seed: int) -> list[list[int]]:
        """The new tokens answering each prompt (ending at an end token or after max_new_tokens; with
        ``regenerate.decoder`` generate, padded after an end token)."""
        settings, sample = self.settings, self.settings.temperature > 0
        if settings.decoder == "static":
            generator = torch.Generator(self.model.device).manual_seed(seed) if sample else None
            return decode_batch(self.model, prompts, settings.max_new_tokens, self.eos_ids, self.pad_id,
                                settings.temperature, generator, max_rows=settings.batch_size,
                                linears=self.packed_linears())
        input_ids, attention_mask = _left_pad(prompts, self.pad_id)
        device = self.model.device
        torch.manual_seed(seed)
        output = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=settings.max_new_tokens, do_sample=sample,
            temperature=settings.temperature if sample else None, top_p=None, top_k=None,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id,
        )
        return output[:, input_ids.shape[1]:].tolist()

    @torch.no_grad()
    def answer_turn(self, asking: list[Conversation], prompts: list[list[int]], seed: int) -> Counts:
        """Append one assistant answer to every conversation of ``asking`` (or mark it done); ``prompts`` are their
        tokenized prompts, each shorter than data.max_len."""
        counts = Counts()
        for conversation, new in zip(asking, self.generate(prompts, seed)):
            end = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
            tokens = new if end is None else new[:end]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            user = conversation.user_turns[len(conversation.messages) // 2]
            if not text:
                conversation.done = True
                continue
            conversation.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
            counts.answers += 1
            counts.tokens += len(tokens) + (end is not None)
            if end is None:
                counts.cut += 1
                conversation.done = True
            if len(conversation.messages) // 2 == len(conversation.user_turns):
                conversation.done = True
        return counts

    def answer(self, part: list[Conversation], seed: int) -> Counts:
        """Answer every turn of every conversation of ``part``: round r asks turn r of the conversations still
        going, ``batch_size`` prompts at a time, in order of prompt length (so batches stay full and pad little)."""
        counts = Counts()
        for round_ in itertools.count():
            size = self.settings.batch_size
            asking = []
            for conversation in part:
                if conversation.done:
                    continue
                ids = self.prompt_ids(conversation)
                if len(ids) >= self.max_len:
                    conversation.done = True
                    counts.prompts_too_long += 1
                else:
                    asking.append((len(ids), conversation, ids))
            if not asking:
                return counts
            asking.sort(key=lambda a: a[0])  # stable: equal lengths keep the part's order
            if self.settings.decoder == "static":  # it schedules the whole round, batch_size rows at a time
                size = len(asking)
            for b in range(0, len(asking), size):
                batch = asking[b:b + size]
                counts.add(self.answer_turn([a[1] for a in batch], [a[2] for a in batch],
                                            seed * 1000 + round_ * 100 + b // size))
        return counts


def part_name(index: int) -> str:
    return f"part_{index:05d}.jsonl"


def _settings(cfg: JakiroConfig, input_path: str, num_records: int, target_path: str, model) -> dict:
    """What a part's content depends on; parts written under other settings are refused."""
    data = cfg.data
    return {
        "input": {"path": input_path, "records": num_records, "content_sha256": sha256_path(input_path),
                  "shuffle_seed": data.shuffle_seed, "start": data.start},
        "target": {"path": target_path, "dtype": cfg.model.dtype,
                   "identity": target_identity(model.config.get_text_config(), model.get_output_embeddings().weight)},
        "template": data.chat_template or cfg.model.chat_template, "system_prompt": data.system_prompt,
        "max_len": data.max_len, "regenerate": {k: v for k, v in vars(cfg.regenerate).items() if k != "output_path"},
    }


def _check_parts_dir(parts: Path, settings: dict) -> None:
    meta = parts / PARTS_META
    check_output(parts, "dir", force=True)
    if meta.exists():
        try:
            found = json.loads(meta.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GeDataError(f"{meta} is truncated or corrupted ({err}); delete {parts} to start over") from None
        if found != settings:
            raise GeDataError(f"{parts} holds answers written with other settings "
                              f"({'; '.join(differences(found, settings))}); use another regenerate.output_path or "
                              "delete that directory")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta, json.dumps(settings, indent=2) + "\n")


def _read_part(path: Path) -> str:
    """A finished part's text, checked line by line (GeDataError naming a damaged part and what to do). Lines end
    at "\n" only: the records keep text's own U+2028 / U+0085 (``ensure_ascii=False``), which ``str.splitlines``
    would also split at."""
    try:
        text = path.read_text("utf-8")
        if text and not text.endswith("\n"):
            raise json.JSONDecodeError("no newline at the end", text, len(text))
        for line in text.split("\n")[:-1]:
            json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GeDataError(f"{path} is truncated or corrupted ({err}); delete it and run the same command again to "
                          "answer its conversations anew") from None
    return text


def regenerate(cfg: JakiroConfig, max_parts: int | None = None, progress: bool = True,
               force: bool = False) -> Path | None:
    """Write the missing parts (at most ``max_parts``), then the output file once all exist. An existing output
    file that no run of these settings is resuming (its ``.parts`` directory) is replaced only with ``force``.

    Returns the output path, or None while parts are missing.
    """
    records, input_path = load_conversations(cfg.data.input_path)
    order = select(len(records), cfg.data.shuffle_seed, cfg.data.start, cfg.data.end)
    conversations, skipped = [], 0
    for row in order:
        try:
            conversations.append(start_conversation(row, records[row]))
        except SkipConversation:
            skipped += 1
    if not conversations:
        raise GeDataError(f"{input_path}: no usable conversation in [{cfg.data.start}, {cfg.data.end})")
    size = PART_BATCHES * cfg.regenerate.batch_size
    groups = [conversations[i:i + size] for i in range(0, len(conversations), size)]

    model, tokenizer, target_path = load_target(cfg.model)
    output = Path(cfg.regenerate.output_path)
    parts = output.with_name(output.name + ".parts")
    check_output(output, "file", force or (parts / PARTS_META).is_file(), "--force")
    _check_parts_dir(parts, _settings(cfg, input_path, len(records), target_path, model))
    todo = [i for i in range(len(groups)) if not (parts / part_name(i)).exists()]
    _say(f"{len(conversations)} conversations ({skipped} skipped as malformed), {len(groups)} parts of "
         f"{size}; {len(groups) - len(todo)} already answered")
    regenerator = Regenerator(cfg, model, tokenizer)
    counts, started = Counts(), time.perf_counter()
    bar = tqdm(todo[:max_parts], desc="regenerate", unit="part", disable=not progress)
    for i in bar:
        counts.add(regenerator.answer(groups[i], cfg.regenerate.seed + i))
        lines = "".join(json.dumps(to_record(c), ensure_ascii=False) + "\n" for c in groups[i] if c.messages)
        atomic_write_text(parts / part_name(i), lines)
        bar.set_postfix(tokens_per_s=f"{counts.tokens / (time.perf_counter() - started):.0f}")
    bar.close()
    seconds = time.perf_counter() - started
    _say(f"this run: {counts.answers} answers ({counts.cut} cut at max_new_tokens, {counts.prompts_too_long} "
         f"turns not asked: prompt >= data.max_len), {counts.tokens} new tokens in {seconds:.0f} s "
         f"({counts.tokens / max(seconds, 1e-9):.0f} tokens/s)")
    missing = [i for i in range(len(groups)) if not (parts / part_name(i)).exists()]
    if missing:
        _say(f"{len(missing)} of {len(groups)} parts still missing; run the same command again to continue")
        return None
    text = "".join(_read_part(parts / part_name(i)) for i in range(len(groups)))
    atomic_write_text(output, text)
    _say(f"{text.count(chr(10))} conversations -> {output}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.ge_data.regenerate", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--max-parts", type=int, default=None, metavar="K",
                        help="answer at most K parts (4 batches of conversations each), then stop (the same command "
                             "continues later; default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: show one)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing regenerate.output_path (default: refuse)")
    args = parser.parse_args(argv)
    try:
        regenerate(config_from_args(args), args.max_parts, progress=not args.quiet, force=args.force)
    except (ConfigError, GeDataError, TemplateError, AssetError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
