"""Pure view logic of the web UI (no torch, no gradio): answer text pieces, their HTML, and the answer numbers.

* :class:`AnswerText` turns the generated token ids, each marked as an accepted draft token or a token the target
  produced itself, into text :class:`Piece` s (maximal runs of one kind), decoding incrementally while streaming.
* :func:`render_text` / :func:`render_answer` make the HTML shown in the chat. Every character of user and model
  text is escaped, markdown punctuation included, and newlines become ``<br>``: the text shows exactly as written
  (no markdown, no HTML, no LaTeX from the model), so the highlighting of accepted draft tokens
  (``<span class="jk-accepted">``) is exact and cannot break any markup.
* :class:`AnswerStats` holds one answer's counts and derives speed (tokens/s), the compression ratio τ (generated
  tokens / target forwards, prefill included: the τ of :mod:`jakiro.evaluation.speed`; plain decoding has τ = 1)
  and the mean number of draft tokens accepted per verification step.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ACCEPTED_CLASS = "jk-accepted"  # accepted draft tokens
TEXT_CLASS = "jk-text"  # a message's text (styled white-space: pre-wrap)
FOOTER_CLASS = "jk-footer"  # the numbers under an answer
INCOMPLETE = "\ufffd"  # what decoding shows for a character whose bytes are split across tokens

# every ASCII punctuation character becomes a numeric entity: no HTML and no markdown syntax survives
_ESCAPES = str.maketrans({c: f"&#{ord(c)};" for c in string.punctuation} | {"\n": "<br>", "\r": ""})


@dataclass(frozen=True)
class Piece:
    """A run of answer text; ``drafted``: every token in it was an accepted draft token."""

    text: str
    drafted: bool


class AnswerText:
    """Generated token ids with their kind, decoded into pieces.

    ``decode(ids) -> str`` decodes a prefix of the answer (special tokens dropped). A piece ends where the kind
    changes; its text is the difference of the decoded prefixes. A boundary inside a multi-byte character (the
    prefix decodes to a trailing U+FFFD) is skipped, and the pieces on both sides merge into one that counts as
    drafted only if all its tokens were. Finished pieces are decoded once; only the last one is redone per update.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self.ids: list[int] = []
        self.drafted: list[bool] = []
        self._done: list[Piece] = []
        self._done_tokens = 0  # tokens covered by self._done
        self._done_text = ""  # decode(ids[:_done_tokens])

    def add(self, ids: Sequence[int], drafted: int) -> None:
        """Append one step's tokens, of which the first ``drafted`` were accepted draft tokens."""
        start = len(self.ids)
        self.ids.extend(int(i) for i in ids)
        self.drafted.extend(i < drafted for i in range(len(ids)))
        for boundary in range(max(start, self._done_tokens + 1), len(self.ids)):
            if self.drafted[boundary] != self.drafted[boundary - 1]:
                self._close(boundary)

    def pieces(self) -> list[Piece]:
        """All pieces so far; the last one may still grow (and may end in U+FFFD while a character is split)."""
        text = self._decode(self.ids)
        if not text.startswith(self._done_text):  # decoding not prefix-stable: show the text, unhighlighted
            return [Piece(text, False)] if text else []
        tail = Piece(text[len(self._done_text):], all(self.drafted[self._done_tokens:]))
        return self._done + ([tail] if tail.text else [])

    def _close(self, boundary: int) -> None:
        """Finish the piece ending at ``boundary`` unless the boundary cuts a character."""
        text = self._decode(self.ids[:boundary])
        if text.endswith(INCOMPLETE) or not text.startswith(self._done_text):
            return
        piece = Piece(text[len(self._done_text):], all(self.drafted[self._done_tokens:boundary]))
        if piece.text:
            self._done.append(piece)
        self._done_tokens, self._done_text = boundary, text


def escape(text: str) -> str:
    """Text as inert HTML on one line: punctuation as numeric entities, newlines as ``<br>``."""
    return text.translate(_ESCAPES)


def render_text(text: str) -> str:
    """A user message (or any text) as HTML that shows exactly ``text``."""
    return f'<span class="{TEXT_CLASS}">{escape(text)}</span>'


def render_answer(pieces: Sequence[Piece], highlight: bool, footer: str = "") -> str:
    """An answer as HTML; with ``highlight`` the accepted draft tokens are wrapped in ``span.jk-accepted``.
    ``footer`` (HTML from :func:`render_footer`) goes on a line below."""
    parts = [
        f'<span class="{ACCEPTED_CLASS}">{escape(p.text)}</span>' if highlight and p.drafted else escape(p.text)
        for p in pieces
    ]
    html = f'<span class="{TEXT_CLASS}">{"".join(parts)}</span>'
    return f"{html}<br>{footer}" if footer else html


@dataclass(frozen=True)
class AnswerStats:
    """Counts of one answer (from ``EaModel.last_stats``)."""

    new_tokens: int
    target_forwards: int
    wall_time: float
    speculative: bool
    accept_lengths: tuple[int, ...] = ()  # draft tokens accepted per verification step (speculative only)
    tree: tuple[int, int, int] | None = None  # (total_token, depth, top_k) of speculative decoding

    @property
    def speed(self) -> float | None:
        """Generated tokens per second of wall time (prefill included)."""
        return self.new_tokens / self.wall_time if self.wall_time > 0 else None

    @property
    def tau(self) -> float | None:
        """Compression ratio τ: generated tokens per target forward, prefill included."""
        return self.new_tokens / self.target_forwards if self.target_forwards > 0 else None

    @property
    def mean_accepted(self) -> float | None:
        """Mean draft tokens accepted per verification step; None for plain decoding or before the first step."""
        if not self.speculative or not self.accept_lengths:
            return None
        return sum(self.accept_lengths) / len(self.accept_lengths)


def format_number(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def stats_fields(stats: AnswerStats | None) -> tuple[str, str, str]:
    """(speed, compression ratio τ, accepted draft tokens per step) as the UI's text fields."""
    if stats is None:
        return "", "", ""
    accepted = format_number(stats.mean_accepted) if stats.speculative else "n/a (plain decoding)"
    return format_number(stats.speed, 1), format_number(stats.tau), accepted


def render_footer(stats: AnswerStats) -> str:
    """One line of numbers under an answer: τ, speed, tokens and the decoding mode (with the tree)."""
    mode = "plain decoding"
    if stats.speculative:
        mode = "Jakiro" + (" (tree {}/{}/{})".format(*stats.tree) if stats.tree else "")
    text = (f"τ {format_number(stats.tau)} · {format_number(stats.speed, 1)} tokens/s · "
            f"{stats.new_tokens} tokens · {mode}")
    return f'<span class="{FOOTER_CLASS}">{escape(text)}</span>'
