"""``python -m jakiro``: list the entry points, one line each (``python -m MODULE --help`` tells more).

:data:`ENTRY_POINTS` is also the source of the console scripts in ``pyproject.toml`` (a test keeps them equal).
"""

from __future__ import annotations

import sys

# (module run with python -m, console script or None, what it does)
ENTRY_POINTS = (
    ("jakiro.demo", "jakiro-demo", "the README's main job: speculative vs plain decoding on MT-bench questions"),
    ("jakiro.application.webui", "jakiro-webui", "browser chat through speculative decoding (needs gradio)"),
    ("jakiro.ge_data", "jakiro-ge-data", "training data: the target's features for ShareGPT conversations"),
    ("jakiro.ge_data.regenerate", "jakiro-regenerate", "the conversations answered by the target itself"),
    ("jakiro.ge_data.allocation", None, "the reference's data-generation command (alias of jakiro.ge_data)"),
    ("jakiro.ge_data.throughput", None, "self-distillation tokens/s, the previous and the new decoder side by side"),
    ("jakiro.train.main", "jakiro-train", "train a draft head (also under accelerate launch / torchrun)"),
    ("jakiro.train.throughput", None, "training tokens/s, padded and packed batches side by side"),
    ("jakiro.train.ship", None, "ship a trained draft with the package (shipped:NAME), with its training.json"),
    ("jakiro.model.init_draft", "jakiro-init-draft", "write an untrained draft directory for a target"),
    ("jakiro.evaluation.gen_ea_answer", "jakiro-eval", "answer benchmark questions with speculative decoding"),
    ("jakiro.evaluation.gen_baseline_answer", "jakiro-baseline", "answer benchmark questions with plain decoding"),
    ("jakiro.evaluation.speed", "jakiro-speed", "speedup, tau and acceptance from answer files"),
    ("jakiro.evaluation.benchmark", "jakiro-bench", "answer and report several methods side by side"),
    ("jakiro.evaluation.greedy_check", "jakiro-greedy-check", "check greedy outputs equal plain decoding"),
    ("jakiro.evaluation.tree_costs", None, "measure tree verification cost against one decoding step"),
    ("jakiro.evaluation.alternate", None, "alternate two methods question by question (paired timings)"),
    ("jakiro.evaluation.plot", None, "PNG of speedup and tau per bench and method (needs matplotlib)"),
    ("jakiro.common.assets", None, "materialise the embedded assets (SmolLM2, MT-bench, ShareGPT) into the cache"),
)
ALIASES = ("reference aliases: jakiro.evaluation.gen_{ea,baseline}_answer_{vicuna,llama2chat,llama3chat}, "
           "jakiro_star.evaluation.gen_{ea,baseline}_answer[_FAMILY], jakiro_star.train.main, "
           "jakiro/train/main_deepspeed.py, eval_metric/eval_{vicuna,llama2,llama3}_Jakiro[-star]_all.sh")


def main() -> int:
    width = max(len(module) for module, _, _ in ENTRY_POINTS)
    print("Jakiro entry points (python -m MODULE --help for the flags; [console script]):")
    for module, script, text in ENTRY_POINTS:
        print(f"  {module:<{width}}  {text}" + (f" [{script}]" if script else ""))
    print(ALIASES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
