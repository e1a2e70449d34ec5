"""Web UI without a browser: the view logic (pieces, escaping, highlighting, numbers), the chat engine on the real
SmolLM2 target with the echo draft, the command line (loopback by default, share only on request) and the clear
message when gradio is missing. The page itself is tested in tests/test_webui_browser.py.
"""

import html
import re
import socket
import string
import sys
import types

import pytest
import torch

from jakiro.application import webui
from jakiro.application.chat import ChatEngine, Settings, Turn
from jakiro.application.view import (
    ACCEPTED_CLASS,
    AnswerStats,
    AnswerText,
    Piece,
    escape,
    render_answer,
    render_footer,
    render_text,
    stats_fields,
)
from jakiro.common.assets import ensure_smollm2
from jakiro.common.config import ConfigError
from jakiro.model.ea_model import EaModel
from echo_draft import write_echo_draft

REPEAT_PROMPT = "Type 'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz'"  # SmolLM2's greedy answer repeats "zz" tokens


def shown(markup: str) -> str:
    """The text a browser shows for the escaped HTML (tags other than <br> removed)."""
    text = markup.replace("<br>", "\n")
    while "<" in text:
        start = text.index("<")
        text = text[:start] + text[text.index(">", start) + 1:]
    return html.unescape(text)


# -- escaping and highlighting -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "<script>alert('x')</script>",
    "**bold** _it_ `code` $x^2$ [link](http://a) # head\n- item\n1. one",
    "a & b < c > d \" ' \\ | ~ {}",
    "  indented\n\n    code block?\ttab",
    "",
])
def test_escaped_text_is_inert_and_shows_exactly(text):
    markup = escape(text)
    assert "\n" not in markup  # one line: no markdown block structure can start
    bare = re.sub(r"&#\d+;|<br>", "", markup)
    assert not set(bare) & set(string.punctuation)  # no raw HTML, markdown or LaTeX syntax is left
    assert shown(markup) == text.replace("\r", "")
    assert shown(render_text(text)) == text


def test_answer_highlights_only_accepted_draft_pieces():
    pieces = [Piece("The ", False), Piece("<b>cat", True), Piece(" sat", False), Piece(" down.", True)]
    on = render_answer(pieces, highlight=True)
    assert on.count(f'<span class="{ACCEPTED_CLASS}">') == 2
    assert f'<span class="{ACCEPTED_CLASS}">&#60;b&#62;cat</span>' in on
    assert shown(on) == "The <b>cat sat down."
    off = render_answer(pieces, highlight=False)
    assert ACCEPTED_CLASS not in off and shown(off) == shown(on)
    footer = render_footer(AnswerStats(10, 4, 2.0, True, (2, 3, 1), (24, 4, 6)))
    assert shown(render_answer(pieces, True, footer)) == \
        "The <b>cat sat down.\nτ 2.50 · 5.0 tokens/s · 10 tokens · Jakiro (tree 24/4/6)"
    plain = render_footer(AnswerStats(3, 3, 1.0, False))
    assert shown(plain) == "τ 1.00 · 3.0 tokens/s · 3 tokens · plain decoding"


# -- pieces from token ids -----------------------------------------------------------------------------------------
WORDS = {0: "", 1: "A", 2: "b", 3: "c", 4: "d", 5: "e", 6: "f"}  # 0 plays a special token (decodes to nothing)


def word_decode(ids):
    return "".join(WORDS[i] for i in ids)


def test_pieces_follow_the_accepted_draft_tokens_of_each_step():
    text = AnswerText(word_decode)
    text.add([1], 0)  # prefill: the target's token
    assert text.pieces() == [Piece("A", False)]
    text.add([2, 3, 4], 2)  # two accepted draft tokens + the target's bonus token
    assert text.pieces() == [Piece("A", False), Piece("bc", True), Piece("d", False)]
    text.add([5], 0)  # nothing accepted: the run of target tokens grows
    text.add([6, 0], 5)  # truncated step (stop token): only what is left counts; the special token shows nothing
    assert text.pieces() == [Piece("A", False), Piece("bc", True), Piece("de", False), Piece("f", True)]
    assert text.drafted == [False, True, True, False, False, True, True]


