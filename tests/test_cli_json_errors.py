"""Under --json every failure is one JSON error document on stdout and the same one line on
stderr, for every command that takes --json (found in the parser, so a new command is covered
without being listed here), for every exit code (docs/reference/errors.md)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import sa3ckpt.cli as cli
from fixtures.generate import DATA_DIR
from sa3ckpt import __version__
from sa3ckpt.errors import (
    INTERNAL_KIND,
    IncompatibleError,
    MalformedFileError,
    OutputError,
    Sa3ckptError,
    UnreadableFileError,
    UsageError,
    ValidationFailed,
    VerificationError,
)
from sa3ckpt.io.atomic import OutputRefused

ROOT = Path(__file__).resolve().parent.parent
ERRORS_PAGE = ROOT / "docs" / "reference" / "errors.md"
LORA = str(DATA_DIR / "adapters" / "tiny-small" / "lora.safetensors")
MEDIUM_LORA = str(DATA_DIR / "adapters" / "tiny-medium" / "lora.safetensors")
BASE = str(DATA_DIR / "bases" / "tiny-small.official.safetensors")
TRUNCATED = str(DATA_DIR / "malformed" / "truncated.safetensors")
DOC_FIELDS = ["schema", "tool", "command", "exit_code", "error", "message", "path"]


# --- the commands, from the parser ------------------------------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _takes_json(parser: argparse.ArgumentParser) -> bool:
    return any("--json" in action.option_strings for action in parser._actions)


JSON_COMMANDS = sorted(name for name, p in _subparsers().items() if _takes_json(p))


def _value(action: argparse.Action) -> str:
    """A value the action's type accepts: its first choice, a number, or a name."""
    if action.choices:
        return str(next(iter(action.choices)))
    return "1" if action.type in (int, float) else "x"


def minimal_argv(name: str) -> list[str]:
    """The fewest arguments `sa3ckpt NAME` parses with: every required positional, option and
    one option of each required group, with placeholder values (the command never runs them)."""
    parser = _subparsers()[name]
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings:
            if action.nargs not in ("?", "*"):
                argv.append(_value(action))
        elif action.required:
            argv += [action.option_strings[0], _value(action)]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            action = group._group_actions[0]
            argv += [action.option_strings[0], _value(action)]
    return argv


def test_the_json_commands_are_found_and_parse_with_their_minimal_arguments() -> None:
    assert {"inspect", "validate", "convert", "merge", "verify", "encode"} <= set(JSON_COMMANDS)
    assert "demo" not in JSON_COMMANDS and "tui" not in JSON_COMMANDS
    parser = cli.build_parser()
    for name in JSON_COMMANDS:
        args = parser.parse_args([name, *minimal_argv(name), "--json"])
        assert args.command == name and args.json is True


# --- every exit code, every command -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A failure raised out of a command's run, and the document it must become."""

    raise_it: Callable[[], BaseException]
    exit_code: int
    kind: str
    line: str  # the stderr line (and the document's message); a regex when `pattern`
    path: str | None = None
    pattern: bool = False


CASES = {
    "1-internal": Case(
        lambda: RuntimeError("boom\nin two lines"),
        1,
        INTERNAL_KIND,
        r"sa3ckpt: internal error: RuntimeError: boom in two lines \(a bug; set SA3CKPT_DEBUG=1 "
        r"for the traceback and please report it\)",
        pattern=True,
    ),
    "1-findings": Case(
        lambda: ValidationFailed("FAIL: off by 3x"),
        1,
        "findings",
        "sa3ckpt: error: FAIL: off by 3x",
    ),
    "2-usage": Case(
        lambda: UsageError("--rank must be positive"),
        2,
        "usage",
        "sa3ckpt: error: --rank must be positive",
    ),
    "2-output-refused": Case(
        lambda: OutputRefused("exists", "output o.safetensors already exists"),
        2,
        "usage",
        "sa3ckpt: error: output o.safetensors already exists",
    ),
    "3-unreadable": Case(
        lambda: UnreadableFileError("in.safetensors", "no such file"),
        3,
        "unreadable",
        "sa3ckpt: error: in.safetensors: no such file",
        "in.safetensors",
    ),
    "3-malformed": Case(
        lambda: MalformedFileError("in\x1b.safetensors", "header too long"),
        3,
        "malformed",
        "sa3ckpt: error: in\\x1b.safetensors: header too long",  # escaped on stderr
        "in\x1b.safetensors",  # exact in JSON, which escapes it itself
    ),
    "4-incompatible": Case(
        lambda: IncompatibleError("2 targets do not fit base.safetensors"),
        4,
        "incompatible",
        "sa3ckpt: error: 2 targets do not fit base.safetensors",
    ),
    "4-verification": Case(
        lambda: VerificationError("out.gguf does not read back equal"),
        4,
        "verification-failed",
        "sa3ckpt: error: out.gguf does not read back equal",
    ),
    "5-unwritable": Case(
        lambda: OutputError("o.safetensors", "Permission denied"),
        5,
        "unwritable",
        "sa3ckpt: error: cannot write o.safetensors: Permission denied (nothing was written)",
        "o.safetensors",
    ),
    "5-oserror": Case(
        lambda: OSError(errno.ENOSPC, "No space left on device", "d/.o.safetensors.tmp-0123abcd"),
        5,
        "unwritable",
        "sa3ckpt: error: cannot write d/o.safetensors: No space left on device "
        "(nothing was written)",
        "d/o.safetensors",
    ),
    "130-interrupted": Case(
        KeyboardInterrupt, 130, "interrupted", "sa3ckpt: interrupted; nothing was written"
    ),
}


