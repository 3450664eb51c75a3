"""The merge screen: base, adapters with strengths, semantics, output; runs in a worker.

The merge streams a whole base checkpoint, so it runs in a thread; its progress callback
hops back to the UI with `call_from_thread`, throttled to whole percents so a model with
thousands of tensors does not flood the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    Footer,
    Input,
    ProgressBar,
    RadioButton,
    RadioSet,
    Static,
)

from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.errors import OutputError
from sa3ckpt.ops.merge import MergeLedger, merge_checkpoint
from sa3ckpt.progress import ProgressCallback, ProgressEvent
from sa3ckpt.semantics import info as semantics_info
from tui.loading import describe_error
from tui.merge_plan import MergePlan, PlanError, make_plan, suggested_output
from tui.safe_text import plain
from tui.strength import AdapterRow

SEMANTICS_ORDER = tuple(SEMANTICS)
LEDGER_HINT = "The merge ledger (what was merged, copied or skipped) appears here."


def throttled(report: Callable[[int, int], None]) -> ProgressCallback:
    """A progress callback that forwards (done, total) only when the whole percent changes
    (and at the end)."""
    last = -1

    def progress(event: ProgressEvent) -> None:
        nonlocal last
        percent = 100 * event.done // max(event.total, 1)
        if percent != last or event.done == event.total:
            last = percent
            report(event.done, event.total)

    return progress


class MergeScreen(Screen[str | None]):
    """Form on top, progress and the ledger below; dismissed with the last file written, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="Return to the browser"),
        Binding("ctrl+r", "run_merge", "Run merge", tooltip="Check the form and merge"),
        Binding("ctrl+n", "add_adapter", "Add adapter", tooltip="Add the typed adapter path"),
    ]

    DEFAULT_CSS = """
    MergeScreen {
        padding: 0 1;
        #merge-title { height: 1; text-style: bold; color: $accent; margin-bottom: 1; }
        .field { height: 1; margin-bottom: 1; }
        .field-label { width: 10; text-style: bold; }
        .field Input { width: 1fr; }
        #add-adapter { min-width: 7; margin-left: 1; }
        #adapters { height: auto; max-height: 5; margin-bottom: 1; }
        #no-adapters { color: $text-muted; }
        #semantics { border: none; padding: 0; height: 1; width: auto; layout: horizontal; }
        #semantics RadioButton { width: auto; margin-right: 2; }
        #semantics-help { color: $text-muted; height: auto; margin-bottom: 1; }
        #run-row { height: 1; }
        #run-merge { min-width: 9; margin-right: 2; }
        #merge-progress { display: none; }
        #merge-error { color: $error; height: auto; margin-bottom: 1; }
        #ledger { height: 1fr; border-top: solid $primary-muted; }
    }
    """

    def __init__(self, base: str = "", adapters: tuple[str, ...] = (), output: str = "") -> None:
        super().__init__()
        self._base = base
        self._adapters = adapters
        self._output = output or suggested_output(base)
        self._merging = False
        self._running_output = ""
        self._wrote: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("Merge adapters into a base checkpoint", id="merge-title")
        with Horizontal(classes="field"):
            yield Static("base", classes="field-label")
            yield Input(self._base, placeholder="base checkpoint path", id="base", compact=True)
        with Horizontal(classes="field"):
            yield Static("adapter", classes="field-label")
            yield Input(placeholder="adapter path, Enter adds it", id="adapter-path", compact=True)
            yield Button("add", id="add-adapter", compact=True)
        with VerticalScroll(id="adapters"):
            yield Static("no adapters yet", id="no-adapters")
            for path in self._adapters:
                yield AdapterRow(path)
        with Horizontal(classes="field"):
            yield Static("semantics", classes="field-label")
            with RadioSet(id="semantics", compact=True):
                for index, name in enumerate(SEMANTICS_ORDER):
                    yield RadioButton(name, value=index == 0)
        yield Static(self._help_text(SEMANTICS_ORDER[0]), id="semantics-help")
        with Horizontal(classes="field"):
            yield Static("output", classes="field-label")
            yield Input(
                self._output, placeholder="merged checkpoint path", id="output", compact=True
            )
        with Horizontal(id="run-row"):
            yield Button("merge", id="run-merge", variant="primary", compact=True)
            yield ProgressBar(id="merge-progress", show_eta=False)
        yield Static(id="merge-error")
        with VerticalScroll(id="ledger"):
            yield Static(Text(LEDGER_HINT, style="dim"), id="ledger-text")
        yield Footer()

    def on_mount(self) -> None:
        self._sync_empty_hint()
        self.query_one("#base" if not self._base else "#output", Input).focus()

    # --- form -------------------------------------------------------------------------

    @staticmethod
    def _help_text(semantics: str) -> Text:
        """The semantics' meaning and the runtimes that use it (the library's one table)."""
        return Text(semantics_info(semantics).line())

    @property
    def semantics(self) -> str:
        index = self.query_one("#semantics", RadioSet).pressed_index
        return SEMANTICS_ORDER[index if index >= 0 else 0]

    def _sync_empty_hint(self) -> None:
        self.query_one("#no-adapters").display = not self.query(AdapterRow)

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.query_one("#semantics-help", Static).update(self._help_text(self.semantics))

    async def action_add_adapter(self) -> None:
        field = self.query_one("#adapter-path", Input)
        path = field.value.strip()
        if not path:
            self._show_error("type an adapter path first")
            return
        await self.query_one("#adapters").mount(AdapterRow(path))
        field.value = ""
        self._show_error("")
        self._sync_empty_hint()

    @on(Input.Submitted, "#adapter-path")
    @on(Button.Pressed, "#add-adapter")
    async def _add_requested(self) -> None:
        await self.action_add_adapter()

    @on(Button.Pressed, "#run-merge")
    def _run_pressed(self) -> None:
        self.action_run_merge()

    async def on_adapter_row_remove_requested(self, event: AdapterRow.RemoveRequested) -> None:
        await event.row.remove()
        self._sync_empty_hint()

    def _show_error(self, message: str) -> None:
        self.query_one("#merge-error", Static).update(plain(message))

    def _plan(self) -> MergePlan:
        rows = [(row.path, row.strength_text) for row in self.query(AdapterRow)]
        return make_plan(
            self.query_one("#base", Input).value,
            rows,
            self.query_one("#output", Input).value,
            self.semantics,
        )

    # --- running ----------------------------------------------------------------------

    def action_back(self) -> None:
        if self._merging:
            self.notify("a merge is running; wait for it to finish", severity="warning")
            return
        self.dismiss(self._wrote)

    def action_run_merge(self) -> None:
        if self._merging:
            return
        try:
            plan = self._plan()
        except PlanError as exc:
            self._show_error(str(exc))
            return
        self._show_error("")
        self._merging = True
        self.query_one("#run-merge", Button).disabled = True
        bar = self.query_one("#merge-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self._running_output = plan.output
        self.query_one("#ledger-text", Static).update(Text("merging…", style="dim"))
        self._merge(plan)

    @work(thread=True, exclusive=True, group="merge", exit_on_error=False)
    def _merge(self, plan: MergePlan) -> None:
        """Worker thread: run the merge; results and errors go back through the UI thread."""
        report = throttled(
            lambda done, total: self.app.call_from_thread(self._progress, done, total)
        )
        try:
            ledger = merge_checkpoint(
                plan.base,
                list(plan.adapters),
                plan.output,
                semantics=plan.semantics,
                progress=report,
            )
        except OSError as exc:  # the environment, while writing: name the output, exit-5 words
            error = OutputError.from_os_error(plan.output, exc)
            self.app.call_from_thread(self._finished, None, describe_error(error))
        except Exception as exc:
            self.app.call_from_thread(self._finished, None, describe_error(exc))
        else:
            self.app.call_from_thread(self._finished, ledger, None)

    def _progress(self, done: int, total: int) -> None:
        self.query_one("#merge-progress", ProgressBar).update(total=total, progress=done)

    def _finished(self, ledger: MergeLedger | None, error: str | None) -> None:
        self._merging = False
        self.query_one("#run-merge", Button).disabled = False
        text = self.query_one("#ledger-text", Static)
        if ledger is None:
            # An indeterminate bar would keep animating at "--%" as if work went on: hide it.
            self.query_one("#merge-progress", ProgressBar).display = False
            self._show_error(error or "merge failed")
            text.update(Text("nothing was written", style="dim"))
            return
        self._wrote = self._running_output
        text.update(Text("\n").join(plain(line) for line in ledger.lines()))
        self.notify("merge finished")
