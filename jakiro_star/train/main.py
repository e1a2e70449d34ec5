"""Train a Jakiro* draft head: the reference's module path, a thin alias of :mod:`jakiro.train.main`.

    accelerate launch -m --mixed_precision=bf16 jakiro_star.train.main --tmpdir DATA --cpdir OUT --configpath CONFIG

Jakiro* uses the same draft head, trainer, losses and outputs as Jakiro; the only preset is
``draft.parallel_head=false`` (Jakiro* drafts from the experts and has no CEPD head), which ``--set`` can change
and which a ``--configpath`` draft config replaces (a reference config with two experts has the head; Jakiro*
decoding ignores it). Every flag of ``python -m jakiro.train.main`` works here.
"""

import sys

from jakiro.train.main import main

PRESET = ("draft.parallel_head=false",)

if __name__ == "__main__":
    sys.exit(main(prog="python -m jakiro_star.train.main", preset=PRESET))
