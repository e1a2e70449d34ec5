"""Web UI: chat with the target through Jakiro speculative decoding, in the browser.

    python -m jakiro.application.webui [--config smollm2] [--set section.key=value ...]
                                       [--base_model_path DIR] [--ea_model_path DIR] [--max_new_token N]
                                       [--total_token N] [--depth N] [--top_k N] [--model_type vicuna]
                                       [--host 127.0.0.1] [--port 7860] [--share]

With no arguments it serves the embedded default target (SmolLM2-135M-Instruct, set up like ``jakiro.demo``:
``configs/smollm2.yaml``, ``model.draft_path`` or else an untrained draft) on http://127.0.0.1:7860. The page
streams answers and shows speed (tokens/s), the compression ratio τ (generated tokens / target forwards, prefill
included, as in ``jakiro.evaluation.speed``), the mean number of draft tokens accepted per verification step,
and τ under every answer; it highlights the draft tokens the target accepted, switches between speculative and
plain decoding, sets temperature, top-p and the tree (total_token, depth, top_k), and has Stop, Regenerate and
Clear. The conversation is formatted with the model's chat template (``model.chat_template``).

It listens on the loopback interface only. ``--host 0.0.0.0`` serves the local network and ``--share`` creates a
public gradio.live link; neither has any authentication. The reference's flags parse in both spellings
(``--ea_model_path`` and ``--ea-model-path``), and ``--model-type vicuna|llama2|llama3`` picks the chat template.
Needs gradio: ``pip install -e ".[webui]"``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from jakiro.application.chat import ChatEngine, Settings, Turn
from jakiro.application.view import escape, render_answer, render_footer, render_text, stats_fields
from jakiro.common.assets import AssetError, ensure_smollm2
from jakiro.common.config import ConfigError, JakiroConfig, add_config_arguments, load_config
from jakiro.model.ea_model import EaModel
from jakiro.model.init_draft import resolve_draft

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MIN_GRADIO = 6
INSTALL_HINT = 'pip install -e ".[webui]" (in the repository), or: bash scripts/setup.sh assets,webui'
# the reference web UI's flags, as shortcuts for config keys
SHORTCUTS = {
    "base_model_path": "model.base_model_path",
    "ea_model_path": "model.draft_path",
    "max_new_token": "generation.max_new_tokens",
    "total_token": "tree.total_token",
    "depth": "tree.depth",
    "top_k": "tree.top_k",
}
# the reference's --model-type values (README and argparse spellings) -> chat template
MODEL_TYPES = {"vicuna": "vicuna", "llama2": "llama-2", "llama-2-chat": "llama-2", "llama3": "llama-3",
               "llama-3-instruct": "llama-3", "mixtral": "llama-2"}
CSS = """
.jk-text { white-space: pre-wrap; }
.jk-accepted { color: #c2410c; background: rgba(251, 146, 60, 0.22); border-radius: 3px; }
.jk-footer { font-size: 0.8em; opacity: 0.7; }
#jk-speed textarea, #jk-ratio textarea { font-size: 1.4em; font-weight: 600; color: #c2410c; }
"""
HELP = (
    "**τ** (compression ratio) = generated tokens / target forwards, prefill included — the τ of "
    "`jakiro.evaluation.speed`; plain decoding has τ = 1. **Accepted draft tokens per step**: mean over "
    "verification steps. <span class='jk-accepted'>Highlighted</span> text: draft tokens the target accepted. "
    "Under each answer: its τ, speed, length and mode (tree = total_token/depth/top_k). "
    "Text is shown exactly as generated (no markdown)."
)


class GradioMissing(RuntimeError):
    """gradio is not installed, or too old."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jakiro.application.webui",
                                     description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.set_defaults(config="smollm2")
    shortcut_help = {
        "base_model_path": "target model directory or hub id (= --set model.base_model_path=...; default: the "
                           "config's, the embedded SmolLM2)",
        "ea_model_path": "trained draft directory or hub id (= --set model.draft_path=...; default: the config's)",
        "max_new_token": "tokens per answer (= --set generation.max_new_tokens=...; default: the config's)",
        "total_token": "initial tree size, -1 = measure the target (= --set tree.total_token=...; default: the "
                       "config's)",
        "depth": "initial tree depth (= --set tree.depth=...; default: the config's)",
        "top_k": "initial children per tree node (= --set tree.top_k=...; default: the config's)",
    }
    for flag, kind in (("base_model_path", str), ("ea_model_path", str), ("max_new_token", int),
                       ("total_token", int), ("depth", int), ("top_k", int)):
        names = dict.fromkeys((f"--{flag}", f"--{flag.replace('_', '-')}"))
        parser.add_argument(*names, dest=flag, type=kind, help=shortcut_help[flag])
    parser.add_argument("--model_type", "--model-type", choices=sorted(MODEL_TYPES), default=None, metavar="TYPE",
                        help="the reference's model family, i.e. the chat template: vicuna, llama2 / llama-2-chat "
                             "(llama-2), llama3 / llama-3-instruct (llama-3), mixtral (llama-2) (= --set "
                             "model.chat_template=...; default: the config's, else the tokenizer's own template)")
    for flag in ("load_in_8bit", "load_in_4bit"):
        parser.add_argument(f"--{flag}", f"--{flag.replace('_', '-')}", action="store_true",
                            help="the reference's quantised loading: not supported here, refused with an error "
                                 "(default: off)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"interface to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true",
                        help="also create a public gradio.live link (anyone with the link can use the model; "
                             "default: off)")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> JakiroConfig:
    """The config file and ``--set`` overrides, then the shortcut flags that were given."""
    for flag in ("load_in_8bit", "load_in_4bit"):
        if getattr(args, flag, False):
            raise ConfigError(f"--{flag}: quantised loading is not supported; use --set model.dtype=bfloat16 "
                              f"(or float16) to halve the memory instead")
    shortcuts = [f"{key}={getattr(args, flag)}" for flag, key in SHORTCUTS.items() if getattr(args, flag) is not None]
    if getattr(args, "model_type", None):
        shortcuts.append(f"model.chat_template={MODEL_TYPES[args.model_type]}")
    return load_config(args.config, [*args.overrides, *shortcuts])


def import_gradio():
    """The gradio module; GradioMissing with the install command if it is absent or older than MIN_GRADIO."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as err:
        raise GradioMissing(f"the web UI needs gradio, which is not installed ({err}). Install the extra: "
                            f"{INSTALL_HINT}") from None
    if int(gradio.__version__.split(".")[0]) < MIN_GRADIO:
        raise GradioMissing(f"the web UI needs gradio >= {MIN_GRADIO}, found {gradio.__version__}. Upgrade: "
                            f"{INSTALL_HINT}")
    return gradio


def check_address(host: str, port: int) -> None:
    """OSError now, before the model loads, if ``host:port`` cannot be served (port taken, unknown host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as err:
        raise OSError(f"cannot serve on {host}:{port}: {err}") from None


def load_engine(cfg: JakiroConfig) -> tuple[ChatEngine, str]:
    """Load the target and draft like ``jakiro.demo``, warm both decoders up; returns (engine, description)."""
    base = cfg.model.base_model_path or str(ensure_smollm2())
    draft_path, trained = resolve_draft(cfg, base)
    if not trained:
        print("note: no trained draft configured (--ea_model_path / model.draft_path); using an UNTRAINED draft. "
              "Answers are still exactly the target's, but expect no speedup.")
    model = EaModel.from_config(cfg, base, draft_path)
    gen = cfg.generation
    engine = ChatEngine(model, cfg.model.chat_template, gen.max_new_tokens, gen.max_length, gen.top_k)
    warmup = engine.prompter.input_ids(["Hello"], [])
    model.eagenerate(warmup, max_new_tokens=4)
    model.naivegenerate(warmup, max_new_tokens=4)
    draft = f"draft {Path(draft_path).name}" if trained else "UNTRAINED draft (exact answers, no speedup expected)"
    return engine, f"target {Path(base).name} ({cfg.model.dtype}, {cfg.model.device}) · {draft}"


def chat_messages(history: list[Turn], highlight: bool) -> list[dict]:
    """The chatbot's messages: every text escaped, answers highlighted and followed by their numbers."""
    messages = []
    for turn in history:
        messages.append({"role": "user", "content": render_text(turn.question)})
        footer = render_footer(turn.stats) if turn.stats else ""
        messages.append({"role": "assistant", "content": render_answer(turn.pieces, highlight, footer)})
    return messages


def build_app(gr, engine: ChatEngine, cfg: JakiroConfig, description: str):
    """The gradio Blocks app around ``engine``."""
    total_token, depth, top_k = engine.tree()

    def answer(done, history, question, highlight, speculative, temperature, top_p, tree_total, tree_depth,
               tree_top_k):
        settings = Settings(bool(speculative), float(temperature), float(top_p), int(tree_total), int(tree_depth),
                            int(tree_top_k))
        try:
            steps = engine.stream(history, question, settings)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        turn = Turn(question)  # shown at once; Stop before the first step then still leaves a clean page
        turns = [*history, turn]
        yield chat_messages(turns, highlight), turns, "", "", "", "", "generating…"
        for turn in steps:  # at least one step: max_new_tokens >= 1
            turns = [*history, turn]
            yield chat_messages(turns, highlight), turns, "", *stats_fields(turn.stats), "generating…"
        status = f"{done}: {turn.stats.new_tokens} tokens in {turn.stats.wall_time:.1f} s"
        yield chat_messages(turns, highlight), turns, "", *stats_fields(turn.stats), status

    def send(message, history, highlight, *choices):
        if not message.strip():
            raise gr.Error("Type a message first.")
        yield from answer("done", history, message, highlight, *choices)

    def regenerate(history, highlight, *choices):
        if not history:
            raise gr.Error("There is no answer to regenerate.")
        yield from answer("regenerated", history[:-1], history[-1].question, highlight, *choices)

    with gr.Blocks(title="Jakiro chat", analytics_enabled=False) as app:
        gr.Markdown("# Jakiro — speculative decoding chat")
        gr.HTML(f"<p>{escape(description)}</p>")
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="jk-chat", height=520, latex_delimiters=[], show_label=False,
                                     buttons=[])
                with gr.Row():
                    message = gr.Textbox(show_label=False, placeholder="Ask something and press Enter",
                                         elem_id="jk-input", scale=6, lines=1, max_lines=8)
                    send_btn = gr.Button("Send", variant="primary", elem_id="jk-send", scale=1)
                with gr.Row():
                    stop_btn = gr.Button("Stop", elem_id="jk-stop")
                    regenerate_btn = gr.Button("Regenerate", elem_id="jk-regenerate")
                    clear_btn = gr.Button("Clear", elem_id="jk-clear")
            with gr.Column(scale=1):
                speed = gr.Textbox(label="Speed (tokens/s)", interactive=False, elem_id="jk-speed")
                ratio = gr.Textbox(label="Compression ratio τ (tokens / target forward)", interactive=False,
                                   elem_id="jk-ratio")
                accepted = gr.Textbox(label="Accepted draft tokens per step", interactive=False,
                                      elem_id="jk-accepted-per-step")
                status = gr.Textbox(label="Status", value="ready", interactive=False, elem_id="jk-status")
                speculative = gr.Checkbox(True, label="Use Jakiro (speculative decoding)", elem_id="jk-speculative")
                highlight = gr.Checkbox(True, label="Highlight accepted draft tokens", elem_id="jk-highlight")
                temperature = gr.Slider(0.0, max(1.5, cfg.generation.temperature), value=cfg.generation.temperature,
                                        step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=cfg.generation.top_p, step=0.05, label="Top-p")
                with gr.Accordion("Draft tree", open=False):
                    tree_total = gr.Slider(2, max(128, total_token), value=total_token, step=1,
                                           label="total_token (nodes verified)", elem_id="jk-total-token")
                    tree_depth = gr.Slider(1, max(12, depth), value=depth, step=1, label="depth (draft layers)",
                                           elem_id="jk-depth")
                    tree_top_k = gr.Slider(1, max(20, top_k), value=top_k, step=1, label="top_k (children per node)",
                                           elem_id="jk-top-k")
                gr.Markdown(HELP)

        choices = [speculative, temperature, top_p, tree_total, tree_depth, tree_top_k]
        outputs = [chatbot, history, message, speed, ratio, accepted, status]
        one_answer_at_a_time = dict(concurrency_limit=1, concurrency_id="model")
        events = [
            message.submit(send, [message, history, highlight, *choices], outputs, **one_answer_at_a_time),
            send_btn.click(send, [message, history, highlight, *choices], outputs, **one_answer_at_a_time),
            regenerate_btn.click(regenerate, [history, highlight, *choices], outputs, **one_answer_at_a_time),
        ]
        stop_btn.click(lambda: "stopped", None, status, cancels=events, queue=False)
        clear_btn.click(lambda: ([], [], "", "", "", "", "ready"), None, outputs, cancels=events, queue=False)
        chatbot.clear(lambda: ([], "", "", "", "ready"), None, [history, speed, ratio, accepted, status],
                      cancels=events, queue=False)  # the chatbot's own trash button
        highlight.change(chat_messages, [history, highlight], chatbot, queue=False)
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        gr = import_gradio()
        cfg = config_from(args)
        check_address(args.host, args.port)
        engine, description = load_engine(cfg)
    except (GradioMissing, ConfigError, AssetError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.share:
        print("warning: --share publishes this UI on a public gradio.live link, without authentication")
    if args.host not in (DEFAULT_HOST, "localhost", "::1"):
        print(f"warning: listening on {args.host}: other machines can reach this UI, without authentication")
    app = build_app(gr, engine, cfg, description)
    # system fonts: the page makes no request to font services
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    try:  # quiet: gradio's own banner would suggest share=True
        _, local_url, share_url = app.queue().launch(
            server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False, css=CSS, theme=theme,
            quiet=True, prevent_thread_lock=True,
        )
    except OSError as err:
        print(f"error: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    print(f"Jakiro web UI on {local_url}" + (f" and {share_url}" if share_url else "") + " (Ctrl+C stops it)")
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
