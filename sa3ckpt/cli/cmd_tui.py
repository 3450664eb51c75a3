"""`sa3ckpt tui`: the interactive browser (Textual is imported only when this command runs)."""

from __future__ import annotations

import argparse
import os

from sa3ckpt.cli.remote_args import add_remote_arguments, apply_remote_arguments
from sa3ckpt.errors import UnreadableFileError, UsageError
from sa3ckpt.io.remote import is_url, unsupported_scheme


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        default=".",
        metavar="PATH",
        help="folder to browse, or a checkpoint / PEFT folder to open, or a URL (read "
        "header-only: operations that need tensor data say so) (default: .)",
    )
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if is_url(args.path):
        apply_remote_arguments(args, [args.path])
    elif unsupported_scheme(args.path) is not None:
        raise UsageError(f"{args.path}: {unsupported_scheme(args.path)}")
    elif not os.path.exists(args.path):
        # exit 3 like every other command given a path that is not there
        raise UnreadableFileError(args.path, "no such file or folder")
    from tui.app import Sa3ckptApp  # lazy: the rest of the CLI never loads Textual

    Sa3ckptApp(args.path).run()
    return 0
