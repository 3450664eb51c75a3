"""Issue 13's CLI contract items, run as a user runs the CLI (subprocesses, exit codes, stderr).

inspect reports every path (8); file names with control characters stay escaped in every
output format (10); exit codes and messages (11: exit 5 for an output that cannot be written,
never a temp name in a message, the empty `-o`, swapped merge arguments, missing paths, the
`--drop-unmapped` wording, the ledger counting each tensor once); `--force` replacing folder
outputs atomically (12).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures.generate import DATA_DIR
from sa3ckpt.errors import EXIT_OK, OutputError, Sa3ckptError
from sa3ckpt.io import atomic
from sa3ckpt.io.atomic import StagedOutput
from sa3ckpt.io.safetensors import SafetensorsStreamWriter
from sa3ckpt.io.sources import is_peft_dir
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.synth import official_full_tensors, synth_adapter
from sa3ckpt.targets.families import Family
from sa3ckpt.targets.topology import Topology
from tests.helpers import BASE_OFFICIAL, run_cli

SMALL = DATA_DIR / "adapters" / "tiny-small"
LORA = str(SMALL / "lora.safetensors")
DORA = str(SMALL / "dora-rows.safetensors")
ZERO = str(SMALL / "lora.zero-effect.safetensors")
GAP = str(DATA_DIR / "malformed" / "gap.safetensors")
BASE = str(BASE_OFFICIAL)
TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{8}")


def _stderr_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failing command prints on stderr (asserting it is one, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- 8: inspect reports every path -----------------------------------------------------------


def test_inspect_reports_every_file_and_exits_3_at_the_end(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.safetensors")
    paths = [LORA, missing, GAP, DORA]
    text = run_cli("inspect", *paths)
    assert text.returncode == 3, text.stderr
    assert text.stdout.count("adapter ") >= 4  # one heading per path, in order
    for good in (LORA, DORA):
        assert good in text.stdout
    order = [text.stdout.index(p) for p in paths]
    assert order == sorted(order)
    assert text.stdout.count("MALFORMED") == 2
    errors = text.stderr.strip().splitlines()
    assert len(errors) == 2 and missing in errors[0] and GAP in errors[1]
    assert "Traceback" not in text.stderr

    doc = run_cli("inspect", "--json", *paths)
    assert doc.returncode == 3
    files = json.loads(doc.stdout)["files"]
    assert [f["path"] for f in files] == paths
    assert [f.get("status") for f in files] == [None, "malformed", "malformed", None]
    assert files[1]["error"] == "no such file"
    assert files[2]["error"] and files[0]["adapter_type"]["resolved"] == "lora"


# --- 10: control characters in file names ----------------------------------------------------

EVIL = "evil\x1b[31m\r\n,a:b%41"
SHOWN = "evil\\x1b[31m\\x0d\\x0a,a:b%41"  # EVIL as people see it: control characters escaped


def test_control_characters_in_names_are_escaped_everywhere(tmp_path: Path) -> None:
    zero = tmp_path / f"{EVIL}.safetensors"
    shutil.copy(ZERO, zero)  # a warning: an annotation and a system-out line
    bad = tmp_path / f"{EVIL}.bad.safetensors"
    shutil.copy(GAP, bad)  # malformed: the error node and a stderr line
    junit = tmp_path / "report.xml"
    result = run_cli("validate", "--strict", "--junit", str(junit), "--github", str(zero), str(bad))
    assert result.returncode == 3, result.stderr

    root = ET.parse(junit).getroot()  # raised "not well-formed" with the raw ESC
    names = [case.get("name") for case in root.iter("testcase")]
    assert names == [str(p).replace(EVIL, SHOWN) for p in (zero, bad)]

    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert annotations and "\x1b" not in result.stdout and "\r" not in result.stdout
    files = [re.match(r"::\w+ file=([^,]*),title=", line) for line in annotations]
    assert all(files), annotations
    # workflow-command property escaping (%, CR, LF, colon, comma), the ESC made visible
    want = str(zero).replace(EVIL, "evil\\x1b[31m%0D%0A%2Ca%3Ab%2541")
    assert want in {m.group(1) for m in files if m}

    text = run_cli("validate", str(zero), str(bad))
    assert "\x1b" not in text.stdout and "\\x1b[31m" in text.stdout
    inspect = run_cli("inspect", str(bad))
    line = _stderr_line(inspect)
    assert "\x1b" not in line and "evil\\x1b[31m ,a:b%41.bad" in line  # CR LF folded
    doc = json.loads(run_cli("validate", "--json", str(zero)).stdout)
    assert doc["files"][0]["path"] == str(zero)  # JSON stays exact (json escapes it)


# --- 11: exit 5 when the output cannot be written, naming the user's path ----------------------

# Faults installed in a subprocess before the CLI runs: a full disk (every write fails with
# ENOSPC, like /dev/full) and a folder the user may not write (creating anything fails with
# EACCES, naming the file being created as the OS does). chmod does not stop root, hence this.
FAULTS = {
    "full": (
        "from sa3ckpt.io import atomic\n"
        "def fdopen(fd, *a, **k):\n"
        "    os.close(fd); return open('/dev/full', 'wb')\n"
        "atomic.os.fdopen = fdopen\n"
    ),
    "denied": (
        "real_open, real_mkdir = os.open, os.mkdir\n"
        "def denied(path):\n"
        "    if os.path.abspath(path).startswith(FOLDER):\n"
        "        raise PermissionError(13, 'Permission denied', path)\n"
        "def fake_open(path, flags, *a, **k):\n"
        "    if flags & os.O_CREAT: denied(path)\n"
        "    return real_open(path, flags, *a, **k)\n"
        "def fake_mkdir(path, *a, **k):\n"
        "    denied(path); return real_mkdir(path, *a, **k)\n"
        "os.open, os.mkdir = fake_open, fake_mkdir\n"
    ),
}
CAUSE = {"full": "No space left on device", "denied": "Permission denied"}


def _run_with_fault(fault: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = (
        f"import os, sys\nFOLDER = {str(folder) + os.sep!r}\n"
        + FAULTS[fault]
        + f"from sa3ckpt.cli import main\nsys.exit(main({list(args)!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


@dataclass(frozen=True)
class DiffusersInputs:
    """A complete DiT base small enough for tests (diffusers needs E a multiple of 64), the
    same base as a diffusers folder, and an adapter that fits it."""

    official: str
    folder: str
    adapter: str


@pytest.fixture(scope="module")
def diffusers_inputs(tmp_path_factory: pytest.TempPathFactory) -> DiffusersInputs:
    work = tmp_path_factory.mktemp("diffusers-inputs")
    topology = Topology(
        embed_dim=64,
        depth=2,
        differential=False,
        io_channels=8,
        cond_token_dim=12,
        timestep_features=8,
        seconds_features=8,
    )
    fam = Family("tiny-small-64", "diffusers-shaped test family", topology, (), test_only=True)
    official = work / "official.safetensors"
    save_file(official_full_tensors(fam, seed=0), str(official))
    folder = work / "diffusers"
    convert_base(official, folder, to="diffusers")
    adapter = synth_adapter(fam, "lora", rank=4, seed=5)
    adapter_path = work / "adapter.safetensors"
    save_file(adapter.file_tensors("sa3", "F32"), str(adapter_path), adapter.metadata())
    return DiffusersInputs(str(official), str(folder), str(adapter_path))


# command -> (arguments writing OUT, the output's name: a file or a folder)
WRITERS: dict[str, tuple[Callable[[str, DiffusersInputs], list[str]], str]] = {
    "convert-sa3": (lambda o, d: ["convert", LORA, "-o", o, "--to", "sa3"], "r.safetensors"),
    "convert-peft": (lambda o, d: ["convert", LORA, "-o", o, "--to", "peft"], "r-peft"),
    "convert-base": (lambda o, d: ["convert", BASE, "-o", o, "--to", "mlx"], "r.safetensors"),
    "convert-diffusers": (
        lambda o, d: ["convert", d.official, "-o", o, "--to", "diffusers"],
        "r-diffusers",
    ),
    "merge": (lambda o, d: ["merge", BASE, LORA, "-o", o], "r.safetensors"),
    "merge-folder": (lambda o, d: ["merge", d.folder, d.adapter, "-o", o], "r-folder"),
    "combine": (lambda o, d: ["combine", LORA, "-o", o, "--method", "cat"], "r.safetensors"),
    "junit": (lambda o, d: ["validate", LORA, "--junit", o], "r.xml"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_unwritable_output_is_exit_5_naming_the_output(
    tmp_path: Path, fault: str, command: str, diffusers_inputs: DiffusersInputs
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    arguments, name = WRITERS[command]
    out = str(folder / name)
    result = _run_with_fault(fault, folder, *arguments(out, diffusers_inputs))
    assert result.returncode == 5, result.stderr
    line = _stderr_line(result)
    assert line == f"sa3ckpt: error: cannot write {out}: {CAUSE[fault]} (nothing was written)"
    assert not TEMP_NAME.search(result.stderr + result.stdout)
    assert os.listdir(folder) == []


def test_empty_output_path_is_a_usage_error(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for args in (["convert", LORA, "-o", "", "--to", "sa3"], ["merge", BASE, LORA, "-o", ""]):
        result = subprocess.run(
            [sys.executable, "-m", "sa3ckpt", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert result.returncode == 2, result.stderr
        assert _stderr_line(result) == "sa3ckpt: error: the output path is empty"
        assert os.listdir(tmp_path) == ["work"] and os.listdir(work) == []


def test_special_file_output_is_refused_not_replaced(tmp_path: Path) -> None:
    """A FIFO stands in for a device: as root, rename would have replaced /dev/null itself."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = run_cli("convert", LORA, "-o", str(fifo), "--to", "sa3", "--force")
    assert result.returncode == 2
    assert f"{fifo} is not a regular file" in _stderr_line(result)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]


