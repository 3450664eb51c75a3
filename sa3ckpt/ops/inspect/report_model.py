"""The inspect report as typed data, and the one function that turns it into JSON.

The CLI renders it as tables and the TUI as widgets, both by attribute; `report_json` is the
only place that decides how it looks as JSON. Field names and order are the JSON keys and
their order (schema 1, documented in docs/commands/inspect.md), so a report and its document
cannot drift.
A field can carry `metadata={JSON: encoder}` when its JSON shape is not the plain one, or
`metadata={OMIT_NONE: True}` when the key is absent rather than null.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from sa3ckpt.findings import Finding
from sa3ckpt.ops.inspect.checkpoint_kind import KindReport
from sa3ckpt.ops.inspect.stack_report import StackReport

JSON = "json"  # field metadata key: a function value -> JSON value overriding the default
OMIT_NONE = "omit_none"  # field metadata key: leave the key out of the JSON when None


def _detection_findings(findings: list[Finding]) -> list[dict[str, str]]:
    """inspect's schema-1 shape for detection findings: the rule id is called `code`."""
    return [{"code": f.rule, "severity": f.severity, "message": f.message} for f in findings]


@dataclass(frozen=True)
class DialectReport:
    name: str | None
    evidence: str


@dataclass(frozen=True)
class TypeReport:
    """The resolved adapter type, what the tensors and the config each said, and why."""

    resolved: str | None
    from_tensors: str | None
    from_config: str | None
    evidence: list[str]
    findings: list[Finding] = field(metadata={JSON: _detection_findings})


@dataclass(frozen=True)
class RankReport:
    config: int | None
    tensors: list[int]


@dataclass(frozen=True)
class FamilyReport:
    """The family (None: unknown or undetermined), whether --model forced it, and why.

    fits: every family the evidence allows; several with name None means undetermined (the
    file fits them equally and `--model` picks), none with name None means no family fits.
    """

    name: str | None
    forced: bool
    evidence: list[str]
    fits: list[str] = field(default_factory=list)

    @property
    def undetermined(self) -> bool:
        return self.name is None and len(self.fits) > 1


@dataclass(frozen=True)
class CoverageReport:
    """Counts of the targets include/exclude select, and which are missing or unselected."""

    line: str
    expected: int
    present: int
    missing: list[str]
    unselected: list[str]


@dataclass(frozen=True)
class TargetsReport:
    count: int
    family_total: int | None
    unknown: list[str]
    coverage: CoverageReport | None


@dataclass(frozen=True)
class BlockRow:
    """One transformer block: presence of each of the 9 per-block modules, in module order."""

    block: int
    present: list[bool]


@dataclass(frozen=True)
class CoverageMap:
    modules: list[str]
    blocks: list[BlockRow]
    top_level: dict[str, bool]
    conditioner: dict[str, bool]


@dataclass(frozen=True)
class UnmatchedKey:
    key: str
    reason: str


@dataclass(frozen=True)
class KeysReport:
    parsed: int
    total: int
    unmatched: list[UnmatchedKey]


@dataclass(frozen=True)
class TargetStats:
    """‖c·ΔW_lowrank‖, the true ‖ΔW‖ where no base is needed, NaN/Inf counts, zero effect."""

    update_norm: float | None
    delta_norm: float | None
    nonfinite: dict[str, int]
    zero_effect: bool


@dataclass(frozen=True)
class StatsReport:
    strength: float
    targets: dict[str, TargetStats]
    update_norm_total: float | None
    zero_effect_targets: int
    nonfinite_tensors: int
    cannot_compute: str | None
    # negative magnitudes and drift (m / baked_vnorm_row) of DoRA/BoRA types; None otherwise
    stack_report: StackReport | None = field(default=None, metadata={OMIT_NONE: True})


@dataclass(frozen=True)
class HashReport:
    """`inspect --hash`: the tensor-data sha256 (None: no data section), the whole file's."""

    tensor_sha256: str | None
    file_sha256: str
    scope: str  # what the tensor hash covers (sa3ckpt.io.hashing)


@dataclass(frozen=True)
class InspectReport:
    """What one adapter is (header only; `stats` only when tensors were read)."""

    path: str
    format: str
    size_bytes: int
    tensors: int
    dialect: DialectReport
    adapter_type: TypeReport
    rank: RankReport
    alpha: float | None
    scale: float | None
    include: list[str] | None
    exclude: list[str] | None
    lora_config: dict[str, Any] | None
    lora_config_error: str | None
    config_origin: str
    metadata: dict[str, str]
    family: FamilyReport
    base_model: str | None
    base_model_family: str | None
    targets: TargetsReport
    coverage_map: CoverageMap | None
    dtypes: dict[str, int]
    keys: KeysReport
    notes: list[str]
    # what the file is (ops.checkpoint_kind): an SA3 DiT adapter, or a codec adapter
    checkpoint: KindReport = field(metadata={JSON: KindReport.to_json})
    stats: StatsReport | None = field(default=None, metadata={OMIT_NONE: True})
    hashes: HashReport | None = field(default=None, metadata={OMIT_NONE: True})


BASE_KIND = "base"


@dataclass(frozen=True)
class BaseReport:
    """What inspect says of a base checkpoint instead of an adapter report.

    `kind` ("base") is what tells the two apart in the JSON: adapter entries keep the schema-1
    fields unchanged and have no `kind`. `naming` is the base key naming (official, mlx) and
    `family` is detected from the weights' shapes.
    """

    path: str
    kind: str
    format: str
    size_bytes: int
    tensors: int
    naming: str
    family: FamilyReport
    weights: int  # tensors that are a known target's weight
    dtypes: dict[str, int]
    metadata: dict[str, str]
    notes: list[str]
    checkpoint: KindReport = field(metadata={JSON: KindReport.to_json})  # full, DiT or cond
    hashes: HashReport | None = field(default=None, metadata={OMIT_NONE: True})
    # an sa3.cpp GGUF's own facts, per file (io.gguf_facts.describe): architecture, model,
    # training-base flag, ggml tensor types, loader-KV problems
    sa3cpp: list[dict[str, Any]] | None = field(default=None, metadata={OMIT_NONE: True})


@dataclass(frozen=True)
class OtherReport:
    """What inspect says of a readable file that is neither an adapter nor a base: codec
    (SAME encoder/decoder) weights. `kind` is "other"; `checkpoint` says what it is."""

    path: str
    kind: str
    format: str
    size_bytes: int
    tensors: int
    dtypes: dict[str, int]
    metadata: dict[str, str]
    checkpoint: KindReport = field(metadata={JSON: KindReport.to_json})
    hashes: HashReport | None = field(default=None, metadata={OMIT_NONE: True})
    # a codec adapter's family, type, rank, coverage and notes (ops.codec_adapter)
    codec: dict[str, Any] | None = field(default=None, metadata={OMIT_NONE: True})


OTHER_KIND = "other"
CODEC_ADAPTER_KIND = "codec-adapter"


def report_json(value: Any) -> Any:
    """A report (or any part of it) as JSON-ready dicts, lists and scalars."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get(OMIT_NONE):
                continue
            encoder = f.metadata.get(JSON)
            out[f.name] = encoder(item) if encoder is not None else report_json(item)
        return out
    if isinstance(value, dict):
        return {k: report_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [report_json(v) for v in value]
    return value
