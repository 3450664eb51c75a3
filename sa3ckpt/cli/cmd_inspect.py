"""`sa3ckpt inspect`: what an adapter (or a base checkpoint) is, header-only unless --stats.

Every path is reported, in order: one unreadable file among several must not hide the
others (a folder of downloads is inspected in one go). It is reported as malformed, in the
text and in the JSON, with its cause on stderr, and the exit code is 3 once all are done.

`-r` walks folders for adapter files and adapter folders; `--table` prints one row per adapter
instead of one report each (the audit table, `sa3ckpt.ops.inspect.audit`): header-only unless
`--hash` (tensor-data and file sha256, the duplicate check) or `--deep` (the zero-effect
check). Flags in the table are information, not findings: the exit code is 0, or 3 when a
row is malformed. `--hash` without `--table` adds both hashes to each report.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from sa3ckpt.cli.common import console
from sa3ckpt.cli.render import print_inspect, print_malformed
from sa3ckpt.cli.render_audit import table_lines
from sa3ckpt.errors import EXIT_OK, MalformedFileError, UsageError
from sa3ckpt.io.formats import walk_adapter_paths
from sa3ckpt.io.hashing import hash_path
from sa3ckpt.ops.inspect import (
    BaseReport,
    HashReport,
    InspectReport,
    OtherReport,
    audit,
    inspect_document,
    inspect_file,
)
from sa3ckpt.ops.inspect import to_json as inspect_to_json
from sa3ckpt.targets import FAMILIES
from sa3ckpt.targets.codec_families import CODEC_TARGET_FAMILIES
from sa3ckpt.textsafe import escape_control


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="adapter files, PEFT folders or base checkpoints"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--stats", action="store_true", help="read tensors: norms, NaN/Inf, zero effect"
    )
    parser.add_argument(
        "--model",
        default="auto",
        choices=["auto", *FAMILIES, *CODEC_TARGET_FAMILIES],
        help="model family",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="read legacy .ckpt with torch weights_only=True"
    )
    parser.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="walk folders for adapter files and adapter folders (PEFT, diffusers LoRA)",
    )
    parser.add_argument(
        "--table", action="store_true", help="the audit table: one row per adapter, with checks"
    )
    parser.add_argument(
        "--sort", choices=audit.SORTS, default=None, help="--table row order (default: name)"
    )
    parser.add_argument(
        "--hash",
        action="store_true",
        help="read every byte: tensor-data and whole-file sha256 (and, in --table, duplicates)",
    )
    parser.add_argument(
        "--deep",
        action="store_true",
        help="--table: read lora_B / M_xs to flag zero-effect (untrained) adapters",
    )


def _check_options(args: argparse.Namespace) -> None:
    """Options that only make sense together (exit 2 otherwise)."""
    if not args.table:
        for option, given in (("--sort", args.sort is not None), ("--deep", args.deep)):
            if given:
                raise UsageError(f"inspect: {option} needs --table")
    elif args.stats:
        raise UsageError("inspect: --stats does not apply to --table (--deep reads the tensors)")


def _run_table(args: argparse.Namespace) -> int:
    paths = list(args.paths)
    if not args.recursive:
        for path in paths:
            if walk_adapter_paths([path]) != [path]:
                raise UsageError(f"inspect --table: {path} is a folder; pass -r to walk it")
    table = audit.audit_paths(
        paths,
        hashes=args.hash,
        deep=args.deep,
        sort=args.sort or "name",
        allow_pickle=args.allow_pickle,
        model=args.model,
    )
    for row in table.rows:
        if row.status == audit.MALFORMED:
            print(f"sa3ckpt: error: {escape_control(f'{row.path}: {row.error}')}", file=sys.stderr)
    if args.json:
        print(audit.to_json(audit.table_json(table)))
    else:
        if not table.rows:
            print(f"sa3ckpt: no adapter files under {', '.join(paths)}", file=sys.stderr)
        for line in table_lines(table):
            print(line)
    return MalformedFileError.exit_code if table.malformed else EXIT_OK


def _with_hashes(
    report: InspectReport | BaseReport | OtherReport, path: str
) -> InspectReport | BaseReport | OtherReport:
    hashes = hash_path(path)
    return dataclasses.replace(
        report, hashes=HashReport(hashes.tensor_sha256, hashes.file_sha256, hashes.scope)
    )


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    if args.table:
        return _run_table(args)
    paths = walk_adapter_paths(list(args.paths)) if args.recursive else list(args.paths)
    results: list[InspectReport | BaseReport | OtherReport | MalformedFileError] = []
    for path in paths:
        try:
            report = inspect_file(
                path, stats=args.stats, model=args.model, allow_pickle=args.allow_pickle
            )
            results.append(_with_hashes(report, path) if args.hash else report)
        except MalformedFileError as exc:
            print(f"sa3ckpt: error: {exc.one_line()}", file=sys.stderr)  # as if it were alone
            results.append(exc)
    if args.json:
        print(inspect_to_json(inspect_document(results)))
    else:
        out = console()
        for item in results:
            if isinstance(item, MalformedFileError):
                print_malformed(out, item)
            else:
                print_inspect(out, item)
    if any(isinstance(r, MalformedFileError) for r in results):
        return MalformedFileError.exit_code
    return EXIT_OK
