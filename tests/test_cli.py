"""The CLI as a user runs it: a subprocess, exit codes, one-line errors, never a traceback."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("sa3ckpt ")


def test_targets_json_counts_and_names() -> None:
    result = run_cli("targets", "medium", "--json", "--dialect", "sa3cpp")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["count"] == 229
    cond = doc["targets"][-1]
    assert cond["name"] == "conditioners.seconds_total.embedder.embedding.1"
    assert cond["key"] is None and "no stem" in cond["note"]


def test_targets_text_with_ranges() -> None:
    result = run_cli("targets", "small", "--include", "ff.ff.2", "--exclude", "layers.[0-17].")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1] == "2 of 193 small targets selected"


@pytest.mark.parametrize(
    "args",
    [
        ("targets", "large"),
        ("targets", "medium", "--include", "layers.[5-1]."),
        ("nonsense",),
        (),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("sa3ckpt: error:")
