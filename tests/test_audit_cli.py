"""`sa3ckpt inspect -r DIR --table` and `sa3ckpt hash` as a user runs them: exit codes, JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fixtures.generate import DATA_DIR
from tests.helpers import reference_hashes, run_cli, write_adapter


def _run_folder(tmp_path: Path) -> Path:
    for step in (10000, 900, 9000):
        write_adapter(tmp_path / "run-r4" / f"lora-step={step}.safetensors", seed=step)
    write_adapter(tmp_path / "run-r8" / "lora-step=50.safetensors")  # rank 4 under r8
    return tmp_path


def test_table_json_sorted_by_step(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    result = run_cli("inspect", "-r", str(folder), "--table", "--json", "--sort", "step")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["sort"] == "step" and doc["hashed"] is False
    assert [r["step"] for r in doc["rows"]] == [50, 900, 9000, 10000]
    flagged = doc["rows"][0]
    assert flagged["name"] == "run-r8/lora-step=50.safetensors"
    assert [f["code"] for f in flagged["flags"]] == ["name-rank"]
    assert {"code": "duplicate", "needs": "--hash"} in doc["checks_not_run"]
    assert all(r["tensor_sha256"] is None for r in doc["rows"])  # header-only by default


def test_table_text_and_hashes(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    result = run_cli("inspect", "-r", str(folder), "--table", "--hash")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "status", "type"] and "tensor sha256" in lines[0]
    path = folder / "run-r4" / "lora-step=900.safetensors"
    assert reference_hashes(path)[0][:12] in result.stdout
    assert "name-rank: name 'run-r8' claims rank 8, the adapter is rank 4" in result.stdout
    assert "checks run: name-rank, name-step, name-epoch, duplicate" in result.stdout


def test_table_with_a_malformed_file_exits_3(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    (folder / "run-r4" / "broken.safetensors").write_bytes(b"abc")
    result = run_cli("inspect", "-r", str(folder), "--table", "--json")
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert len(doc["rows"]) == 5 and doc["counts"]["malformed"] == 1
    broken = next(r for r in doc["rows"] if r["status"] == "malformed")
    assert "shorter than the 8-byte length prefix" in broken["error"]
    assert "broken.safetensors" in result.stderr


def test_table_usage_errors(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    for args in (
        ["inspect", str(folder), "--table"],  # a folder without -r
        ["inspect", "-r", str(folder), "--sort", "step"],  # --sort without --table
        ["inspect", "-r", str(folder), "--table", "--sort", "size"],
        ["inspect", "-r", str(folder), "--table", "--stats"],
    ):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1


def test_recursive_inspect_without_table(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path)
    result = run_cli("inspect", "-r", str(folder), "--json", "--hash")
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)["files"]
    assert len(files) == 4
    path = Path(files[0]["path"])
    expected = reference_hashes(path)
    assert (files[0]["hashes"]["tensor_sha256"], files[0]["hashes"]["file_sha256"]) == expected


def test_hash_command(tmp_path: Path) -> None:
    a = write_adapter(tmp_path / "a.safetensors")
    peft = DATA_DIR / "adapters" / "tiny-small" / "peft-lora"
    result = run_cli("hash", str(a), str(peft), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1
    first, second = doc["files"]
    assert (first["tensor_sha256"], first["file_sha256"]) == reference_hashes(a)
    assert first["tensor_sha256_short"] == first["tensor_sha256"][:12]
    weights = peft / "adapter_model.safetensors"
    assert (second["tensor_sha256"], second["file_sha256"]) == reference_hashes(weights)
    text = run_cli("hash", str(a))
    assert text.returncode == 0 and reference_hashes(a)[0] in text.stdout


def test_hash_unreadable_inputs_exit_3(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 20)
    a = write_adapter(tmp_path / "a.safetensors")
    result = run_cli("hash", str(broken), str(tmp_path / "missing.safetensors"), str(a), "--json")
    assert result.returncode == 3
    files = json.loads(result.stdout)["files"]
    assert [f["status"] for f in files] == ["malformed", "malformed", "ok"]
    assert files[0]["file_sha256"] == hashlib.sha256(broken.read_bytes()).hexdigest()
    assert files[1]["file_sha256"] is None
    assert result.stderr.count("sa3ckpt: error:") == 2
