"""Argument groups several commands share, so a flag means the same everywhere it appears.

Every command that writes a file takes `-o/--output`, `--force` and `--json` with the same
meaning; the commands that make adapters from adapters or weights (extract, resize, combine)
also share `--dtype`, and extract and resize choose a rank the same way (`--rank` or
`--energy`, exactly one).
"""

from __future__ import annotations

import argparse

from sa3ckpt.dtypes import NAMES as DTYPE_NAMES

FORCE_HELP = "replace an existing output file"
JSON_HELP = "print the ledger as one JSON document"


def add_output_arg(parser: argparse.ArgumentParser, *, metavar: str, help: str) -> None:
    """-o/--output, required: every writing command names its output the same way."""
    parser.add_argument("-o", "--output", required=True, metavar=metavar, help=help)


def add_output_flags(
    parser: argparse.ArgumentParser,
    *,
    dtype_help: str | None = None,
    dtype_default: str | None = None,
) -> None:
    """--force, --json and, when `dtype_help` is given, --dtype (after a command's own flags)."""
    if dtype_help is not None:
        parser.add_argument(
            "--dtype", default=dtype_default, choices=list(DTYPE_NAMES), help=dtype_help
        )
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def add_rank_or_energy(
    parser: argparse.ArgumentParser, *, rank_help: str, energy_help: str
) -> None:
    """--rank R or --energy E, exactly one (extract and resize)."""
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, metavar="R", help=rank_help)
    how.add_argument("--energy", type=float, metavar="E", help=energy_help)
