"""The reference's DeepSpeed training command, kept working as typed:

    cd jakiro/train && deepspeed main_deepspeed.py --deepspeed_config ds_config.json [--tmpdir D --cpdir C ...]

A thin alias of :mod:`jakiro.train.main` (the same trainer, losses and outputs; every flag of it works here) with
``train.deepspeed_config`` = the given JSON (default: ``ds_config.json`` beside this file, i.e.
``configs/deepspeed_zero2.json``) and ``train.grad_clip_mode=norm`` (DeepSpeed clips by norm only). The launcher's
``--local_rank`` is accepted; the rank comes from the environment, as accelerate reads it.
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # run as a script: this folder's modules (data, metrics, ...) must not shadow others
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(HERE.parent.parent))  # the checkout, if the package is not installed

from jakiro.train.main import main as train_main  # noqa: E402

PROG = "deepspeed jakiro/train/main_deepspeed.py"
EPILOG = ("DeepSpeed flags: --deepspeed_config JSON (sets train.deepspeed_config; default: ds_config.json beside "
          "this script, ZeRO-2), --deepspeed and --local_rank N (accepted, set by the launcher). Preset: "
          "train.grad_clip_mode=norm.")


def split_deepspeed_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the DeepSpeed launcher's flags, the rest for jakiro.train.main)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--deepspeed_config", "--deepspeed-config", default=str(HERE / "ds_config.json"))
    parser.add_argument("--deepspeed", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    known, rest = split_deepspeed_args(sys.argv[1:] if argv is None else argv)
    config = str(Path(known.deepspeed_config).absolute())
    preset = ("train.grad_clip_mode=norm", f"train.deepspeed_config={config}")
    return train_main(rest, prog=PROG, preset=preset, epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
