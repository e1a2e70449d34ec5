"""Chat formatting and the assistant loss mask: one mechanism for every model family (data generation and evaluation).

A template is a function ``render(messages, add_generation_prompt) -> str`` over chat messages
(``{"role": "system"|"user"|"assistant", "content": str}``). Four kinds exist:

* ``auto``: the tokenizer's own chat template (``apply_chat_template``: SmolLM2 / Qwen2 ChatML, Llama, ...);
* ``vicuna`` and ``llama-2``: FastChat's conversation templates (what the reference used for those families);
* ``llama-3``: written here (FastChat's PyPI release lacks it and silently falls back to another template).

Default system prompts (``system_prompt=None``), as the reference's data generation and evaluation: ``auto`` and
``vicuna`` keep their template's own; ``llama-2`` and ``llama-3`` get the Llama-2 safety prompt.

The loss mask never depends on family-specific token offsets. For each assistant turn ``k`` the conversation is
rendered up to the generation prompt (``messages[:k]``) and through the reply (``messages[:k+1]``); the first
must be a prefix of the second and both of the full text. The reply's character span starts where its content
starts after the generation prompt, and ends after the first special token that follows the content (only
whitespace may lie between): the end-of-turn token (``<|im_end|>``, ``</s>``, ``<|eot_id|>``). Tokens whose
character offsets (from a fast tokenizer) overlap a span get mask 1: the reply and its end-of-turn token, never
the role header, the system prompt or user turns.

ShareGPT records (``{"conversations": [{"from": "human"|"gpt", "value": str}]}``) become messages with
``to_messages``, which raises ``SkipConversation`` with a reason for empty or malformed ones.

:class:`ChatPrompter` builds the multi-turn prompts of benchmark questions and the web UI: turn t's prompt holds
questions 1..t and the model's own answers 1..t-1, then the assistant's generation prompt (``llama-2`` prompts end
with a space after ``[/INST]``, as in the reference's evaluation protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

TEMPLATE_NAMES = ("auto", "vicuna", "llama-2", "llama-3")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
LLAMA3_HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"
LLAMA2_SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)

Messages = list[dict[str, str]]


class TemplateError(ValueError):
    """A template name is unknown, or a template cannot delimit the assistant turns."""


class SkipConversation(ValueError):
    """A conversation is empty or malformed; ``reason`` is the summary's counter name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def to_messages(record: object) -> Messages:
    """ShareGPT record -> chat messages (user first, alternating with assistant).

    A leading assistant turn is dropped (as the reference does). Raises SkipConversation with reason
    ``malformed`` (no list of ``{"from": str, "value": str}`` turns), ``empty``, ``bad_role`` (a role other than
    human/user/gpt/assistant), ``empty_turn`` (a blank value), ``not_alternating`` or ``no_assistant``.
    """
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str) for t in turns
    ):
        raise SkipConversation("malformed")
    if any(t["from"] not in ROLES for t in turns):
        raise SkipConversation("bad_role")
    messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]
    if messages and messages[0]["role"] == "assistant":
        messages = messages[1:]
    if not messages:
        raise SkipConversation("empty")
    if any(not m["content"].strip() for m in messages):
        raise SkipConversation("empty_turn")
    if any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(messages)):
        raise SkipConversation("not_alternating")
    if len(messages) < 2:
        raise SkipConversation("no_assistant")
    return messages


@dataclass
class ChatTemplate:
    """A named renderer plus what the tokenizer must do with its text.

    ``add_special_tokens``: whether tokenizing the rendered text adds the tokenizer's own BOS (FastChat prompts
    carry none; chat templates and the Llama-3 template write it themselves).
    """

    name: str
    render: Callable[[Messages, bool], str]
    add_special_tokens: bool


def _with_system(messages: Messages, system_prompt: str | None) -> Messages:
    return messages if system_prompt is None else [{"role": "system", "content": system_prompt}, *messages]


