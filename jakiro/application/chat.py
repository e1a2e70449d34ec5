"""Chat answers from an ``EaModel``, streamed step by step with the accepted draft tokens marked (no gradio here).

:class:`ChatEngine` builds the prompt of a multi-turn conversation with the model's chat template
(:class:`jakiro.common.chat_templates.ChatPrompter`), runs speculative (``ea_generate``) or plain (``naive_generate``)
decoding, and yields the growing :class:`Turn` after every step. The first ``accept_lengths[-1]`` tokens of a
speculative step are the draft tokens the target accepted; the rest is the target's own token (the first step,
the prefill, has none). One lock serialises every model call, so an answer that was stopped mid-step can never
overlap the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from jakiro.application.view import AnswerStats, AnswerText, Piece
from jakiro.common.chat_templates import ChatPrompter
from jakiro.model.ea_model import EaModel


@dataclass(frozen=True)
class Settings:
    """What the user chose for one answer."""

    speculative: bool = True
    temperature: float = 0.0
    top_p: float = 1.0
    total_token: int = 60
    depth: int = 5
    top_k: int = 10


@dataclass
class Turn:
    """One question and its (possibly partial) answer."""

    question: str
    answer: str = ""  # decoded answer (special tokens removed, stripped): what later prompts contain
    pieces: list[Piece] = field(default_factory=list)
    stats: AnswerStats | None = None


class ChatEngine:
    """Streams answers of ``model`` in a conversation."""

    def __init__(self, model: EaModel, chat_template: str = "auto", max_new_tokens: int = 512,
                 max_length: int = 2048, sampling_top_k: int = 0):
        self.model = model
        self.prompter = ChatPrompter(model.get_tokenizer(), chat_template)
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.sampling_top_k = sampling_top_k
        self.lock = threading.Lock()

    def tree(self) -> tuple[int, int, int]:
        """The current (total_token, depth, top_k)."""
        drafter = self.model.drafter
        return drafter.total_token, drafter.depth, drafter.top_k

    def stream(self, history: list[Turn], question: str, settings: Settings) -> Iterator[Turn]:
        """Answer ``question`` after ``history``: an iterator of the growing turn, one item per decoding step.

        Everything is checked before this returns: ValueError for a bad tree or a conversation that leaves no room
        under ``max_length``.
        """
        questions = [t.question for t in history] + [question]
        input_ids = self.prompter.input_ids(questions, [t.answer for t in history])
        generate = self.model.ea_generate if settings.speculative else self.model.naive_generate
        with self.lock:
            if settings.speculative and self.tree() != (settings.total_token, settings.depth, settings.top_k):
                self.model.set_tree(settings.total_token, settings.depth, settings.top_k)
            steps = generate(input_ids, temperature=settings.temperature, top_p=settings.top_p,
                             top_k=self.sampling_top_k, max_new_tokens=self.max_new_tokens,
                             max_length=self.max_length)
        return self._turns(question, self.tree() if settings.speculative else None, input_ids.shape[1], steps)

    def _turns(self, question: str, tree: tuple[int, int, int] | None, prompt_len: int, steps) -> Iterator[Turn]:
        """``tree``: the tree of speculative decoding; None for plain decoding."""
        decode = self.model.get_tokenizer().decode
        text = AnswerText(lambda ids: decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        verification_steps = 0
        while True:
            with self.lock:
                ids = next(steps, None)
                stats = self.model.last_stats
            if ids is None:
                return
            drafted = 0
            if len(stats.accept_lengths) > verification_steps:  # not the prefill's token
                verification_steps = len(stats.accept_lengths)
                drafted = stats.accept_lengths[-1]
            text.add(ids[0, prompt_len + len(text.ids):].tolist(), drafted)
            yield Turn(
                question, self.prompter.answer_text(text.ids), text.pieces(),
                AnswerStats(stats.new_tokens, stats.target_forwards, stats.wall_time, tree is not None,
                            tuple(stats.accept_lengths), tree),
            )
