"""A rich progress bar on stderr for long operations (merge, a base's convert, bases, verify),
fed by library events.

The library reports plain numbers (`sa3ckpt.progress`); this module draws them. The bar only
appears once the operation has run for DELAY seconds, so fast runs print nothing extra; it
is never drawn when stderr is not a terminal or under `--quiet`. On success it is left
completed on its own line; on an error or Ctrl-C it is erased, so the CLI's one-line
error message is the only thing left on screen.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from sa3ckpt.progress import ProgressCallback, ProgressEvent, Unit
from sa3ckpt.textsafe import escape_control

DELAY = 1.0  # seconds an operation runs before its bar appears (no flicker for fast ones)
ITEM_WIDTH = 32  # characters of the current item's name shown (its end: the informative part)

# The columns after the bar, by what the events count: bytes get amount, rate (MB/s) and time
# left; targets a count and time left; steps (few, long and unequal, so no time left) a count
# and the time so far; audio (encode) the seconds of audio done and time left. The event's
# item comes last.
UNIT_COLUMNS: dict[Unit, Callable[[], tuple[ProgressColumn, ...]]] = {
    "bytes": lambda: (
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(elapsed_when_finished=True),
    ),
    "targets": lambda: (
        MofNCompleteColumn(),
        TextColumn("targets"),
        TimeRemainingColumn(elapsed_when_finished=True),
    ),
    "steps": lambda: (MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn()),
    "audio_ms": lambda: (
        AudioSecondsColumn(),
        TimeRemainingColumn(elapsed_when_finished=True),
    ),
}


class AudioSecondsColumn(ProgressColumn):
    """Seconds of audio done of the total ("12.3/45.6 s audio"), from millisecond counts."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else f"{task.total / 1000:.1f}"
        return Text(f"{task.completed / 1000:.1f}/{total} s audio")


def item_label(item: str, width: int = ITEM_WIDTH) -> str:
    """A name from a file made safe for the terminal and cut to its last `width` characters."""
    text = escape_control(item)
    return text if len(text) <= width else "…" + text[-(width - 1) :]


class ProgressBar:
    """A progress callback that draws a rich bar once the operation is older than `delay`.

    Events before the delay only update the numbers; the bar starts with everything done so
    far at the first event after it or, when `live`, as soon as the delay is up (a timer), so
    a long first step shows too. `live` also redraws on a thread (rate, time); without it
    (tests, with a fake clock) each event draws. `close(ok)` completes the bar or erases it.
    """

    def __init__(
        self,
        label: str,
        console: Console,
        *,
        delay: float = DELAY,
        clock: Callable[[], float] = time.monotonic,
        live: bool = True,
    ) -> None:
        self.label = label
        self._console = console
        self._delay = delay
        self._clock = clock
        self._live = live
        self._started = clock()
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self.last: ProgressEvent | None = None
        self.closed = False
        self._timer: threading.Timer | None = None
        if live:
            self._timer = threading.Timer(delay, self._due)
            self._timer.daemon = True
            self._timer.start()

    @property
    def visible(self) -> bool:
        """Whether the bar has been drawn (the operation outlived the delay)."""
        return self._progress is not None

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if self.closed:
                return
            self.last = event
            if self._progress is None:
                if self._clock() - self._started < self._delay:
                    return
                self._open(event)
            else:
                self._update(event)

    def _due(self) -> None:
        """The delay is up (timer thread): draw what the last event said, if any came."""
        with self._lock:
            if not self.closed and self._progress is None and self.last is not None:
                self._open(self.last)

    def _open(self, first: ProgressEvent) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            *UNIT_COLUMNS[first.unit](),
            TextColumn("{task.fields[item]}", markup=False),
            console=self._console,
            auto_refresh=self._live,
            get_time=self._clock,
            redirect_stdout=False,  # stdout may be JSON going elsewhere: never route it here
            redirect_stderr=False,
        )
        self._task = self._progress.add_task(
            self.label, total=first.total, completed=first.done, item=item_label(first.item)
        )
        self._progress.tasks[0].start_time = self._started  # elapsed: of the whole operation
        self._progress.start()

    def _update(self, event: ProgressEvent) -> None:
        assert self._progress is not None and self._task is not None
        self._progress.update(
            self._task,
            completed=event.done,
            total=event.total,
            item=item_label(event.item),
            refresh=not self._live,  # without the refresh thread, draw each event
        )

    def state(self) -> tuple[float, float | None]:
        """(completed, total) as the bar shows them; (0, None) before it is drawn."""
        if self._progress is None or self._task is None:
            return 0.0, None
        task = self._progress.tasks[0]
        return task.completed, task.total

    def close(self, ok: bool) -> None:
        """Stop drawing: completed and left on its own line when ok, else erased."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._progress is None or self._task is None:
                return
            if ok and self.last is not None:
                self._progress.update(self._task, completed=self.last.total, item="")
            self._progress.live.transient = not ok
            self._progress.stop()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(ok=exc_type is None)


def add_quiet(parser: argparse.ArgumentParser, note: str = "") -> None:
    """The --quiet option of every command that draws a bar (`note`: where it applies)."""
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (it is drawn on stderr, only when stderr is a terminal and the "
        f"run takes over {DELAY:g} s; --json output on stdout is never affected"
        + (f"; {note}" if note else "")
        + ")",
    )


def wants_bar(quiet: bool) -> bool:
    """Whether to draw a bar at all: not under --quiet, and only onto a terminal."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(label: str, *, quiet: bool) -> Iterator[ProgressCallback | None]:
    """The callback to hand the library for one operation (None: no bar), closed on exit."""
    if not wants_bar(quiet):
        yield None
        return
    with ProgressBar(label, Console(file=sys.stderr)) as bar:
        yield bar
