"""Human-readable rendering of inspect and validate results (rich tables, escaped text).

Everything that came from a file (metadata, key names, messages quoting them) is passed
through `escape_control` and into rich `Text` objects, so neither terminal escapes nor rich
markup in an adapter can change what the user sees.
"""

from __future__ import annotations

import os
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sa3ckpt.errors import MalformedFileError
from sa3ckpt.names.modules import short_block_module
from sa3ckpt.ops.inspect import BaseReport, FamilyReport, InspectReport, OtherReport, StatsReport
from sa3ckpt.ops.validate import FileResult, ValidationRun
from sa3ckpt.sizes import human_size
from sa3ckpt.textsafe import escape_control


def safe(value: object, max_len: int | None = 400) -> Text:
    return Text(escape_control(str(value), max_len=max_len))


def _family_line(fam: FamilyReport) -> Text:
    """The verdict and the evidence that decided it (undetermined: what fits, and --model)."""
    if fam.forced:
        return safe(f"{fam.name} (--model)")
    if fam.undetermined:
        return safe(
            f"undetermined: the file fits {', '.join(fam.fits)} equally "
            "(shapes not checked against a family; --model picks one)"
        )
    own = [e for e in fam.evidence if fam.name and e.startswith(fam.name)]
    deciding = [e for e in fam.evidence if e.startswith(("base_model", "include/exclude"))]
    why = "; ".join((own + deciding) if fam.name else fam.evidence[-1:])
    return safe(f"{fam.name or 'unknown'} ({why})")


