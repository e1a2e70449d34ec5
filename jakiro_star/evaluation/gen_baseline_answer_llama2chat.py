"""``python -m jakiro_star.evaluation.gen_baseline_answer_llama2chat``: the reference's script name.

Plain autoregressive decoding (method baseline) with the llama-2 chat template: a thin alias
(:mod:`jakiro.evaluation.family_alias`); ``--help`` lists the flags.
"""

import sys

from jakiro.evaluation.family_alias import run

if __name__ == "__main__":
    sys.exit(run(__spec__.name))
