"""The main screen: the file browser beside overview, coverage and validation tabs.

Every library call runs in a thread worker (`@work(thread=True)`) and reports back with
`call_from_thread`; a result is shown only if it is still about the path on screen, so a
slow file never overwrites a newer choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane, Tabs
from textual.worker import get_current_worker

from sa3ckpt.ops.inspect import StatsReport
from sa3ckpt.ops.validate import FileResult
from sa3ckpt.textsafe import escape_control
from tui.after_merge import refresh_and_select, select_listed
from tui.combine_screen import CombineScreen
from tui.convert_screen import ConvertScreen
from tui.coverage_view import CoverageView
from tui.file_tree import AdapterTree
from tui.folder_view import FolderScreen, folder_of
from tui.footer_fit import fit_palette
from tui.loading import Loaded, load_checkpoint, load_stats, run_validation
from tui.merge_screen import MergeScreen
from tui.overview import OverviewPanel
from tui.paths import display_path, is_openable, looks_like_base
from tui.validation_options import ValidationOptions
from tui.validation_view import ValidationView

TABS = ("overview", "coverage", "validation")
NEEDS_SELECTION = {"load_stats", "revalidate"}


class BrowserScreen(Screen[None]):
    """Browse on the left, look on the right; the footer lists the keys."""

    # priority: no focused widget (a tab's table, the tree) takes these keys first; the
    # tab switch moves focus along (action_show_tab). t and escape: back to the file tree.
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(key, action, label, tooltip=tip, priority=True)
            for key, action, label, tip in (
                ("o", "show_tab('overview')", "Overview", "Show the overview tab"),
                ("c", "show_tab('coverage')", "Coverage", "Show the coverage grid"),
                ("v", "show_tab('validation')", "Checks", "Show validation findings"),
                ("s", "load_stats", "Stats", "Compute update norms and NaN/Inf counts"),
                ("r", "revalidate", "Rerun", "Re-run validation on the selection"),
                ("m", "merge", "Merge", "Open the merge screen"),
                ("x", "convert", "Convert", "Convert the selected file (b: combine adapters)"),
                ("t", "focus_tree", "Tree", "Move focus back to the file tree"),
                ("q", "app.quit", "Quit", "Quit sa3ckpt tui"),
            )
        ),
        Binding("escape", "focus_tree", "Tree", show=False, priority=True),
        # Off the footer, which has room for one of the two at 80 columns; the convert
        # screen shows it (ctrl+b) and the docs list it.
        Binding("b", "combine", "Combine", show=False, priority=True),
        # Off the footer too (the 80-column line ends at q Quit); in the palette, the docs,
        # and the folder view's own footer lists its keys.
        Binding(
            "f",
            "folder",
            "Folder",
            tooltip="The audit table of the highlighted folder",
            show=False,
            priority=True,
        ),
    ]

    DEFAULT_CSS = """
    BrowserScreen {
        /* as wide as the longest listed name, between the old 35 and half the screen */
        #files {
            width: auto; min-width: 35; max-width: 50%; overflow-x: hidden; height: 1fr;
            border-right: solid $primary-muted;
        }
        #views { width: 1fr; height: 1fr; }
        TabPane { padding: 0; }
    }
    """

    def __init__(self, root: str, initial: str | None = None) -> None:
        super().__init__()
        self._root = root
        self._start_path = initial
        self._path: str | None = None
        self._loaded: Loaded | None = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield AdapterTree(self._root, id="files")
            with TabbedContent(initial="overview", id="views"):
                with TabPane("Overview", id="overview"):
                    yield OverviewPanel()
                with TabPane("Coverage", id="coverage"):
                    yield CoverageView()
                with TabPane("Validation", id="validation"):
                    yield ValidationView()
        yield Footer(compact=True)  # at 80 columns every key fits, t (tree) and q included

    def on_resize(self, event: events.Resize) -> None:
        fit_palette(self, event.size.width)

    def on_mount(self) -> None:
        fit_palette(self, self.size.width)
        self.query_one(AdapterTree).focus()
        if self._start_path is not None:
            self.choose(self._start_path)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Stats and re-validation need a selection: shown dimmed until there is one."""
        if action in NEEDS_SELECTION and self._path is None:
            return None
        return True

    # --- choosing and loading ---------------------------------------------------------

    def on_adapter_tree_listed(self, event: AdapterTree.Listed) -> None:
        """Once the start folder is listed, the tree cursor joins the file opened at start."""
        tree = self.query_one(AdapterTree)
        if self._start_path is not None and event.node is tree.root:
            tree.highlight_path(self._start_path)
            self._start_path = None

    def on_adapter_tree_chosen(self, event: AdapterTree.Chosen) -> None:
        self.choose(event.path)

    def choose(self, path: str | Path) -> None:
        """Show `path`: panels go to their loading state and a worker reads the file."""
        self._path = display_path(path)
        self.query_one(OverviewPanel).show_loading(self._path)
        self.query_one(ValidationView).show_loading()
        self.query_one(CoverageView).loading = True
        self.refresh_bindings()
        self._load(self._path, self.query_one(ValidationView).options)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self, path: str, options: ValidationOptions) -> None:
        loaded = load_checkpoint(path, options)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_loaded, loaded)

    def _show_loaded(self, loaded: Loaded) -> None:
        if loaded.path != self._path:
            return
        self._loaded = loaded
        self.query_one(OverviewPanel).show(loaded)
        coverage = self.query_one(CoverageView)
        coverage.loading = False
        coverage.show(loaded)
        self._show_verdict(loaded)
        stale = loaded.validation_options != self.query_one(ValidationView).options
        if stale and loaded.not_a_dit_adapter is None and not loaded.is_base:
            self._rerun(loaded.path)  # the options changed while the file was loading

    def _show_verdict(self, loaded: Loaded) -> None:
        view = self.query_one(ValidationView)
        other = loaded.not_a_dit_adapter
        if loaded.is_base:
            view.show_base(loaded.kind)
        elif other is not None:  # codec weights or a codec adapter: say what it is
            view.show_kind(other)
        else:
            view.show(loaded.validation, loaded.validation_error, loaded.validation_options)

    # --- actions ----------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        """Switch tabs; focus in the old tab's table follows into the new tab.

        Left in a pane that gets hidden, focus would jump to the next visible widget, and
        TabbedContent shows the pane holding the focus: the old tab would come back.
        """
        if tab not in TABS:
            return
        views = self.query_one(TabbedContent)
        focused = self.focused
        inside = focused is not None and views in focused.ancestors
        if inside:
            views.query_one(Tabs).focus()
        views.active = tab
        if inside:
            self.call_after_refresh(self._focus_in_tab, tab)

    def _focus_in_tab(self, tab: str) -> None:
        """The first focusable widget of the tab's pane, if it has one (else the tab bar)."""
        pane = self.query_one(TabbedContent).get_pane(tab)
        target = next((w for w in pane.query("*") if w.focusable), None)
        if target is not None:
            target.focus()

    def action_focus_tree(self) -> None:
        self.query_one(AdapterTree).focus()

    def action_load_stats(self) -> None:
        loaded = self._loaded
        if loaded is None or loaded.path != self._path:
            self.notify("wait for the file to load first", severity="warning")
            return
        if loaded.report is None:
            reason = (
                "stats are for adapters"
                if loaded.is_base or loaded.is_other
                else "this file cannot be read"
            )
            self.notify(reason, severity="warning")
            return
        self.action_show_tab("coverage")
        self.query_one(CoverageView).loading = True
        self._stats(loaded.path)

    @work(thread=True, exclusive=True, group="stats", exit_on_error=False)
    def _stats(self, path: str) -> None:
        stats, error = load_stats(path)
        self.app.call_from_thread(self._show_stats, path, stats, error)

    def _show_stats(self, path: str, stats: StatsReport | None, error: str | None) -> None:
        view = self.query_one(CoverageView)
        view.loading = False
        if path != self._path:
            return
        if stats is None:
            message = escape_control(error or "stats could not be computed")
            self.notify(message, severity="error", markup=False)
            return
        view.show_stats(stats)

    def action_revalidate(self) -> None:
        if self._path is None:
            return
        self.action_show_tab("validation")
        loaded = self._loaded
        if loaded is not None and loaded.path == self._path and loaded.not_a_dit_adapter:
            self._show_verdict(loaded)  # the rules do not apply: nothing to re-run
            return
        self._rerun(self._path)

    def _rerun(self, path: str) -> None:
        view = self.query_one(ValidationView)
        view.show_loading()
        self._validate(path, view.options)

    def on_validation_view_options_changed(self, event: ValidationView.OptionsChanged) -> None:
        """--strict or --model changed: validate the selection again with them."""
        if self._path is not None:
            self.action_revalidate()

    @work(thread=True, exclusive=True, group="validate", exit_on_error=False)
    def _validate(self, path: str, options: ValidationOptions) -> None:
        result, error = run_validation(path, options)
        self.app.call_from_thread(self._show_validation, path, result, error, options)

    def _show_validation(
        self,
        path: str,
        result: FileResult | None,
        error: str | None,
        options: ValidationOptions,
    ) -> None:
        if path != self._path or options != self.query_one(ValidationView).options:
            return  # another file, or options changed again: a newer run is coming
        if self._loaded is not None and self._loaded.path == path:
            self._loaded.validation, self._loaded.validation_error = result, error
            self._loaded.validation_options = options
            self.query_one(OverviewPanel).show(self._loaded)
        self.query_one(ValidationView).show(result, error, options)

    def merge_defaults(self) -> tuple[str, tuple[str, ...]]:
        """Base from the highlighted (or loaded) file if it is a base; the loaded adapter.

        The base test reads two headers on the UI thread: small even for a large model,
        and it keeps the merge screen's fields filled the moment it opens.
        """
        base = ""
        node = self.query_one(AdapterTree).cursor_node
        if node is not None and node.data is not None and looks_like_base(node.data.path):
            base = display_path(node.data.path)
        loaded = self._loaded
        adapters: tuple[str, ...] = ()
        if loaded is not None and loaded.is_base and not base:
            base = loaded.path
        elif loaded is not None and loaded.report is not None and not loaded.not_a_dit_adapter:
            adapters = (loaded.path,)
        return base, adapters

    def action_merge(self) -> None:
        base, adapters = self.merge_defaults()
        self.app.push_screen(MergeScreen(base, adapters), self._after_merge)

    def selected_path(self) -> str | None:
        """The highlighted tree entry if the library can open it, else the loaded file."""
        node = self.query_one(AdapterTree).cursor_node
        if node is not None and node.data is not None and is_openable(node.data.path):
            return display_path(node.data.path)
        return self._path

    def action_convert(self) -> None:
        screen = ConvertScreen(self.selected_path() or "", open_combine=self.open_combine)
        self.app.push_screen(screen, self._after_merge)

    def action_combine(self) -> None:
        loaded = self._loaded
        adapters: tuple[str, ...] = ()
        if loaded is not None and loaded.report is not None and not loaded.is_base:
            adapters = (loaded.path,)
        self.open_combine(adapters)

    def open_combine(self, adapters: tuple[str, ...]) -> None:
        self.app.push_screen(CombineScreen(adapters), self._after_merge)

    async def _after_merge(self, written: str | None) -> None:
        """A merge, convert or combine wrote a file: list it, keeping the place; highlight it."""
        if written:
            await refresh_and_select(self.query_one(AdapterTree), written)

    def action_folder(self) -> None:
        """The folder view of the highlighted folder (a file's or PEFT folder's: its folder)."""
        tree = self.query_one(AdapterTree)
        node = tree.cursor_node
        highlighted = node.data.path if node is not None and node.data is not None else None
        self.app.push_screen(FolderScreen(folder_of(highlighted, self._root)), self._opened)

    def _opened(self, path: str | None) -> None:
        """Enter on a row of the folder view: that file, in the normal views."""
        if path:
            select_listed(self.query_one(AdapterTree), Path(path))
            self.choose(path)
