"""XS bases sources: `sa3ckpt bases`, the official svd_bases.pt, sa3.cpp's bases GGUF; rank
slicing; the merge ledger says per target where bases came from; one SVD per target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.adapters.xs_bases import (
    compute_bases,
    load_bases,
    save_bases,
    svd_bases,
    svd_bases_with_spectrum,
)
from sa3ckpt.adapters.xs_sources import load_xs_bases
from sa3ckpt.errors import IncompatibleError, MalformedFileError
from sa3ckpt.io.legacy_pickle import PickleRefusedError
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.names import official_base_key, to_sa3cpp_stem
from sa3ckpt.ops.library.bases import compute_bases_file
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge import target as target_module
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from sa3ckpt.targets import FAMILIES
from tests.helpers import BASE_FAMILY, BASE_OFFICIAL, base_2d, run_cli

FAM = FAMILIES[BASE_FAMILY]
XS = str(DATA_DIR / "adapters" / BASE_FAMILY / "lora-xs.safetensors")
DORA_XS = str(DATA_DIR / "adapters" / BASE_FAMILY / "dora-rows-xs.safetensors")
RANK = 4  # the fixtures' rank


def _weights() -> dict[str, np.ndarray]:
    return {t.name: base_2d(t).astype(np.float16) for t in FAM.targets}


def _merge(tmp_path: Path, name: str, **kw: object):
    out = tmp_path / name
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL), [AdapterArg(XS, 1.0)], str(out), MergeOptions(**kw)
    )
    return ledger, load_file(str(out))


# --------------------------------------------------------------------------- rank slicing


def test_leading_columns_of_a_higher_rank_basis_are_the_lower_rank_basis() -> None:
    w = _weights()[FAM.targets[5].name]
    bases = compute_bases({"t": w}, 8, "x")
    u4, v4 = svd_bases(w, 4)
    u, v = bases.get("t", 4)  # type: ignore[misc]
    assert np.array_equal(u, u4) and np.array_equal(v, v4)
    with pytest.raises(ValueError, match="8 columns, the adapter needs rank 9"):
        bases.get("t", 9)


def test_bases_file_records_provenance_and_singular_values(tmp_path: Path) -> None:
    weights = _weights()
    path = tmp_path / "b.safetensors"
    made = compute_bases(weights, RANK, "tiny")
    save_bases(made, path)
    with open_safetensors(path) as f:
        meta = f.metadata
    assert meta["svd_dtype"] == "F32" and meta["tool"].startswith("sa3ckpt ")
    assert "tensor data" in meta["base_sha256_of"]
    assert meta["base_tensors_sha256"] == made.tensors_sha256()
    loaded = load_bases(path)
    name = FAM.targets[3].name
    _, _, s = svd_bases_with_spectrum(weights[name], RANK)
    assert np.allclose(loaded.singular_values[name], s, rtol=1e-6)
    assert loaded.singular_values[name].size == RANK + 1


def test_bases_file_with_bad_singular_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    save_bases(compute_bases({FAM.targets[0].name: _weights()[FAM.targets[0].name]}, 2, "x"), path)
    from sa3ckpt.io.safetensors import write_safetensors

    with open_safetensors(path) as f:
        meta = dict(f.metadata)
        tensors = {k: np.array(f.array(k)) for k in f}
    meta["singular_values"] = json.dumps({FAM.targets[0].name: [1.0, -2.0]})
    write_safetensors(path, tensors, meta)
    with pytest.raises(MalformedFileError, match="singular_values"):
        load_bases(path)


# --------------------------------------------------------------------------- official .pt


def _official_pt(path: Path, columns: int, edit=None) -> None:
    torch = pytest.importorskip("torch")
    obj = {}
    for t in FAM.targets:
        u, v = svd_bases(base_2d(t).astype(np.float16), columns)
        obj[official_base_key(t.name)] = {"U": torch.from_numpy(u), "V": torch.from_numpy(v)}
    if edit is not None:
        edit(obj, torch)
    torch.save(obj, path)


def test_official_svd_bases_pt_needs_opt_in_and_merges_like_rebuilt(tmp_path: Path) -> None:
    pt = tmp_path / "svd_bases.pt"
    _official_pt(pt, RANK + 2)  # more columns than the adapter's rank: sliced like official
    with pytest.raises(PickleRefusedError):
        load_xs_bases(pt)
    with pytest.raises(PickleRefusedError):
        _merge(tmp_path, "refused.safetensors", bases_path=str(pt))
    ledger, merged = _merge(tmp_path, "pt.safetensors", bases_path=str(pt), allow_pickle=True)
    _, rebuilt = _merge(tmp_path, "svd.safetensors")
    for key in rebuilt:
        assert np.array_equal(merged[key], rebuilt[key]), key
    assert ledger.bases_sources == {"bases file": len(FAM.targets)}
    assert all(
        where == f"loaded from {pt} (official svd_bases.pt)"
        for where in ledger.bases_by_target.values()
    )
    assert ledger.xs_uniqueness_unknown == len(FAM.targets)  # no σ in the official file


@pytest.mark.parametrize(
    ("edit", "cause"),
    [
        (lambda o, torch: o.update({next(iter(o)): torch.ones(2, 1)}), "expected a dict"),
        (lambda o, torch: o.update({"not.official.weight": {}}), "not an official weight key"),
        (lambda o, torch: next(iter(o.values())).pop("V"), "expected a dict with 'U' and 'V'"),
        (
            lambda o, torch: next(iter(o.values())).update({"V": torch.ones(3, 5)}),
            "different column counts",
        ),
        (
            lambda o, torch: next(iter(o.values())).update({"U": "text"}),
            "not a tensor",
        ),
    ],
)
def test_malformed_official_pt(tmp_path: Path, edit, cause: str) -> None:
    pt = tmp_path / "svd_bases.pt"
    _official_pt(pt, RANK, edit)
    with pytest.raises(MalformedFileError, match=cause):
        load_xs_bases(pt, allow_pickle=True)


# --------------------------------------------------------------------------- sa3.cpp GGUF


def _sa3cpp_gguf(path: Path, rank: int, extra: dict[str, np.ndarray] | None = None) -> None:
    """A bases GGUF written by the real gguf package the way sa3.cpp's tool writes one."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "sa3-lora")
    writer.add_uint32("lora.rank", rank)
    for t in FAM.targets:
        stem = to_sa3cpp_stem(t.name)
        if stem is None:
            continue
        u, v = svd_bases(base_2d(t).astype(np.float16), rank)
        writer.add_tensor(f"{stem}.U", u)
        writer.add_tensor(f"{stem}.V", v)
    for name, value in (extra or {}).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_sa3cpp_bases_gguf_merges_like_rebuilt_and_conditioner_is_rebuilt(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bases.gguf"
    _sa3cpp_gguf(path, RANK)
    bases = load_xs_bases(path)
    assert bases.origin == "sa3.cpp bases GGUF" and bases.rank == RANK
    ledger, merged = _merge(tmp_path, "g.safetensors", bases_path=str(path))
    _, rebuilt = _merge(tmp_path, "svd.safetensors")
    for key in rebuilt:
        assert np.array_equal(merged[key], rebuilt[key]), key
    no_stem = [t.name for t in FAM.targets if to_sa3cpp_stem(t.name) is None]
    assert no_stem  # the seconds conditioner has no sa3.cpp stem
    for t in FAM.targets:
        where = ledger.bases_by_target[t.name]
        assert ("rebuilt from base" in where) == (t.name in no_stem), (t.name, where)
    lines = ledger.lines()
    assert any(f"rebuilt from the base (not in the bases file): {no_stem[0]}" in x for x in lines)


def test_sa3cpp_gguf_with_adapter_tensors_is_not_a_bases_file(tmp_path: Path) -> None:
    path = tmp_path / "bases.gguf"
    _sa3cpp_gguf(path, RANK, {"dit.0.self.qkv.M_xs": np.zeros((RANK, RANK), np.float32)})
    with pytest.raises(MalformedFileError, match="not a bases GGUF"):
        load_xs_bases(path)


def test_bases_with_fewer_columns_than_the_rank_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bases.gguf"
    _sa3cpp_gguf(path, RANK - 1)
    with pytest.raises(IncompatibleError, match="the adapter needs rank 4"):
        _merge(tmp_path, "x.safetensors", bases_path=str(path))


# --------------------------------------------------------------------------- sa3ckpt bases


def test_bases_command_file_serves_merge_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "bases.safetensors"
    done = run_cli(
        "bases",
        str(BASE_OFFICIAL),
        "-o",
        str(out),
        "--rank",
        "6",
        "--targets",
        "layers.[0-1].",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["command"] == "bases" and doc["rank"] == 6
    chosen = [t.name for t in FAM.targets if ".layers.0." in t.name or ".layers.1." in t.name]
    assert sorted(doc["targets"]) == sorted(chosen)
    bases = load_bases(out)
    assert bases.rank == 6 and sorted(bases.targets()) == sorted(chosen)
    ledger, merged = _merge(tmp_path, "m.safetensors", bases_path=str(out))
    _, rebuilt = _merge(tmp_path, "svd.safetensors")
    for key in rebuilt:
        assert np.array_equal(merged[key], rebuilt[key]), key
    loaded = sum("loaded from" in w for w in ledger.bases_by_target.values())
    assert loaded == len(chosen)
    assert ledger.bases_other_w0 == []
    assert ledger.xs_uniqueness_unknown == 0  # σ recorded by `sa3ckpt bases`


def test_bases_command_skips_targets_too_small_for_the_rank(tmp_path: Path) -> None:
    smallest = min(min(t.shape) for t in FAM.targets)
    ledger = compute_bases_file(
        str(BASE_OFFICIAL), str(tmp_path / "b.safetensors"), rank=smallest + 1
    )
    assert ledger.skipped and all("> min" in why for _, why in ledger.skipped)
    assert len(ledger.targets) + len(ledger.skipped) == len(FAM.targets)


def test_bases_command_refuses_a_non_safetensors_output(tmp_path: Path) -> None:
    done = run_cli("bases", str(BASE_OFFICIAL), "-o", str(tmp_path / "b.pt"))
    assert done.returncode == 2 and "*.safetensors" in done.stderr


def test_merge_notes_bases_made_from_another_w0(tmp_path: Path) -> None:
    weights = {k: (v.astype(np.float32) * 1.01).astype(np.float16) for k, v in _weights().items()}
    path = tmp_path / "other.safetensors"
    save_bases(compute_bases(weights, RANK, "another base"), path)
    ledger, _ = _merge(tmp_path, "m.safetensors", bases_path=str(path))
    assert sorted(ledger.bases_other_w0) == sorted(t.name for t in FAM.targets)


# --------------------------------------------------------------------------- speed


def test_one_svd_per_target_for_a_stack(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    real = target_module.canonical_svd

    def counting(w):
        calls.append(w.shape)
        return real(w)

    monkeypatch.setattr(target_module, "canonical_svd", counting)
    out = tmp_path / "m.safetensors"
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(XS, 1.0), AdapterArg(DORA_XS, 0.5), AdapterArg(XS, 0.3)],
        str(out),
    )
    xs_targets = set(load_checkpoint(XS).tensors) | set(load_checkpoint(DORA_XS).tensors)
    assert len(calls) == len(xs_targets) == len(ledger.merged)


def test_merge_limits_blas_threads_per_worker(tmp_path: Path, monkeypatch) -> None:
    from threadpoolctl import threadpool_info

    seen: list[int] = []
    real = tiled.merge_rows

    def spy(*args, **kwargs):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiled, "merge_rows", spy)
    monkeypatch.setattr("sa3ckpt.threads.cores", lambda: 2)  # the default would be 2 threads
    merge_checkpoint(str(BASE_OFFICIAL), [AdapterArg(XS, 1.0)], str(tmp_path / "m.safetensors"))
    assert seen and set(seen) == {1}
