"""The run-one-job plumbing the convert, combine and merge screens share.

Each of those screens runs one library operation in a thread worker and must keep the same
promises while it does: one job at a time (a second key press is ignored, Back is refused
with a warning), the run button disabled, an indeterminate bar until the first progress
event, and on failure one line of error with the bar hidden (an indeterminate bar would keep
animating as if work went on) and "nothing was written" where the ledger goes. Keeping those
rules here means a fix to one is a fix to all three.

A screen names its widgets in the `JOB_*` class attributes; the form, the request and the
worker stay its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.screen import Screen
from textual.widgets import Button, ProgressBar, Static

from sa3ckpt.errors import OutputError
from sa3ckpt.io.atomic import OutputRefused
from sa3ckpt.progress import ProgressCallback, ProgressEvent
from tui.convert_plan import refusal_text
from tui.loading import describe_error
from tui.safe_text import plain

NOTHING_WRITTEN = "nothing was written"


def throttled(report: Callable[[int, int], None]) -> ProgressCallback:
    """A progress callback that forwards (done, total) only when the whole percent changes
    (and at the end), so thousands of tensors do not flood the event loop."""
    last = -1

    def progress(event: ProgressEvent) -> None:
        nonlocal last
        percent = 100 * event.done // max(event.total, 1)
        if percent != last or event.done == event.total:
            last = percent
            report(event.done, event.total)

    return progress


def failure_text(exc: Exception, output: str) -> str:
    """One line for a failed write job, never a traceback: a refused output in the policy's
    words, an OS error named after the output (the CLI's exit-5 wording), else the error's."""
    if isinstance(exc, OutputRefused):
        return refusal_text(exc, output)
    if isinstance(exc, OSError):
        return describe_error(OutputError.from_os_error(output, exc))
    return describe_error(exc)


class JobScreen(Screen[str | None]):
    """A screen that runs one job at a time and is dismissed with the path it wrote (or None)."""

    JOB_RUN_BUTTON: ClassVar[str]  # selector of the button disabled while the job runs
    JOB_PROGRESS: ClassVar[str]  # selector of the run row's ProgressBar
    JOB_ERROR: ClassVar[str]  # selector of the one-line error Static
    JOB_LEDGER: ClassVar[str] = "#ledger-text"  # where the working / result text goes
    JOB_BUSY_WARNING: ClassVar[str]  # what Back says while the job runs

    def __init__(self) -> None:
        super().__init__()
        self._busy = False
        self._running_output = ""
        self._wrote: str | None = None

    def _show_error(self, message: str) -> None:
        self.query_one(self.JOB_ERROR, Static).update(plain(message))

    def _set_busy(self, busy: bool) -> None:
        """Whether a job runs; a screen with more buttons to lock overrides this."""
        self._busy = busy
        self.query_one(self.JOB_RUN_BUTTON, Button).disabled = busy

    def _start_job(self, output: str, working: str) -> None:
        """Lock the screen, show an indeterminate bar and `working` where the ledger goes."""
        self._show_error("")
        self._set_busy(True)
        self._running_output = output
        bar = self.query_one(self.JOB_PROGRESS, ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.query_one(self.JOB_LEDGER, Static).update(Text(working, style="dim"))

    def _job_reporter(self) -> ProgressCallback:
        """The worker's progress callback: throttled, hopping back to the UI thread."""
        return throttled(lambda done, total: self.app.call_from_thread(self._progress, done, total))

    def _progress(self, done: int, total: int) -> None:
        self.query_one(self.JOB_PROGRESS, ProgressBar).update(total=total, progress=done)

    def _job_failed(self, message: str) -> None:
        """Unlock; the error in one line, the bar hidden, and nothing claimed as written."""
        self._set_busy(False)
        self.query_one(self.JOB_PROGRESS, ProgressBar).display = False
        self._show_error(message)
        self.query_one(self.JOB_LEDGER, Static).update(Text(NOTHING_WRITTEN, style="dim"))

    def _job_done(self) -> None:
        """Unlock and remember the output; the bar shows done (a job may report no steps)."""
        self._set_busy(False)
        self.query_one(self.JOB_PROGRESS, ProgressBar).update(total=1, progress=1)
        self._wrote = self._running_output

    def _refused_while_busy(self) -> bool:
        """True (after warning) when a job runs, so leaving the screen must wait."""
        if self._busy:
            self.notify(self.JOB_BUSY_WARNING, severity="warning")
        return self._busy

    def action_back(self) -> None:
        if not self._refused_while_busy():
            self.dismiss(self._wrote)
