"""Progress of long operations as plain numbers, for whichever front end draws them.

The library never renders anything (and never imports rich): merge and bases call a
`ProgressCallback` with `ProgressEvent`s; the CLI turns them into a rich bar on stderr
(`sa3ckpt.cli.progress`), the TUI into its progress widget. Merge counts output bytes, not
tensors, so a huge tensor moves the bar by its size instead of as much as a bias vector.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# What `done` and `total` count: output bytes written (merge, convert of a base), targets
# finished (bases: an SVD each, whose cost does not follow the bytes) or steps of a few long
# phases (verify) or milliseconds of audio (encode: clips differ in length, so seconds of
# audio, not clips, predict the time left).
Unit = Literal["bytes", "targets", "steps", "audio_ms"]


@dataclass(frozen=True)
class ProgressEvent:
    """How far an operation is: `done` of `total` units; `item` names where it is (the
    tensor or target just finished, or the step now running)."""

    done: int
    total: int
    unit: Unit = "bytes"
    item: str = ""  # untrusted text (a tensor key comes from a file): escape to display


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressCounter:
    """Adds up work as it is done and reports the running sum to a callback (None: no-op).

    Safe to advance from several threads (a kernel may report tiles from its workers); the
    callback is called under the counter's lock, so the events it sees are in order.
    """

    def __init__(self, callback: ProgressCallback | None, total: int, unit: Unit = "bytes"):
        self._callback = callback
        self.total = total
        self.unit: Unit = unit
        self.done = 0
        self._lock = threading.Lock()

    def advance(self, amount: int, item: str = "") -> None:
        """Count `amount` more units done (after `item`) and report the new sum."""
        with self._lock:
            self.done += amount
            if self._callback is not None:
                self._callback(ProgressEvent(self.done, self.total, self.unit, item))
