"""`sa3ckpt combine`: several adapters into one (cat: exact for LoRA; svd: re-factor to rank R)."""

from __future__ import annotations

import argparse

from sa3ckpt.cli.common import print_ledger
from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.ops.combine import METHODS, combine
from sa3ckpt.strengths import parse_adapter_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER[:W]", help="adapters and weights")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="combined adapter")
    parser.add_argument("--method", required=True, choices=METHODS, help="cat (exact, lora) or svd")
    parser.add_argument(
        "--rank",
        type=int,
        help="output rank (svd only; at most every target's min(fan) and the useful rank, "
        "else exit 2)",
    )
    parser.add_argument("--base", metavar="BASE", help="base checkpoint (DoRA/BoRA or XS inputs)")
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPE_NAMES), help="output dtype")
    parser.add_argument("--allow-pickle", action="store_true", help="read legacy .ckpt adapters")
    parser.add_argument(
        "--allow-nonfinite", action="store_true", help="cat: carry NaN/Inf over instead of exit 4"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--json", action="store_true", help="print the ledger as one JSON document")


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
