"""`sa3ckpt bases`: a base's XS bases computed once, with provenance, for merge/convert/apply."""

from __future__ import annotations

import argparse

from sa3ckpt.cli.arguments import add_output_arg, add_output_flags
from sa3ckpt.cli.common import print_ledger
from sa3ckpt.cli.progress import add_quiet, progress_bar
from sa3ckpt.ops.library import DEFAULT_RANK, compute_bases_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help="base checkpoint (official, MLX, diffusers)")
    add_output_arg(parser, metavar="OUT", help="bases file (*.safetensors)")
    parser.add_argument(
        "--rank",
        type=int,
        default=DEFAULT_RANK,
        metavar="R",
        help=f"columns kept (default {DEFAULT_RANK}); serves adapters of rank <= R",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        metavar="PATTERN",
        help="only targets containing one of these substrings ([a-b] ranges; default all)",
    )
    add_output_flags(parser)
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    with progress_bar("bases", quiet=args.quiet) as progress:
        ledger = compute_bases_file(
            args.base,
            args.output,
            rank=args.rank,
            targets=args.targets,
            force=args.force,
            progress=progress,
        )
    print_ledger(ledger, "bases", args.json)
    return 0
