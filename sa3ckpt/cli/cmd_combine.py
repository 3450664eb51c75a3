"""`sa3ckpt combine`: several adapters into one (cat: exact for LoRA; svd: re-factor to rank R;
mean: the weighted average of checkpoints of one run)."""

from __future__ import annotations

import argparse

from sa3ckpt.cli.arguments import add_output_arg, add_output_flags
from sa3ckpt.cli.common import print_ledger
from sa3ckpt.ops.library import METHODS, combine
from sa3ckpt.strengths import parse_adapter_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER[:W]", help="adapters and weights")
    add_output_arg(parser, metavar="OUT", help="combined adapter")
    parser.add_argument(
        "--method",
        required=True,
        choices=METHODS,
        help="cat (exact, lora), svd (re-factor to --rank) or mean (weighted average of "
        "checkpoints of one run: same type, rank, alpha, targets and base, else exit 4)",
    )
    parser.add_argument(
        "--rank",
        type=int,
        help="output rank (svd only; at most every target's min(fan) and the useful rank, "
        "else exit 2)",
    )
    parser.add_argument(
        "--base", metavar="BASE", help="base checkpoint (cat/svd: DoRA/BoRA or XS inputs)"
    )
    parser.add_argument("--allow-pickle", action="store_true", help="read legacy .ckpt adapters")
    parser.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="cat/mean: carry NaN/Inf over instead of exit 4",
    )
    add_output_flags(
        parser, dtype_help="output dtype (cat/svd default fp16; mean default the inputs' dtype)"
    )


def run(args: argparse.Namespace) -> int:
    ledger = combine(
        [parse_adapter_arg(a) for a in args.adapters],
        args.output,
        method=args.method,
        rank=args.rank,
        base_path=args.base,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        allow_nonfinite=args.allow_nonfinite,
        force=args.force,
    )
    print_ledger(ledger, "combine", args.json)
    return 0
