"""inspect and validate as a user and a CI job run them: subprocess, exit codes, documents."""

from __future__ import annotations

import json
import pickle
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fixtures.generate import DATA_DIR
from fixtures.malformed import malformed_corpus
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.io import safetensors as st
from sa3ckpt.ops.inspect.report import inspect_path
from tests.helpers import run_cli

ADAPTERS = DATA_DIR / "adapters"
GOOD = [
    *(
        ADAPTERS / fam / f"{t}.safetensors"
        for fam in ("tiny-medium", "tiny-small")
        for t in ADAPTER_TYPES
    ),
    *(
        ADAPTERS / fam / d
        for fam in ("tiny-medium", "tiny-small")
        for d in ("peft-lora", "peft-dora", "peft-rslora")
    ),
    *(
        ADAPTERS / fam / f"lora.{d}.safetensors"
        for fam in ("tiny-medium", "tiny-small")
        for d in ("bare", "mlx")
    ),
]


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def test_inspect_json_for_every_good_file_in_one_process() -> None:
    result = run_cli("inspect", "--json", *map(str, GOOD))
    _no_traceback(result)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and len(doc["files"]) == len(GOOD)
    for path, report in zip(GOOD, doc["files"], strict=True):
        assert report["family"]["name"] == path.parent.name, path
        assert report["adapter_type"]["resolved"] is not None
        assert report["targets"]["coverage"]["missing"] == [], path
    by_name = {Path(r["path"]).name: r for r in doc["files"]}
    assert by_name["peft-dora"]["adapter_type"]["resolved"] == "dora-rows"
    assert by_name["peft-dora"]["dialect"]["name"] == "peft"
    assert by_name["peft-rslora"]["scale"] == pytest.approx(8 / 2)  # alpha / sqrt(r), r = 4
    assert by_name["lora.mlx.safetensors"]["dialect"]["name"] == "mlx"


def test_inspect_human_output_has_coverage_and_metadata() -> None:
    result = run_cli("inspect", str(ADAPTERS / "tiny-medium" / "dora-rows.underfit.safetensors"))
    assert result.returncode == 0
    out = result.stdout
    assert "dora-rows" in out and "15 expected, 15 present, 0 missing" in out
    assert "coverage" in out and "●" in out and "conditioner 1/1" in out


def test_inspect_stats_json() -> None:
    result = run_cli(
        "inspect",
        "--json",
        "--stats",
        str(ADAPTERS / "tiny-small" / "lora.zero-effect.safetensors"),
    )
    stats = json.loads(result.stdout)["files"][0]["stats"]
    assert stats["zero_effect_targets"] == 40 and stats["update_norm_total"] == 0.0
    lora = run_cli(
        "inspect", "--json", "--stats", str(ADAPTERS / "tiny-small" / "lora.safetensors")
    )
    row = next(iter(json.loads(lora.stdout)["files"][0]["stats"]["targets"].values()))
    assert row["update_norm"] == row["delta_norm"] > 0


def test_inspect_reads_no_tensor_data_without_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self, name):  # any tensor read would fail the test
        raise AssertionError(f"tensor data read: {name}")

    monkeypatch.setattr(st.SafetensorsFile, "array", boom)
    for path in GOOD:
        inspect_path(path)
    with pytest.raises(AssertionError, match="tensor data read"):
        inspect_path(GOOD[0], stats=True)


def test_inspect_escapes_control_characters(tmp_path: Path) -> None:
    src = ADAPTERS / "tiny-small" / "lora.safetensors"
    with st.open_safetensors(src) as f:
        tensors = {k: f.array(k).copy() for k in f}
        metadata = dict(f.metadata)
    metadata["note"] = "evil\x1b[2J\x1b]0;pwned\x07\rline"
    path = tmp_path / "evil.safetensors"
    st.write_safetensors(path, tensors, metadata)
    human = run_cli("inspect", str(path))
    assert "\x1b" not in human.stdout and "\\x1b[2J" in human.stdout
    doc = json.loads(run_cli("inspect", "--json", str(path)).stdout)
    assert doc["files"][0]["metadata"]["note"] == metadata["note"]  # JSON stays exact


@pytest.mark.parametrize("name", sorted(malformed_corpus()))
def test_inspect_malformed_is_exit_3_one_line(name: str) -> None:
    result = run_cli("inspect", str(DATA_DIR / "malformed" / name))
    _no_traceback(result)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0]
    assert malformed_corpus()[name][1] in lines[0]


def test_inspect_refuses_pickle_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    result = run_cli("inspect", str(path))
    assert result.returncode == 3 and "--allow-pickle" in result.stderr
    missing = run_cli("inspect", str(tmp_path / "nope.safetensors"))
    assert missing.returncode == 3 and "nope.safetensors" in missing.stderr
    _no_traceback(missing)


