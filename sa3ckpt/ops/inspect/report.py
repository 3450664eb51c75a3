"""inspect: a versioned report of what an adapter is, header-only unless stats are asked for.

The report is a typed dataclass tree (ops/inspect_report.py, which also owns its JSON); the
CLI renders it as tables, the TUI as widgets.
`--stats` adds per-target norms computed from the tensors: the low-rank update norm
‖c·ΔW‖_F needs no base for any type (for XS, U and V have orthonormal columns, so
‖U M Vᵀ‖_F = ‖M‖_F); the true ‖ΔW‖ of DoRA/BoRA depends on the base's norms and is
reported as not computable without it.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from sa3ckpt import __version__, dtypes
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.formats import ADAPTER, GGUF_MODEL, UNKNOWN, identify, open_adapter_source, sniff
from sa3ckpt.io.gguf_base import open_gguf_model
from sa3ckpt.io.sources import AdapterSource
from sa3ckpt.names.modules import BLOCK_MODULES, block_target
from sa3ckpt.ops.codec import analyze_codec
from sa3ckpt.ops.inspect.analysis import Analysis, analyze
from sa3ckpt.ops.inspect.base_report import inspect_base
from sa3ckpt.ops.inspect.checkpoint_kind import (
    CODEC_WEIGHTS,
    identify_kind,
    source_kind,
    weights_header,
    weights_kind,
)
from sa3ckpt.ops.inspect.report_model import (
    CODEC_ADAPTER_KIND,
    OTHER_KIND,
    BaseReport,
    BlockRow,
    CoverageMap,
    CoverageReport,
    DialectReport,
    FamilyReport,
    InspectReport,
    KeysReport,
    OtherReport,
    RankReport,
    StatsReport,
    TargetsReport,
    TargetStats,
    TypeReport,
    UnmatchedKey,
    report_json,
)
from sa3ckpt.ops.inspect.stack_report import StackMember, StackReport, stack_report
from sa3ckpt.targets.codec_families import CODEC_TARGET_FAMILIES
from sa3ckpt.targets.families import family_for_base_model

SCHEMA_VERSION = 1


def coverage_map(a: Analysis) -> CoverageMap | None:
    """Blocks x the 9 per-block modules, plus top-level and conditioner presence."""
    if a.family is None:
        return None
    present = set(a.groups.targets)
    blocks = []
    for block in range(a.family.topology.depth):
        names = [block_target(block, m.canonical) for m in BLOCK_MODULES]
        blocks.append(BlockRow(block, [n in present for n in names]))
    top = {t.name: t.name in present for t in a.family.targets if t.group == "top"}
    cond = {t.name: t.name in present for t in a.family.targets if t.group == "conditioner"}
    return CoverageMap(
        modules=[m.canonical for m in BLOCK_MODULES], blocks=blocks, top_level=top, conditioner=cond
    )


def _float(source: AdapterSource, key: str) -> np.ndarray:
    with np.errstate(all="ignore"):  # NaN/Inf are counted, not warned about
        return dtypes.to_float32(np.asarray(source.array(key))).astype(np.float64)


def _lowrank_norm(params: dict[str, np.ndarray]) -> float | None:
    """‖ΔW_lowrank‖_F without forming ΔW: B@A via Gram matrices, U M Vᵀ via ‖M‖."""
    if "lora_A" in params and "lora_B" in params:
        a, b = params["lora_A"], params["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            return None  # ranks disagree: no product to measure (validate reports rank-mismatch)
        gram = (b.T @ b) * (a @ a.T)
        return math.sqrt(max(float(gram.sum()), 0.0))
    if "M_xs" in params:
        return float(np.linalg.norm(params["M_xs"]))
    return None


def target_stats(a: Analysis) -> StatsReport:
    """Per-target norms, NaN/Inf counts and zero-effect flags (reads the tensors)."""
    scale = a.config.scale if a.config else None
    decomposed = a.kind is not None and a.kind.is_weight_decomposed
    rows = {}
    members: dict[str, list[StackMember]] = {}
    for target, keys in a.groups.targets.items():
        params = {p: a.canonical(p, _float(a.source, k)) for p, k in keys.items()}
        if decomposed and a.kind is not None:
            members[target] = [StackMember(1, a.source.path, a.kind, 1.0, params)]
        nonfinite = {p: int(v.size - np.count_nonzero(np.isfinite(v))) for p, v in params.items()}
        effect = params.get("lora_B", params.get("M_xs"))
        finite = all(n == 0 for n in nonfinite.values())
        update = _lowrank_norm(params) if finite else None
        scaled = update * scale if update is not None and scale is not None else None
        rows[target] = TargetStats(
            update_norm=scaled,
            delta_norm=None if decomposed else scaled,
            nonfinite={p: n for p, n in nonfinite.items() if n},
            zero_effect=bool(effect is not None and not np.any(effect)),
        )
    norms = [r.update_norm for r in rows.values() if r.update_norm is not None]
    return StatsReport(
        strength=1.0,
        targets=rows,
        update_norm_total=math.sqrt(sum(n * n for n in norms)) if norms else None,
        zero_effect_targets=sum(r.zero_effect for r in rows.values()),
        nonfinite_tensors=sum(len(r.nonfinite) for r in rows.values()),
        cannot_compute=(
            "‖ΔW‖ of DoRA/BoRA types depends on the base weights' norms; "
            "update_norm is ‖c·ΔW_lowrank‖"
            if decomposed
            else None
        ),
        stack_report=_single_stack(members) if decomposed else None,
    )


def _single_stack(members: dict[str, list[StackMember]]) -> StackReport:
    """One adapter's part of the stack report: negative magnitudes and drift (no base)."""
    return stack_report(members, None)


