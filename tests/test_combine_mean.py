"""combine --method mean: a float64 weighted average of checkpoints of one run, refusals clear."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.errors import UsageError
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.library.combine import combine
from sa3ckpt.ops.merge.driver import AdapterArg
from sa3ckpt.ops.validate import validate_path
from sa3ckpt.synth import SynthAdapter, synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import run_cli

FAM = FAMILIES["tiny-small"]


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata through the safetensors package (not the code under test)."""
    with safe_open(str(path), "np") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def _write(tmp: Path, name: str, adapter: SynthAdapter, dtype: str = "F16") -> str:
    path = tmp / f"{name}.safetensors"
    write_safetensors(path, adapter.file_tensors(dtype=dtype), adapter.metadata())
    return str(path)


def _run(tmp: Path, kind: str, seeds=(1, 2, 3), **kw) -> list[str]:
    """Checkpoints of one run: one type, rank, alpha, targets; steps in the config."""
    return [
        _write(
            tmp,
            f"{kind}-step{seed}",
            synth_adapter(FAM, kind, rank=4, alpha=8, seed=seed, extra_config={"step": seed}, **kw),
        )
        for seed in seeds
    ]


def _ref_mean(paths: list[str], weights: list[float]) -> dict[str, np.ndarray]:
    """Independent reference: raw file tensors, float64, Σ w_i x_i / Σ w."""
    files = [read_safetensors(p)[0] for p in paths]
    total = sum(weights)
    return {
        key: sum(np.asarray(f[key], np.float64) * w for f, w in zip(files, weights, strict=True))
        / total
        for key in files[0]
    }


@pytest.mark.parametrize("kind", ["lora", "dora-rows", "bora", "dora-cols-xs"])
def test_mean_is_the_float64_weighted_average(tmp_path: Path, kind: str) -> None:
    paths = _run(tmp_path, kind)
    weights = [1.0, 2.0, 0.5]
    out = tmp_path / "soup.safetensors"
    ledger = combine(
        [AdapterArg(p, w) for p, w in zip(paths, weights, strict=True)],
        str(out),
        method="mean",
        dtype="fp32",
    )
    want = _ref_mean(paths, weights)
    got, meta = read_safetensors(out)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
    assert ledger.adapter_type == kind and ledger.rank == 4 and ledger.method == "mean"
    config = json.loads(meta["lora_config"])
    assert (config["adapter_type"], config["rank"], config["alpha"]) == (kind, 4, 8.0)
    assert config["base_model"] == FAM.name and "step" not in config  # step differs
    assert config["combine_method"] == "mean"
    assert [a["weight"] for a in config["combined_from"]] == weights
    assert any("step" in n for n in ledger.notes)
    assert not [f for f in validate_path(str(out)).findings if f.severity == "error"]


def test_mean_writes_the_inputs_dtype(tmp_path: Path) -> None:
    paths = _run(tmp_path, "dora-rows")
    out = tmp_path / "soup.safetensors"
    ledger = combine([AdapterArg(p, 1.0) for p in paths], str(out), method="mean")
    got, _ = read_safetensors(out)
    want = _ref_mean(paths, [1.0, 1.0, 1.0])
    for key, value in want.items():
        assert got[key].dtype == np.float16
        assert np.array_equal(got[key], value.astype(np.float16)), key
    assert any("F16, the inputs' dtype" in n for n in ledger.notes)
    # one checkpoint alone (any weight) is itself, bit for bit
    alone = tmp_path / "alone.safetensors"
    combine([AdapterArg(paths[0], 3.0)], str(alone), method="mean")
    first = read_safetensors(paths[0])[0]
    assert all(np.array_equal(read_safetensors(alone)[0][k], v) for k, v in first.items())


def _with_bases(adapter: SynthAdapter, seed: int) -> SynthAdapter:
    rng = np.random.default_rng(seed)
    for target in FAM.targets:
        if target.name in adapter.tensors:
            fan_out, fan_in = target.shape
            adapter.tensors[target.name]["U"] = rng.standard_normal((fan_out, 4))
            adapter.tensors[target.name]["V"] = rng.standard_normal((fan_in, 4))
    return adapter


def test_mean_keeps_identical_stored_xs_bases(tmp_path: Path) -> None:
    paths = [
        _write(tmp_path, f"xs{s}", _with_bases(synth_adapter(FAM, "lora-xs", seed=s), 7))
        for s in (1, 2)
    ]
    out = tmp_path / "soup.safetensors"
    combine([AdapterArg(p, 1.0) for p in paths], str(out), method="mean")
    got, first = read_safetensors(out)[0], read_safetensors(paths[0])[0]
    want = _ref_mean(paths, [1.0, 1.0])
    for key in got:
        if key.endswith((".U", ".V")):
            assert np.array_equal(got[key], first[key])
        else:
            assert np.array_equal(got[key], want[key].astype(np.float16)), key


