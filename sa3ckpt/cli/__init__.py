"""The headless `sa3ckpt` command line (never imports Textual).

Every command is a row in COMMANDS: a name, an argument builder and a runner. Errors the
user can cause arrive as Sa3ckptError and become one line on stderr with the documented
exit code; nothing else is allowed to reach the user as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console

from sa3ckpt import __version__
from sa3ckpt.cli.render import print_inspect, print_validation
from sa3ckpt.cli.reports import dumps, github_annotations, validation_document, write_junit
from sa3ckpt.errors import Sa3ckptError, UsageError
from sa3ckpt.names import format_adapter_key
from sa3ckpt.names.dialects import ADAPTER_DIALECTS
from sa3ckpt.ops.inspect import inspect_document, inspect_path
from sa3ckpt.ops.inspect import to_json as inspect_to_json
from sa3ckpt.ops.validate import validate_paths
from sa3ckpt.targets import FAMILIES, family

JSON_SCHEMA_VERSION = 1


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _add_targets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", choices=list(FAMILIES), help="model family")
    parser.add_argument("--include", nargs="*", default=[], help="include patterns ([a-b] ranges)")
    parser.add_argument("--exclude", nargs="*", default=[], help="exclude patterns")
    parser.add_argument(
        "--dialect", choices=list(ADAPTER_DIALECTS), help="also show each target's lora_A key"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _run_targets(args: argparse.Namespace) -> int:
    fam = family(args.family)
    try:
        selected = fam.selected(args.include, args.exclude)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows = []
    for t in selected:
        row = {
            "name": t.name,
            "kind": t.kind,
            "shape": list(t.shape),
            "weight_shape": list(t.weight_shape),
            "mlx": t.mlx_name,
            "sa3cpp": t.sa3cpp_stem,
        }
        if args.dialect:
            try:
                row["key"] = format_adapter_key(t.name, "lora_A", args.dialect)
            except ValueError as exc:
                row["key"] = None
                row["note"] = str(exc)
        rows.append(row)
    if args.json:
        doc = {
            "schema": JSON_SCHEMA_VERSION,
            "family": fam.name,
            "count": len(rows),
            "targets": rows,
        }
        print(json.dumps(doc, indent=1))
        return 0
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        line = f"{row['name']:<52} {row['kind']:<7} {shape:>11}"
        line += f"  mlx={row['mlx']}  sa3cpp={row['sa3cpp']}"
        if args.dialect:
            line += f"  key={row['key']}"
        print(line)
    print(f"{len(rows)} of {len(fam.targets)} {fam.name} targets selected")
    return 0


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _add_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="adapter files or PEFT folders")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--stats", action="store_true", help="read tensors: norms, NaN/Inf, zero effect"
    )
    parser.add_argument("--model", default="auto", choices=["auto", *FAMILIES], help="model family")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="read legacy .ckpt with torch weights_only=True"
    )


def _run_inspect(args: argparse.Namespace) -> int:
    reports = [
        inspect_path(p, stats=args.stats, model=args.model, allow_pickle=args.allow_pickle)
        for p in args.paths
    ]
    if args.json:
        print(inspect_to_json(inspect_document(reports)))
        return 0
    console = _console()
    for doc in reports:
        print_inspect(console, doc)
    return 0


def _add_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="adapter files, PEFT folders, folders"
    )
    parser.add_argument("--model", default="auto", choices=["auto", *FAMILIES], help="model family")
    parser.add_argument("--strict", action="store_true", help="warnings fail too")
    parser.add_argument("--deep", action="store_true", help="read every tensor (NaN/Inf)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    parser.add_argument("--github", action="store_true", help="GitHub Actions annotations")
    parser.add_argument("--quiet", action="store_true", help="hide info findings")


def _run_validate(args: argparse.Namespace) -> int:
    run = validate_paths(args.paths, model=args.model, strict=args.strict, deep=args.deep)
    if args.junit:
        write_junit(run, args.junit)
    if args.github:
        stream = sys.stderr if args.json else sys.stdout
        for line in github_annotations(run):
            print(line, file=stream)
    if args.json:
        print(dumps(validation_document(run)))
    else:
        print_validation(_console(), run, show_info=not args.quiet)
    return run.exit_code


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: tuple[Command, ...] = (
    Command(
        "inspect", "what an adapter is (header-only unless --stats)", _add_inspect, _run_inspect
    ),
    Command(
        "validate", "check adapters against the rules; CI exit codes", _add_validate, _run_validate
    ),
    Command(
        "targets",
        "list a model family's adapter targets and their names",
        _add_targets,
        _run_targets,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sa3ckpt", description="Stable Audio 3 adapter checkpoint tool")
    parser.add_argument("--version", action="version", version=f"sa3ckpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        sub_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code (documented in README and DESIGN.md)."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except Sa3ckptError as exc:
        print(f"sa3ckpt: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sa3ckpt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("SA3CKPT_DEBUG"):
            raise
        print(
            f"sa3ckpt: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
            "(a bug; set SA3CKPT_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1
