"""Answer benchmark questions with plain autoregressive decoding (method ``baseline`` unless ``--method`` is given).

    python -m jakiro.evaluation.gen_baseline_answer --config smollm2 [--set eval.xxx=...]

See :mod:`jakiro.evaluation.answers` for the flags, the record format, timing and resume.
"""

import sys

from jakiro.evaluation.answers import main

if __name__ == "__main__":
    sys.exit(main(method="baseline", prog="python -m jakiro.evaluation.gen_baseline_answer"))
