"""Shared helpers for the TUI pilot tests: fixture paths, waiting, and reading widgets."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from rich.console import Console, RenderableType
from rich.text import Text
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Static

from tests.helpers import write_adapter
from tui.file_tree import AdapterTree

DATA = Path(__file__).resolve().parents[2] / "fixtures" / "data"
TREE_LOADER_GROUP = "_loader"  # DirectoryTree's queue worker: it never finishes by design


async def settle(pilot: Pilot[object]) -> None:
    """Wait for every worker of ours (not the tree's endless loader), then for the refresh."""
    app = pilot.app
    for _ in range(3):  # a finished worker may start another (e.g. load -> re-render)
        running = [w for w in app.workers if w.group != TREE_LOADER_GROUP and not w.is_finished]
        if not running:
            break
        await app.workers.wait_for_complete(running)
        await pilot.pause()
    await pilot.pause()


async def tree_ready(pilot: Pilot[object]) -> AdapterTree:
    """The browser tree once its root folder has been listed."""
    tree = pilot.app.screen.query_one(AdapterTree)
    for _ in range(200):
        if tree.root.children:
            return tree
        await pilot.pause(0.01)
    raise AssertionError("the file tree never listed its folder")


async def choose_in_tree(pilot: Pilot[object], name: str) -> None:
    """Move the tree cursor to the entry called `name` and press Enter, like a user."""
    tree = await tree_ready(pilot)
    node = next(n for n in tree.root.children if n.data is not None and n.data.path.name == name)
    tree.focus()
    tree.move_cursor(node)
    await pilot.pause()
    await pilot.press("enter")
    await pilot.pause()
    await settle(pilot)


def render_text(renderable: RenderableType, width: int = 120) -> str:
    """Plain text of a Rich renderable (a Text, a Table grid, ...)."""
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def static_text(app: App[object], selector: str) -> str:
    """Plain text of the Static widget matching `selector` on the current screen."""
    content = app.screen.query_one(selector, Static).content
    if isinstance(content, Text):
        return content.plain
    if isinstance(content, str):
        assert not content, "file-derived text must be a Text, never a markup string"
        return content
    return render_text(content)


def make_runs_folder(root: Path) -> Path:
    """A folder of training runs for the folder view: steps, ranks, types, checks to raise.

    `runs/run-r128/` holds a rank-8 untrained save (name-rank; zero-effect with the data
    checks), `best.safetensors` copies step 9000 (duplicate with the data checks),
    `partial.safetensors` is a truncated download (malformed).
    """
    runs = root / "runs"
    for step, epoch, seed in ((900, 1, 1), (10000, 4, 3), (9000, 3, 2)):
        name = f"lora-step={step}-epoch={epoch}.safetensors"
        write_adapter(runs / "run-r16" / name, rank=16, seed=seed, config={"step": step})
    write_adapter(runs / "run-r128" / "lora-step=0.safetensors", rank=8, zero_effect=True)
    write_adapter(runs / "dora-rank2.safetensors", rank=2, type_name="dora-rows", seed=7)
    shutil.copy(runs / "run-r16" / "lora-step=9000-epoch=3.safetensors", runs / "best.safetensors")
    (runs / "partial.safetensors").write_bytes(b"\x00" * 3)
    return runs
