"""convert: every dialect pair round-trips every type it can express; repairs; baking; refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.convert import adapters as convert_mod
from sa3ckpt.ops.convert.adapters import PEFT_TYPES, convert_adapter
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import base_2d, run_cli
from tests.reference_math import ref_svd_bases

FAM = FAMILIES["tiny-small"]
BASE = str(DATA_DIR / "bases" / "tiny-small.official.safetensors")
HAS_GGUF = importlib.util.find_spec("gguf") is not None
# sa3cpp cases are reported as skipped (not silently dropped) when the gguf extra is missing.
DIALECTS = [
    "sa3",
    "bare",
    "mlx",
    "peft",
    pytest.param("sa3cpp", marks=pytest.mark.skipif(not HAS_GGUF, reason="gguf extra missing")),
]
SUFFIX = {
    "sa3": ".safetensors",
    "bare": ".safetensors",
    "mlx": ".safetensors",
    "peft": "",
    "sa3cpp": ".gguf",
}


def _path(stem: str) -> str:
    return str(DATA_DIR / "adapters" / "tiny-small" / f"{stem}.safetensors")


def _supported(type_name: str, to: str) -> bool:
    return to != "peft" or type_name in PEFT_TYPES


def _same(a, b, skip_extra: bool = True) -> None:
    assert a.adapter_type == b.adapter_type
    assert a.config.rank == b.config.rank and a.config.scale == pytest.approx(b.config.scale)
    assert set(a.tensors) <= set(b.tensors)
    for target, params in a.tensors.items():
        for name, value in params.items():
            got = np.asarray(b.tensors[target][name], np.float32)
            assert np.array_equal(np.asarray(value, np.float32), got), (target, name)


@pytest.mark.parametrize("to", DIALECTS)
@pytest.mark.parametrize("type_name", list(ADAPTER_TYPES))
def test_round_trip_through_every_dialect(tmp_path: Path, type_name: str, to: str) -> None:
    source = _path(type_name)
    out = tmp_path / f"out{SUFFIX[to]}"
    options = {"drop_conditioner": True, "base_path": BASE} if to == "sa3cpp" else {}
    if not _supported(type_name, to):
        with pytest.raises(UsageError, match="PEFT cannot express"):
            convert_adapter(source, str(out), to=to)
        assert not out.exists()
        return
    xs_to_peft = to == "peft" and ADAPTER_TYPES[type_name].xs
    if xs_to_peft:
        options = {"base_path": BASE}  # PEFT needs the XS bases: here an SVD of the base
    ledger = convert_adapter(
        source, str(out), to=to, dtype="fp32" if to != "sa3cpp" else None, **options
    )
    assert ledger.worst_error <= 1e-7
    back = tmp_path / "back.safetensors"
    convert_adapter(str(out), str(back), to="sa3", dtype="fp32")
    original, again = load_adapter(source), load_adapter(back)
    if to == "sa3cpp":
        original.tensors.pop("conditioners.seconds_total.embedder.embedding.1")
    if xs_to_peft:
        _same_as_plain(original, again)
    else:
        _same(original, again)


def _same_as_plain(xs, plain) -> None:
    """An XS adapter and the plain adapter it was written as: B·A == U·M·Vᵀ, same magnitudes.

    The bases are the float64 reference SVD (official sign rule) of the tiny-small base.
    """
    assert plain.adapter_type == {"lora-xs": "lora", "dora-rows-xs": "dora-rows"}[xs.adapter_type]
    assert plain.config.scale == pytest.approx(xs.config.scale)
    assert set(plain.tensors) == set(xs.tensors)
    for target in FAM.targets:
        p, q = xs.tensors[target.name], plain.tensors[target.name]
        u, v = ref_svd_bases(base_2d(target).astype(np.float32), xs.config.rank)
        want = u @ np.asarray(p["M_xs"], np.float64) @ v.T
        got = np.asarray(q["lora_B"], np.float64) @ np.asarray(q["lora_A"], np.float64)
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), target.name
        if "magnitude" in p:
            assert np.array_equal(np.asarray(p["magnitude"], np.float32), q["magnitude"])


def test_peft_conv_factors_are_convolutions(tmp_path: Path) -> None:
    out = tmp_path / "peft"
    convert_adapter(_path("lora"), str(out), to="peft")
    from safetensors.numpy import load_file

    weights = load_file(str(out / "adapter_model.safetensors"))
    a = weights["base_model.model.model.preprocess_conv.lora_A.weight"]
    b = weights["base_model.model.model.preprocess_conv.lora_B.weight"]
    assert a.shape == (4, 8, 3) and b.shape == (8, 4, 1)  # tiny-small Conv1d: in 8, k 3
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["use_dora"] is False


def test_peft_conv_magnitude_is_pefts_conv_shape(tmp_path: Path) -> None:
    out = tmp_path / "peft"
    convert_adapter(_path("dora-rows"), str(out), to="peft")
    from safetensors.numpy import load_file

    weights = load_file(str(out / "adapter_model.safetensors"))
    conv = weights["base_model.model.model.preprocess_conv.lora_magnitude_vector"]
    linear = weights["base_model.model.model.transformer.project_in.lora_magnitude_vector"]
    assert conv.shape == (1, 8, 1) and linear.ndim == 1  # PEFT DoRA Conv1d: (1, out, 1)
    back = load_adapter(out)
    assert back.tensors["model.preprocess_conv"]["magnitude"].shape == (8,)


def test_sa3cpp_refusals(tmp_path: Path) -> None:
    if not HAS_GGUF:
        pytest.skip("gguf extra not installed")
    with pytest.raises(UsageError, match="--drop-conditioner"):
        convert_adapter(_path("lora"), str(tmp_path / "a.gguf"), to="sa3cpp")
    with pytest.raises(UsageError, match="--base"):
        convert_adapter(
            _path("lora-xs"), str(tmp_path / "b.gguf"), to="sa3cpp", drop_conditioner=True
        )
    ledger = convert_adapter(
        _path("lora"), str(tmp_path / "c.gguf"), to="sa3cpp", drop_conditioner=True
    )
    assert any("its effect is lost" in line for line in ledger.dropped)


def test_baking_with_a_base(tmp_path: Path) -> None:
    out = tmp_path / "baked.safetensors"
    ledger = convert_adapter(_path("dora-rows-xs"), str(out), to="sa3", base_path=BASE)
    assert any("U/V" in line for line in ledger.baked) and any(
        "baked_vnorm_row" in line for line in ledger.baked
    )
    baked = load_adapter(out)
    assert baked.config.extra["baked_norms"] is True
    src = load_adapter(_path("dora-rows-xs"))
    target = FAM.by_name["model.transformer.layers.0.ff.ff.0.proj"]
    w0 = base_2d(target)
    u, v = ref_svd_bases(w0.astype(np.float32), 4)
    params = baked.tensors[target.name]
    assert np.allclose(np.asarray(params["U"], np.float64), u, atol=2e-3)
    assert params["baked_vnorm_row"].dtype == np.float32
    m = np.asarray(src.tensors[target.name]["M_xs"], np.float64)
    rows = w0 + src.config.scale * (u @ m @ v.T)
    assert np.allclose(params["baked_vnorm_row"], np.linalg.norm(rows, axis=1), rtol=2e-3)


def test_legacy_repairs_are_in_the_ledger(tmp_path: Path) -> None:
    adapter = synth_adapter(FAM, "dora-cols", extra_config={"adapter_type": "dora"})
    raw = {
        k.replace(".weight.0.", ".weight.3."): (v.reshape(1, -1) if k.endswith("magnitude") else v)
        for k, v in adapter.file_tensors("bare").items()
    }
    legacy = tmp_path / "legacy.safetensors"
    write_safetensors(legacy, raw, adapter.metadata())
    ledger = convert_adapter(str(legacy), str(tmp_path / "fixed.safetensors"), to="sa3")
    text = "\n".join(ledger.repairs)
    assert "renumbered to 0" in text and "squeezed to 1-D" in text and "model.` root" in text
    assert "'dora' written as 'dora-cols'" in text
    assert run_cli("validate", "--strict", str(tmp_path / "fixed.safetensors")).returncode == 0


def test_ambiguous_square_dora_needs_a_variant(tmp_path: Path) -> None:
    square = [t.name for t in FAM.targets if t.shape[0] == t.shape[1]]
    adapter = synth_adapter(FAM, "dora-cols", include=square, extra_config={"adapter_type": "dora"})
    src = tmp_path / "square.safetensors"
    write_safetensors(src, adapter.file_tensors(), adapter.metadata())
    with pytest.raises(UsageError, match="--dora-variant"):
        convert_adapter(str(src), str(tmp_path / "o.safetensors"), to="sa3")
    ledger = convert_adapter(
        str(src), str(tmp_path / "o.safetensors"), to="sa3", dora_variant="cols"
    )
    assert ledger.adapter_type == "dora-cols"
    assert load_adapter(tmp_path / "o.safetensors").config.adapter_type == "dora-cols"


def test_verification_failure_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = convert_mod.WRITERS["sa3"]

    def corrupting(ckpt, path, code):
        target = next(iter(ckpt.tensors))
        ckpt.tensors[target]["lora_B"] = np.asarray(ckpt.tensors[target]["lora_B"]) * 1.1
        original(ckpt, path, code)

    monkeypatch.setitem(convert_mod.WRITERS, "sa3", corrupting)
    with pytest.raises(IncompatibleError, match="verification failed"):
        convert_adapter(_path("lora"), str(tmp_path / "o.safetensors"), to="sa3")
    assert list(tmp_path.iterdir()) == []


def test_unmatched_keys_are_not_dropped_silently(tmp_path: Path) -> None:
    adapter = synth_adapter(FAM, "lora")
    raw = adapter.file_tensors()
    raw["ema.shadow"] = np.zeros(3, np.float16)
    src = tmp_path / "extra.safetensors"
    write_safetensors(src, raw, adapter.metadata())
    with pytest.raises(IncompatibleError, match="would drop"):
        convert_adapter(str(src), str(tmp_path / "o.safetensors"), to="sa3")


def test_output_rules(tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep")
    with pytest.raises(UsageError, match="--force"):
        convert_adapter(_path("lora"), str(out), to="sa3")
    assert out.read_bytes() == b"keep"
    with pytest.raises(UsageError, match="same file"):
        convert_adapter(_path("lora"), _path("lora"), to="sa3", force=True)


def test_legacy_ckpt_in(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    adapter = synth_adapter(FAM, "bora")
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in adapter.file_tensors().items()}
    src = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "lora_config": adapter.config}, src)
    assert (
        run_cli(
            "convert", str(src), "-o", str(tmp_path / "x.safetensors"), "--to", "sa3"
        ).returncode
        == 3
    )
    result = run_cli(
        "convert", str(src), "-o", str(tmp_path / "x.safetensors"), "--to", "sa3", "--allow-pickle"
    )
    assert result.returncode == 0, result.stderr
    assert load_adapter(tmp_path / "x.safetensors").adapter_type == "bora"


def test_cli_convert_json_and_demo(tmp_path: Path) -> None:
    result = run_cli(
        "convert", _path("dora-rows"), "-o", str(tmp_path / "p"), "--to", "peft", "--json"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["to"] == "peft" and doc["worst_relative_error"] == 0.0
    demo = run_cli("demo", "--dir", str(tmp_path / "demo"))
    assert demo.returncode == 0, demo.stderr
    assert "4. merge" in demo.stdout and "targets merged" in demo.stdout


@pytest.mark.parametrize("to", DIALECTS)
@pytest.mark.parametrize("start", DIALECTS)
@pytest.mark.parametrize("type_name", ["lora", "dora-rows"])  # the types every dialect expresses
def test_every_dialect_pair(tmp_path: Path, type_name: str, start: str, to: str) -> None:
    first = tmp_path / f"first{SUFFIX[start]}"
    convert_adapter(_path(type_name), str(first), to=start, drop_conditioner=True)
    second = tmp_path / f"second{SUFFIX[to]}"
    ledger = convert_adapter(str(first), str(second), to=to, drop_conditioner=True)
    assert ledger.worst_error <= 1e-7
    original = load_adapter(_path(type_name))
    if "sa3cpp" in (start, to):
        original.tensors.pop("conditioners.seconds_total.embedder.embedding.1")
    rebuilt = load_adapter(second)
    assert set(rebuilt.tensors) == set(original.tensors)
    _same(original, rebuilt)


def test_peft_read_back_checks_the_conv_layout_peft_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that stores lora_A as (r, k, in) folds back to the same canonical view, so only
    a check in PEFT's own layout (r, in, k) can catch it."""
    original = convert_mod.write_factor_tensors

    def swapped(ckpt, dialect, code):
        tensors = original(ckpt, dialect, code)
        key = "base_model.model.model.preprocess_conv.lora_A.weight"
        r, cin, k = tensors[key].shape
        tensors[key] = np.ascontiguousarray(tensors[key].reshape(r, k, cin))
        return tensors

    monkeypatch.setattr(convert_mod, "write_factor_tensors", swapped)
    with pytest.raises(IncompatibleError, match=r"stored as \(4, 3, 8\); peft reads \(4, 8, 3\)"):
        convert_adapter(_path("lora"), str(tmp_path / "p"), to="peft")
    assert list(tmp_path.iterdir()) == []


def test_peft_conv_update_is_pefts_conv_of_the_factors() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 8, 3)), rng.standard_normal((6, 4, 1))
    delta = convert_mod.conv_factor_delta(a, b)
    assert delta.shape == (6, 8, 3)
    assert np.allclose(delta[2, 5, 1], sum(b[2, r, 0] * a[r, 5, 1] for r in range(4)))
    with pytest.raises(IncompatibleError):
        convert_mod.conv_factor_delta(a, rng.standard_normal((6, 4, 3)))


def test_xs_to_peft_with_a_bases_file_of_another_rank_is_refused(tmp_path: Path) -> None:
    from sa3ckpt.adapters.xs_bases import compute_bases, save_bases

    weights = {t.name: base_2d(t).astype(np.float32) for t in FAM.targets}
    bases = tmp_path / "bases.safetensors"
    save_bases(compute_bases(weights, 3, "tiny-small"), bases)
    with pytest.raises(IncompatibleError, match="rank 3"):
        convert_adapter(_path("lora-xs"), str(tmp_path / "p"), to="peft", bases_path=str(bases))
