"""Answer benchmark questions with plain autoregressive decoding (method ``baseline`` unless ``--method`` is given).

    python -m jakiro.evaluation.gen_baseline_answer --config smollm2 [--set eval.xxx=...]

See :mod:`jakiro.evaluation.answers` for the flags, the record format, timing and resume.
"""

import sys

from jakiro.evaluation import answers


def main(argv: list[str] | None = None) -> int:
    """:func:`jakiro.evaluation.answers.main` with method ``baseline`` (the console script ``jakiro-baseline``)."""
    return answers.main(argv, method="baseline", prog="python -m jakiro.evaluation.gen_baseline_answer")


if __name__ == "__main__":
    sys.exit(main())
