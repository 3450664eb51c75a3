"""A merge's preview: what would be merged, per adapter and in all, before anything is written.

`ops.merge.preview_merge` runs every step of a merge up to the first write (the same code
`merge_checkpoint` runs) and wraps the ledger it got so far in a `MergePreview`. The ledger
already holds what did not make it (missing from the base, skipped by --only, excluded),
the stack report and, when asked, the semantics comparison; the preview adds the targets
that would be merged, each adapter's share, and what --strict would refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sa3ckpt.ops.merge.ledger import MergeLedger


@dataclass(frozen=True)
class AdapterPreview:
    """One adapter's part of the merge: its targets by what would happen to them."""

    index: int  # 1-based, as in `--exclude N=PATTERN`
    path: str
    adapter_type: str
    strength: float
    merged: tuple[str, ...]
    missing_from_base: tuple[str, ...]
    skipped: tuple[str, ...]  # by --only
    excluded: tuple[str, ...]  # by --exclude

    def line(self) -> str:
        return (
            f"adapter {self.index} {self.path} ({self.adapter_type}, strength "
            f"{self.strength:g}): {len(self.merged)} to merge, {len(self.missing_from_base)} "
            f"missing from base, {len(self.skipped)} skipped, {len(self.excluded)} excluded"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "adapter_type": self.adapter_type,
            "strength": self.strength,
            "merged": list(self.merged),
            "missing_from_base": list(self.missing_from_base),
            "skipped": list(self.skipped),
            "excluded": list(self.excluded),
        }


@dataclass(frozen=True)
class MergePreview:
    """The ledger as the merge would start writing, and what the preview adds to it.

    planned: the canonical targets that would be merged (the real ledger's `merged`, in
    stack order rather than the base's file order). strict_refusal: the error --strict
    would stop the merge with (missing targets or stack-report warnings), else None.
    """

    ledger: MergeLedger
    planned: tuple[str, ...]
    adapters: tuple[AdapterPreview, ...]
    strict_refusal: str | None
    dtype: str | None  # the requested output dtype name, None: the base's

    @classmethod
    def of(
        cls,
        ledger: MergeLedger,
        planned: Sequence[str],
        kept: Sequence[set[str]],
        dtype: str | None,
        strict_refusal: str | None,
    ) -> MergePreview:
        """Split the plan by adapter; kept[i] is adapter i+1's targets after --exclude."""
        will_merge = set(planned)
        missing = set(ledger.missing_from_base)
        skipped = {t for t, _why in ledger.skipped}
        rows = []
        for index, (doc, targets) in enumerate(zip(ledger.adapters, kept, strict=True), 1):
            ordered = sorted(targets)
            rows.append(
                AdapterPreview(
                    index,
                    doc["path"],
                    doc["adapter_type"],
                    doc["strength"],
                    tuple(t for t in ordered if t in will_merge),
                    tuple(t for t in ordered if t in missing),
                    tuple(t for t in ordered if t in skipped),
                    tuple(e.target for e in ledger.excluded if e.adapter == index),
                )
            )
        return cls(ledger, tuple(planned), tuple(rows), strict_refusal, dtype)

    @property
    def warnings(self) -> list[str]:
        """The stack report's warnings (what the merge would print on stderr)."""
        return self.ledger.warnings

    def head(self) -> str:
        ledger = self.ledger
        total = len(self.planned) + len(ledger.missing_from_base)
        dtype = self.dtype or "the base's dtypes"
        return (
            f"would merge {len(self.planned)}/{total} adapter targets into {ledger.base} "
            f"({ledger.naming} {ledger.container}, {ledger.semantics} semantics, "
            f"output {dtype}) -> {ledger.output}; nothing written yet"
        )

    def lines(self) -> list[str]:
        """The comparison (if computed), the head, each adapter, then the ledger's details."""
        ledger = self.ledger
        out = ledger.comparison.lines() if ledger.comparison else []
        out.append(self.head())
        out += [a.line() for a in self.adapters]
        if ledger.bases_file is not None:
            out.append(f"XS bases file: {ledger.bases_file}")
        out += ledger.detail_lines()
        if self.strict_refusal is not None:
            out.append(f"under --strict: {self.strict_refusal}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "planned": list(self.planned),
            "adapters": [a.to_json() for a in self.adapters],
            "strict_refusal": self.strict_refusal,
            "dtype": self.dtype,
            "ledger": self.ledger.to_json(),
        }
