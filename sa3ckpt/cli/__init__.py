"""The headless `sa3ckpt` command line (never imports Textual).

Every command is a row in COMMANDS: a name, an argument builder and a runner. Errors the
user can cause arrive as Sa3ckptError and become one line on stderr with the documented
exit code; nothing else is allowed to reach the user as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sa3ckpt import __version__
from sa3ckpt.cli.failures import command_of, failure_of, report, wants_json
from sa3ckpt.cli.remote_args import refuse_urls
from sa3ckpt.errors import EXIT_OK, Sa3ckptError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """`sa3ckpt.cli.<module>.<name>`, imported on the first call: a run imports the command
    it runs, not every command's library (`sa3ckpt hash --help` took 0.75 s of CPU with all
    of them, 0.3 s without; `verify` needs most of them itself, 0.68 s against 0.64)."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"sa3ckpt.cli.{module}"), name)(*args)

    return call


def _command(name: str, help: str, module: str) -> Command:
    return Command(name, help, _lazy(module, "add_arguments"), _lazy(module, "run"))


COMMANDS: tuple[Command, ...] = (
    _command(
        "inspect",
        "what an adapter is (header-only unless --stats)",
        "cmd_inspect",
    ),
    _command(
        "hash",
        "tensor-data sha256 (AutoV3-style, unchanged by metadata edits) and whole-file sha256",
        "cmd_hash",
    ),
    _command(
        "validate",
        "check adapters against the rules; CI exit codes",
        "cmd_validate",
    ),
    _command(
        "convert",
        "convert adapters between dialects (verified) and bases between official and MLX",
        "cmd_convert",
    ),
    _command(
        "merge",
        "bake adapters into a base at fixed strengths",
        "cmd_merge",
    ),
    _command(
        "verify",
        "check a merge at the DiT's output: adapters live vs the merged weights",
        "cmd_verify",
    ),
    _command(
        "bases",
        "compute a base's XS bases once, with provenance (for --bases)",
        "cmd_bases",
    ),
    _command(
        "combine",
        "combine adapters into one (cat: exact for lora; svd: re-rank)",
        "cmd_combine",
    ),
    _command(
        "extract",
        "an adapter from a full fine-tune: truncated SVD of W_ft − W_base per target",
        "cmd_extract",
    ),
    _command(
        "resize",
        "re-rank one adapter (lora exactly; DoRA/BoRA keep magnitudes; -xs via M)",
        "cmd_resize",
    ),
    _command(
        "encode",
        "encode a folder of audio clips into SA3 latent files (resumable)",
        "cmd_encode",
    ),
    _command(
        "demo",
        "walk inspect, validate, convert and merge over a generated adapter",
        "cmd_demo",
    ),
    _command(
        "tui",
        "browse, inspect, validate and merge checkpoints interactively",
        "cmd_tui",
    ),
    _command(
        "targets",
        "list a model family's adapter targets and their names",
        "cmd_targets",
    ),
)


class _Version(argparse.Action):
    """`--version`: the tool's version, then which BLAS MLX uses in this environment (the
    speed of verify, encode and training depends on it; see docs/guides/mlx-linux.md)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from sa3ckpt.mlx_runtime import active

        print(f"sa3ckpt {__version__}")
        print(active().line())
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only` (a command's name), that command's arguments
    alone, the others listed by name and help (what parsing a run of `only` needs)."""
    parser = _Parser(prog="sa3ckpt", description="Stable Audio 3 adapter checkpoint tool")
    parser.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        help="show the version and the BLAS MLX multiplies with here, then exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        sub_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        if only is None or command.name == only:
            command.add_arguments(sub_parser)
            sub_parser.set_defaults(run=command.run)
    return parser


def _command_named(arguments: Sequence[str]) -> str | None:
    """The command a run names: its first argument that is not an option (the top level's
    options take no values), when that is a command; else None."""
    first = next((a for a in arguments if not a.startswith("-")), None)
    return first if first in {c.name for c in COMMANDS} else None


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so atomic writers delete their temp files on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code (docs/reference/exit-codes.md, DESIGN.md).

    The one place exceptions become exit codes: every failure is one stderr line and, when
    the run asked for --json, one error document on stdout (sa3ckpt.cli.failures).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    args: argparse.Namespace | None = None
    try:
        args = build_parser(_command_named(arguments)).parse_args(arguments)
        refuse_urls(args.command, args)
        return int(args.run(args))
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("SA3CKPT_DEBUG") and not isinstance(exc, Sa3ckptError | OSError):
            raise  # a bug, and the developer asked for its traceback
        return _report(exc, args, arguments)
    except KeyboardInterrupt as exc:
        return _report(exc, args, arguments)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(exc: BaseException, args: argparse.Namespace | None, argv: Sequence[str]) -> int:
    """One stderr line (and the --json error document) for a failed run; its exit code."""
    return report(
        failure_of(exc, args),
        as_json=wants_json(args, argv),
        command=command_of(args, argv, [c.name for c in COMMANDS]),
    )
