"""After a merge: list the new file without losing the user's place, then put the cursor on it.

DirectoryTree.reload rebuilds every node and can leave the cursor on the root, so Enter
would open whatever sits at the top. The new output is highlighted if its folder is listed
(the root or an open folder); otherwise the entry highlighted before the reload is again.
"""

from __future__ import annotations

from pathlib import Path

from textual.widgets.directory_tree import DirEntry
from textual.widgets.tree import TreeNode

from tui.file_tree import AdapterTree


def listed_folder(tree: AdapterTree, folder: Path) -> TreeNode[DirEntry] | None:
    """The tree node of `folder` if its entries are on screen (the root or an open folder)."""
    wanted = folder.resolve()
    pending = [tree.root]
    while pending:
        node = pending.pop()
        if node.data is None:
            continue
        if node.data.path.resolve() == wanted:
            return node if node is tree.root or node.is_expanded else None
        if node is tree.root or node.is_expanded:
            pending.extend(node.children)
    return None


def select_listed(tree: AdapterTree, path: Path) -> bool:
    """Highlight `path` if its folder's entries are in the tree; True if it was found."""
    folder = listed_folder(tree, path.parent)
    return folder is not None and tree.highlight_path(path, under=folder)


async def refresh_and_select(tree: AdapterTree, written: str) -> bool:
    """Reload the tree, then highlight `written` (True) or else the entry highlighted before."""
    node = tree.cursor_node
    before = node.data.path if node is not None and node.data is not None else None
    await tree.reload()
    if select_listed(tree, Path(written)):
        return True
    if before is not None:
        select_listed(tree, before)
    return False
