"""`sa3ckpt extract`: an adapter from a full fine-tune, per target from the SVD of W_ft − W_base."""

from __future__ import annotations

import argparse

from sa3ckpt.cli.arguments import add_output_arg, add_output_flags, add_rank_or_energy
from sa3ckpt.cli.common import print_ledger
from sa3ckpt.ops.library import DEFAULT_THRESHOLD, TYPES, extract


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help="the base checkpoint (official, MLX, ...)")
    parser.add_argument("finetuned", metavar="FINETUNED", help="the fine-tuned checkpoint")
    add_output_arg(parser, metavar="ADAPTER", help="adapter file")
    add_rank_or_energy(
        parser,
        rank_help="rank of every target",
        energy_help="keep a fraction E of ‖D‖² per target; the file's rank is the largest needed",
    )
    parser.add_argument("--type", default="lora", choices=TYPES, help="adapter type written")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="T",
        help=f"skip targets with ‖D‖/‖W_base‖ below T (default {DEFAULT_THRESHOLD:g})",
    )
    parser.add_argument(
        "--store-bases", action="store_true", help="lora-xs: also store U/V in the file"
    )
    add_output_flags(parser, dtype_help="output dtype", dtype_default="fp16")


def run(args: argparse.Namespace) -> int:
    ledger = extract(
        args.base,
        args.finetuned,
        args.output,
        rank=args.rank,
        energy=args.energy,
        adapter_type=args.type,
        threshold=args.threshold,
        dtype=args.dtype,
        store_bases=args.store_bases,
        force=args.force,
    )
    print_ledger(ledger, "extract", args.json)
    return 0
