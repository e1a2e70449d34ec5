"""The reference's entry point, kept as a thin alias: ``python -m jakiro.ge_data.allocation --outdir DIR``.

Same as ``python -m jakiro.ge_data`` with ``data.output_dir=DIR`` (and the same ``--config`` / ``--set`` /
``--max-shards`` options). The reference split the work over a hard-coded GPU list; here run it under
``accelerate launch --num_processes N -m jakiro.ge_data.allocation --outdir DIR`` for N processes.
"""

from __future__ import annotations

from jakiro.ge_data.generate import cli_parser, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m jakiro.ge_data.allocation")
    parser.add_argument("--outdir", required=True, help="output directory (sets data.output_dir)")
    args = parser.parse_args(argv)
    return run_cli(args, output_dir=args.outdir)


if __name__ == "__main__":
    raise SystemExit(main())