def _tokenizer_template(tokenizer, system_prompt: str | None) -> ChatTemplate:
    if not tokenizer.chat_template:
        raise TemplateError(f"the tokenizer has no chat template; choose one of: {', '.join(TEMPLATE_NAMES[1:])}")

    def render(messages: Messages, add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(_with_system(messages, system_prompt), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    return ChatTemplate("auto", render, add_special_tokens=False)


def _fastchat_template(name: str, system_prompt: str | None) -> ChatTemplate:
    try:
        from fastchat.model import get_conversation_template
    except ImportError as e:
        raise TemplateError(f"template {name!r} needs FastChat: pip install fschat ({e})") from e
    base = get_conversation_template(name)
    expected = {"vicuna": "vicuna_v1.1", "llama-2": "llama-2"}[name]
    if base.name != expected:  # FastChat falls back to another template silently
        raise TemplateError(f"FastChat returned template {base.name!r} for {name!r}, expected {expected!r}")
    if system_prompt is not None:
        base.set_system_message(system_prompt)

    def render(messages: Messages, add_generation_prompt: bool) -> str:
        conv = base.copy()
        for m in messages:
            conv.append_message(conv.roles[m["role"] == "assistant"], m["content"])
        if add_generation_prompt:
            conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    return ChatTemplate(name, render, add_special_tokens=True)


def _llama3_template(system_prompt: str | None) -> ChatTemplate:
    """Meta's Llama-3 instruct format: contents are stripped, every turn ends with <|eot_id|>."""

    def render(messages: Messages, add_generation_prompt: bool) -> str:
        parts = ["<|begin_of_text|>"]
        for m in _with_system(messages, system_prompt):
            parts += [LLAMA3_HEADER.format(role=m["role"]), m["content"].strip(), "<|eot_id|>"]
        if add_generation_prompt:
            parts.append(LLAMA3_HEADER.format(role="assistant"))
        return "".join(parts)

    return ChatTemplate("llama-3", render, add_special_tokens=False)


def get_template(name: str, tokenizer, system_prompt: str | None = None) -> ChatTemplate:
    """The template called ``name`` (one of TEMPLATE_NAMES); ``system_prompt`` None = the template's default."""
    check_template_name(name)
    if system_prompt is None and name in ("llama-2", "llama-3"):
        system_prompt = LLAMA2_SYSTEM_PROMPT
    if name == "auto":
        return _tokenizer_template(tokenizer, system_prompt)
    if name == "llama-3":
        return _llama3_template(system_prompt)
    return _fastchat_template(name, system_prompt)


def check_template_name(name: str) -> None:
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown chat template {name!r}; valid: {', '.join(TEMPLATE_NAMES)}")


def special_tokens(tokenizer) -> list[str]:
    """Every special token string of the tokenizer, longest first."""
    found = set(tokenizer.all_special_tokens)
    found |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return sorted(found, key=len, reverse=True)


def assistant_spans(template: ChatTemplate, messages: Messages,
                    specials: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages``; return (text, [(start, end)] character spans of each assistant reply + end token)."""
    text = template.render(messages, False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = template.render(messages[:k], True)
        through = template.render(messages[: k + 1], False)
        if not (through.startswith(prompt) and text.startswith(through)):
            raise TemplateError(f"template {template.name!r} does not render turn by turn (turn {k} changes "
                                "the text before it); cannot locate the assistant replies")
        content = message["content"].strip()
        start = text.find(content, len(prompt))
        if start < 0 or start >= len(through):
            raise TemplateError(f"template {template.name!r} changes assistant turn {k}'s text")
        after = start + len(content)
        after += len(text[after:]) - len(text[after:].lstrip())
        end_token = next((s for s in specials if text.startswith(s, after)), None)
        if end_token is None:
            raise TemplateError(f"template {template.name!r}: no special end-of-turn token after assistant turn "
                                f"{k} (text there: {text[after:after + 20]!r}); does the template match the tokenizer?")
        spans.append((start, after + len(end_token)))
    return text, spans


def encode(template: ChatTemplate, tokenizer, messages: Messages, max_len: int,
           specials: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize a conversation and mark its assistant tokens.

    Returns:
        (input_ids int64 [L], loss_mask uint8 [L]) with L <= max_len (longer conversations are truncated).
    Raises SkipConversation("no_assistant_within_max_len") when truncation leaves no assistant token.
    """
    text, spans = assistant_spans(template, messages, special_tokens(tokenizer) if specials is None else specials)
    enc = tokenizer(text, add_special_tokens=template.add_special_tokens, return_offsets_mapping=True)
    offsets = torch.tensor(enc["offset_mapping"], dtype=torch.int64).reshape(-1, 2)[:max_len]
    ids = torch.tensor(enc["input_ids"], dtype=torch.int64)[:max_len]
    first, last = offsets[:, 0, None], offsets[:, 1, None]  # [L, 1]
    span = torch.tensor(spans, dtype=torch.int64)  # [S, 2]
    lo, hi = span[None, :, 0], span[None, :, 1]  # [1, S]
    overlap = (first < hi) & (last > lo)
    point = (first == last) & (first >= lo) & (first < hi)  # zero-width token inside a span
    mask = (overlap | point).any(dim=1).to(torch.uint8)
    if not mask.any():
        raise SkipConversation("no_assistant_within_max_len")
    return ids, mask

class ChatPrompter:
    """Builds token ids for a conversation and cleans generated answers."""

    def __init__(self, tokenizer, template: str = "auto", system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.template = get_template(template, tokenizer, system_prompt)

    def prompt_text(self, questions: list[str], answers: list[str]) -> str:
        """The prompt that asks ``questions[-1]`` after the earlier questions and ``answers``, as text."""
        if len(answers) != len(questions) - 1:
            raise ValueError(f"{len(questions)} questions need {len(questions) - 1} earlier answers, got "
                             f"{len(answers)}")
        messages = []
        for turn, question in enumerate(questions):
            messages.append({"role": "user", "content": question})
            if turn < len(answers):
                messages.append({"role": "assistant", "content": answers[turn]})
        text = self.template.render(messages, True)
        return text + " " if self.template.name == "llama-2" else text

    def input_ids(self, questions: list[str], answers: list[str]) -> torch.Tensor:
        """[1, P] ids of :meth:`prompt_text`."""
        text = self.prompt_text(questions, answers)
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=self.template.add_special_tokens)[
            "input_ids"
        ]

    def answer_text(self, generated_ids: list[int]) -> str:
        """Decoded answer: special tokens removed, stripped."""
        return self.tokenizer.decode(generated_ids, skip_special_tokens=True).strip()
