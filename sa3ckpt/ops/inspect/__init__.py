"""Inspection: what a file is, from its header (and its tensors when asked).

Owns the checkpoint kinds table, the header analysis of an adapter (dialect, type, family,
coverage), the inspect report and its JSON, the base report, the stack report (what a stack
of adapters will do to each target: inspect shows it, merge acts on it) and the audit table
of a folder of runs.
"""

from sa3ckpt.ops.inspect.analysis import (
    Analysis,
    analyze,
)
from sa3ckpt.ops.inspect.audit import (
    BASE,
    CHECKS,
    FLAGGED,
    MALFORMED,
    OK,
    AuditRow,
    AuditTable,
    audit_paths,
    sort_rows,
)
from sa3ckpt.ops.inspect.base_report import (
    base_family,
)
from sa3ckpt.ops.inspect.checkpoint_kind import (
    CODEC_WEIGHTS,
    KINDS,
    PICKLE_FILE,
    PRETRANSFORM_PREFIX,
    UNKNOWN,
    KindReport,
    codec_family,
    codec_part,
    identify_kind,
)
from sa3ckpt.ops.inspect.report import (
    inspect_document,
    inspect_file,
    inspect_path,
    other_report,
    to_json,
)
from sa3ckpt.ops.inspect.report_model import (
    BaseReport,
    CoverageMap,
    FamilyReport,
    HashReport,
    InspectReport,
    OtherReport,
    RankReport,
    StatsReport,
    TargetStats,
    TypeReport,
)
from sa3ckpt.ops.inspect.stack_report import (
    NEEDS_BASE_NORMS,
    StackMember,
    StackReport,
    base_norms_of,
    stack_report,
)

__all__ = [
    "BASE",
    "CHECKS",
    "CODEC_WEIGHTS",
    "FLAGGED",
    "KINDS",
    "MALFORMED",
    "NEEDS_BASE_NORMS",
    "OK",
    "PICKLE_FILE",
    "PRETRANSFORM_PREFIX",
    "UNKNOWN",
    "Analysis",
    "AuditRow",
    "AuditTable",
    "BaseReport",
    "CoverageMap",
    "FamilyReport",
    "HashReport",
    "InspectReport",
    "KindReport",
    "OtherReport",
    "RankReport",
    "StackMember",
    "StackReport",
    "StatsReport",
    "TargetStats",
    "TypeReport",
    "analyze",
    "audit_paths",
    "base_family",
    "base_norms_of",
    "codec_family",
    "codec_part",
    "identify_kind",
    "inspect_document",
    "inspect_file",
    "inspect_path",
    "other_report",
    "sort_rows",
    "stack_report",
    "to_json",
]
