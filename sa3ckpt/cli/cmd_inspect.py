"""`sa3ckpt inspect`: what an adapter (or a base checkpoint) is, header-only unless --stats.

Every path is reported, in order: one unreadable file among several must not hide the
others (a folder of downloads is inspected in one go). It is reported as malformed, in the
text and in the JSON, with its cause on stderr, and the exit code is 3 once all are done.
"""

from __future__ import annotations

import argparse
import sys

from sa3ckpt.cli.common import console
from sa3ckpt.cli.render import print_inspect, print_malformed
from sa3ckpt.errors import EXIT_OK, MalformedFileError
from sa3ckpt.ops.inspect import inspect_document, inspect_file
from sa3ckpt.ops.inspect import to_json as inspect_to_json
from sa3ckpt.ops.inspect_report import BaseReport, InspectReport
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
    results: list[InspectReport | BaseReport | MalformedFileError] = []
    for path in args.paths:
        try:
            results.append(
                inspect_file(
                    path, stats=args.stats, model=args.model, allow_pickle=args.allow_pickle
                )
            )
        except MalformedFileError as exc:
            print(f"sa3ckpt: error: {exc.one_line()}", file=sys.stderr)  # as if it were alone
            results.append(exc)
    if args.json:
        print(inspect_to_json(inspect_document(results)))
    else:
        out = console()
        for result in results:
            if isinstance(result, MalformedFileError):
                print_malformed(out, result)
            else:
                print_inspect(out, result)
    if any(isinstance(r, MalformedFileError) for r in results):
        return MalformedFileError.exit_code
    return EXIT_OK
