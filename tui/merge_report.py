"""The merge screen's report pane: a preview (stack report first) or a finished ledger.

The words are the library's (`MergePreview`, `MergeLedger`, `SemanticsComparison`): this
module only orders and colours them, so the screen says what `sa3ckpt merge` prints. The
stack report's warnings come first, where an 80×24 pane shows them without scrolling.
"""

from __future__ import annotations

from rich.text import Text

from sa3ckpt.ops.merge import MergeLedger, MergePreview, SemanticsComparison
from tui.safe_text import plain

WARNING_PREFIX = "warning: "
STYLES = {"warning": "bold yellow", "blocked": "bold red", "ok": "green", "head": "bold"}


def _line(text: str, style: str = "") -> Text:
    return plain(text, style)


def preview_text(preview: MergePreview, strict: bool) -> Text:
    """Warnings, what --strict does with them, the plan per adapter, then the details."""
    out: list[Text] = []
    warnings = preview.warnings
    if warnings:
        count = f"{len(warnings)} stack report warning" + ("s" if len(warnings) > 1 else "")
        out.append(_line(f"{count}, read before merging:", STYLES["warning"]))
        out += [_line(WARNING_PREFIX + w, "yellow") for w in warnings]
    else:
        out.append(_line("stack report: no warnings", STYLES["ok"]))
    refusal = preview.strict_refusal
    if refusal is not None and strict:
        out.append(_line(f"blocked by strict: {refusal}", STYLES["blocked"]))
    elif refusal is not None:
        out.append(_line("(with strict ticked this merge would be refused)", "dim"))
    out.append(_line(preview.head(), STYLES["head"]))
    out += [_line(a.line()) for a in preview.adapters]
    if preview.ledger.bases_file is not None:
        out.append(_line(f"XS bases file: {preview.ledger.bases_file}"))
    out += [
        _line(line)
        for line in preview.ledger.detail_lines()
        if not line.startswith(WARNING_PREFIX)  # shown first
    ]
    if preview.ledger.comparison is not None:
        out += [_line(line, "cyan") for line in preview.ledger.comparison.lines()]
    return Text("\n").join(out)


def ledger_text(ledger: MergeLedger) -> Text:
    """A finished merge's ledger, its warnings highlighted."""
    return Text("\n").join(
        _line(line, "yellow" if line.startswith(WARNING_PREFIX) else "") for line in ledger.lines()
    )


def spread_text(comparison: SemanticsComparison | None) -> Text:
    """One line under the semantics choice: each pair's largest difference for this stack."""
    if comparison is None:
        return Text("spread for this stack: ctrl+t compares the semantics", style="dim")
    pairs = comparison.to_json()["pairs"]
    parts = [
        f"{pair} {doc['max_relative']:.2%} of ‖W0‖ ({doc['max_of_effect']:.0%} of the effect)"
        for pair, doc in pairs.items()
    ]
    return _line(f"spread on {len(comparison.targets)} targets, max: " + "; ".join(parts), "cyan")
