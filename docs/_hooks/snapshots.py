"""mkdocs hook: serve the TUI's SVG snapshots from where the test suite keeps them.

The snapshots are written by pytest-textual-snapshot under tests/tui/__snapshots__/ and change
with the TUI; copying them into docs/ would let the pictures drift from the tests. This hook
adds each one to the site as `snapshots/<test module>/<name>.svg` at build time (a local file
copy, nothing fetched), so the pages link to the files the tests compare against and a link
to a snapshot that no longer exists fails the strict build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

SNAPSHOTS = Path(__file__).resolve().parents[2] / "tests" / "tui" / "__snapshots__"


def on_files(files: Files, config: Any, **_: Any) -> Files:
    for svg in sorted(SNAPSHOTS.glob("*/*.svg")):
        rel = f"snapshots/{svg.parent.name}/{svg.name}"
        files.append(File.generated(config, rel, abs_src_path=str(svg)))
    return files
