"""Which filesystem entries the TUI offers, and how their paths are shown.

The browser lists only what the library can open (adapter files, PEFT folders, base
checkpoints) so a large working folder stays readable. Paths are shown relative to the
working directory because that is what the user typed to start the TUI, and because it
keeps absolute, machine-specific prefixes out of the screen.
"""

from __future__ import annotations

import os
from pathlib import Path

from sa3ckpt.io.formats import CHECKPOINT_SUFFIXES, is_base_checkpoint
from sa3ckpt.io.remote import is_url
from sa3ckpt.io.sources import is_peft_dir


def is_checkpoint_file(path: str | os.PathLike[str]) -> bool:
    """A file whose name says it may be an adapter or base checkpoint."""
    return os.fspath(path).lower().endswith(CHECKPOINT_SUFFIXES)


def is_openable(path: str | os.PathLike[str]) -> bool:
    """Something the overview can load: a checkpoint file or a PEFT folder."""
    return is_peft_dir(path) or (os.path.isfile(path) and is_checkpoint_file(path))


def shown_in_browser(path: Path) -> bool:
    """Folders (to walk into) and checkpoint files; hidden entries are left out."""
    if path.name.startswith("."):
        return False
    try:
        return path.is_dir() or is_checkpoint_file(path)
    except OSError:
        return False


def looks_like_base(path: str | os.PathLike[str]) -> bool:
    """A base checkpoint, by the format registry's one rule (headers only)."""
    return is_base_checkpoint(path)


def display_path(path: str | os.PathLike[str], cwd: str | None = None) -> str:
    """The path relative to the working directory when it lies below it, else absolute
    (a URL as it is: it is no path)."""
    if is_url(os.fspath(path)):
        return os.fspath(path)
    here = os.path.abspath(cwd or os.getcwd())
    full = os.path.abspath(os.fspath(path))
    try:
        rel = os.path.relpath(full, here)
    except ValueError:  # another drive on Windows
        return full
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
