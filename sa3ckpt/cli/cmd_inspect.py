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
from sa3ckpt.cli.remote_args import (
    add_remote_arguments,
    apply_remote_arguments,
    refuse_urls_for,
)
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

DEFAULT_JOBS = 16
"""URLs of an audit table fetched at a time: enough to hide a hub's latency, few enough
not to look like abuse."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="adapter files, PEFT folders or base checkpoints; http(s):// or hf:// URLs",
    )
    parser.add_argument(
        "--from-list",
        metavar="FILE",
        help="also read the inputs from FILE, one path or URL per line (# comments)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"--table: URLs fetched at a time (default {DEFAULT_JOBS})",
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
    add_remote_arguments(parser)


def read_list(path: str) -> list[str]:
    """The inputs listed in a file: one per line, blank lines and `#` comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MalformedFileError(path, f"cannot read the --from-list file ({cause})") from None
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def _inputs(args: argparse.Namespace) -> list[str]:
    """The command line's inputs, then the list file's; at least one (exit 2 otherwise)."""
    apply_remote_arguments(args, args.paths)
    paths = list(args.paths)
    if args.from_list is not None:
        paths += read_list(args.from_list)
    if not paths:
        raise UsageError(
            "sa3ckpt inspect: the following arguments are required: PATH (or --from-list FILE)"
        )
    if args.jobs < 1:
        raise UsageError("inspect: --jobs must be at least 1")
    if args.stats:
        refuse_urls_for("inspect --stats", paths)
    if args.deep:
        refuse_urls_for("inspect --table --deep", paths)
    return paths


def _check_options(args: argparse.Namespace) -> None:
    """Options that only make sense together (exit 2 otherwise)."""
    if not args.table:
        for option, given in (("--sort", args.sort is not None), ("--deep", args.deep)):
            if given:
                raise UsageError(f"inspect: {option} needs --table")
    elif args.stats:
        raise UsageError("inspect: --stats does not apply to --table (--deep reads the tensors)")


def _run_table(args: argparse.Namespace, paths: list[str]) -> int:
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
        jobs=args.jobs,
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
    given = _inputs(args)
    if args.table:
        return _run_table(args, given)
    paths = walk_adapter_paths(given) if args.recursive else given
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
