"""Answer benchmark questions with the configured method (default ``jakiro``, speculative decoding).

    python -m jakiro.evaluation.gen_ea_answer --config smollm2 [--ea-model-path DIR] [--set eval.xxx=...]

See :mod:`jakiro.evaluation.answers` for the flags, the record format, timing and resume.
"""

import sys

from jakiro.evaluation.answers import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m jakiro.evaluation.gen_ea_answer"))
