"""The one rule table: every rule id the code raises has a row, and DESIGN's minimums hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sa3ckpt
from sa3ckpt.errors import EXIT_OK, MalformedFileError, ValidationFailed
from sa3ckpt.findings import RULES, SEVERITIES, Finding
from sa3ckpt.ops.validate import FileResult, ValidationRun

PACKAGE = Path(sa3ckpt.__file__).parent
# How the package raises a finding: Finding.of("rule", …) or validate's _say("rule", …).
RAISED = re.compile(r"""(?:Finding\.of|_say)\(\s*["']([a-z0-9-]+)["']""")

# DESIGN.md "Validation rules: minimum severities" (a rule may be stricter, never looser):
# the rule that implements each listed condition, and the least severity it may have.
DESIGN_MINIMUMS = {
    "config-missing": "error",  # missing `lora_config`
    "config-invalid": "error",  # unparsable `lora_config`
    "unknown-type": "error",  # unknown adapter type
    "inconsistent-tensors": "error",  # missing/extra params, wrong shapes between params
    "mixed-types": "error",  # tensors inconsistent with the type (targets disagree)
    "type-disagreement": "error",  # tensors inconsistent with the claimed type
    "unknown-target": "error",  # a target unknown to the model family
    "shape-mismatch": "error",  # shape mismatch against the family's target table
    "rank-mismatch": "error",  # rank disagreeing with metadata
    "nan-inf": "error",  # NaN/Inf (--deep)
    "no-targets": "error",  # zero targets recognised
    "legacy-alias": "warning",  # `dora`, 2-D magnitudes
    "bare-keys": "warning",  # no `model.` root
    "nonzero-slot": "warning",
    "negative-magnitude": "warning",
    "base-model-mismatch": "warning",
    "coverage-missing": "warning",  # selected by include/exclude but absent
    "zero-effect": "warning",
    "dtype-unconventional": "warning",  # fp32/bf16 where fp16 is conventional
    "xs-no-bases": "info",
    "no-runtime-module": "info",  # the seconds conditioner
}


def _raised_rule_ids() -> set[str]:
    ids: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        ids.update(RAISED.findall(path.read_text(encoding="utf-8")))
    return ids


def _at_least(severity: str, minimum: str) -> bool:
    return SEVERITIES.index(severity) <= SEVERITIES.index(minimum)  # errors come first


def test_every_raised_rule_id_has_a_row() -> None:
    raised = _raised_rule_ids()
    assert len(raised) > 20  # the scan found the call sites (a broken regex finds none)
    assert raised <= set(RULES), sorted(raised - set(RULES))


def test_every_row_is_complete_and_consistent() -> None:
    for rule_id, rule in RULES.items():
        assert rule.id == rule_id
        assert rule.severity in SEVERITIES and rule.title and rule.hint
        if rule.reported_as is not None:
            broader = RULES[rule.reported_as]
            assert broader.reported_as is None and broader.severity == rule.severity


@pytest.mark.parametrize(("rule_id", "minimum"), sorted(DESIGN_MINIMUMS.items()))
def test_design_minimum_severity_holds(rule_id: str, minimum: str) -> None:
    assert _at_least(RULES[rule_id].severity, minimum), (rule_id, RULES[rule_id].severity)


def test_findings_take_severity_and_hint_from_the_table() -> None:
    finding = Finding.of("bare-keys", "3 targets have bare keys")
    row = RULES["bare-keys"]
    assert (finding.severity, finding.hint) == (row.severity, row.hint)
    assert finding.to_json() == {
        "rule": "bare-keys",
        "severity": "warning",
        "message": "3 targets have bare keys",
        "hint": RULES["bare-keys"].hint,
    }
    mixed = Finding.of("mixed-types", "lora x2, bora x1").reported()
    assert mixed.rule == "inconsistent-tensors" and mixed.message == "lora x2, bora x1"
    assert finding.reported() is finding
    with pytest.raises(KeyError):
        Finding.of("no-such-rule", "x")


def _result(path: str, *rules: str, malformed: bool = False) -> FileResult:
    return FileResult(path, [Finding.of(r, r) for r in rules], malformed=malformed)


def test_exit_codes_come_from_the_error_classes() -> None:
    clean = _result("a", "xs-no-bases")
    warned = _result("b", "bare-keys")
    failed = _result("c", "shape-mismatch")
    broken = _result("d", "malformed", malformed=True)
    assert ValidationRun([clean, warned], strict=False).exit_code == EXIT_OK
    assert ValidationRun([clean, warned], strict=True).exit_code == ValidationFailed.exit_code
    assert ValidationRun([failed, clean], strict=False).exit_code == ValidationFailed.exit_code
    assert ValidationRun([failed, broken], strict=False).exit_code == MalformedFileError.exit_code
    # The contract's numbers (DESIGN.md): 0 ok, 1 findings, 3 malformed input.
    assert (EXIT_OK, ValidationFailed.exit_code, MalformedFileError.exit_code) == (0, 1, 3)


VALIDATE_PAGE = PACKAGE.parent / "docs" / "commands" / "validate.md"
RULE_ROW = re.compile(r"^\| (`[a-z0-9-]+`(?: / `[a-z0-9-]+`)*) \| (error|warning|info)\b")


def _readme_rule_rows() -> dict[str, str]:
    """validate's rule table in its docs page: rule id -> severity."""
    text = VALIDATE_PAGE.read_text(encoding="utf-8")
    table = text.split("| rule | severity | fires when |", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        match = RULE_ROW.match(line)
        if match:
            for rule_id in re.findall(r"`([a-z0-9-]+)`", match.group(1)):
                rows[rule_id] = match.group(2)
    return rows


def test_readme_rule_table_is_the_rule_table() -> None:
    """Every rule validate reports has a row in validate's docs page with its severity, and
    nothing else does
    (rules reported under a broader id, like mixed-types, are that id's row)."""
    reported = {r.id: r.severity for r in RULES.values() if r.reported_as is None}
    assert _readme_rule_rows() == reported