def test_mean_drops_baked_norms(tmp_path: Path) -> None:
    adapters = []
    for seed in (1, 2):
        a = synth_adapter(FAM, "dora-rows", seed=seed, extra_config={"baked_norms": 3})
        for target in FAM.targets:
            if target.name in a.tensors:
                a.tensors[target.name]["baked_vnorm_row"] = 1.0 + seed + np.zeros(target.shape[0])
        adapters.append(_write(tmp_path, f"baked{seed}", a))
    out = tmp_path / "soup.safetensors"
    ledger = combine([AdapterArg(p, 1.0) for p in adapters], str(out), method="mean")
    got, meta = read_safetensors(out)
    assert not any(k.endswith("baked_vnorm_row") for k in got)
    assert "baked_norms" not in json.loads(meta["lora_config"])
    assert any("baked_vnorm_row dropped" in n for n in ledger.notes)


def _refused(tmp: Path, paths: list[str], code: int = 4, *extra: str) -> str:
    out = tmp / "refused.safetensors"
    proc = run_cli("combine", *paths, "-o", str(out), "--method", "mean", "--json", *extra)
    assert proc.returncode == code, proc.stderr
    assert not out.exists()
    lines = proc.stderr.strip().splitlines()
    error = json.loads(proc.stdout)  # --json: the one error document, its message the line
    assert (error["exit_code"], error["message"]) == (code, lines[-1])
    assert len(lines) == 1 and lines[0].startswith("sa3ckpt: error: ")
    return lines[0]


def test_mean_refuses_files_of_different_runs(tmp_path: Path) -> None:
    lora = _write(tmp_path, "lora", synth_adapter(FAM, "lora", rank=4, alpha=8, seed=1))

    def other(name: str, kind: str = "lora", fam=FAM, **kw) -> str:
        kw.setdefault("rank", 4)
        kw.setdefault("alpha", 8)
        return _write(tmp_path, name, synth_adapter(fam, kind, seed=2, **kw))

    cases = {
        "different adapter types (lora vs dora-rows)": other("dora", "dora-rows"),
        "different ranks (4 vs 2)": other("rank2", rank=2),
        "different alphas (8.0 vs 4.0)": other("alpha4", alpha=4),
        "different target sets": other("layers0", include=["layers.0."]),
        "lora_config base_model": other("base", extra_config={"base_model": "sa3-medium"}),
    }
    for cause, path in cases.items():
        line = _refused(tmp_path, [lora, path])
        assert "are not checkpoints of one run" in line and cause in line, (cause, line)
        assert lora in line and path in line
    # same names, other widths: one block of tiny-small vs tiny-medium
    small = other("small0", include=["layers.0."])
    medium = other("medium0", fam=FAMILIES["tiny-medium"], include=["layers.0."])
    line = _refused(tmp_path, [small, medium])
    assert "are not checkpoints of one run" in line and "has shape" in line


def test_mean_refuses_xs_bases_of_another_base(tmp_path: Path) -> None:
    a = _write(tmp_path, "a", _with_bases(synth_adapter(FAM, "dora-rows-xs", seed=1), 7))
    b = _write(tmp_path, "b", _with_bases(synth_adapter(FAM, "dora-rows-xs", seed=2), 8))
    line = _refused(tmp_path, [a, b])
    assert "stored XS base U differs" in line and "different bases" in line
    # stored in one file only: cannot be checked, refused too
    bare = _write(tmp_path, "bare", synth_adapter(FAM, "dora-rows-xs", seed=3))
    assert "stores" in _refused(tmp_path, [a, bare])


def test_mean_refuses_bad_weights_and_rank(tmp_path: Path) -> None:
    paths = _run(tmp_path, "lora", seeds=(1, 2))
    assert "positive weights" in _refused(tmp_path, [paths[0], paths[1] + ":0"], 2)
    assert "positive weights" in _refused(tmp_path, [paths[0], paths[1] + ":-1"], 2)
    assert "keeps the rank" in _refused(tmp_path, paths, 2, "--rank", "4")
    with pytest.raises(UsageError, match="--base is for cat and svd"):
        combine(
            [AdapterArg(p, 1.0) for p in paths],
            str(tmp_path / "x"),
            method="mean",
            base_path=paths[0],
        )


def test_mean_cli_ledger(tmp_path: Path) -> None:
    paths = _run(tmp_path, "dora-rows", seeds=(1, 2))
    out = tmp_path / "soup.safetensors"
    proc = run_cli(
        "combine", paths[0], paths[1] + ":3", "-o", str(out), "--method", "mean", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1 and doc["method"] == "mean" and doc["adapter_type"] == "dora-rows"
    assert [a["weight"] for a in doc["adapters"]] == [1.0, 3.0]
    assert any("weights 0.25, 0.75" in n for n in doc["notes"])
    assert len(doc["targets"]) == len(load_checkpoint(out).tensors)
    text = run_cli("combine", *paths, "-o", str(out), "--method", "mean", "--force")
    assert text.returncode == 0 and "combined by mean into a rank-4 dora-rows" in text.stdout
