"""`sa3ckpt resize`: re-rank one adapter (lora exactly; DoRA/BoRA keep magnitudes; -xs via M)."""

from __future__ import annotations

import argparse

from sa3ckpt.cli.common import print_ledger
from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.ops.library import resize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", metavar="ADAPTER", help="the adapter to re-rank")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="re-ranked adapter")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, metavar="R", help="new rank (at most the current one)")
    how.add_argument(
        "--energy",
        type=float,
        metavar="E",
        help="keep a fraction E of each target's ‖c·ΔW‖²; the file's rank is the largest needed",
    )
    parser.add_argument(
        "--base",
        metavar="BASE",
        help="base checkpoint: -xs bases when not stored, baked norms, and the change of the "
        "adapted weight per target (DoRA/BoRA normaliser)",
    )
    parser.add_argument(
        "--bases", metavar="FILE", help="XS bases file (sa3ckpt bases, official, sa3.cpp)"
    )
    parser.add_argument(
        "--dtype",
        choices=list(DTYPE_NAMES),
        help="output dtype (default: the input's, so magnitudes stay bit-identical)",
    )
    parser.add_argument("--allow-pickle", action="store_true", help="read a legacy .ckpt adapter")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--json", action="store_true", help="print the ledger as one JSON document")


def run(args: argparse.Namespace) -> int:
    ledger = resize(
        args.adapter,
        args.output,
        rank=args.rank,
        energy=args.energy,
        base_path=args.base,
        bases_path=args.bases,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        force=args.force,
    )
    print_ledger(ledger, "resize", args.json)
    return 0
