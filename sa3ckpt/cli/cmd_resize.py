"""`sa3ckpt resize`: re-rank one adapter (lora exactly; DoRA/BoRA keep magnitudes; -xs via M)."""

from __future__ import annotations

import argparse

from sa3ckpt.cli.arguments import add_output_arg, add_output_flags, add_rank_or_energy
from sa3ckpt.cli.common import print_ledger
from sa3ckpt.ops.library import resize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", metavar="ADAPTER", help="the adapter to re-rank")
    add_output_arg(parser, metavar="OUT", help="re-ranked adapter")
    add_rank_or_energy(
        parser,
        rank_help="new rank (at most the current one)",
        energy_help="keep a fraction E of each target's ‖c·ΔW‖²; the file's rank is the largest "
        "needed",
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
    parser.add_argument("--allow-pickle", action="store_true", help="read a legacy .ckpt adapter")
    add_output_flags(
        parser, dtype_help="output dtype (default: the input's, so magnitudes stay bit-identical)"
    )


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
