"""The reference's per-family answer scripts, as thin aliases of :mod:`jakiro.evaluation.answers`.

The reference keeps one script per model family (``gen_ea_answer_vicuna``, ``gen_baseline_answer_llama2chat``, ...,
and the same under ``jakiro_star.evaluation``). Here a family is only a chat template, so each alias module is
three lines that call :func:`run` with its own module name, which decides everything:

    <package>.gen_ea_answer_<family>        -> answers.main(method=None (jakiro) | "jakiro_star", chat_template)
    <package>.gen_baseline_answer_<family>  -> answers.main(method="baseline", chat_template)

with package ``jakiro.evaluation`` (method from the config, default jakiro) or ``jakiro_star.evaluation`` (method
jakiro_star), and family vicuna / llama2chat / llama3chat (templates vicuna / llama-2 / llama-3).
"""

from __future__ import annotations

from jakiro.evaluation.answers import main

FAMILY_TEMPLATES = {"vicuna": "vicuna", "llama2chat": "llama-2", "llama3chat": "llama-3"}


def alias_settings(module_name: str) -> tuple[str | None, str | None]:
    """(method, chat template) an answer-script module name stands for, e.g.
    ``jakiro_star.evaluation.gen_ea_answer_vicuna`` -> ("jakiro_star", "vicuna")."""
    package, _, kind = module_name.rpartition(".")
    template = None
    for family, name in FAMILY_TEMPLATES.items():
        if kind.endswith(f"_{family}"):
            kind, template = kind.removesuffix(f"_{family}"), name
    if kind not in ("gen_ea_answer", "gen_baseline_answer"):
        raise ValueError(f"{module_name} is not an answer-script alias")
    if kind == "gen_baseline_answer":
        return "baseline", template
    return ("jakiro_star" if package.startswith("jakiro_star") else None), template


def run(module_name: str) -> int:
    """Run the answer generator as the alias ``module_name`` (its ``__spec__.name``)."""
    method, template = alias_settings(module_name)
    return main(method=method, chat_template=template, prog=f"python -m {module_name}")
