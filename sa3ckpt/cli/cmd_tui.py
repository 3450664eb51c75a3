"""`sa3ckpt tui`: the interactive browser (Textual is imported only when this command runs)."""

from __future__ import annotations

import argparse
import os

from sa3ckpt.errors import UnreadableFileError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        default=".",
        metavar="PATH",
        help="folder to browse, or a checkpoint / PEFT folder to open (default: .)",
    )


def run(args: argparse.Namespace) -> int:
    if not os.path.exists(args.path):
        # exit 3 like every other command given a path that is not there
        raise UnreadableFileError(args.path, "no such file or folder")
    from tui.app import Sa3ckptApp  # lazy: the rest of the CLI never loads Textual

    Sa3ckptApp(args.path).run()
    return 0
