"""The Textual application: picks the start folder and hosts the browser and merge screens."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ClassVar

from textual.app import App
from textual.command import Provider

from sa3ckpt.io.remote import is_url
from tui.browser_screen import BrowserScreen
from tui.commands import ScreenActions
from tui.paths import is_openable


def split_start(path: str) -> tuple[str, str | None]:
    """`sa3ckpt tui X`: a folder is browsed; a checkpoint opens in its folder, selected; a
    URL (read header-only) opens over the working folder, which it is not in."""
    if is_url(path):
        return ".", path
    if os.path.isdir(path) and not is_openable(path):
        return path, None
    parent = os.path.dirname(os.path.normpath(path))
    return parent or ".", path


class Sa3ckptApp(App[None]):
    """sa3ckpt tui: inspect, validate and merge adapter checkpoints."""

    TITLE = "sa3ckpt"
    COMMANDS: ClassVar[set[type[Provider] | Callable[[], type[Provider]]]] = App.COMMANDS | {
        ScreenActions
    }

    def __init__(self, path: str = ".") -> None:
        super().__init__()
        self.root_path, self.initial_path = split_start(path)

    def get_default_screen(self) -> BrowserScreen:
        return BrowserScreen(self.root_path, self.initial_path)