def _failing(monkeypatch: pytest.MonkeyPatch, name: str, exc: BaseException) -> None:
    """Make command NAME's run raise `exc` (the parser is rebuilt from COMMANDS on each run)."""

    def run(args: argparse.Namespace) -> int:
        raise exc

    commands = tuple(replace(c, run=run) if c.name == name else c for c in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", commands)


def _one_document(stdout: str) -> dict:
    """stdout holds exactly one JSON document (json.loads refuses anything after it)."""
    return json.loads(stdout)


def _check_document(doc: dict, command: str | None, case: Case, stderr: str) -> None:
    assert list(doc) == DOC_FIELDS
    assert doc["schema"] == 1 and doc["tool"] == f"sa3ckpt {__version__}"
    assert doc["command"] == command
    assert (doc["exit_code"], doc["error"], doc["path"]) == (case.exit_code, case.kind, case.path)
    assert stderr.endswith("\n") and stderr.count("\n") == 1  # one line
    assert doc["message"] == stderr[:-1]  # the same text as the stderr line
    if case.pattern:
        assert re.fullmatch(case.line, doc["message"])
    else:
        assert doc["message"] == case.line


@pytest.mark.parametrize("case_id", list(CASES))
@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_every_failure_is_one_error_document(
    command: str, case_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    case = CASES[case_id]
    monkeypatch.delenv("SA3CKPT_DEBUG", raising=False)
    _failing(monkeypatch, command, case.raise_it())
    argv = [command, *minimal_argv(command)]

    assert cli.main([*argv, "--json"]) == case.exit_code
    out, err = capsys.readouterr()
    _check_document(_one_document(out), command, case, err)

    assert cli.main(argv) == case.exit_code  # without --json: the line only, stdout empty
    out, err_plain = capsys.readouterr()
    assert out == "" and err_plain == err


@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_usage_errors_from_argparse_are_documents_too(
    command: str, capsys: pytest.CaptureFixture
) -> None:
    usage = Case(KeyboardInterrupt, 2, "usage", "", pattern=True)
    assert cli.main([command, *minimal_argv(command), "--json", "--no-such-option"]) == 2
    out, err = capsys.readouterr()
    doc = _one_document(out)
    _check_document(doc, command, replace(usage, line=r"sa3ckpt: error: .*--no-such-option"), err)
    assert cli.main([command, "--json"]) == 2  # its required arguments missing
    out, err = capsys.readouterr()
    _check_document(_one_document(out), command, replace(usage, line=r".*required.*"), err)


def test_a_usage_error_before_any_command_is_a_document(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--json"]) == 2
    out, err = capsys.readouterr()
    doc = _one_document(out)
    assert (doc["command"], doc["error"], doc["message"]) == (None, "usage", err.strip())
    assert cli.main(["--", "--json"]) == 2  # after `--` it is a value, not the option
    out, _ = capsys.readouterr()
    assert out == ""


def test_debugging_still_shows_a_bugs_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SA3CKPT_DEBUG", "1")
    _failing(monkeypatch, "merge", RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["merge", *minimal_argv("merge"), "--json"])


def _error_classes(cls: type[Sa3ckptError]) -> set[type[Sa3ckptError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _error_classes(sub)
    return found


def test_every_error_kind_is_documented_and_tested() -> None:
    kinds = {cls.kind for cls in _error_classes(Sa3ckptError)} | {INTERNAL_KIND}
    page = ERRORS_PAGE.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| *\d+ *\| *`([a-z-]+)` *\|", page, re.M))
    assert kinds - {"error"} == documented  # "error": the base class, never raised itself
    assert {c.kind for c in CASES.values()} == documented
    for code in {c.exit_code for c in CASES.values()}:
        assert f'"exit_code": {code},' in page, f"no example document for exit code {code}"


# --- real runs, as a hub's CI sees them ---------------------------------------------------------


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sa3ckpt", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    ("args", "exit_code", "kind", "path"),
    [
        (["merge", BASE, LORA, "-o", "exists.safetensors"], 2, "usage", None),
        (["convert", "missing.safetensors", "-o", "o.safetensors", "--to", "sa3"], 3,
         "unreadable", "missing.safetensors"),
        (["convert", TRUNCATED, "-o", "o.safetensors", "--to", "sa3"], 3, "malformed", TRUNCATED),
        (["merge", BASE, MEDIUM_LORA, "-o", "m.safetensors"], 4, "incompatible", None),
        (["combine", LORA, "-o", "no-folder/c.safetensors", "--method", "cat"], 5, "unwritable",
         "no-folder/c.safetensors"),
    ],
)  # fmt: skip
def test_real_failures_print_one_document(
    tmp_path: Path, args: list[str], exit_code: int, kind: str, path: str | None
) -> None:
    (tmp_path / "exists.safetensors").write_bytes(b"precious")
    result = _run(*args, cwd=tmp_path)
    assert result.returncode == exit_code, result.stderr
    doc = _one_document(result.stdout)
    assert (doc["command"], doc["exit_code"], doc["error"], doc["path"]) == (
        args[0],
        exit_code,
        kind,
        path,
    )
    assert doc["message"] == result.stderr.strip() and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.safetensors"]


# verify's FAIL (exit 1) is a verdict with a report, and that report is its one document:
# tests/test_verify.py::test_cli_pass_and_fail parses it (two documents would not parse).