def _coverage(a: Analysis) -> CoverageReport | None:
    if a.coverage is None:
        return None
    return CoverageReport(
        line=a.coverage.line(),
        expected=len(a.coverage.expected),
        present=len(a.coverage.present),
        missing=a.coverage.missing,
        unselected=a.coverage.unselected,
    )


def report(a: Analysis, *, stats: bool = False) -> InspectReport:
    """The inspect report for one analysed source."""
    src = a.source
    config = a.config
    claimed = config.base_model if config else None
    claimed_family = family_for_base_model(claimed) if claimed else None
    return InspectReport(
        path=src.path,
        format=src.format,
        size_bytes=src.size,
        tensors=len(src.entries),
        dialect=DialectReport(a.dialect.dialect, a.dialect.evidence),
        adapter_type=TypeReport(
            resolved=a.adapter_type,
            from_tensors=a.detection.from_tensors if a.detection else None,
            from_config=config.adapter_type if config else None,
            evidence=a.detection.evidence if a.detection else [],
            findings=list(a.detection.findings) if a.detection else [],
        ),
        rank=RankReport(config.rank if config else None, sorted(a.ranks)),
        alpha=config.alpha if config else None,
        scale=config.scale if config else None,
        include=config.include if config else None,
        exclude=config.exclude if config else None,
        lora_config=config.to_dict() if config else None,
        lora_config_error=a.config_error,
        config_origin=src.config_origin,
        metadata=dict(src.metadata),
        family=FamilyReport(
            a.family.name if a.family else None,
            a.family_forced,
            a.family_evidence,
            list(a.family_detection.fits) if a.family_detection else [],
        ),
        base_model=claimed,
        base_model_family=claimed_family.name if claimed_family else None,
        targets=TargetsReport(
            count=len(a.groups.targets),
            family_total=len(a.family.targets) if a.family else None,
            unknown=a.unknown_targets,
            coverage=_coverage(a),
        ),
        coverage_map=coverage_map(a),
        dtypes=dict(sorted(a.dtypes.items())),
        keys=KeysReport(
            parsed=a.groups.parsed,
            total=len(src.entries),
            unmatched=[UnmatchedKey(r.key, r.reason) for r in a.groups.rejected],
        ),
        notes=list(src.notes),
        checkpoint=source_kind(src),
        stats=target_stats(a) if stats else None,
    )


def inspect_path(
    path: str | os.PathLike[str],
    *,
    stats: bool = False,
    model: str = "auto",
    allow_pickle: bool = False,
) -> InspectReport:
    """Open, analyse and report one path (MalformedFileError for unreadable input)."""
    with open_adapter_source(path, allow_pickle=allow_pickle) as source:
        return report(analyze(source, model), stats=stats)


