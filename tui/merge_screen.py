"""The merge screen: every `sa3ckpt merge` choice, a preview before the merge, a worker for both.

The form holds what the CLI takes (base, adapters with strengths, semantics, output dtype,
--only, --exclude, --strength-map, --bases, --allow-pickle, force, --strict, output). The
merge key first runs the library's preview (`ops.merge.preview_merge`: the merge's own steps
up to the first write), showing the stack report's warnings and the ledger preview; pressing
it again with the same form merges. Under strict a warned stack is refused with the
library's reason.

Both run in a thread; the merge's progress callback hops back to the UI with
`call_from_thread`, throttled to whole percents so a model with thousands of tensors does
not flood the event loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

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

from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.errors import OutputError
from sa3ckpt.ops.merge import ONLY_ROOTS, MergeLedger, MergePreview, merge_checkpoint, preview_merge
from sa3ckpt.semantics import info as semantics_info
from tui.form_rows import field, radios, text_input
from tui.job_screen import JobScreen
from tui.loading import describe_error
from tui.merge_exclude import ExcludeList
from tui.merge_plan import (
    MergePlan,
    PlanError,
    make_plan,
    strength_map_error,
    suggested_output,
)
from tui.merge_report import ledger_text, preview_text, spread_text
from tui.safe_text import plain
from tui.strength import AdapterRow, add_typed_adapter

SEMANTICS_ORDER = tuple(SEMANTICS)
# (label, value passed to the library): the first is the CLI's default (flag not given).
DTYPE_CHOICES: tuple[tuple[str, str | None], ...] = (
    ("base's", None),
    *((name, name) for name in DTYPE_NAMES),
)
ONLY_CHOICES: tuple[tuple[str, str | None], ...] = (
    ("all", None),
    *((root, root) for root in ONLY_ROOTS),
)
# Checkbox id -> (label, tooltip): the CLI's boolean flags.
FLAGS = {
    "allow-pickle": ("allow pickle", "read legacy .ckpt adapters and svd_bases.pt"),
    "force": ("force", "replace an existing output file"),
    "strict": ("strict", "refuse when a tensor has no place or the stack report warns"),
}
LEDGER_HINT = (
    "ctrl+o previews the merge (stack report, what would merge); ctrl+r previews, "
    "then merges on a second press. The ledger appears here."
)


def _stack_key(plan: MergePlan) -> MergePlan:
    """What the semantics comparison depends on: the plan without the semantics chosen and
    the flags that only decide whether the merge may write."""
    options = dataclasses.replace(plan.options, semantics="runtime", force=False, strict=False)
    return dataclasses.replace(plan, output="", options=options)


class MergeScreen(JobScreen):
    """Form on top (scrolls when short), buttons, the report pane below; dismissed with the
    last file written, or None."""

    JOB_RUN_BUTTON = "#run-merge"
    JOB_PROGRESS = "#merge-progress"
    JOB_ERROR = "#merge-error"
    JOB_BUSY_WARNING = "a merge or preview is running; wait for it"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", tooltip="Return to the browser"),
        Binding(
            "ctrl+r", "run_merge", "Run merge", tooltip="Preview, then merge on a second press"
        ),
        Binding("ctrl+o", "preview", "Preview", tooltip="Stack report and ledger preview"),
        Binding("ctrl+t", "compare", "Compare", tooltip="Per-target spread of the semantics"),
        Binding("ctrl+n", "add_adapter", "Add", tooltip="Add the typed adapter path"),
    ]

    DEFAULT_CSS = """
    MergeScreen {
        padding: 0 1;
        #merge-title { height: 1; text-style: bold; color: $accent; }
        #merge-form { height: auto; max-height: 55%; }
        .field { height: 1; }
        .field-label { width: 10; text-style: bold; }
        .field Input { width: 1fr; }
        #add-adapter { min-width: 7; margin-left: 1; }
        #adapters { height: auto; max-height: 5; }
        #no-adapters { color: $text-muted; padding-left: 10; }
        .choice { border: none; padding: 0; height: 1; width: auto; layout: horizontal; }
        .choice RadioButton { width: auto; margin-right: 1; }
        #semantics-help, #semantics-spread { height: auto; padding-left: 10; }
        #semantics-help { color: $text-muted; }
        .flags Checkbox { width: auto; margin-right: 2; }
        #run-row { height: 1; margin-top: 1; }
        #run-row Button { min-width: 9; margin-right: 1; }
        #run-hint { width: 1fr; color: $text-muted; }
        #merge-progress { display: none; }
        #merge-error { color: $error; height: auto; }
        #strength-map-error { color: $error; height: auto; display: none; padding-left: 10; }
        #ledger { height: 1fr; border-top: solid $primary-muted; }
    }
    """

    def __init__(self, base: str = "", adapters: tuple[str, ...] = (), output: str = "") -> None:
        super().__init__()
        self._base = base
        self._adapters = adapters
        self._output = output or suggested_output(base)
        self._preview: MergePreview | None = None
        self._previewed: MergePlan | None = None  # the form the preview was made from
        self._compared: MergePlan | None = None  # _stack_key of the compared form

    def compose(self) -> ComposeResult:
        yield Static("Merge adapters into a base checkpoint", id="merge-title")
        with VerticalScroll(id="merge-form"):
            yield from self._compose_inputs()
            yield from self._compose_options()
        with Horizontal(id="run-row"):
            yield Button("preview", id="preview-merge", compact=True)
            yield Button("merge", id="run-merge", variant="primary", compact=True)
            yield Button("compare", id="compare-semantics", compact=True)
            yield Static(id="run-hint")
            yield ProgressBar(id="merge-progress", show_eta=False)
        yield Static(id="merge-error")
        with VerticalScroll(id="ledger"):
            yield Static(Text(LEDGER_HINT, style="dim"), id="ledger-text")
        yield Footer(compact=True)  # at 80 columns every key fits, ↑/↓ of a strength too

    def _compose_inputs(self) -> ComposeResult:
        yield field("base", text_input("base", "base checkpoint path", self._base))
        yield field(
            "adapter",
            text_input("adapter-path", "adapter path, Enter adds it"),
            Button("add", id="add-adapter", compact=True),
        )
        with VerticalScroll(id="adapters"):
            yield Static("no adapters yet", id="no-adapters")
            for path in self._adapters:
                yield AdapterRow(path)
        yield field("output", text_input("output", "merged checkpoint path", self._output))

    def _compose_options(self) -> ComposeResult:
        yield field("semantics", radios("semantics", SEMANTICS_ORDER, "choice"))
        yield Static(self._help_text(SEMANTICS_ORDER[0]), id="semantics-help")
        yield Static(spread_text(None), id="semantics-spread")
        for field_id, label, choices in (
            ("dtype", "dtype", DTYPE_CHOICES),
            ("only", "only", ONLY_CHOICES),
        ):
            yield field(label, radios(field_id, (text for text, _ in choices), "choice"))
        yield ExcludeList(self._adapter_paths)
        yield field(
            "strengths",
            text_input("strength-map", "--strength-map, e.g. layers.[0-7].=0.5,cross_attn=0.8"),
        )
        yield Static(id="strength-map-error")
        bases_hint = "XS bases file (optional: else stored U/V, else an SVD of the base)"
        yield field("bases", text_input("bases", bases_hint))
        yield field(
            "flags",
            *(
                Checkbox(label, id=flag_id, compact=True, tooltip=tip)
                for flag_id, (label, tip) in FLAGS.items()
            ),
            classes="flags",
        )

    def on_mount(self) -> None:
        self._sync_empty_hint()
        self._hint("")
        self._show_error("")
        self.query_one("#base" if not self._base else "#output", Input).focus()

    # --- form -------------------------------------------------------------------------

    @staticmethod
    def _help_text(semantics: str) -> Text:
        """The semantics' meaning and the runtimes that use it (the library's one table)."""
        return Text(semantics_info(semantics).line())

    def _pressed(self, radio_id: str) -> int:
        index = self.query_one(f"#{radio_id}", RadioSet).pressed_index
        return index if index >= 0 else 0

    @property
    def semantics(self) -> str:
        return SEMANTICS_ORDER[self._pressed("semantics")]

    def _adapter_paths(self) -> list[str]:
        return [row.path for row in self.query(AdapterRow)]

    def _sync_empty_hint(self) -> None:
        self.query_one("#no-adapters").display = not self.query(AdapterRow)

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.query_one("#semantics-help", Static).update(self._help_text(self.semantics))
        self._sync_run_button()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._sync_run_button()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "strength-map":
            self._sync_strength_map_error()
        self._sync_run_button()

    def _sync_strength_map_error(self) -> None:
        """The CLI's reason for refusing the typed map, under the field (hidden when none)."""
        text = self.query_one("#strength-map", Input).value.strip()
        reason = strength_map_error(text, self._adapter_paths()) if text else None
        error = self.query_one("#strength-map-error", Static)
        error.update(plain(reason or ""))
        error.display = reason is not None

    async def action_add_adapter(self) -> None:
        if await add_typed_adapter(self, self._show_error):
            self._sync_empty_hint()
            self._sync_run_button()

    @on(Input.Submitted, "#adapter-path")
    @on(Button.Pressed, "#add-adapter")
    async def _add_requested(self) -> None:
        await self.action_add_adapter()

    @on(Button.Pressed, "#run-merge")
    def _run_pressed(self) -> None:
        self.action_run_merge()

    @on(Button.Pressed, "#preview-merge")
    def _preview_pressed(self) -> None:
        self.action_preview()

    @on(Button.Pressed, "#compare-semantics")
    def _compare_pressed(self) -> None:
        self.action_compare()

    async def on_adapter_row_remove_requested(self, event: AdapterRow.RemoveRequested) -> None:
        await event.row.remove()
        self._sync_empty_hint()
        self._sync_run_button()

    def _show_error(self, message: str) -> None:
        error = self.query_one("#merge-error", Static)
        error.update(plain(message))
        error.display = bool(message)  # an empty line would cost the report pane a row

    def _hint(self, message: str) -> None:
        self.query_one("#run-hint", Static).update(plain(message))

    def _options(self) -> dict[str, Any]:
        """The form's flags as `make_plan` keywords (the CLI's option names)."""
        bases = self.query_one("#bases", Input).value.strip()
        return {
            "dtype": DTYPE_CHOICES[self._pressed("dtype")][1],
            "only": ONLY_CHOICES[self._pressed("only")][1],
            "exclude": self.query_one(ExcludeList).specs,
            "strength_map": self.query_one("#strength-map", Input).value.strip() or None,
            "bases": bases or None,
            "allow_pickle": self.query_one("#allow-pickle", Checkbox).value,
            "force": self.query_one("#force", Checkbox).value,
            "strict": self.query_one("#strict", Checkbox).value,
        }

    def _plan(self) -> MergePlan:
        rows = [(row.path, row.strength_text) for row in self.query(AdapterRow)]
        return make_plan(
            self.query_one("#base", Input).value,
            rows,
            self.query_one("#output", Input).value,
            self.semantics,
            **self._options(),
        )

    def _confirmable(self, plan: MergePlan | None) -> bool:
        """Whether a merge key press now merges: the preview is of this very form and
        strict does not refuse it."""
        preview = self._preview
        if plan is None or preview is None or plan != self._previewed:
            return False
        return not (plan.options.strict and preview.strict_refusal is not None)

    def _sync_run_button(self) -> None:
        """After any change: 'confirm' only while the preview still describes the form."""
        if not self.is_mounted:
            return
        try:
            plan: MergePlan | None = self._plan()
        except PlanError:
            plan = None
        self.query_one("#run-merge", Button).label = (
            "confirm" if self._confirmable(plan) else "merge"
        )
        if self._compared is not None and (plan is None or _stack_key(plan) != self._compared):
            self._compared = None
            self.query_one("#semantics-spread", Static).update(spread_text(None))

    # --- running ----------------------------------------------------------------------

    def _set_busy(self, busy: bool) -> None:
        """A preview or a merge locks all three run buttons, not only merge's."""
        self._busy = busy
        for button in ("#run-merge", "#preview-merge", "#compare-semantics"):
            self.query_one(button, Button).disabled = busy

    def _checked_plan(self) -> MergePlan | None:
        try:
            plan = self._plan()
        except PlanError as exc:
            self._show_error(str(exc))
            return None
        self._show_error("")
        return plan

    def action_preview(self) -> None:
        self._start_preview(compare=False)

    def action_compare(self) -> None:
        self._start_preview(compare=True)

    def action_run_merge(self) -> None:
        """A preview first; a second press with the same form merges (unless strict refuses)."""
        if self._busy:
            return
        plan = self._checked_plan()
        if plan is None:
            return
        preview = self._preview
        if preview is None or plan != self._previewed:
            self._start_preview(compare=False, plan=plan)
            return
        if plan.options.strict and preview.strict_refusal is not None:
            self._show_error(preview.strict_refusal)
            return
        self._start_merge(plan)

    def _start_preview(self, *, compare: bool, plan: MergePlan | None = None) -> None:
        if self._busy:
            return
        plan = plan or self._checked_plan()
        if plan is None:
            return
        self._set_busy(True)
        self.query_one("#merge-progress", ProgressBar).display = False  # a last merge's 100%
        self.query_one("#run-hint").display = True
        self._hint("comparing the semantics…" if compare else "previewing…")
        self._preview_worker(plan, compare)

    @work(thread=True, exclusive=True, group="merge", exit_on_error=False)
    def _preview_worker(self, plan: MergePlan, compare: bool) -> None:
        """Worker thread: the library's preview; the result or one line goes back to the UI."""
        try:
            preview = preview_merge(
                plan.base, list(plan.adapters), plan.output, plan.merge_options(compare=compare)
            )
        except Exception as exc:
            self.app.call_from_thread(self._previewed_done, plan, None, describe_error(exc))
        else:
            self.app.call_from_thread(self._previewed_done, plan, preview, None)

    def _previewed_done(
        self, plan: MergePlan, preview: MergePreview | None, error: str | None
    ) -> None:
        self._set_busy(False)
        self._preview, self._previewed = preview, plan if preview is not None else None
        if preview is None:
            self._show_error(error or "preview failed")
            self._hint("")
            self.query_one("#ledger-text", Static).update(Text("nothing was written", style="dim"))
            self._sync_run_button()
            return
        self.query_one("#ledger-text", Static).update(preview_text(preview, plan.options.strict))
        self.query_one("#ledger", VerticalScroll).scroll_home(animate=False)
        if preview.ledger.comparison is not None:
            self._compared = _stack_key(plan)
            self.query_one("#semantics-spread", Static).update(
                spread_text(preview.ledger.comparison)
            )
        if plan.options.strict and preview.strict_refusal is not None:
            self._show_error(preview.strict_refusal)
            self._hint("strict refuses this merge")
        else:
            self._hint("previewed: ctrl+r merges")
        self._sync_run_button()

    def _start_merge(self, plan: MergePlan) -> None:
        self._hint("")
        self.query_one("#run-hint").display = False
        self._start_job(plan.output, "merging…")
        self._merge(plan)

    @work(thread=True, exclusive=True, group="merge", exit_on_error=False)
    def _merge(self, plan: MergePlan) -> None:
        """Worker thread: run the merge; results and errors go back through the UI thread."""
        try:
            ledger = merge_checkpoint(
                plan.base,
                list(plan.adapters),
                plan.output,
                plan.merge_options(),
                progress=self._job_reporter(),
            )
        except OSError as exc:  # the environment, while writing: name the output, exit-5 words
            error = OutputError.from_os_error(plan.output, exc)
            self.app.call_from_thread(self._finished, None, describe_error(error))
        except Exception as exc:
            self.app.call_from_thread(self._finished, None, describe_error(exc))
        else:
            self.app.call_from_thread(self._finished, ledger, None)

    def _finished(self, ledger: MergeLedger | None, error: str | None) -> None:
        self._preview = self._previewed = None  # the output exists now: a new merge re-checks
        if ledger is None:
            self._job_failed(error or "merge failed")
            self.query_one("#run-hint").display = True
            self._sync_run_button()
            return
        # Unlike convert and combine the bar is left as the last progress event set it.
        self._set_busy(False)
        self._wrote = self._running_output
        self.query_one("#ledger-text", Static).update(ledger_text(ledger))
        self._sync_run_button()
        self.notify("merge finished")
