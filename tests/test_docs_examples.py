"""Every shell and Python example in the documentation runs, and prints what it shows.

The examples are collected from every Markdown page under docs/ and from README.md, so a new
page's examples are executed without being registered here. Each page runs as one test: its
examples in page order, in a scratch folder whose `fixtures` is the repository's (so the
bundled fixtures are read where the examples name them, and every output lands in the
scratch folder, never in the repository).

What counts as an example (docs/development/docs.md says the same for writers):

- a ```console block, or a plain ``` block whose first line starts with `$ `: lines starting
  with `$ ` are commands (a trailing `\\` continues one on the next line); the lines after a
  command, up to the next one, are its expected output. `sa3ckpt ...` runs in this process
  through `sa3ckpt.cli.main` (stdout, then stderr, is its output); `echo $?` prints the last
  exit code; anything else runs under bash. A command that exits non-zero must be followed by
  `$ echo $?` or end with a `# exit N` comment, so no failure goes unshown.
- a ```python block: executed in a fresh namespace; it must not raise.

The shown output is compared after these normalisations, and only these:

1. trailing whitespace and trailing empty lines are dropped on both sides;
2. a line that is exactly `...` matches any number of lines (none included), and `…` inside
   a line matches any text within that line;
3. durations (`0.1 s`, `12 ms`) compare equal to any duration;
4. the scratch folder's absolute path is shown relative.
5. sa3ckpt's own version (`sa3ckpt 0.1.0`) compares equal to any version.

A command shown with no output lines (a set-up step) is run and its exit code checked; its
output is not compared.

Commands run with COLUMNS=100, the width the examples were printed at. An HTML comment on the
line before a block, `<!-- docs-test: skip REASON -->` or
`<!-- docs-test: output-not-compared REASON -->`, opts that block out of running or of the
comparison; the reason is required and the list is kept short (a test counts it).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sa3ckpt.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MAX_MARKED_BLOCKS = 12  # skip + output-not-compared, over all pages: keep the list short
HOW = (
    "\n(an example that cannot run against the bundled fixtures, or whose output changes between"
    " runs, says so on the line before its block: <!-- docs-test: skip REASON --> or"
    " <!-- docs-test: output-not-compared REASON -->; docs/development/docs.md has the rules)"
)

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w-]*)[ \t]*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>skip|output-not-compared)\s*(?P<why>.*?)-->")
EXIT_COMMENT = re.compile(r"#\s*exit\s+(\d+)\s*$")
DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b")
VERSION = re.compile(r"\bsa3ckpt \d+\.\d+\.\d+\S*?(?=[\s\",)]|$)")
SHELL_SYNTAX = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"}


@dataclass
class Command:
    line: int  # 1-based line of the `$ ` in the page
    text: str  # the command, continuations joined
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    kind: str  # "console" or "python"
    line: int
    body: list[str]
    marker: str | None = None  # "skip" / "output-not-compared"
    reason: str = ""

    def commands(self) -> list[Command]:
        commands: list[Command] = []
        pending: Command | None = None
        for offset, raw in enumerate(self.body):
            if pending is not None and pending.text.endswith("\\"):
                pending.text = pending.text[:-1].rstrip() + " " + raw.strip()
            elif raw.startswith("$ "):
                pending = Command(self.line + 1 + offset, raw[2:].strip())
                commands.append(pending)
            elif pending is not None:
                pending.expected.append(raw)
        return commands


def pages() -> list[Path]:
    """Every documentation page: docs/**/*.md and the README."""
    found = sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)
    return [ROOT / "README.md", *found]


def blocks(page: Path) -> list[Block]:
    """The runnable fenced blocks of a page, in order, with any marker on the line before."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, ticks, lang = opening["indent"], opening["ticks"], opening["lang"]
        end = i + 1
        while end < len(lines) and not re.match(rf"^[ \t]*{ticks}[ \t]*$", lines[end]):
            end += 1
        body = [
            ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : end]
        ]
        kind = None
        if lang == "python":
            kind = "python"
        elif lang == "console" or (lang == "" and body and body[0].startswith("$ ")):
            kind = "console"
        if kind:
            block = Block(kind, i + 1, body)
            before = i - 1
            while before >= 0 and not lines[before].strip():
                before -= 1
            marker = MARKER.match(lines[before]) if before >= 0 else None
            if marker:
                block.marker, block.reason = marker["kind"], marker["why"].strip()
            found.append(block)
        i = end + 1
    return found