def other_report(path: str | os.PathLike[str]) -> OtherReport | None:
    """The report of a file with neither adapter nor base keys, when its keys say what it
    is (SAME codec weights: a safetensors or npz file in a `CODEC_LAYOUTS` layout, or an
    sa3.cpp codec GGUF); None when they do not (the adapter report explains then)."""
    spath = os.fspath(path)
    row = sniff(spath)
    if row is not None and row.name == GGUF_MODEL:
        return gguf_model_report(spath)
    header = weights_header(spath)
    if header is None:
        return None
    kind = weights_kind({k: shape for k, (_, shape) in header.tensors.items()})
    if kind.kind != CODEC_WEIGHTS:
        return None
    return OtherReport(
        path=spath,
        kind=OTHER_KIND,
        format=header.format,
        size_bytes=os.path.getsize(spath),
        tensors=len(header.tensors),
        dtypes=dict(sorted(Counter(code for code, _ in header.tensors.values()).items())),
        metadata=header.metadata,
        checkpoint=kind,
    )


def codec_adapter_report(source: AdapterSource, model: str = "auto") -> OtherReport:
    """The report of a codec adapter: its kind line plus family, type, rank and coverage."""
    codec = analyze_codec(source, model if model in CODEC_TARGET_FAMILIES else "auto")
    kind = source_kind(source)
    return OtherReport(
        path=source.path,
        kind=CODEC_ADAPTER_KIND,
        format=source.format,
        size_bytes=source.size,
        tensors=len(source.entries),
        dtypes=dict(sorted(Counter(e.dtype for e in source.entries.values()).items())),
        metadata=dict(source.metadata),
        checkpoint=kind,
        codec=codec.to_json(),
    )


def inspect_file(
    path: str | os.PathLike[str],
    *,
    stats: bool = False,
    model: str = "auto",
    allow_pickle: bool = False,
) -> InspectReport | BaseReport | OtherReport:
    """inspect_path for adapters; a base checkpoint (format registry's rule) gets a BaseReport,
    codec weights (ops.checkpoint_kind) an OtherReport."""
    found = identify(path)
    if found.is_base:
        return inspect_base(path, stats=stats)
    if found.kind == ADAPTER:
        with open_adapter_source(path, allow_pickle=allow_pickle) as source:
            if source_kind(source).is_codec_adapter:
                return codec_adapter_report(source, model)
    if model in CODEC_TARGET_FAMILIES:
        model = "auto"
    other = other_report(path) if found.kind == UNKNOWN else None
    if other is not None:
        return other
    return inspect_path(path, stats=stats, model=model, allow_pickle=allow_pickle)


def gguf_model_report(path: str) -> OtherReport | None:
    """An sa3.cpp model GGUF that is no base (the SAME codec): what it is, its ggml types."""
    kind = identify_kind(path)
    if kind.kind != CODEC_WEIGHTS:
        return None
    opened = open_gguf_model(path)
    try:
        return OtherReport(
            path=path,
            kind=OTHER_KIND,
            format="gguf",
            size_bytes=os.path.getsize(path),
            tensors=len(opened.shapes),
            dtypes=dict(sorted(Counter(opened.types.values()).items())),
            metadata={
                k: v
                for k, v in opened.kv.items()
                if isinstance(v, str) and k.startswith("general.")
            },
            checkpoint=kind,
        )
    finally:
        opened.close()


def malformed_json(exc: MalformedFileError) -> dict[str, Any]:
    """The `inspect --json` entry of a file that could not be read: its path and the cause."""
    return {"path": exc.path, "status": "malformed", "error": " ".join(exc.cause.split())}


def inspect_document(
    reports: Sequence[InspectReport | BaseReport | OtherReport | MalformedFileError],
) -> dict[str, Any]:
    """The `inspect --json` document: schema version, tool, one entry per path, in order."""
    return {
        "schema": SCHEMA_VERSION,
        "tool": f"sa3ckpt {__version__}",
        "files": [
            malformed_json(r) if isinstance(r, MalformedFileError) else report_json(r)
            for r in reports
        ],
    }


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False, allow_nan=False, default=str)
