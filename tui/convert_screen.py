"""The convert screen: one file to another format, with the read-back verification shown.

The targets offered are the library's for the input's kind (`ops.convert_targets`), each
with the runtime that reads it; options that do not apply to that kind are hidden. The
conversion runs in a thread worker (a base streams gigabytes) and the result shows the
verification on its own line — passed or failed, with the numbers — above the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Input,
    ProgressBar,
    RadioButton,
    RadioSet,
    Static,
)

from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.errors import VerificationError
from sa3ckpt.io.formats import ADAPTER
from sa3ckpt.ops.convert import ConvertTarget
from tui.convert_plan import (
    DEFAULT_DTYPE,
    DEFAULT_SHARD_TEXT,
    DORA_VARIANTS,
    OPTION_KINDS,
    ConvertRequest,
    InputInfo,
    Ledger,
    PlanError,
    describe_input,
    make_request,
    run_convert,
    suggested_output,
    verification_failed,
    verification_passed,
)
from tui.form_rows import choice, field, flag_boxes, radios, text_input
from tui.job_screen import JobScreen, failure_text
from tui.safe_text import plain

DTYPE_CHOICES = (DEFAULT_DTYPE, *DTYPE_NAMES)
RESULT_HINT = "The read-back verification and the ledger appear here."
TARGET_NAME_WIDTH = 10
ACROSS = "radios across"  # a choice laid out on one line
# The CLI's on/off flags, named as the CLI names them (its messages say "pass --force").
FLAG_ROWS = (
    ("drop-conditioner", "include-conditioner", "allow-nonfinite"),
    ("drop-unmapped", "allow-pickle", "force"),
)


def target_label(target: ConvertTarget) -> Text:
    """`sa3       official PyTorch loader (…)`: the name, then who reads the output."""
    return Text.assemble((f"{target.name:<{TARGET_NAME_WIDTH}}", "bold"), target.reader)


class ConvertScreen(JobScreen):
    """Form (scrolls at 80×24) above the run row and the result; dismissed with the output."""

    JOB_RUN_BUTTON = "#run-convert"
    JOB_PROGRESS = "#convert-progress"
    JOB_ERROR = "#convert-error"
    JOB_BUSY_WARNING = "a conversion is running; wait for it to finish"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="Return to the browser"),
        Binding("ctrl+r", "run_convert", "Convert", tooltip="Check the form and convert"),
        Binding("ctrl+b", "combine", "Combine", tooltip="Combine adapters instead"),
    ]

    DEFAULT_CSS = """
    ConvertScreen {
        padding: 0 1;
        #convert-title { height: 1; text-style: bold; color: $accent; }
        #convert-form { height: 3fr; }
        .field { height: 1; margin-top: 1; }
        .field-label { width: 15; text-style: bold; }
        .field Input { width: 1fr; }
        .note { color: $text-muted; height: auto; padding-left: 15; }
        .radios { border: none; padding: 0; height: auto; width: 1fr; }
        .across { layout: horizontal; height: 1; }
        .across RadioButton { width: auto; margin-right: 2; }
        #target-field { height: auto; margin-top: 1; }
        #targets { height: auto; width: 1fr; }
        .flags { height: auto; margin-top: 1; }
        .flags Checkbox { width: auto; margin-right: 2; }
        #run-row { height: 1; margin-top: 1; }
        #run-convert { min-width: 11; margin-right: 2; }
        #convert-progress { display: none; }
        #convert-error { color: $error; height: auto; }
        #result { height: 2fr; border-top: solid $primary-muted; }
        #verify-text { height: auto; text-style: bold; }
    }
    """

    def __init__(
        self, path: str = "", open_combine: Callable[[tuple[str, ...]], None] | None = None
    ) -> None:
        super().__init__()
        self._path = path
        self._open_combine = open_combine
        self._info = InputInfo(path, None, "reading…")
        self._targets: list[ConvertTarget] = []
        self._suggested = ""

    def compose(self) -> ComposeResult:
        yield Static("Convert a checkpoint to another format", id="convert-title")
        with VerticalScroll(id="convert-form"):
            yield field("input", text_input("input", "adapter or base path", self._path))
            yield Static(id="input-kind", classes="note")
            with Horizontal(id="target-field"):
                yield Static("--to", classes="field-label")
                yield Vertical(id="targets")
            yield Static(id="target-note", classes="note")
            yield field("dtype", radios("dtype", DTYPE_CHOICES, ACROSS), classes="opt-dtype")
            base_hint = "bake XS bases U/V and norms from"
            yield field("base", text_input("base", base_hint), classes="opt-base")
            bases_hint = "XS bases U/V for -xs adapters"
            yield field("bases", text_input("bases", bases_hint), classes="opt-bases")
            yield field(
                "dora-variant",
                radios("dora-variant", DORA_VARIANTS, ACROSS),
                classes="opt-dora-variant",
            )
            yield field(
                "max-shard-size",
                text_input("max-shard-size", "", DEFAULT_SHARD_TEXT),
                classes="opt-max-shard-size",
            )
            for row in FLAG_ROWS:
                yield Horizontal(*flag_boxes(row, "opt-{name}"), classes="flags")
            yield field("output", text_input("output", "converted output path"))
        with Horizontal(id="run-row"):
            yield Button("convert", id="run-convert", variant="primary", compact=True)
            yield ProgressBar(id="convert-progress", show_eta=False)
        yield Static(id="convert-error")
        with VerticalScroll(id="result"):
            yield Static(id="verify-text")
            yield Static(Text(RESULT_HINT, style="dim"), id="ledger-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#input", Input).focus()
        self._identify(self._path)

    # --- the input and its targets -------------------------------------------------------

    @on(Input.Changed, "#input")
    def _input_changed(self, event: Input.Changed) -> None:
        self._identify(event.value)

    @work(thread=True, exclusive=True, group="identify", exit_on_error=False)
    def _identify(self, path: str) -> None:
        info = describe_input(path)
        self.app.call_from_thread(self.call_later, self._show_input, info)

    async def _show_input(self, info: InputInfo) -> None:
        if info.path != self.query_one("#input", Input).value.strip():
            return  # typed on since: a newer identification follows
        previous = [t.name for t in self._targets]
        self._info = info
        self.query_one("#input-kind", Static).update(plain(info.description))
        self._targets = info.targets()
        if [t.name for t in self._targets] != previous:
            box = self.query_one("#targets", Vertical)
            await box.remove_children()
            buttons = [
                RadioButton(target_label(t), value=i == 0) for i, t in enumerate(self._targets)
            ]
            if buttons:
                await box.mount(RadioSet(*buttons, id="target", classes="radios", compact=True))
        for name, kinds in OPTION_KINDS.items():
            for widget in self.query(f".opt-{name}"):
                widget.display = info.kind in kinds
        for row in self.query(".flags"):
            row.display = any(box.display for box in row.children)
        self._target_changed()

    @property
    def target(self) -> ConvertTarget | None:
        if not self._targets:
            return None
        radios = self.query("#target")
        index = radios.first(RadioSet).pressed_index if radios else 0
        return self._targets[index if 0 <= index < len(self._targets) else 0]

    @on(RadioSet.Changed, "#target")
    def _target_pressed(self) -> None:
        self._target_changed()

    def _target_changed(self) -> None:
        """The chosen target's limit (and what was left out), and a fresh output name."""
        target = self.target
        lines = []
        if target is not None:
            lines.append(f"{target.name}: {target.line()}")
        if self._info.refused:
            lines.append(f"not offered: {', '.join(self._info.refused)} ({self._info.refusal})")
        self.query_one("#target-note", Static).update(plain("\n".join(lines)))
        output = self.query_one("#output", Input)
        if target is not None and output.value.strip() in ("", self._suggested):
            self._suggested = suggested_output(self._info.path, target)
            output.value = self._suggested

    # --- running ------------------------------------------------------------------------

    def _request(self) -> ConvertRequest:
        target = self.target
        return make_request(
            self._info,
            target.name if target is not None else None,
            self.query_one("#output", Input).value,
            dtype=choice(self.query_one("#dtype", RadioSet), DTYPE_CHOICES),
            base=self.query_one("#base", Input).value,
            bases=self.query_one("#bases", Input).value,
            dora_variant=choice(self.query_one("#dora-variant", RadioSet), DORA_VARIANTS),
            drop_conditioner=self.query_one("#drop-conditioner", Checkbox).value,
            include_conditioner=self.query_one("#include-conditioner", Checkbox).value,
            drop_unmapped=self.query_one("#drop-unmapped", Checkbox).value,
            max_shard_size=self.query_one("#max-shard-size", Input).value,
            allow_pickle=self.query_one("#allow-pickle", Checkbox).value,
            allow_nonfinite=self.query_one("#allow-nonfinite", Checkbox).value,
            force=self.query_one("#force", Checkbox).value,
        )

    @on(Button.Pressed, "#run-convert")
    def _run_pressed(self) -> None:
        self.action_run_convert()

    def action_run_convert(self) -> None:
        if self._busy:
            return
        try:
            request = self._request()
        except PlanError as exc:
            self._show_error(str(exc))
            return
        self._start_job(request.output, "converting…")
        self.query_one("#verify-text", Static).update("")
        self._convert(request)

    @work(thread=True, exclusive=True, group="convert", exit_on_error=False)
    def _convert(self, request: ConvertRequest) -> None:
        """Worker thread: the library conversion; every outcome goes back to the UI thread."""
        try:
            ledger = run_convert(request, self._job_reporter())
        except VerificationError as exc:
            self.app.call_from_thread(self._failed, verification_failed(exc), True)
        except Exception as exc:  # every library failure is one line, never a traceback
            self.app.call_from_thread(self._failed, failure_text(exc, request.output), False)
        else:
            self.app.call_from_thread(self._finished, ledger)

    def _failed(self, message: str, verification: bool) -> None:
        """The shared failure display, plus a failed verification on its own line in red."""
        self._job_failed(message)
        verify = plain(message, style="red") if verification else Text("")
        self.query_one("#verify-text", Static).update(verify)

    def _finished(self, ledger: Ledger) -> None:
        self._job_done()  # an adapter reports no steps: the bar shows it done
        verdict = plain(verification_passed(ledger), style="green")
        self.query_one("#verify-text", Static).update(verdict)
        ledger_lines = Text("\n").join(plain(line) for line in ledger.lines())
        self.query_one("#ledger-text", Static).update(ledger_lines)
        self.query_one("#result", VerticalScroll).scroll_home(animate=False)
        self.notify("convert finished")

    # --- leaving ------------------------------------------------------------------------

    def action_combine(self) -> None:
        """Leave for the combine screen, with this input as its first adapter."""
        if self._refused_while_busy():
            return
        adapters = (self._info.path,) if self._info.kind == ADAPTER else ()
        self.dismiss(self._wrote)
        if self._open_combine is not None:
            self._open_combine(adapters)
