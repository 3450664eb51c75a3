"""`sa3ckpt inspect`: what an adapter (or a base checkpoint) is, header-only unless --stats."""

from __future__ import annotations

import argparse

from sa3ckpt.cli.common import console
from sa3ckpt.cli.render import print_inspect
from sa3ckpt.ops.inspect import inspect_document, inspect_file
from sa3ckpt.ops.inspect import to_json as inspect_to_json
from sa3ckpt.targets import FAMILIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="adapter files, PEFT folders or base checkpoints"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--stats", action="store_true", help="read tensors: norms, NaN/Inf, zero effect"
    )
    parser.add_argument("--model", default="auto", choices=["auto", *FAMILIES], help="model family")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="read legacy .ckpt with torch weights_only=True"
    )


def run(args: argparse.Namespace) -> int:
    reports = [
        inspect_file(p, stats=args.stats, model=args.model, allow_pickle=args.allow_pickle)
        for p in args.paths
    ]
    if args.json:
        print(inspect_to_json(inspect_document(reports)))
        return 0
    out = console()
    for doc in reports:
        print_inspect(out, doc)
    return 0
