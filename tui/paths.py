"""Which filesystem entries the TUI offers, and how their paths are shown.

The browser lists only what the library can open (adapter files, PEFT folders, base
checkpoints) so a large working folder stays readable. Paths are shown relative to the
working directory because that is what the user typed to start the TUI, and because it
keeps absolute, machine-specific prefixes out of the screen.
"""

from __future__ import annotations

import os
from pathlib import Path

from sa3ckpt.errors import Sa3ckptError
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.sources import PEFT_CONFIG, open_adapter_source
from sa3ckpt.ops.analysis import analyze

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".gguf", ".npz")


def is_peft_dir(path: str | os.PathLike[str]) -> bool:
    """A folder the library opens as one adapter (it holds adapter_config.json)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, PEFT_CONFIG))


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
    """A file that opens as an SA3 base and holds no adapter targets (headers only).

    Both tests are needed: adapters with bare keys (`transformer.layers...`) also parse as
    MLX base names, and a base .npz is not something the adapter reader opens at all.
    """
    if not os.path.isfile(path):
        return False
    try:
        with open_base(path):
            pass
    except (Sa3ckptError, OSError, ValueError):
        return False
    try:
        with open_adapter_source(path) as source:
            return not analyze(source).groups.targets
    except (Sa3ckptError, OSError, ValueError):
        return True


def display_path(path: str | os.PathLike[str], cwd: str | None = None) -> str:
    """The path relative to the working directory when it lies below it, else absolute."""
    here = os.path.abspath(cwd or os.getcwd())
    full = os.path.abspath(os.fspath(path))
    try:
        rel = os.path.relpath(full, here)
    except ValueError:  # another drive on Windows
        return full
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def same_file(a: str, b: str) -> bool:
    """Whether two typed paths name the same file (existing files compare by inode)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)
