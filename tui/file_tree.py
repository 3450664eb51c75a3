"""The file browser: a DirectoryTree that lists only checkpoints and treats PEFT folders as one.

A PEFT adapter is a folder (adapter_config.json + weights); choosing it must load the
folder as a whole, so the tree announces one `Chosen` message for files and PEFT folders
alike and the screen never needs to know the difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.style import Style
from rich.text import Text, TextType
from textual.message import Message
from textual.widgets import DirectoryTree
from textual.widgets.directory_tree import DirEntry
from textual.widgets.tree import TreeNode

from sa3ckpt.textsafe import escape_control
from tui.paths import is_peft_dir, shown_in_browser

if TYPE_CHECKING:
    from typing_extensions import Self


def root_label(path: str | Path) -> str:
    """The root's name: "." and ".." have no name of their own, so their folder's is shown."""
    given = Path(path)
    if given.name and given.name != "..":
        return given.name
    resolved = given.resolve()
    return resolved.name or str(resolved)


class AdapterTree(DirectoryTree):
    """Folders, checkpoint files, and PEFT folders marked as adapters."""

    ICON_FILE = ""  # checkpoint names are long; the columns are worth more than an icon

    class Chosen(Message):
        """The user picked a checkpoint file or a PEFT folder."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class Listed(Message):
        """A folder's entries are now in the tree (so they can be highlighted)."""

        def __init__(self, node: TreeNode[DirEntry]) -> None:
            super().__init__()
            self.node = node

    def __init__(self, path: str | Path, **kwargs: Any) -> None:
        self._peft: set[Path] = set()  # filled off-thread by filter_paths, read when rendering
        super().__init__(path, **kwargs)
        self.root.set_label(root_label(path))

    def reset_node(
        self, node: TreeNode[DirEntry], label: TextType, data: DirEntry | None = None
    ) -> Self:
        """A reload relabels the root by its path's name, empty for "."; keep a real name."""
        if node is self.root and data is not None:
            label = root_label(data.path)
        return super().reset_node(node, label, data)

    def _toggle_node(self, node: TreeNode[DirEntry]) -> None:
        """Enter or a click on the root would fold the whole listing away: the root stays open."""
        if node is self.root and node.is_expanded:
            return
        super()._toggle_node(node)

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        """Runs in the tree's loader thread, so the stat calls do not block the UI."""
        kept = [p for p in paths if shown_in_browser(p)]
        self._peft.update(p for p in kept if is_peft_dir(p))
        return kept

    def process_label(self, label: TextType) -> Text:
        """File names are shown literally (a `[` in a name is not markup)."""
        if isinstance(label, str):
            return Text(escape_control(label))
        return label

    def render_label(self, node: TreeNode[DirEntry], base_style: Style, style: Style) -> Text:
        """Folders that are PEFT adapters get a marker: Enter loads them as one adapter."""
        text = super().render_label(node, base_style, style)
        if node.data is not None and node.data.path in self._peft:
            text.append(" (peft)", style="italic green")
        return text

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.post_message(self.Chosen(event.path))

    def on_directory_tree_directory_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        event.stop()
        if event.path in self._peft or is_peft_dir(event.path):
            self.post_message(self.Chosen(event.path))

    def on_tree_node_expanded(self, event: DirectoryTree.NodeExpanded[DirEntry]) -> None:
        """The loader expands a folder right after filling it: announce the listing."""
        if event.node.data is not None and event.node.data.loaded and event.node.children:
            self.post_message(self.Listed(event.node))

    def highlight_path(self, path: str | Path, under: TreeNode[DirEntry] | None = None) -> bool:
        """Put the cursor on the listed entry for `path`, if it is listed below `under`."""
        wanted = Path(path).resolve()
        for node in (under or self.root).children:
            if node.data is not None and node.data.path.resolve() == wanted:
                self.move_cursor(node, animate=False)
                return True
        return False
