"""How a failed run is reported: one stderr line, the exit code and, under --json, one document.

The CLI's `main` is the one place exceptions become exit codes; this module is what it does
with them. Every failure is a `Failure`: the stderr line a person reads, and the fields of the
`--json` error document a hub's CI parses (so `--json` never leaves stdout empty). The error
kinds are the error classes' `kind` names (sa3ckpt.errors), plus "internal" for a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sa3ckpt import __version__
from sa3ckpt.cli.common import JSON_SCHEMA_VERSION
from sa3ckpt.errors import INTERNAL_KIND, Interrupted, OutputError, Sa3ckptError
from sa3ckpt.io.atomic import user_path
from sa3ckpt.textsafe import escape_control

# The argparse destinations that name what a command writes, for errors that lost the path.
OUTPUT_OPTIONS = ("output", "junit", "dir")

INTERRUPTED_LINE = "sa3ckpt: interrupted; nothing was written"


@dataclass(frozen=True)
class Failure:
    """A failed run: its exit code, its error kind, its one stderr line, the file concerned."""

    exit_code: int
    kind: str
    line: str
    path: str | None = None

    def document(self, command: str | None) -> dict[str, Any]:
        """The --json error document; `message` is the stderr line, word for word."""
        return {
            "schema": JSON_SCHEMA_VERSION,
            "tool": f"sa3ckpt {__version__}",
            "command": command,
            "exit_code": self.exit_code,
            "error": self.kind,
            "message": self.line,
            "path": self.path,
        }


def _failed_output(exc: OSError, args: argparse.Namespace | None) -> str:
    """The output an unmapped OSError was writing: its file (temp names undone), else -o."""
    if exc.filename:
        return user_path(os.fsdecode(exc.filename))
    for option in OUTPUT_OPTIONS:
        value = getattr(args, option, None)
        if value:
            return str(value)
    return "the output"


def _from_error(error: Sa3ckptError) -> Failure:
    return Failure(error.exit_code, error.kind, f"sa3ckpt: error: {error.one_line()}", error.path)


def failure_of(exc: BaseException, args: argparse.Namespace | None) -> Failure:
    """What an exception out of a command means for the user (BrokenPipeError is no failure:
    the reader went away, and `main` handles it before asking)."""
    if isinstance(exc, Sa3ckptError):
        return _from_error(exc)
    if isinstance(exc, KeyboardInterrupt):
        return Failure(Interrupted.exit_code, Interrupted.kind, INTERRUPTED_LINE)
    if isinstance(exc, OSError):  # the environment failed us (disk full, permissions on output)
        return _from_error(OutputError.from_os_error(_failed_output(exc, args), exc))
    return Failure(
        Sa3ckptError.exit_code,
        INTERNAL_KIND,
        f"sa3ckpt: internal error: {type(exc).__name__}: "
        f"{escape_control(' '.join(str(exc).split()))[:300]} "
        "(a bug; set SA3CKPT_DEBUG=1 for the traceback and please report it)",
    )


def _options(argv: Sequence[str]) -> list[str]:
    """The arguments before a `--` (after it, everything is a positional value)."""
    args = list(argv)
    return args[: args.index("--")] if "--" in args else args


def wants_json(args: argparse.Namespace | None, argv: Sequence[str]) -> bool:
    """Whether the run asked for --json: from the parsed arguments, or, when parsing itself
    failed (a usage error from argparse), from `--json` among the raw arguments."""
    if args is not None:
        return bool(getattr(args, "json", False))
    return "--json" in _options(argv)


def command_of(
    args: argparse.Namespace | None, argv: Sequence[str], names: Sequence[str]
) -> str | None:
    """The subcommand that ran (or was named, when parsing failed), else None."""
    if args is not None:
        return str(args.command)
    return next((a for a in _options(argv) if a in names), None)


def report(failure: Failure, *, as_json: bool, command: str | None) -> int:
    """Print the failure (the line on stderr; the document on stdout under --json) and return
    its exit code."""
    print(failure.line, file=sys.stderr)
    if as_json:
        # Nobody reading the document (a closed pipe) leaves the stderr line and code standing.
        with contextlib.suppress(BrokenPipeError):
            print(json.dumps(failure.document(command), indent=1), flush=True)
    return failure.exit_code
