"""`sa3ckpt merge`: bake adapters into a base at fixed strengths."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from sa3ckpt.adapters.formulas import SEMANTICS, SEMANTICS_HELP
from sa3ckpt.cli.common import print_ledger
from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.ops.merge import ONLY_ROOTS, merge_checkpoint
from sa3ckpt.strengths import parse_adapter_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "base", metavar="BASE", help="base checkpoint (official or MLX; .safetensors/.npz)"
    )
    parser.add_argument(
        "adapters", nargs="+", metavar="ADAPTER[:STRENGTH]", help="adapters, in order"
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="merged checkpoint")
    parser.add_argument(
        "--semantics",
        default="runtime",
        choices=list(SEMANTICS),
        help="; ".join(f"{k}: {v}" for k, v in SEMANTICS_HELP.items()),
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPE_NAMES), help="output dtype (default: the base's)"
    )
    parser.add_argument(
        "--only", choices=list(ONLY_ROOTS), help="merge only DiT or conditioner targets"
    )
    parser.add_argument(
        "--bases", metavar="FILE", help="XS bases file (else stored U/V or base SVD)"
    )
    parser.add_argument("--allow-pickle", action="store_true", help="read legacy .ckpt adapters")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--strict", action="store_true", help="fail when any adapter tensor has no place"
    )
    parser.add_argument("--json", action="store_true", help="print the ledger as one JSON document")


def progress_printer() -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\rmerging: {done}/{total} tensors", end=end, file=sys.stderr, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    ledger = merge_checkpoint(
        args.base,
        [parse_adapter_arg(a) for a in args.adapters],
        args.output,
        semantics=args.semantics,
        dtype=args.dtype,
        only=args.only,
        bases_path=args.bases,
        allow_pickle=args.allow_pickle,
        force=args.force,
        strict=args.strict,
        progress=None if args.json else progress_printer(),
    )
    print_ledger(ledger, "merge", args.json)
    return 0