BYTES = {1: b"x\xc3", 2: b"\xa9y", 3: b"z", 4: b"w"}  # "é" = c3 a9 is split across tokens 1 and 2


def byte_decode(ids):
    return b"".join(BYTES[i] for i in ids).decode("utf-8", errors="replace")


def test_a_character_split_across_kinds_merges_the_pieces_around_it():
    text = AnswerText(byte_decode)
    text.add([1], 0)
    assert text.pieces() == [Piece("x\ufffd", False)]  # streaming may show a half character for a moment
    text.add([2, 3, 4], 2)  # the boundary after token 1 cuts "é": tokens 1-3 become one unhighlighted piece
    assert text.pieces() == [Piece("xéyz", False), Piece("w", False)]
    assert "".join(p.text for p in text.pieces()) == byte_decode(text.ids)


# -- numbers -------------------------------------------------------------------------------------------------------
def test_answer_numbers():
    spec = AnswerStats(new_tokens=30, target_forwards=12, wall_time=1.5, speculative=True,
                       accept_lengths=(3, 1, 0, 4, 2, 1, 3, 2, 1, 0, 1))
    assert spec.speed == pytest.approx(20.0)
    assert spec.tau == pytest.approx(2.5)
    assert spec.mean_accepted == pytest.approx(18 / 11)
    assert stats_fields(spec) == ("20.0", "2.50", "1.64")
    plain = AnswerStats(new_tokens=7, target_forwards=7, wall_time=0.5, speculative=False)
    assert (plain.tau, plain.mean_accepted) == (1.0, None)
    assert stats_fields(plain) == ("14.0", "1.00", "n/a (plain decoding)")
    empty = AnswerStats(new_tokens=0, target_forwards=0, wall_time=0.0, speculative=True)
    assert (empty.speed, empty.tau, empty.mean_accepted) == (None, None, None)
    assert stats_fields(None) == ("", "", "")


def test_chat_messages_escape_questions_and_carry_the_numbers():
    turns = [Turn("<i>hi</i>", "Hello", [Piece("Hel", False), Piece("lo", True)], AnswerStats(2, 1, 1.0, True, (1,))),
             Turn("next?")]
    messages = webui.chat_messages(turns, highlight=True)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert "<i>" not in messages[0]["content"] and shown(messages[0]["content"]) == "<i>hi</i>"
    assert ACCEPTED_CLASS in messages[1]["content"] and "τ 2.00" in shown(messages[1]["content"])
    assert shown(messages[3]["content"]) == ""  # the answer being generated


# -- command line --------------------------------------------------------------------------------------------------
def test_cli_defaults_listen_on_loopback_without_share_and_use_the_embedded_config():
    args = webui.parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    cfg = webui.config_from(args)
    assert cfg.model.base_model_path is None and cfg.model.draft_path == "shipped:smollm2-jakiro"  # embedded
    assert (cfg.tree.total_token, cfg.tree.depth, cfg.tree.top_k) == (8, 3, 4)  # configs/smollm2.yaml
    assert webui.parse_args(["--share"]).share is True


def test_cli_shortcuts_override_config_keys_after_set():
    args = webui.parse_args(["--set", "tree.depth=7", "--set", "tree.top_k=3", "--depth", "2",
                             "--total_token", "16", "--max_new_token", "20", "--base_model_path", "target/dir",
                             "--ea_model_path", "draft/dir", "--host", "0.0.0.0", "--port", "9000"])
    cfg = webui.config_from(args)
    assert (cfg.tree.total_token, cfg.tree.depth, cfg.tree.top_k) == (16, 2, 3)
    assert cfg.generation.max_new_tokens == 20
    assert (cfg.model.base_model_path, cfg.model.draft_path) == ("target/dir", "draft/dir")
    assert (args.host, args.port) == ("0.0.0.0", 9000)
    with pytest.raises(ConfigError, match="tree.depth"):
        webui.config_from(webui.parse_args(["--depth", "0"]))


def test_missing_gradio_gives_the_install_command_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    monkeypatch.setattr(webui, "load_engine", lambda cfg: pytest.fail("loaded the model before checking gradio"))
    assert webui.main([]) == 2
    err = capsys.readouterr().err
    assert "needs gradio" in err and 'pip install -e ".[webui]"' in err
    assert "Traceback" not in err