def test_validate_walks_folders_and_passes_good_files() -> None:
    result = run_cli("validate", "--json", str(ADAPTERS))
    _no_traceback(result)
    doc = json.loads(result.stdout)
    assert result.returncode == 0 and doc["exit_code"] == 0
    paths = {Path(f["path"]).name for f in doc["files"]}
    assert {"peft-lora", "peft-dora", "bora-xs.safetensors"} <= paths
    assert doc["summary"]["files"] == len(doc["files"]) and doc["summary"]["failed"] == 0
    # a PEFT folder is one adapter: its inner files are not listed separately
    assert not any(
        p.endswith("adapter_model.safetensors") for p in (f["path"] for f in doc["files"])
    )


def test_validate_exit_codes() -> None:
    good = str(ADAPTERS / "tiny-medium" / "lora.safetensors")
    zero = str(ADAPTERS / "tiny-medium" / "lora.zero-effect.safetensors")
    base = str(DATA_DIR / "bases" / "tiny-medium.official.safetensors")
    bad = str(DATA_DIR / "malformed" / "overlap.safetensors")
    assert run_cli("validate", good).returncode == 0
    assert run_cli("validate", zero).returncode == 0
    assert run_cli("validate", "--strict", zero).returncode == 1
    assert run_cli("validate", base).returncode == 1
    assert run_cli("validate", good, bad).returncode == 3
    assert run_cli("validate", "--model", "huge", good).returncode == 2
    assert run_cli("validate", str(DATA_DIR / "bases" / "nothing-here")).returncode == 3


def test_validate_model_flag_catches_wrong_family() -> None:
    path = str(ADAPTERS / "tiny-small" / "lora.safetensors")
    result = run_cli("validate", "--json", "--model", "tiny-medium", path)
    assert result.returncode == 1
    rules = {f["rule"] for f in json.loads(result.stdout)["files"][0]["findings"]}
    assert {"shape-mismatch", "unknown-target", "base-model-mismatch"} <= rules


def test_validate_junit_and_github(tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    paths = [
        str(ADAPTERS / "tiny-medium" / "lora.safetensors"),
        str(DATA_DIR / "bases" / "tiny-small.mlx.safetensors"),
        str(DATA_DIR / "malformed" / "gap.safetensors"),
    ]
    result = run_cli("validate", "--junit", str(junit), "--github", *paths)
    assert result.returncode == 3
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "1"
    cases = suite.findall("testcase")
    assert (
        cases[0].find("failure") is None
        and cases[1].find("failure").get("type") == "not-an-adapter"
    )
    assert cases[2].find("error") is not None
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    assert any(
        line.startswith("::error file=") and "sa3ckpt not-an-adapter" in line
        for line in annotations
    )
    assert any("malformed" in line for line in annotations)


def test_validate_json_with_github_keeps_stdout_one_document() -> None:
    result = run_cli(
        "validate", "--json", "--github", str(DATA_DIR / "bases" / "tiny-small.mlx.safetensors")
    )
    json.loads(result.stdout)
    assert result.stderr.startswith("::error")


def test_validate_every_malformed_file_in_one_run() -> None:
    result = run_cli("validate", "--json", str(DATA_DIR / "malformed"))
    _no_traceback(result)
    doc = json.loads(result.stdout)
    assert result.returncode == 3 and doc["summary"]["malformed"] == len(malformed_corpus())


BASES = DATA_DIR / "bases"


@pytest.mark.parametrize(
    ("name", "naming", "family"),
    [
        ("tiny-small.official.safetensors", "official", "tiny-small"),
        ("tiny-medium.mlx.safetensors", "mlx", "tiny-medium"),
    ],
)
def test_inspect_of_a_base_says_it_is_a_base(name: str, naming: str, family: str) -> None:
    path = str(BASES / name)
    text = run_cli("inspect", path)
    _no_traceback(text)
    assert text.returncode == 0
    assert text.stdout.startswith(f"base {path}")
    assert f"base checkpoint, {naming} naming" in text.stdout and family in text.stdout
    assert "type" not in text.stdout.split() and "unmatched" not in text.stdout
    with st.open_safetensors(path) as handle:
        count = len(handle.header.tensors)
    assert f"{count} tensors" in text.stdout


def test_inspect_json_marks_bases_and_leaves_adapters_unchanged() -> None:
    base = str(BASES / "tiny-small.official.safetensors")
    adapter = str(ADAPTERS / "tiny-small" / "lora.safetensors")
    result = run_cli("inspect", "--json", base, adapter)
    assert result.returncode == 0
    base_doc, adapter_doc = json.loads(result.stdout)["files"]
    assert base_doc["kind"] == "base" and base_doc["naming"] == "official"
    assert base_doc["family"]["name"] == "tiny-small" and base_doc["tensors"] == 47
    assert base_doc["weights"] == 40 and "adapter_type" not in base_doc
    assert "kind" not in adapter_doc and adapter_doc["adapter_type"]["resolved"] == "lora"
    alone = json.loads(run_cli("inspect", "--json", adapter).stdout)["files"][0]
    assert adapter_doc == alone
