"""Issue 13 items 6, 7, 13 through the CLI: --rank bounds, NaN/Inf, output suffix vs --to.

Each case runs the command as a user does and checks the exit code, the one stderr line
and that nothing was written where the command refuses.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.io.formats import CONVERT_OUTPUTS, output_suffixes
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.convert.adapters import ADAPTER_TARGETS, verify
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import BASE_OFFICIAL, run_cli

SMALL = DATA_DIR / "adapters" / "tiny-small"
LORA = str(SMALL / "lora.safetensors")
LAYERS0 = str(SMALL / "lora.layers-0.safetensors")
# tiny-medium's narrowest targets are 8 wide; tiny-small has 6-wide ones (to_timestep_embed.0)
MEDIUM = DATA_DIR / "adapters" / "tiny-medium"
MEDIUM_BASE = DATA_DIR / "bases" / "tiny-medium.official.safetensors"
FAM = FAMILIES["tiny-small"]
HAS_GGUF = importlib.util.find_spec("gguf") is not None


def _one_error_line(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sa3ckpt: error: "), result.stderr
    return lines[0]


# --- item 6: combine --method svd --rank R is bounded ------------------------------------------


@pytest.mark.parametrize("rank", ["2000", "100000"])
def test_svd_rank_past_what_any_target_holds_is_exit_2(tmp_path: Path, rank: str) -> None:
    out = tmp_path / "c.safetensors"
    result = run_cli("combine", LORA, "-o", str(out), "--method", "svd", "--rank", rank)
    line = _one_error_line(result, 2)
    assert f"--rank {rank}" in line and "at most 4" in line and "sum of the input ranks" in line
    assert list(tmp_path.iterdir()) == []


def _validates_strict(path: Path) -> None:
    check = run_cli("validate", "--strict", str(path))
    assert check.returncode == 0, check.stdout


def test_svd_rank_bound_for_dora_is_the_shape_not_the_input_ranks(tmp_path: Path) -> None:
    """DoRA deltas are full-rank: the bound is the shape (8 here), not the input ranks (4)."""
    dora = str(MEDIUM / "dora-rows.safetensors")
    base = ["--base", str(MEDIUM_BASE)]
    over = run_cli(
        "combine", dora, "-o", str(tmp_path / "a.safetensors"), "--method", "svd", "--rank", "9",
        *base,
    )  # fmt: skip
    assert "at most 8 (min(fan_out, fan_in)" in _one_error_line(over, 2)
    out = tmp_path / "b.safetensors"
    fits = run_cli(
        "combine", dora, "-o", str(out), "--method", "svd", "--rank", "8", *base, "--json",
    )  # fmt: skip
    assert fits.returncode == 0, fits.stderr
    assert json.loads(fits.stdout)["rank"] == 8  # twice the input rank: the shape bounds DoRA
    _validates_strict(out)


def test_svd_rank_past_the_narrowest_target_is_exit_2(tmp_path: Path) -> None:
    """Ranks 7 and 8 are useful at tiny-small's 12-wide layers-0 targets (4 + 4 input ranks),
    but the one-rank output cannot hold them at the 6-wide to_timestep_embed.0."""
    for rank in ("7", "8"):
        out = tmp_path / f"c{rank}.safetensors"
        result = run_cli(
            "combine", LORA, LAYERS0, "-o", str(out), "--method", "svd", "--rank", rank
        )
        line = _one_error_line(result, 2)
        assert f"--rank {rank} does not fit model.to_timestep_embed.0: at most 6 (" in line
        assert "min(fan_out, fan_in)" in line and "validate" in line
        assert not out.exists()
    out = tmp_path / "c6.safetensors"
    fits = run_cli("combine", LORA, LAYERS0, "-o", str(out), "--method", "svd", "--rank", "6")
    assert fits.returncode == 0, fits.stderr
    _validates_strict(out)


def test_cat_past_the_narrowest_target_is_exit_2_naming_svd(tmp_path: Path) -> None:
    out = tmp_path / "c.safetensors"
    result = run_cli("combine", LORA, LAYERS0, "-o", str(out), "--method", "cat")
    line = _one_error_line(result, 2)
    assert "--method cat would write rank 8" in line
    assert "model.to_timestep_embed.0 holds at most 6 (min(fan_out, fan_in))" in line
    assert "--method svd --rank R with R <= 6" in line and "exact when R" in line
    assert list(tmp_path.iterdir()) == []
    medium = run_cli(
        "combine", str(MEDIUM / "lora.safetensors"), str(MEDIUM / "lora.layers-0.safetensors"),
        "-o", str(out), "--method", "cat",
    )  # fmt: skip
    assert medium.returncode == 0, medium.stderr  # rank 8 fits tiny-medium's 8-wide targets
    _validates_strict(out)


def test_svd_rank_at_the_bound_is_exact_and_validates(tmp_path: Path) -> None:
    out = tmp_path / "c.safetensors"
    lora, layers0 = (str(MEDIUM / f"{s}.safetensors") for s in ("lora", "lora.layers-0"))
    result = run_cli(
        "combine", lora, layers0, "-o", str(out), "--method", "svd", "--rank", "8", "--json"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["rank"] == 8
    # layers-0 targets hold rank 4 + 4; the others only 4: padded with zeros (still valid).
    assert any("targets hold less than rank 8" in n for n in doc["notes"]), doc["notes"]
    assert min(doc["retained_energy"].values()) == pytest.approx(1.0)
    _validates_strict(out)


def test_rank_with_cat_is_a_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "c.safetensors"
    result = run_cli("combine", LORA, "-o", str(out), "--method", "cat", "--rank", "4")
    line = _one_error_line(result, 2)
    assert "--rank" in line and "--method svd" in line
    assert not out.exists()


# --- item 7: NaN/Inf in convert and combine ------------------------------------------------------


def _nonfinite_adapter(tmp_path: Path, value: float = np.nan) -> tuple[Path, str]:
    """A tiny-small lora with one bad entry in one lora_B; returns the file and its target."""
    adapter = synth_adapter(FAM, "lora")
    tensors = adapter.file_tensors()
    key = [k for k in tensors if k.endswith("lora_B")][1]
    tensors[key] = tensors[key].astype(np.float32)  # fp32, so 1e6 is finite as stored
    tensors[key][0, 1] = value
    path = tmp_path / "inputs" / "bad.safetensors"
    path.parent.mkdir()
    write_safetensors(path, tensors, adapter.metadata())
    target = key.removesuffix(".lora_B").replace(".parametrizations.weight.0", "")
    return path, target


NONFINITE_RUNS = {
    "convert": lambda src, out: ["convert", src, "-o", out, "--to", "sa3"],
    "combine-cat": lambda src, out: ["combine", src, "-o", out, "--method", "cat"],
    "combine-svd": lambda src, out: ["combine", src, "-o", out, "--method", "svd", "--rank", "2"],
}


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("run", list(NONFINITE_RUNS))
def test_nonfinite_input_is_exit_4_naming_the_tensor(tmp_path: Path, run: str, value) -> None:
    bad, target = _nonfinite_adapter(tmp_path, value)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(*NONFINITE_RUNS[run](str(bad), str(out / "o.safetensors")))
    line = _one_error_line(result, 4)
    assert str(bad) in line and f"{target} lora_B" in line and "not finite" in line
    assert "--allow-nonfinite" in line
    assert list(out.iterdir()) == []


def test_convert_allow_nonfinite_keeps_nan_at_its_place_and_says_so(tmp_path: Path) -> None:
    bad, target = _nonfinite_adapter(tmp_path)
    out = tmp_path / "o.safetensors"
    result = run_cli("convert", str(bad), "-o", str(out), "--to", "mlx", "--allow-nonfinite")
    assert result.returncode == 0, result.stderr
    assert "kept NaN/Inf (--allow-nonfinite)" in result.stdout and target in result.stdout
    assert "worst relative error" in result.stdout
    back = load_adapter(out).tensors[target]["lora_B"]
    assert np.isnan(np.asarray(back, np.float32)[0, 1])
    assert np.count_nonzero(np.isnan(np.asarray(back, np.float32))) == 1


def test_verification_compares_nan_positions(tmp_path: Path) -> None:
    bad, target = _nonfinite_adapter(tmp_path)
    source = load_adapter(bad)
    assert verify(source, source, set())[0] == 0.0
    moved = {t: dict(p) for t, p in source.tensors.items()}
    b = np.array(moved[target]["lora_B"], np.float32)
    b[0, 1], b[0, 0] = b[0, 0], np.nan  # the NaN moved: a different adapter
    moved[target]["lora_B"] = b
    rebuilt = AdapterCheckpoint(source.config, source.adapter_type, moved)
    worst, where = verify(source, rebuilt, set())
    assert worst == np.inf and where == target


def test_fp16_overflow_in_convert_is_exit_4(tmp_path: Path) -> None:
    big, target = _nonfinite_adapter(tmp_path, 1e6)  # finite in fp32, inf in fp16
    out = tmp_path / "o.safetensors"
    line = _one_error_line(run_cli("convert", str(big), "-o", str(out), "--to", "sa3"), 4)
    assert target in line and "F16" in line and "--dtype fp32" in line
    assert not out.exists()
    ok = run_cli("convert", str(big), "-o", str(out), "--to", "sa3", "--dtype", "fp32")
    assert ok.returncode == 0, ok.stderr


def test_combine_cat_allow_nonfinite_carries_nan_and_svd_still_refuses(tmp_path: Path) -> None:
    bad, target = _nonfinite_adapter(tmp_path)
    out = tmp_path / "c.safetensors"
    result = run_cli(
        "combine", str(bad), "-o", str(out), "--method", "cat", "--allow-nonfinite", "--json"
    )
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert any("--allow-nonfinite" in n and target in n for n in notes), notes
    weights = load_file(str(out))
    assert sum(int(np.isnan(v.astype(np.float32)).sum()) for v in weights.values()) == 1
    svd = run_cli(
        "combine", str(bad), "-o", str(tmp_path / "s.safetensors"), "--method", "svd",
        "--rank", "2", "--allow-nonfinite",
    )  # fmt: skip
    assert "--method svd cannot factor NaN/Inf" in _one_error_line(svd, 4)


# --- item 13: an output suffix that contradicts --to ---------------------------------------------


@pytest.mark.parametrize(
    ("to", "name", "expected"),
    [
        ("sa3cpp", "x.safetensors", "*.gguf"),
        ("mlx", "x.gguf", "*.safetensors"),
        ("sa3", "x.npz", "*.safetensors"),
        ("peft", "x.safetensors", "without a checkpoint suffix"),
        ("bare", "x.ckpt", "*.safetensors"),
    ],
)
def test_adapter_output_suffix_must_match_to(tmp_path: Path, to: str, name: str, expected: str):
    out = tmp_path / name
    result = run_cli("convert", LORA, "-o", str(out), "--to", to, "--drop-conditioner")
    line = _one_error_line(result, 2)
    assert f"--to {to}" in line and expected in line and str(out) in line
    assert list(tmp_path.iterdir()) == []


def test_base_output_suffix_must_match_to(tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    result = run_cli("convert", str(BASE_OFFICIAL), "-o", str(out), "--to", "mlx")
    assert "*.safetensors or *.npz" in _one_error_line(result, 2)
    assert not out.exists()


@pytest.mark.skipif(not HAS_GGUF, reason="gguf extra missing")
@pytest.mark.parametrize("name", ["x.GGUF", "x"])
def test_matching_case_insensitive_or_absent_suffix_is_accepted(tmp_path: Path, name: str):
    out = tmp_path / name
    result = run_cli("convert", LORA, "-o", str(out), "--to", "sa3cpp", "--drop-conditioner")
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_every_adapter_target_has_a_suffix_row() -> None:
    assert {to for kind, to in CONVERT_OUTPUTS if kind == "adapter"} == set(ADAPTER_TARGETS)
    assert output_suffixes("adapter", "sa3cpp") == (".gguf",)
    assert output_suffixes("adapter", "peft") == ()
