"""The inspect report: a typed dataclass tree whose JSON (schema 1) comes from one function."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fixtures.generate import DATA_DIR
from sa3ckpt.io import safetensors as st
from sa3ckpt.ops.inspect.report import inspect_document, inspect_path, to_json
from sa3ckpt.ops.inspect.report_model import (
    OMIT_NONE,
    InspectReport,
    StatsReport,
    TypeReport,
    report_json,
)

ADAPTERS = DATA_DIR / "adapters"
# The document's keys in order, as docs/commands/inspect.md documents them (schema 1).
TOP_LEVEL_KEYS = [
    "path",
    "format",
    "size_bytes",
    "tensors",
    "dialect",
    "adapter_type",
    "rank",
    "alpha",
    "scale",
    "include",
    "exclude",
    "lora_config",
    "lora_config_error",
    "config_origin",
    "metadata",
    "family",
    "base_model",
    "base_model_family",
    "targets",
    "coverage_map",
    "dtypes",
    "keys",
    "notes",
    "checkpoint",
]


def _legacy_alias_file(tmp_path: Path) -> Path:
    """A dora-cols adapter whose lora_config says `dora`: a detection finding to report."""
    with st.open_safetensors(ADAPTERS / "tiny-small" / "dora-cols.safetensors") as f:
        tensors = {k: f.array(k).copy() for k in f}
        metadata = dict(f.metadata)
    config = json.loads(metadata["lora_config"])
    config["adapter_type"] = "dora"
    metadata["lora_config"] = json.dumps(config)
    path = tmp_path / "legacy.safetensors"
    st.write_safetensors(path, tensors, metadata)
    return path


def _walk_fields(value: Any, doc: Any) -> int:
    """Every dataclass field is a key of its JSON object, recursively; returns fields seen."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        seen = 0
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get(OMIT_NONE):  # stats, hashes: absent when None
                assert f.name not in doc
                continue
            assert f.name in doc, f.name
            if f.name != "findings":  # detection findings have their own schema-1 shape
                seen += 1 + _walk_fields(item, doc[f.name])
        return seen
    if isinstance(value, dict):
        return sum(_walk_fields(v, doc[k]) for k, v in value.items())
    if isinstance(value, list):
        return sum(_walk_fields(v, d) for v, d in zip(value, doc, strict=True))
    assert value == doc
    return 0


def test_report_is_typed_and_its_json_mirrors_the_fields() -> None:
    report = inspect_path(ADAPTERS / "tiny-small" / "dora-rows.safetensors", stats=True)
    assert isinstance(report, InspectReport) and isinstance(report.stats, StatsReport)
    assert isinstance(report.adapter_type, TypeReport)
    assert report.adapter_type.resolved == "dora-rows" and report.family.name == "tiny-small"
    doc = report_json(report)
    assert list(doc) == [*TOP_LEVEL_KEYS, "stats"]
    assert _walk_fields(report, doc) > 50
    assert doc["stats"]["cannot_compute"] == report.stats.cannot_compute is not None
    json.dumps(doc, allow_nan=False)  # plain JSON types only


def test_stats_key_is_absent_without_stats() -> None:
    report = inspect_path(ADAPTERS / "tiny-small" / "lora.safetensors")
    assert report.stats is None
    assert list(report_json(report)) == TOP_LEVEL_KEYS


def test_detection_findings_keep_the_schema_1_shape(tmp_path: Path) -> None:
    report = inspect_path(_legacy_alias_file(tmp_path))
    [finding] = report.adapter_type.findings
    assert finding.rule == "legacy-alias" and finding.severity == "warning"
    assert report_json(report)["adapter_type"]["findings"] == [
        {"code": "legacy-alias", "severity": "warning", "message": finding.message}
    ]


def test_document_is_the_reports_json(tmp_path: Path) -> None:
    reports = [
        inspect_path(ADAPTERS / "tiny-medium" / "lora-xs.safetensors", stats=True),
        inspect_path(_legacy_alias_file(tmp_path)),
    ]
    doc = json.loads(to_json(inspect_document(reports)))
    assert doc["schema"] == 1 and doc["tool"].startswith("sa3ckpt ")
    assert doc["files"] == [json.loads(json.dumps(report_json(r))) for r in reports]