def test_swapped_merge_arguments_get_a_hint(tmp_path: Path) -> None:
    result = run_cli("merge", LORA, BASE, "-o", str(tmp_path / "m.safetensors"))
    assert result.returncode == 2
    line = _stderr_line(result)
    assert line.startswith(f"sa3ckpt: error: {LORA}: the first argument is an adapter")
    assert "merge takes BASE first" in line and os.listdir(tmp_path) == []


def test_missing_paths_are_exit_3_and_say_so(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.safetensors")
    result = run_cli("validate", missing)
    assert result.returncode == 3
    assert f"not-found: {missing} does not exist" in result.stdout
    assert "re-export" not in result.stdout
    doc = json.loads(run_cli("validate", "--json", missing, LORA).stdout)
    assert doc["exit_code"] == 3 and doc["files"][0]["findings"][0]["rule"] == "not-found"
    assert doc["files"][1]["status"] == "pass"
    tui = run_cli("tui", missing)
    assert tui.returncode == 3  # as `inspect` of the same path
    assert _stderr_line(tui) == f"sa3ckpt: error: {missing}: no such file or folder"


def test_unmapped_base_tensors_name_the_option(tmp_path: Path) -> None:
    tensors = load_file(BASE)
    tensors["conditioner.conditioners.prompt.proj.weight"] = np.zeros((2, 2), np.float16)
    base = tmp_path / "base-extra.safetensors"
    save_file(tensors, str(base))
    result = run_cli("convert", str(base), "-o", str(tmp_path / "o.safetensors"), "--to", "mlx")
    assert result.returncode == 4
    line = _stderr_line(result)
    assert "pass --drop-unmapped to leave them out" in line and "drop_unmapped" not in line


def test_merge_ledger_counts_each_tensor_once_with_dtype(tmp_path: Path) -> None:
    out = str(tmp_path / "m.safetensors")
    result = run_cli("merge", BASE, LORA, "-o", out, "--dtype", "fp32", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    others = len(load_file(BASE)) - len(doc["merged"])
    assert doc["copied"] + doc["cast"] == others and doc["cast"] == others
    text = run_cli("merge", BASE, LORA, "-o", out, "--dtype", "fp32", "--force")
    assert f"0 other tensors copied bit-exactly, {others} other tensors cast" in text.stdout


def test_docs_exit_code_table_is_the_error_classes() -> None:
    """Every exit code an error class carries has a row in the docs' exit-code page, and no
    row is made up; validate's page documents its own codes."""
    docs = Path(__file__).parents[1] / "docs"
    page = (docs / "reference" / "exit-codes.md").read_text(encoding="utf-8")
    table = page[page.index("Exit codes (the contract for every command):") :]
    table = table[: table.index("\n\n", table.index("| code |"))]
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.+) \|$", table, re.M)}

    def codes(cls: type[Sa3ckptError]) -> set[int]:
        return {cls.exit_code}.union(*(codes(sub) for sub in cls.__subclasses__()))

    assert set(rows) == {EXIT_OK} | codes(Sa3ckptError) - {Sa3ckptError.exit_code} | {1}
    assert rows[OutputError.exit_code].startswith("the output cannot be written")
    validate_page = (docs / "commands" / "validate.md").read_text(encoding="utf-8")
    validate = validate_page[validate_page.index("Exit codes: 0 all pass") :].split("\n\n")[0]
    assert "5 the\n`--junit` report cannot be written" in validate


# --- 12: --force replaces folder outputs atomically ---------------------------------------------


def test_demo_twice_into_one_folder(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    for _ in range(2):
        result = run_cli("demo", "--dir", str(work))
        assert result.returncode == 0, result.stderr
    assert is_peft_dir(work / "my-dora-peft")
    assert not [n for n in os.listdir(work) if TEMP_NAME.search(n)]


@pytest.mark.parametrize("command", ["convert-diffusers", "merge-folder"])
def test_force_replaces_a_diffusers_folder(
    tmp_path: Path, command: str, diffusers_inputs: DiffusersInputs
) -> None:
    out = tmp_path / "folder"
    arguments = WRITERS[command][0](str(out), diffusers_inputs)
    assert run_cli(*arguments).returncode == 0
    (out / "stale.txt").write_text("from the old folder")
    again = run_cli(*arguments)
    assert again.returncode == 2 and "--force" in _stderr_line(again)
    forced = run_cli(*arguments, "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert os.listdir(tmp_path) == ["folder"]


def test_convert_force_replaces_a_peft_folder_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "peft"
    assert run_cli("convert", LORA, "-o", str(out), "--to", "peft").returncode == 0
    again = run_cli("convert", DORA, "-o", str(out), "--to", "peft")
    assert again.returncode == 2 and "--force" in _stderr_line(again)
    forced = run_cli("convert", DORA, "-o", str(out), "--to", "peft", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    assert os.listdir(tmp_path) == ["peft"]
    other = tmp_path / "photos"
    other.mkdir()
    refused = run_cli("convert", LORA, "-o", str(other), "--to", "peft", "--force")
    assert refused.returncode == 2 and "another kind" in _stderr_line(refused)


def test_failed_folder_swap_restores_the_old_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text("old")
    real_replace = os.replace
    calls: list[tuple[str, str]] = []

    def failing(src: str, dst: str) -> None:
        calls.append((os.fspath(src), os.fspath(dst)))
        if len(calls) == 2:  # old renamed aside; the new one cannot be renamed in
            raise OSError(28, "No space left on device", os.fspath(src))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing)
    staged = StagedOutput(out, directory=True, replaceable=is_peft_dir)
    with pytest.raises(OutputError, match="No space left"), staged:
        os.mkdir(staged.temp_path)
        Path(staged.temp_path, "adapter_config.json").write_text("new")
    assert (out / "adapter_config.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["out"]
    assert calls[0][0] == str(out) and calls[2] == (calls[0][1], str(out))  # renamed back


def test_full_disk_mid_folder_names_the_folder_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, diffusers_inputs: DiffusersInputs
) -> None:
    """A shard failing mid-write: the folder (not the shard's temp name) is named, and the
    staged folder is removed although the shard writer's own exit raises."""
    original = SafetensorsStreamWriter.write
    calls = {"n": 0}

    def failing(self: SafetensorsStreamWriter, name: str, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        original(self, name, array)

    monkeypatch.setattr(SafetensorsStreamWriter, "write", failing)
    out = tmp_path / "folder"
    with pytest.raises(OutputError) as info:
        convert_base(diffusers_inputs.official, out, to="diffusers")
    assert info.value.path == str(out) and not TEMP_NAME.search(str(info.value))
    assert os.listdir(tmp_path) == []
