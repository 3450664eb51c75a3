"""The PASS / FAIL / MALFORMED badge, coloured so the verdict is readable at a glance.

A file that is not an SA3 DiT adapter gets a neutral badge naming its kind instead (BASE,
CODEC, CODEC-LORA, from the library's kind table): the rules judge DiT adapters,
and a FAIL for "not an adapter" would read as a broken file.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from sa3ckpt.ops.inspect import KINDS, KindReport

# status -> (label, CSS class); unknown statuses render neutrally.
_LOOK = {
    "pass": ("PASS", "-pass"),
    "fail": ("FAIL", "-fail"),
    "malformed": ("MALFORMED", "-malformed"),
    "base": ("BASE", "-base"),
    "loading": ("…", "-pending"),
    "none": ("-", "-pending"),
}
# every kind the adapter rules do not judge: its badge word, in the neutral BASE colour
_LOOK.update({k.badge.lower(): (k.badge, "-base") for k in KINDS.values() if not k.dit_adapter})


def kind_status(kind: KindReport) -> str:
    """The badge status for a file of this kind (see `_LOOK`)."""
    return kind.row.badge.lower()


class StatusBadge(Static):
    """Shows one validation status; set `status` to change it."""

    DEFAULT_CSS = """
    StatusBadge {
        width: auto;
        padding: 0 1;
        text-style: bold;
        &.-pass { background: $success; color: $text; }
        &.-fail { background: $error; color: $text; }
        &.-malformed { background: $warning; color: $background; }
        &.-base { background: $primary; color: $text; }
        &.-pending { background: $panel; color: $text-muted; }
    }
    """

    status: reactive[str] = reactive("none")

    def watch_status(self, status: str) -> None:
        label, css = _LOOK.get(status, (status.upper(), "-pending"))
        for _, other in _LOOK.values():
            self.remove_class(other)
        self.add_class(css)
        self.update(Text(label))
