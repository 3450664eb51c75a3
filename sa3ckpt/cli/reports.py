"""Machine-readable validate outputs: JSON document, JUnit XML, GitHub workflow annotations."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from sa3ckpt import __version__
from sa3ckpt.io.atomic import atomic_output
from sa3ckpt.ops.validate import ValidationRun
from sa3ckpt.textsafe import escape_control

SCHEMA_VERSION = 1


def validation_document(run: ValidationRun) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "tool": f"sa3ckpt {__version__}",
        "command": "validate",
        "strict": run.strict,
        "exit_code": run.exit_code,
        "summary": run.totals(),
        "files": [f.to_json(run.strict) for f in run.files],
    }


def _x(text: str) -> str:
    """Text for an XML attribute or node: XML 1.0 has no way to carry control characters.

    ElementTree escapes markup but writes an ESC or a NUL as is, which no XML parser
    accepts; file names and keys come from strangers, so they are made visible escapes.
    """
    return escape_control(text)


def junit_xml(run: ValidationRun) -> bytes:
    """One testcase per file; error findings (and warnings with --strict) are failures.

    Every name and message passes through `_x`, so the report stays valid XML whatever
    characters a file name or a key holds.
    """
    totals = run.totals()
    suite = ET.Element(
        "testsuite",
        name="sa3ckpt validate",
        tests=str(totals["files"]),
        failures=str(totals["failed"]),
        errors=str(totals["malformed"]),
        skipped="0",
    )
    for result in run.files:
        case = ET.SubElement(suite, "testcase", classname="sa3ckpt.validate", name=_x(result.path))
        status = result.status(run.strict)
        failing = [
            f
            for f in result.findings
            if f.severity == "error" or (run.strict and f.severity == "warning")
        ]
        if status == "malformed":
            node = ET.SubElement(case, "error", type="malformed", message=_x(failing[0].message))
            node.text = "\n".join(_x(f"{f.rule}: {f.message}") for f in failing)
        elif status == "fail":
            node = ET.SubElement(
                case, "failure", type=failing[0].rule, message=_x(failing[0].message)
            )
            node.text = "\n".join(
                _x(f"[{f.severity}] {f.rule}: {f.message}") + "\nfix: " + _x(f.hint)
                for f in failing
            )
        others = [f for f in result.findings if f not in failing]
        if others:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(_x(f"[{f.severity}] {f.rule}: {f.message}") for f in others)
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_junit(run: ValidationRun, path: str) -> None:
    with atomic_output(path) as f:
        f.write(junit_xml(run))


# GitHub's workflow-command escaping: data (the message) and properties (file=, title=).
_DATA_ESCAPES = {"%": "%25", "\r": "%0D", "\n": "%0A"}
_PROPERTY_ESCAPES = {**_DATA_ESCAPES, ":": "%3A", ",": "%2C"}


def _escape(text: str, table: dict[str, str]) -> str:
    """The workflow-command escapes, then any other control character as a visible escape.

    A raw ESC in `file=` would reach the log (and the terminal of whoever reads it).
    """
    return "".join(table.get(ch) or escape_control(ch) for ch in text)


def _escape_data(text: str) -> str:
    return _escape(text, _DATA_ESCAPES)


def _escape_property(text: str) -> str:
    return _escape(text, _PROPERTY_ESCAPES)


GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


def github_annotations(run: ValidationRun) -> list[str]:
    """`::error file=…,title=…::message` lines for GitHub Actions."""
    lines = []
    for result in run.files:
        for f in result.findings:
            level = GITHUB_LEVEL[f.severity]
            if run.strict and f.severity == "warning":
                level = "error"
            title = _escape_property("sa3ckpt " + f.rule)
            props = f"file={_escape_property(result.path)},title={title}"
            lines.append(f"::{level} {props}::{_escape_data(f.message + ' — fix: ' + f.hint)}")
    return lines


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, allow_nan=False)