def _field_table(doc: InspectReport | BaseReport | OtherReport) -> Table:
    """The two-column field/value table every overview starts with: the format row, then the
    checkpoint kind in one line (ops.checkpoint_kind)."""
    table = Table(box=box.SIMPLE, show_header=False, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    dtypes = ", ".join(f"{k}×{v}" for k, v in doc.dtypes.items())
    table.add_row(
        "format",
        safe(f"{doc.format}, {human_size(doc.size_bytes)}, {doc.tensors} tensors ({dtypes})"),
    )
    table.add_row("checkpoint", safe(doc.checkpoint.line))
    return table


def _print_hashes(console: Console, doc: InspectReport | BaseReport | OtherReport) -> None:
    """`--hash`: both digests on lines of their own (a 64-digit hash must not wrap)."""
    if doc.hashes is None:
        return
    tensor = doc.hashes.tensor_sha256 or f"- ({doc.hashes.scope})"
    console.print(safe(f" tensor sha256  {tensor}"), soft_wrap=True)
    console.print(safe(f" file sha256    {doc.hashes.file_sha256}"), soft_wrap=True)


def _overview(doc: InspectReport) -> Table:
    table = _field_table(doc)
    table.add_row("dialect", safe(f"{doc.dialect.name} ({doc.dialect.evidence})"))
    typed = doc.adapter_type
    table.add_row("type", safe(f"{typed.resolved}  [{'; '.join(typed.evidence)}]"))
    for finding in typed.findings:
        table.add_row("", safe(f"{finding.severity}: {finding.message}"))
    rank = doc.rank
    if doc.lora_config is not None:
        assert doc.scale is not None  # a parsed lora_config always has a scale
        table.add_row(
            "rank / alpha",
            safe(
                f"{rank.config} / {doc.alpha} (scale {doc.scale:g}); tensors: rank {rank.tensors}"
            ),
        )
        table.add_row("include", safe(doc.include or "(all)"))
        table.add_row("exclude", safe(doc.exclude or "(none)"))
    else:
        table.add_row("lora_config", safe(doc.lora_config_error))
    table.add_row("family", _family_line(doc.family))
    if doc.base_model:
        table.add_row(
            "base_model",
            safe(f"{doc.base_model} -> {doc.base_model_family or 'unknown family'}"),
        )
    targets = doc.targets
    cov = targets.coverage.line if targets.coverage else "no coverage (family or config unknown)"
    table.add_row("targets", safe(f"{targets.count} ({cov})"))
    if targets.unknown:
        table.add_row(
            "",
            safe(f"{len(targets.unknown)} unknown to the family, e.g. {targets.unknown[0]}"),
        )
    unmatched = doc.keys.unmatched
    if unmatched:
        table.add_row(
            "unmatched keys",
            safe(f"{len(unmatched)}, e.g. {unmatched[0].key}: {unmatched[0].reason}"),
        )
    for key, value in doc.metadata.items():
        table.add_row("metadata", safe(f"{key} = {value}", max_len=200))
    for note in doc.notes:
        table.add_row("note", safe(note))
    return table


def _coverage(doc: InspectReport) -> Table | None:
    cmap = doc.coverage_map
    if cmap is None:
        return None
    table = Table(
        box=box.SIMPLE, title="coverage (● present, · absent)", title_justify="left", pad_edge=False
    )
    table.add_column("block", justify="right")
    for module in cmap.modules:
        table.add_column(short_block_module(module), justify="center")
    for row in cmap.blocks:
        table.add_row(str(row.block), *("●" if p else "·" for p in row.present))
    top = cmap.top_level
    cond = cmap.conditioner
    table.caption = (
        f"top-level {sum(top.values())}/{len(top)}, conditioner {sum(cond.values())}/{len(cond)}"
    )
    table.caption_justify = "left"
    return table


def _stats(stats: StatsReport, limit: int = 12) -> Table:
    table = Table(
        box=box.SIMPLE,
        title="‖c·ΔW‖ at strength 1 (largest first)",
        title_justify="left",
        pad_edge=False,
    )
    table.add_column("target", overflow="fold")
    table.add_column("update", justify="right")
    table.add_column("ΔW", justify="right")
    table.add_column("notes")
    rows = sorted(stats.targets.items(), key=lambda kv: -(kv[1].update_norm or 0))
    for target, row in rows[:limit]:
        notes = []
        if row.zero_effect:
            notes.append("zero effect")
        if row.nonfinite:
            notes.append("NaN/Inf: " + ", ".join(f"{p}×{n}" for p, n in row.nonfinite.items()))
        fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
        table.add_row(safe(target), fmt(row.update_norm), fmt(row.delta_norm), ", ".join(notes))
    total = stats.update_norm_total
    caption = Text(
        f"{len(rows)} targets; total {'—' if total is None else f'{total:.4g}'}; "
        f"{stats.zero_effect_targets} zero-effect; "
        f"{stats.nonfinite_tensors} tensors with NaN/Inf"
        + (f"\n{stats.cannot_compute}" if stats.cannot_compute else "")
    )
    for line in _stack_lines(stats):
        caption += "\n"
        caption += safe(line)
    table.caption = caption
    table.caption_justify = "left"
    return table


def _stack_lines(stats: StatsReport) -> list[str]:
    """Negative magnitudes and drift: the stack report's summary and its warnings."""
    return stats.stack_report.lines() if stats.stack_report is not None else []


def _base_overview(doc: BaseReport) -> Table:
    table = _field_table(doc)
    table.add_row(
        "kind", safe(f"base checkpoint, {doc.naming} naming ({doc.weights} target weights)")
    )
    table.add_row("family", _family_line(doc.family))
    for facts in doc.sa3cpp or []:
        table.add_row("sa3.cpp", safe(_sa3cpp_line(facts)))
        for problem in facts["problems"]:
            table.add_row("warning", safe(problem))
    for key, value in doc.metadata.items():
        table.add_row("metadata", safe(f"{key} = {value}", max_len=200))
    for note in doc.notes:
        table.add_row("note", safe(note))
    return table


def _sa3cpp_line(facts: dict[str, Any]) -> str:
    """One sa3.cpp GGUF file of a base: architecture, model, training-base flag, types."""
    types = ", ".join(f"{name}×{count}" for name, count in facts["tensor_types"].items())
    model = facts["model"] or "no general.finetune"
    base = "training base (dit.training_base = true)" if facts["training_base"] else "post-trained"
    if facts["architecture"] != "sa3-dit":
        base = "conditioner sidecar" if facts["architecture"] == "sa3-conditioner" else ""
    parts = [facts["architecture"] or "no architecture", model, base, types]
    return f"{os.path.basename(facts['path'])}: " + "; ".join(p for p in parts if p)


def _other_overview(doc: OtherReport) -> Table:
    table = _field_table(doc)
    if doc.codec is not None:
        codec = doc.codec
        fits = ", ".join(codec["fits"]) or "none"
        table.add_row("family", safe(f"{codec['family'] or 'unknown'} (shapes fit: {fits})"))
        table.add_row(
            "type",
            safe(
                f"{codec['adapter_type']}, rank {codec['rank']}, alpha {codec['alpha']}, "
                f"scale {codec['scale']}"
            ),
        )
        table.add_row("coverage", safe(codec["coverage"] or f"{codec['targets']} targets"))
        for note in codec["notes"]:
            table.add_row("note", safe(note))
        for finding in codec["findings"]:
            table.add_row(finding["severity"], safe(finding["message"]))
    for key, value in doc.metadata.items():
        table.add_row("metadata", safe(f"{key} = {value}", max_len=200))
    return table


def print_inspect(console: Console, doc: InspectReport | BaseReport | OtherReport) -> None:
    if isinstance(doc, OtherReport):
        console.print(Text(f"{doc.checkpoint.row.badge.lower()} ", style="bold") + safe(doc.path))
        console.print(_other_overview(doc))
        _print_hashes(console, doc)
        return
    if isinstance(doc, BaseReport):
        console.print(Text("base ", style="bold") + safe(doc.path), soft_wrap=True)
        console.print(_base_overview(doc))
        _print_hashes(console, doc)
        return
    console.print(Text("adapter ", style="bold") + safe(doc.path), soft_wrap=True)
    console.print(_overview(doc))
    _print_hashes(console, doc)
    coverage = _coverage(doc)
    if coverage is not None:
        console.print(coverage)
    if doc.stats is not None:
        console.print(_stats(doc.stats))


def print_malformed(console: Console, exc: MalformedFileError) -> None:
    """A path inspect could not read, in the place its report would have been."""
    console.print(Text("adapter ", style="bold") + safe(exc.path), soft_wrap=True)
    console.print(
        Text("MALFORMED ", style="bold magenta") + safe(" ".join(exc.cause.split())),
        soft_wrap=True,
    )


STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "malformed": "bold magenta"}
SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "dim"}


