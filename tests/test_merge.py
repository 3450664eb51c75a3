"""merge: exact against the float64 reference, bit-exact copies, formats, ledgers, refusals."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.adapters.xs_bases import compute_bases, save_bases
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.base_checkpoint import NpzStreamWriter, open_base
from sa3ckpt.io.safetensors import read_header, write_safetensors
from sa3ckpt.names import mlx_base_key, official_base_key
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import PROVENANCE_KEY, AdapterArg, merge_checkpoint
from sa3ckpt.strengths import parse_adapter_arg
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import BASE_FAMILY, BASE_MLX, BASE_OFFICIAL, base_2d, run_cli
from tests.reference_math import REFERENCES, ref_svd_bases

FAMILY = BASE_FAMILY
FAM = FAMILIES[FAMILY]


def _adapter_path(stem: str, family: str = FAMILY) -> str:
    return str(DATA_DIR / "adapters" / family / f"{stem}.safetensors")


@functools.cache
def _checkpoint(stem: str):
    return load_checkpoint(_adapter_path(stem))


def _reference(stack: list[tuple[str, float]], semantics: str, target) -> np.ndarray:
    w0 = base_2d(target)
    items = []
    for stem, strength in stack:
        ckpt = _checkpoint(stem)
        if target.name not in ckpt.tensors:
            continue
        p = {k: np.asarray(v, np.float64) for k, v in ckpt.tensors[target.name].items()}
        if ckpt.kind.xs:
            p["U"], p["V"] = ref_svd_bases(w0.astype(np.float32), ckpt.config.rank)
        items.append((ckpt.adapter_type, p, ckpt.config.scale, strength))
    return REFERENCES[semantics](w0, items)


def _merged_2d(out: Path, naming: str, target) -> np.ndarray:
    arrays = load_file(str(out))
    if naming == "official":
        return arrays[official_base_key(target.name)].astype(np.float64).reshape(target.shape)
    w = arrays[mlx_base_key(target.name)].astype(np.float64)
    return w.transpose(0, 2, 1).reshape(target.shape) if w.ndim == 3 else w


def _check_all_targets(out: Path, naming: str, stack, semantics) -> None:
    for target in FAM.targets:
        want = _reference(stack, semantics, target)
        got = _merged_2d(out, naming, target)
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want)), target.name


@pytest.mark.parametrize("semantics", list(REFERENCES))
@pytest.mark.parametrize("strength", [0.0, 1e-5, 0.5, 1.0, 1.7])
@pytest.mark.parametrize("type_name", list(ADAPTER_TYPES))
def test_single_adapter_merge_matches_reference(tmp_path, type_name, strength, semantics) -> None:
    out = tmp_path / "out.safetensors"
    merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(_adapter_path(type_name), strength)],
        str(out),
        options=MergeOptions(semantics=semantics, dtype="fp32"),
    )
    _check_all_targets(out, "official", [(type_name, strength)], semantics)


STACKS = [
    [("lora", 0.5), ("dora-rows", 1.7)],
    [("bora-xs", 1.0), ("dora-cols", 0.5)],
    [("dora-rows-xs", 1.7), ("lora-xs", 1.0), ("bora", 0.5)],
    [("dora-cols-xs", 0.0), ("lora", 1.0)],
]


@pytest.mark.parametrize("semantics", list(REFERENCES))
@pytest.mark.parametrize("naming", ["official", "mlx"])
@pytest.mark.parametrize("stack", STACKS, ids=lambda s: "+".join(f"{t}@{w}" for t, w in s))
def test_stacked_mixed_merges_match_reference(tmp_path, stack, naming, semantics) -> None:
    base = BASE_OFFICIAL if naming == "official" else BASE_MLX
    out = tmp_path / "out.safetensors"
    ledger = merge_checkpoint(
        str(base),
        [AdapterArg(_adapter_path(t), w) for t, w in stack],
        str(out),
        options=MergeOptions(semantics=semantics, dtype="fp32"),
    )
    assert len(ledger.merged) == len(FAM.targets) and ledger.naming == naming
    _check_all_targets(out, naming, stack, semantics)


@pytest.mark.parametrize(
    "stems", [("dora-rows",), ("bora-xs",), ("dora-cols", "bora"), ("lora", "dora-rows-xs")]
)
def test_blend_at_one_is_the_runtime_file_and_at_zero_the_base(tmp_path, stems) -> None:
    """Bit for bit: s == 1 uses the stored magnitudes, s == 0 bypasses every DoRA/BoRA."""
    outputs = {}
    for semantics, strength in (("runtime", 1.0), ("blend", 1.0), ("blend", 0.0)):
        out = tmp_path / f"{semantics}-{strength}.safetensors"
        merge_checkpoint(
            str(BASE_OFFICIAL),
            [AdapterArg(_adapter_path(stem), strength) for stem in stems],
            str(out),
            options=MergeOptions(semantics=semantics),
        )
        outputs[semantics, strength] = load_file(str(out))
    base = load_file(str(BASE_OFFICIAL))
    for key, value in base.items():
        assert np.array_equal(outputs["blend", 1.0][key], outputs["runtime", 1.0][key]), key
        assert outputs["blend", 0.0][key].tobytes() == value.tobytes(), key


def test_blend_differs_from_runtime_for_dora(tmp_path) -> None:
    merged = {}
    for semantics in ("runtime", "blend"):
        out = tmp_path / f"{semantics}.safetensors"
        merge_checkpoint(
            str(BASE_OFFICIAL),
            [AdapterArg(_adapter_path("dora-rows"), 0.5)],
            str(out),
            options=MergeOptions(semantics=semantics, dtype="fp32"),
        )
        merged[semantics] = out
    target = FAM.by_name["model.transformer.layers.1.ff.ff.0.proj"]
    runtime = _merged_2d(merged["runtime"], "official", target)
    blend = _merged_2d(merged["blend"], "official", target)
    assert np.max(np.abs(blend - runtime)) > 1e-3 * np.max(np.abs(runtime))
    want = _reference([("dora-rows", 0.5)], "blend", target)
    assert np.max(np.abs(blend - want)) <= 1e-5 * np.max(np.abs(want))


def test_default_keeps_dtype_and_copies_other_tensors_bit_exactly(tmp_path) -> None:
    out = tmp_path / "out.safetensors"
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL), [AdapterArg(_adapter_path("dora-rows"), 0.8)], str(out)
    )
    before, after = load_file(str(BASE_OFFICIAL)), load_file(str(out))
    assert list(after) == list(before)
    targets = {official_base_key(t.name) for t in FAM.targets}
    others = [k for k in before if k not in targets]
    assert others and ledger.copied == len(others)
    for key in before:
        assert after[key].dtype == before[key].dtype == np.float16
        if key in targets:
            assert not np.array_equal(after[key], before[key])
        else:
            assert after[key].tobytes() == before[key].tobytes()
    # one rounding of the fp32 result to fp16
    target = FAM.by_name["model.transformer.layers.1.ff.ff.0.proj"]
    want = _reference([("dora-rows", 0.8)], "runtime", target)
    got = _merged_2d(out, "official", target)
    assert np.allclose(got, want, rtol=2**-10, atol=1e-6)


def test_provenance_metadata(tmp_path) -> None:
    out = tmp_path / "out.safetensors"
    merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(_adapter_path("lora"), 0.25), AdapterArg(_adapter_path("bora"), 1.5)],
        str(out),
        options=MergeOptions(semantics="delta"),
    )
    meta = read_header(out).metadata
    assert meta["format"] == "official-full"  # the base's own metadata is kept
    prov = json.loads(meta[PROVENANCE_KEY])
    assert prov["semantics"] == "delta" and prov["tool"].startswith("sa3ckpt ")
    assert [a["strength"] for a in prov["adapters"]] == [0.25, 1.5]
    import hashlib

    digest = hashlib.sha256(Path(_adapter_path("lora")).read_bytes()).hexdigest()
    assert prov["adapters"][0]["sha256"] == digest


def test_xs_bases_sources_are_reported(tmp_path) -> None:
    out = tmp_path / "a.safetensors"
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL), [AdapterArg(_adapter_path("lora-xs"), 1.0)], str(out)
    )
    assert ledger.bases_sources == {"base SVD (F16 base)": len(FAM.targets)}
    weights = {t.name: base_2d(t).astype(np.float16) for t in FAM.targets}
    bases_file = tmp_path / "bases.safetensors"
    save_bases(compute_bases(weights, 4, "tiny-small official"), bases_file)
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(_adapter_path("lora-xs"), 1.0)],
        str(tmp_path / "b.safetensors"),
        options=MergeOptions(bases_path=str(bases_file)),
    )
    assert ledger.bases_sources == {"bases file": len(FAM.targets)}
    assert load_file(str(out)).keys() == load_file(str(tmp_path / "b.safetensors")).keys()


def test_only_dit_leaves_conditioner_alone(tmp_path) -> None:
    out = tmp_path / "out.safetensors"
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(_adapter_path("lora"), 1.0)],
        str(out),
        options=MergeOptions(only="dit"),
    )
    cond = "conditioners.seconds_total.embedder.embedding.1"
    assert ledger.skipped == [(cond, "--only dit")]
    key = official_base_key(cond)
    assert load_file(str(out))[key].tobytes() == load_file(str(BASE_OFFICIAL))[key].tobytes()


def test_small_adapter_on_medium_base_is_exit_4(tmp_path) -> None:
    base = DATA_DIR / "bases" / "tiny-medium.official.safetensors"
    with pytest.raises(IncompatibleError, match="do not fit"):
        merge_checkpoint(
            str(base), [AdapterArg(_adapter_path("lora"), 1.0)], str(tmp_path / "o.safetensors")
        )
    result = run_cli(
        "merge", str(base), _adapter_path("lora"), "-o", str(tmp_path / "o.safetensors")
    )
    assert result.returncode == 4 and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_missing_targets_ledger_and_strict(tmp_path) -> None:
    arrays = load_file(str(BASE_OFFICIAL))
    cond_key = official_base_key("conditioners.seconds_total.embedder.embedding.1")
    del arrays[cond_key]
    dit_only = tmp_path / "dit-only.safetensors"
    write_safetensors(dit_only, arrays)
    ledger = merge_checkpoint(
        str(dit_only), [AdapterArg(_adapter_path("lora"), 1.0)], str(tmp_path / "o.safetensors")
    )
    assert ledger.missing_from_base == ["conditioners.seconds_total.embedder.embedding.1"]
    assert any("missing from base" in line for line in ledger.lines())
    with pytest.raises(IncompatibleError, match="--strict"):
        merge_checkpoint(
            str(dit_only),
            [AdapterArg(_adapter_path("lora"), 1.0)],
            str(tmp_path / "p.safetensors"),
            options=MergeOptions(strict=True),
        )


def test_zero_targets_is_an_error(tmp_path) -> None:
    arrays = {k: v for k, v in load_file(str(BASE_OFFICIAL)).items() if "layers.0." in k}
    partial = tmp_path / "layers0.safetensors"
    write_safetensors(partial, arrays)
    adapter = synth_adapter(FAM, "lora", include=["layers.2."])
    adapter_file = tmp_path / "l2.safetensors"
    write_safetensors(adapter_file, adapter.file_tensors(), adapter.metadata())
    with pytest.raises(IncompatibleError, match="0 adapter targets"):
        merge_checkpoint(
            str(partial), [AdapterArg(str(adapter_file), 1.0)], str(tmp_path / "o.safetensors")
        )


def test_nan_in_merged_weight_writes_nothing(tmp_path) -> None:
    adapter = synth_adapter(FAM, "lora")
    tensors = adapter.file_tensors()
    key = next(k for k in tensors if k.endswith("lora_B"))
    tensors[key] = np.full_like(tensors[key], np.inf)
    bad = tmp_path / "bad.safetensors"
    write_safetensors(bad, tensors, adapter.metadata())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(IncompatibleError, match="NaN/Inf"):
        merge_checkpoint(
            str(BASE_OFFICIAL), [AdapterArg(str(bad), 1.0)], str(out_dir / "o.safetensors")
        )
    assert list(out_dir.iterdir()) == []


def test_output_rules(tmp_path) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(UsageError, match="--force"):
        merge_checkpoint(str(BASE_OFFICIAL), [AdapterArg(_adapter_path("lora"), 1.0)], str(out))
    assert out.read_bytes() == b"precious"
    merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(_adapter_path("lora"), 1.0)],
        str(out),
        options=MergeOptions(force=True),
    )
    assert read_header(out).tensors
    with pytest.raises(UsageError, match="same file"):
        merge_checkpoint(
            str(BASE_OFFICIAL),
            [AdapterArg(_adapter_path("lora"), 1.0)],
            str(BASE_OFFICIAL),
            options=MergeOptions(force=True),
        )


def test_npz_base_in_npz_out(tmp_path) -> None:
    arrays = load_file(str(BASE_MLX))
    npz = tmp_path / "base.npz"
    with NpzStreamWriter(npz) as writer:
        for key, value in arrays.items():
            writer.write(key, value)
    np.testing.assert_array_equal(
        np.load(npz)["cond.seconds_total_bias"], arrays["cond.seconds_total_bias"]
    )
    out = tmp_path / "merged.npz"
    ledger = merge_checkpoint(
        str(npz),
        [AdapterArg(_adapter_path("dora-cols"), 0.5)],
        str(out),
        options=MergeOptions(dtype="fp32"),
    )
    assert (
        ledger.container == "npz"
        and ledger.naming == "mlx"
        and len(ledger.merged) == len(FAM.targets)
    )
    with open_base(out) as merged:
        assert set(merged.tensors) == set(arrays)
        target = FAM.by_name["model.preprocess_conv"]
        w = merged.read(mlx_base_key(target.name)).astype(np.float64)
        got = w.transpose(0, 2, 1).reshape(target.shape)
    want = _reference([("dora-cols", 0.5)], "runtime", target)
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def test_dtype_choices(tmp_path) -> None:
    for name, code in (("fp32", "F32"), ("bf16", "BF16")):
        out = tmp_path / f"{name}.safetensors"
        ledger = merge_checkpoint(
            str(BASE_OFFICIAL),
            [AdapterArg(_adapter_path("lora"), 1.0)],
            str(out),
            options=MergeOptions(dtype=name),
        )
        assert {i.dtype for i in read_header(out).tensors.values()} == {code}
        # every non-target tensor is cast (the base is fp16), and counted once: not as copied
        assert ledger.cast > 0 and ledger.copied == 0


def test_adapter_argument_parsing() -> None:
    assert parse_adapter_arg("a.safetensors:0.7") == AdapterArg("a.safetensors", 0.7)
    assert parse_adapter_arg("a.safetensors") == AdapterArg("a.safetensors", 1.0)
    assert parse_adapter_arg("C:/x/a.safetensors") == AdapterArg("C:/x/a.safetensors", 1.0)
    assert parse_adapter_arg("a.safetensors:-1.5") == AdapterArg("a.safetensors", -1.5)
    with pytest.raises(UsageError):
        parse_adapter_arg("a.safetensors:nan")


def test_cli_merge_json_ledger(tmp_path) -> None:
    out = tmp_path / "m.safetensors"
    result = run_cli(
        "merge",
        str(BASE_MLX),
        _adapter_path("bora") + ":0.5",
        _adapter_path("lora-xs"),
        "-o",
        str(out),
        "--semantics",
        "delta",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (
        doc["schema"] == 1
        and doc["semantics"] == "delta"
        and len(doc["merged"]) == len(FAM.targets)
    )
    assert doc["adapters"][0]["strength"] == 0.5 and doc["naming"] == "mlx"
    assert os.path.exists(out)


def test_cli_merge_takes_blend(tmp_path) -> None:
    out = tmp_path / "m.safetensors"
    result = run_cli(
        "merge",
        str(BASE_OFFICIAL),
        _adapter_path("bora") + ":0.5",
        "-o",
        str(out),
        "--semantics",
        "blend",
        "--dtype",
        "fp32",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["semantics"] == "blend"
    prov = json.loads(read_header(out).metadata[PROVENANCE_KEY])
    assert prov["semantics"] == "blend"
    _check_all_targets(out, "official", [("bora", 0.5)], "blend")
