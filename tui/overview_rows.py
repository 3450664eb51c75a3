"""The overview's label/value rows, built from an inspect report.

A pure function of the report so the wording is testable without a terminal. Every value
that can come from the file (metadata, names, messages) goes through `plain`.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from sa3ckpt.ops.inspect import InspectReport, KindReport, OtherReport, TypeReport
from tui.formatting import counts, coverage_line, human_size, maybe, rank_text
from tui.safe_text import plain

Row = tuple[str, Text]
METADATA_VALUE_LIMIT = 160


def _type_text(typed: TypeReport) -> Text:
    text = plain(maybe(typed.resolved), style="bold")
    tensors, config = typed.from_tensors, typed.from_config
    if config is not None and tensors is not None and config != tensors:
        text.append_text(plain(f"  (config says {config}, tensors say {tensors})", "yellow"))
    return text


def _family_text(report: InspectReport) -> Text:
    family = report.family
    text = plain(maybe(family.name))
    if family.forced:
        text.append(" (forced)")
    claimed = report.base_model
    if claimed:
        text.append_text(plain(f"  base_model {claimed}", "dim"))
    return text


def _alpha_text(report: InspectReport) -> Text:
    alpha, scale = report.alpha, report.scale
    if alpha is None:
        return Text("-")
    return Text(f"{alpha:g}" + (f"  (scale {scale:g})" if scale is not None else ""))


def _targets_text(report: InspectReport) -> Text:
    unknown = report.targets.unknown
    text = Text(coverage_line(report))
    if unknown:
        text.append(f"  {len(unknown)} unknown", "yellow")
    return text


def _keys_text(report: InspectReport) -> Text:
    keys = report.keys
    text = Text(f"{keys.parsed}/{keys.total} parsed as adapter keys")
    if keys.unmatched:
        text.append(f"  {len(keys.unmatched)} unmatched", "yellow")
    return text


def _metadata_rows(metadata: dict[str, str]) -> list[Row]:
    if not metadata:
        return [("metadata", Text("-", style="dim"))]
    rows: list[Row] = []
    for key, value in sorted(metadata.items()):
        text = plain(key, "italic")
        text.append(" = ")
        text.append_text(plain(value, max_len=METADATA_VALUE_LIMIT))
        rows.append(("metadata" if not rows else "", text))
    return rows


MERGE_HINT = "base checkpoint: press m to merge adapters into it"


def kind_row(kind: KindReport | None, hint: str | None = None) -> list[Row]:
    """The library's one line on what the file is: its kind in bold, then why, then `hint`."""
    if kind is None:
        return []
    text = plain(kind.label, "bold")
    text.append_text(plain(f": {kind.row.explain}"))
    if kind.detail:
        text.append_text(plain(f" ({kind.detail})", "dim"))
    if hint:
        text.append_text(plain(f"; {hint}", "bold"))
    return [("kind", text)]


def base_rows(summary: dict[str, Any], kind: KindReport | None = None) -> list[Row]:
    """Rows for a base checkpoint: what the merge screen would read from it."""
    return [
        ("path", plain(summary["path"])),
        *(kind_row(kind, MERGE_HINT) or [("kind", Text(MERGE_HINT, "bold"))]),
        (
            "format",
            Text(
                f"{summary['container']}, {summary['naming']} naming, "
                f"{human_size(summary['size_bytes'])}"
            ),
        ),
        ("tensors", Text(str(summary["tensors"]))),
        ("dtypes", Text(counts(summary["dtypes"]))),
        *_metadata_rows(summary.get("metadata") or {}),
    ]


def other_rows(report: OtherReport) -> list[Row]:
    """Rows for codec weights: what the file is, its container and tensors."""
    return [
        ("path", plain(report.path)),
        *kind_row(report.checkpoint),
        ("format", Text(f"{report.format}, {human_size(report.size_bytes)}")),
        ("tensors", Text(str(report.tensors))),
        ("dtypes", Text(counts(report.dtypes))),
        *_metadata_rows(report.metadata),
    ]


def overview_rows(report: InspectReport) -> list[Row]:
    """Rows for one readable checkpoint, most useful first."""
    rows: list[Row] = [
        ("path", plain(report.path)),
        *kind_row(report.checkpoint),
        ("format", Text(f"{report.format}, {human_size(report.size_bytes)}")),
    ]
    rows += [
        ("type", _type_text(report.adapter_type)),
        ("rank", Text(rank_text(report.rank))),
        ("alpha", _alpha_text(report)),
        ("family", _family_text(report)),
        ("dialect", plain(maybe(report.dialect.name))),
        ("targets", _targets_text(report)),
        ("dtypes", Text(counts(report.dtypes))),
        ("keys", _keys_text(report)),
    ]
    if report.lora_config_error:
        rows.append(("config", plain(report.lora_config_error, "yellow")))
    rows += [("note", plain(note, "dim")) for note in report.notes]
    rows += _metadata_rows(report.metadata)
    return rows