def _identity(result: FileResult) -> str:
    parts = [p for p in (result.adapter_type, result.family, result.coverage) if p]
    return f" ({', '.join(parts)})" if parts else ""


def print_validation(console: Console, run: ValidationRun, *, show_info: bool = True) -> None:
    for result in run.files:
        status = result.status(run.strict)
        line = (
            Text(f"{status.upper():<10}", style=STATUS_STYLE[status])
            + safe(result.path)
            + safe(_identity(result))
        )
        console.print(line, soft_wrap=True)
        for finding in result.findings:
            if finding.severity == "info" and not show_info:
                continue
            console.print(
                Text("  ")
                + Text(f"{finding.severity:<7} ", style=SEVERITY_STYLE[finding.severity])
                + Text(f"{finding.rule}: ", style="bold")
                + safe(finding.message),
                soft_wrap=True,
            )
            if finding.severity != "info":
                console.print(
                    Text("          fix: ", style="dim") + safe(finding.hint), soft_wrap=True
                )
    t = run.totals()
    console.print(
        f"{t['files']} files: {t['passed']} passed, {t['failed']} failed, "
        f"{t['malformed']} malformed; "
        f"{t['errors']} errors, {t['warnings']} warnings, {t['infos']} infos"
        + (" (--strict: warnings fail)" if run.strict else ""),
        soft_wrap=True,
    )
