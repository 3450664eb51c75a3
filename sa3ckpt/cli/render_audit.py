"""The audit table as text: aligned columns (one line per row, never wrapped), then the flags.

Plain aligned text rather than a rich table: a folder of runs is compared by eye and with
grep/sort, and a row must stay on one line whatever the terminal width. Names come from the
file system and are escaped like every other untrusted text.
"""

from __future__ import annotations

from collections.abc import Callable

from sa3ckpt.ops.inspect import CHECKS, AuditRow, AuditTable
from sa3ckpt.sizes import human_size
from sa3ckpt.textsafe import escape_control


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _int(value: int | None) -> str:
    return "-" if value is None else str(value)


# (header, cell, right-aligned); the hash column is added when the table was hashed.
Column = tuple[str, Callable[[AuditRow], str], bool]
COLUMNS: tuple[Column, ...] = (
    ("name", lambda r: escape_control(r.name, max_len=60), False),
    ("status", lambda r: r.status, False),
    ("type", lambda r: r.adapter_type or "-", False),
    ("rank", lambda r: _int(r.rank), True),
    ("alpha", lambda r: _num(r.alpha), True),
    ("scale", lambda r: _num(r.scale) + ("√" if r.scale_rule == "alpha/sqrt(rank)" else ""), True),
    ("targets", lambda r: _int(r.targets), True),
    ("family", lambda r: r.family or "-", False),
    ("base_model", lambda r: escape_control(r.base_model or "-", max_len=24), False),
    ("step", lambda r: _int(r.step), True),
    ("epoch", lambda r: _int(r.epoch), True),
    ("dtype", lambda r: r.dtype or "-", False),
    ("size", lambda r: human_size(r.size_bytes) if r.size_bytes is not None else "-", True),
)
HASH_COLUMN: Column = ("tensor sha256", lambda r: (r.tensor_sha256 or "-")[:12], False)


def _codes(r: AuditRow) -> str:
    return ",".join(dict.fromkeys(f.code for f in r.flags)) or "-"


FLAGS_COLUMN: Column = ("checks", _codes, False)


def table_lines(table: AuditTable) -> list[str]:
    """The table's lines: header, rows, then each flag and malformed cause, then a summary."""
    columns = [*COLUMNS, *([HASH_COLUMN] if table.hashed else []), FLAGS_COLUMN]
    cells = [[cell(r) for _, cell, _ in columns] for r in table.rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, (h, _, _) in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, (_, _, right) in zip(values, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line([h for h, _, _ in columns]), *(line(c) for c in cells)]
    notes = []
    for r in table.rows:
        name = escape_control(r.name)
        if r.error and r.status in ("malformed", "unknown"):
            notes.append(f"  {name}: {r.status}: {escape_control(r.error)}")
        for f in r.flags:
            notes.append(f"  {name}: {f.code}: {escape_control(f.message)}")
    if notes:
        out += ["", "checks:", *notes]
    counts = ", ".join(f"{n} {status}" for status, n in table.counts().items())
    not_run = [f"{c.code} (--{c.needs})" for c in CHECKS if c.code not in table.checks_run]
    out += ["", f"{len(table.rows)} rows: {counts or 'none'}; sorted by {table.sort}"]
    out.append(f"checks run: {', '.join(table.checks_run)}")
    if not_run:
        out.append(f"not run: {', '.join(not_run)}")
    return out
