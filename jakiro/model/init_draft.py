"""Write an untrained draft directory sized from a target model's config.

    python -m jakiro.model.init_draft --base-model-path DIR --out DIR [--num-experts N] [--experts-per-token K]
                                      [--no-parallel-head] [--expert-intermediate-size I] [--no-bias]
                                      [--init-from-target] [--seed S] [--force]

An existing ``--out`` (a draft, trained or not, or any other non-empty directory) is replaced only with ``--force``.

Only the target's ``config.json`` is read, unless ``--init-from-target`` (``draft.init_from_target``) starts the
draft's decoder layer from the target's last one (:mod:`jakiro.model.target_init`). The result loads with
``EaModel.from_pretrained`` (speculative decoding stays lossless with any draft, trained or not) and is the starting
point of training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoConfig

from jakiro.common.assets import cache_dir
from jakiro.common.io import check_output
from jakiro.model.draft import CONFIG_NAME, DraftHead, DraftHeadConfig
from jakiro.model.target_init import init_from_target_layer, last_decoder_layer


def init_draft(
    base_model_path: str,
    out: str,
    num_experts: int = 2,
    experts_per_token: int = 2,
    parallel_head: bool = True,
    expert_intermediate_size: int | None = None,
    bias: bool = True,
    seed: int = 0,
    force: bool = False,
    init_from_target: bool = False,
) -> DraftHead:
    """Create, save and return a randomly initialised draft head for the target at ``base_model_path``;
    ``init_from_target``: its decoder layer copied from the target's last one where shapes match (printed to stderr).

    Raises ValueError (:class:`jakiro.common.io.OutputExists`) if ``out`` is a file, or a non-empty directory and not
    ``force``."""
    check_output(out, "dir", force)
    try:
        target_config = AutoConfig.from_pretrained(base_model_path)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read a model config from {base_model_path}: {err}") from None
    config = DraftHeadConfig.for_target(
        target_config, num_experts, experts_per_token, parallel_head, expert_intermediate_size, bias,
        input_norm=init_from_target,
    )
    torch.manual_seed(seed)
    draft = DraftHead(config)
    if init_from_target:
        from transformers import AutoModelForCausalLM

        try:
            target = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load the target's weights from {base_model_path}: {err}") from None
        index, layer = last_decoder_layer(target)
        print(init_from_target_layer(draft, layer.state_dict(), index).summary(), file=sys.stderr)
    draft.save_pretrained(out)
    return draft


def resolve_draft(cfg, base_model_path: str) -> tuple[str, bool]:
    """The draft a run should use: ``cfg.model.draft_path``, else an untrained draft shaped by ``cfg.draft``,
    created once in the asset cache. Returns (draft directory, trained?)."""
    if cfg.model.draft_path:
        return cfg.model.draft_path, True
    d = cfg.draft
    shape = f"e{d.num_experts}k{d.experts_per_token}{'-cepd' if d.parallel_head else ''}"
    shape += "".join(suffix for suffix, on in ((f"-w{d.expert_intermediate_size}", d.expert_intermediate_size),
                                               ("-nobias", not d.bias), ("-tinit", d.init_from_target)) if on)
    untrained = cache_dir() / "drafts" / f"untrained-{Path(base_model_path).name}-{shape}"
    if not (untrained / CONFIG_NAME).is_file():
        init_draft(base_model_path, str(untrained), d.num_experts, d.experts_per_token, d.parallel_head,
                   d.expert_intermediate_size, d.bias, force=True,  # the cache's own (maybe half-written) dir
                   init_from_target=d.init_from_target)
    return str(untrained), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jakiro.model.init_draft",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model-path", required=True, help="target model directory (its config.json is read)")
    parser.add_argument("--out", required=True, help="draft directory to write")
    parser.add_argument("--num-experts", type=int, default=2,
                        help="experts in the MoE block (default 2; 1 = EAGLE-2)")
    parser.add_argument("--experts-per-token", type=int, default=None,
                        help="experts routed per token (default: all experts, as the reference)")
    parser.add_argument("--no-parallel-head", action="store_true",
                        help="no CEPD head (EAGLE-2 with 1 expert; default: a head when "
                        "there are >= 2 experts)")
    parser.add_argument("--expert-intermediate-size", type=int, default=None,
                        help="expert MLP width (default: the target's hidden size)")
    parser.add_argument("--no-bias", action="store_true",
                        help="no bias in the fc fusion layer (default: a bias, as the reference)")
    parser.add_argument("--init-from-target", action="store_true",
                        help="start the decoder layer from the target's last one where shapes match (loads the "
                             "target's weights; default: random)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random initialisation (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out directory (default: refuse)")
    args = parser.parse_args(argv)
    parallel = not args.no_parallel_head and args.num_experts >= 2
    try:
        draft = init_draft(
            args.base_model_path, args.out, args.num_experts, args.experts_per_token or args.num_experts, parallel,
            args.expert_intermediate_size, not args.no_bias, args.seed, args.force, args.init_from_target,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in draft.parameters())
    print(f"wrote an untrained draft ({params / 1e6:.2f}M parameters, {draft.config.num_local_experts} experts, "
          f"parallel head {'on' if draft.config.parallel_head else 'off'}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
