"""The combine screen: adapters with weights into one adapter, in a thread worker.

Each adapter row is the merge screen's (`tui.strength.AdapterRow`): its number is the
combine weight, typed and refused exactly as the CLI's `ADAPTER:W` suffix. The methods are
the library's (`ops.combine.METHODS`); the rank field is off for the method whose rank is
the sum of its inputs'.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Input,
    ProgressBar,
    RadioSet,
    Static,
)

from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.ops.library import METHODS, CombineLedger
from tui.combine_plan import (
    DEFAULT_DTYPE,
    METHOD_NOTES,
    RANK_FROM_INPUTS,
    CombinePlanError,
    CombineRequest,
    make_combine_request,
    run_combine,
    suggested_output,
)
from tui.form_rows import choice, field, flag_boxes, radios, text_input
from tui.job_screen import JobScreen, failure_text
from tui.safe_text import plain
from tui.strength import AdapterRow, add_typed_adapter

DTYPE_CHOICES = (DEFAULT_DTYPE, *(n for n in DTYPE_NAMES if n != DEFAULT_DTYPE))
WEIGHTS_NOTE = "the numbers are weights, read as the CLI reads ADAPTER:W"
LEDGER_HINT = "The combine ledger (targets, rank, retained energy) appears here."


class CombineScreen(JobScreen):
    """Form (scrolls at 80×24) above the run row and the ledger; dismissed with the output."""

    JOB_RUN_BUTTON = "#run-combine"
    JOB_PROGRESS = "#combine-progress"
    JOB_ERROR = "#combine-error"
    JOB_BUSY_WARNING = "a combine is running; wait for it to finish"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="Return to the browser"),
        Binding("ctrl+r", "run_combine", "Combine", tooltip="Check the form and combine"),
        Binding("ctrl+n", "add_adapter", "Add adapter", tooltip="Add the typed adapter path"),
    ]

    DEFAULT_CSS = """
    CombineScreen {
        padding: 0 1;
        #combine-title { height: 1; text-style: bold; color: $accent; }
        #combine-form { height: 3fr; }
        .field { height: 1; margin-top: 1; }
        .field-label { width: 10; text-style: bold; }
        .field Input { width: 1fr; }
        .note { color: $text-muted; height: auto; padding-left: 10; }
        #add-adapter { min-width: 7; margin-left: 1; }
        #adapters { height: auto; margin-top: 1; }
        #no-adapters { color: $text-muted; }
        .radios { border: none; padding: 0; height: 1; width: auto; layout: horizontal; }
        .radios RadioButton { width: auto; margin-right: 2; }
        #rank { width: 12; }
        #flags { height: auto; margin-top: 1; }
        #flags Checkbox { width: auto; margin-right: 2; }
        #run-row { height: 1; margin-top: 1; }
        #run-combine { min-width: 11; margin-right: 2; }
        #combine-progress { display: none; }
        #combine-error { color: $error; height: auto; }
        #ledger { height: 2fr; border-top: solid $primary-muted; }
    }
    """

    def __init__(self, adapters: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._adapters = adapters
        self._suggested = ""

    def compose(self) -> ComposeResult:
        yield Static("Combine adapters into one adapter", id="combine-title")
        with VerticalScroll(id="combine-form"):
            yield field(
                "adapter",
                text_input("adapter-path", "adapter path, Enter adds it"),
                Button("add", id="add-adapter", compact=True),
            )
            with VerticalScroll(id="adapters"):
                yield Static("no adapters yet (each row: path and weight)", id="no-adapters")
                for path in self._adapters:
                    yield AdapterRow(path)
            yield Static(WEIGHTS_NOTE, classes="note")
            yield field(
                "method",
                radios("method", METHODS),
                Static("  rank ", classes="field-label"),
                text_input("rank", "svd: R"),
            )
            yield Static(id="method-note", classes="note")
            yield field("dtype", radios("dtype", DTYPE_CHOICES))
            yield field("base", text_input("base", "base (DoRA/BoRA or XS inputs)"))
            yield Horizontal(*flag_boxes(("allow-pickle", "allow-nonfinite", "force")), id="flags")
            yield field("output", text_input("output", "combined adapter path"))
        with Horizontal(id="run-row"):
            yield Button("combine", id="run-combine", variant="primary", compact=True)
            yield ProgressBar(id="combine-progress", show_eta=False)
        yield Static(id="combine-error")
        with VerticalScroll(id="ledger"):
            yield Static(Text(LEDGER_HINT, style="dim"), id="ledger-text")
        yield Footer()

    def on_mount(self) -> None:
        self._sync()
        self.query_one("#adapter-path", Input).focus()

    # --- form -------------------------------------------------------------------------

    @property
    def method(self) -> str:
        return choice(self.query_one("#method", RadioSet), METHODS)

    def _sync(self) -> None:
        """Empty-list hint, the rank field's state and note, and a fresh output name."""
        rows = list(self.query(AdapterRow))
        self.query_one("#no-adapters").display = not rows
        method = self.method
        rank = self.query_one("#rank", Input)
        rank.disabled = method in RANK_FROM_INPUTS
        note = METHOD_NOTES.get(method, method)
        self.query_one("#method-note", Static).update(plain(note))
        output = self.query_one("#output", Input)
        if output.value.strip() in ("", self._suggested):
            self._suggested = suggested_output(rows[0].path if rows else "", method)
            output.value = self._suggested

    @on(RadioSet.Changed, "#method")
    def _method_changed(self) -> None:
        self._sync()

    async def action_add_adapter(self) -> None:
        if await add_typed_adapter(self, self._show_error):
            self._sync()

    @on(Input.Submitted, "#adapter-path")
    @on(Button.Pressed, "#add-adapter")
    async def _add_requested(self) -> None:
        await self.action_add_adapter()

    async def on_adapter_row_remove_requested(self, event: AdapterRow.RemoveRequested) -> None:
        await event.row.remove()
        self._sync()

    def _request(self) -> CombineRequest:
        rows = [(row.path, row.strength_text) for row in self.query(AdapterRow)]
        return make_combine_request(
            rows,
            self.query_one("#output", Input).value,
            method=self.method,
            rank=self.query_one("#rank", Input).value,
            base=self.query_one("#base", Input).value,
            dtype=choice(self.query_one("#dtype", RadioSet), DTYPE_CHOICES),
            allow_pickle=self.query_one("#allow-pickle", Checkbox).value,
            allow_nonfinite=self.query_one("#allow-nonfinite", Checkbox).value,
            force=self.query_one("#force", Checkbox).value,
        )

    # --- running ----------------------------------------------------------------------

    @on(Button.Pressed, "#run-combine")
    def _run_pressed(self) -> None:
        self.action_run_combine()

    def action_run_combine(self) -> None:
        if self._busy:
            return
        try:
            request = self._request()
        except CombinePlanError as exc:
            self._show_error(str(exc))
            return
        self._start_job(request.output, "combining…")
        self._combine(request)

    @work(thread=True, exclusive=True, group="combine", exit_on_error=False)
    def _combine(self, request: CombineRequest) -> None:
        """Worker thread: the library combine; every outcome goes back to the UI thread."""
        try:
            ledger = run_combine(request)
        except Exception as exc:  # every library failure is one line, never a traceback
            self.app.call_from_thread(self._finished, None, failure_text(exc, request.output))
        else:
            self.app.call_from_thread(self._finished, ledger, None)

    def _finished(self, ledger: CombineLedger | None, error: str | None) -> None:
        if ledger is None:
            self._job_failed(error or "combine failed")
            return
        self._job_done()
        lines = Text("\n").join(plain(line) for line in ledger.lines())
        self.query_one("#ledger-text", Static).update(lines)
        self.notify("combine finished")