def test_too_old_gradio_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", types.SimpleNamespace(__version__="5.49.1"))
    monkeypatch.setattr(webui, "load_engine", lambda cfg: pytest.fail("loaded the model before checking gradio"))
    assert webui.main([]) == 2
    assert "gradio >= 6, found 5.49.1" in capsys.readouterr().err


def test_config_errors_are_reported_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(webui, "import_gradio", lambda: types.SimpleNamespace(__version__="6.0.0"))
    assert webui.main(["--set", "tree.depth=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tree.depth") and "Traceback" not in err


def test_a_taken_port_is_reported_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setattr(webui, "import_gradio", lambda: types.SimpleNamespace(__version__="6.0.0"))
    monkeypatch.setattr(webui, "load_engine", lambda cfg: pytest.fail("loaded the model for a taken port"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert webui.main(["--port", str(port)]) == 2
    assert f"error: cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


# -- chat engine on the real target --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    base = ensure_smollm2(progress=False)
    draft = write_echo_draft(base, tmp_path_factory.mktemp("echo_draft"))
    model = EaModel.from_pretrained(str(base), str(draft), total_token=24, depth=4, top_k=6, dtype=torch.float32)
    return ChatEngine(model, max_new_tokens=16)


TREE = dict(total_token=24, depth=4, top_k=6)


def run(engine, history, question, **settings):
    turns = list(engine.stream(history, question, Settings(**{**TREE, **settings})))
    assert turns and turns[-1].pieces
    return turns


def test_speculative_answer_is_the_plain_one_with_accepted_tokens_marked(engine):
    turns = run(engine, [], REPEAT_PROMPT)
    final = turns[-1]
    stats = engine.model.last_stats
    assert final.stats.new_tokens == stats.new_tokens and len(turns) == stats.target_forwards
    assert sum(stats.accept_lengths) > 0, "the echo draft should be accepted on repeated tokens"
    assert any(p.drafted for p in final.pieces) and any(not p.drafted for p in final.pieces)
    assert final.stats.tau > 1
    plain = run(engine, [], REPEAT_PROMPT, speculative=False)[-1]
    assert plain.answer == final.answer  # greedy speculative decoding is lossless
    assert "".join(p.text for p in plain.pieces) == "".join(p.text for p in final.pieces)
    assert not any(p.drafted for p in plain.pieces) and plain.stats.tau == 1.0
    stopped = engine.stream([], "Tell me a long story.", Settings(**TREE))
    next(stopped), next(stopped)  # Stop: the UI drops a stream mid-answer; the next answer starts clean
    again = run(engine, [], REPEAT_PROMPT)[-1]
    assert (again.answer, again.pieces, again.stats.accept_lengths) == (final.answer, final.pieces,
                                                                       final.stats.accept_lengths)


def test_history_is_formatted_with_the_chat_template(engine):
    first = run(engine, [], "What is the capital of France?")[-1]
    prompt = engine.prompter.prompt_text(["What is the capital of France?", "And of Italy?"], [first.answer])
    assert prompt.count("<|im_start|>user") == 2 and first.answer in prompt
    second = run(engine, [first], "And of Italy?")[-1]
    assert second.question == "And of Italy?" and second.answer


def test_tree_settings_apply_with_sampling_and_bad_ones_fail_before_decoding(engine):
    answer = run(engine, [], "Hi", total_token=8, depth=2, top_k=3, temperature=0.7, top_p=0.9)[-1]
    assert engine.tree() == (8, 2, 3) and answer.stats.tree == (8, 2, 3)
    with pytest.raises(ValueError, match="total_token"):
        engine.stream([], "Hi", Settings(total_token=1, depth=2, top_k=3))
    assert engine.tree() == (8, 2, 3)


def test_a_conversation_too_long_for_max_length_fails_before_decoding(engine, monkeypatch):
    monkeypatch.setattr(engine, "max_length", 20)
    with pytest.raises(ValueError, match="no room under max_length=20"):
        engine.stream([], "Tell me everything you know about the history of mathematics, please.", Settings())