def normalise(lines: list[str], scratch: Path) -> list[str]:
    out = []
    for line in lines:
        line = line.replace(f"{scratch}{os.sep}", "").replace(str(scratch), ".")
        line = VERSION.sub("sa3ckpt <version>", line)
        out.append(DURATION.sub("<duration>", line).rstrip())
    while out and not out[-1]:
        out.pop()
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    """Rule 2: `...` lines match any lines, `…` any text within a line."""
    parts = []
    for line in expected:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*".join(re.escape(piece) for piece in line.split("…")) + r"\n")
    text = "".join(f"{line}\n" for line in actual)
    return re.fullmatch("".join(parts), text) is not None


class Session:
    """A page's examples run in one scratch folder, one after another, like a reader would."""

    def __init__(self, scratch: Path, page: Path) -> None:
        self.scratch, self.page, self.last_exit = scratch, page, 0

    def run(self, text: str) -> tuple[int, str]:
        argv = shlex.split(text, comments=True)
        if argv == ["echo", "$?"]:
            return 0, f"{self.last_exit}\n"
        if argv and argv[0] == "sa3ckpt" and not SHELL_SYNTAX.intersection(argv):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli_main(argv[1:])
            return code, out.getvalue() + err.getvalue()
        script = f'sa3ckpt() {{ "{sys.executable}" -m sa3ckpt "$@"; }}\n{text}'
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=self.scratch
        )
        return done.returncode, done.stdout + done.stderr

    def console(self, block: Block) -> None:
        commands = block.commands()
        for index, command in enumerate(commands):
            where = f"{self.page.relative_to(ROOT)}:{command.line}: $ {command.text}"
            code, output = self.run(command.text)
            declared = EXIT_COMMENT.search(command.text)
            shown_next = index + 1 < len(commands) and commands[index + 1].text == "echo $?"
            if declared:
                assert code == int(declared.group(1)), f"{where}\nexit {code}\n{output}"
            elif code != 0 and not shown_next:
                pytest.fail(
                    f"{where}\nexited {code} without `$ echo $?` or `# exit N`:\n{output}{HOW}"
                )
            self.last_exit = code
            if block.marker == "output-not-compared" or not command.expected:
                continue  # a command shown without output: run, exit code checked
            want = normalise(command.expected, self.scratch)
            got = normalise(output.splitlines(), self.scratch)
            if not matches(want, got):
                pytest.fail(
                    f"{where}\n--- shown in the docs\n"
                    + "\n".join(want)
                    + "\n--- printed\n"
                    + "\n".join(got)
                    + HOW
                )

    def python(self, block: Block) -> None:
        source = "\n".join(block.body) + "\n"
        name = f"{self.page.relative_to(ROOT)}:{block.line}"
        namespace: dict[str, Any] = {"__name__": "__docs_example__"}
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(source, name, "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{name}: the python example raised {type(exc).__name__}: {exc}{HOW}")


RUNNABLE = [p for p in pages() if any(b.marker != "skip" for b in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run_and_print_what_they_show(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    session = Session(tmp_path, page)
    for block in blocks(page):
        if block.marker == "skip":
            continue
        if block.kind == "console":
            session.console(block)
        else:
            session.python(block)


def test_examples_are_collected_from_every_page() -> None:
    """The collector sees the README and the pages with examples (a fence it cannot read
    would silently drop a page's examples)."""
    names = {str(p.relative_to(ROOT)) for p in RUNNABLE}
    assert {"README.md", "docs/getting-started.md", "docs/commands/merge.md"} <= names
    assert len(RUNNABLE) >= 15


def test_opt_outs_are_few_and_give_a_reason() -> None:
    marked = [(p, b) for p in pages() for b in blocks(p) if b.marker]
    for page, block in marked:
        assert block.reason, (
            f"{page.relative_to(ROOT)}:{block.line}: docs-test marker without a reason"
        )
    assert len(marked) <= MAX_MARKED_BLOCKS, [f"{p.name}:{b.line}" for p, b in marked]


def test_the_matcher_rules() -> None:
    """The normalisation rules themselves: each one accepts what it should and no more."""
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "b"], ["a", "b"])
    assert not matches(["a", "...", "d"], ["a", "b", "c"])
    assert matches(["x … z"], ["x anything z"])
    assert not matches(["x … z"], ["x y", "z"])
    assert not matches(["a"], ["a", "b"])
    scratch = Path("/tmp/scratch-x")
    assert normalise([f"wrote {scratch}/m.safetensors (0.1 s)  ", ""], scratch) == [
        "wrote m.safetensors (<duration>)"
    ]
    assert normalise(['"tool": "sa3ckpt 0.1.0",'], scratch) == ['"tool": "sa3ckpt <version>",']
