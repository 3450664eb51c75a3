"""validate checks an sa3.cpp GGUF as sa3.cpp would load it (reference/formats.md).

Every file here is written by the `gguf` package's GGUFWriter, field by field, so the KV
types and tensor types are exactly what a third-party writer could produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.findings import RULES
from sa3ckpt.io.formats import load_raw, open_adapter_source
from sa3ckpt.io.gguf_adapter import read_gguf_adapter
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.names.adapter_keys import format_adapter_key, parse_adapter_key
from sa3ckpt.names.modules import SECONDS_CONDITIONER
from sa3ckpt.ops.validate import validate_path

gguf = pytest.importorskip("gguf")
VT = gguf.GGUFValueType
SMALL = DATA_DIR / "adapters" / "tiny-small"

GOOD_KV: dict[str, tuple[Any, Any]] = {
    "general.name": ("sa3 {type} adapter", VT.STRING),
    "lora.adapter_type": ("{type}", VT.STRING),
    "lora.rank": (4, VT.UINT32),
    "lora.alpha": (8.0, VT.FLOAT32),
    "lora.n_targets": (0, VT.UINT32),
}


def _sa3cpp_tensors(type_name: str) -> dict[str, np.ndarray]:
    """A fixture adapter's tensors under sa3.cpp keys (the conditioner has no stem)."""
    out = {}
    with open_safetensors(SMALL / f"{type_name}.safetensors") as f:
        for key in f:
            parsed = parse_adapter_key(key, "sa3")
            assert parsed is not None
            if parsed.target == SECONDS_CONDITIONER:
                continue
            name = format_adapter_key(parsed.target, parsed.param, "sa3cpp")
            out[name] = np.array(f.array(key), np.float32)
    return out


def _write(
    path: Path,
    type_name: str = "lora",
    *,
    kv: dict[str, tuple[Any, Any] | None] | None = None,
    arch: str = "sa3-lora",
    tensor_dtype: type = np.float32,
    tensors: dict[str, np.ndarray] | None = None,
) -> str:
    """A GGUF written by GGUFWriter: GOOD_KV with `kv` overrides (None drops a field)."""
    tensors = _sa3cpp_tensors(type_name) if tensors is None else tensors
    fields = {**GOOD_KV, "lora.n_targets": (len(tensors), VT.UINT32), **(kv or {})}
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for key, entry in fields.items():
        if entry is None:
            continue
        value, vtype = entry
        if isinstance(value, str):
            value = value.format(type=type_name)
        writer.add_key_value(key, value, vtype)
    for name, array in tensors.items():
        writer.add_tensor(name, array.astype(tensor_dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _findings(path: str) -> dict[str, str]:
    result = validate_path(path)
    assert not result.malformed, result.findings
    return {f.rule: f.message for f in result.findings}


def test_a_file_as_sa3cpp_tools_write_it_passes_clean(tmp_path: Path) -> None:
    rules = _findings(_write(tmp_path / "good.gguf", "dora-rows"))
    assert rules == {}


def test_our_own_writer_passes_clean(tmp_path: Path) -> None:
    from sa3ckpt.ops.convert.adapters import convert_adapter

    out = tmp_path / "ours.gguf"
    convert_adapter(str(SMALL / "lora.safetensors"), str(out), to="sa3cpp", drop_conditioner=True)
    assert read_gguf_adapter(out).kv["general.name"] == "sa3 lora adapter"
    assert _findings(str(out)) == {}


@pytest.mark.parametrize(
    ("key", "entry", "stored"),
    [
        ("lora.rank", (4, VT.INT32), "INT32"),
        ("lora.rank", (4, VT.UINT64), "UINT64"),
        ("lora.alpha", (8.0, VT.FLOAT64), "FLOAT64"),
        ("lora.alpha", (8, VT.UINT32), "UINT32"),
    ],
)
def test_wrong_kv_type_is_an_error_naming_field_and_types(
    tmp_path: Path, key: str, entry: tuple[Any, Any], stored: str
) -> None:
    """sa3.cpp aborts on these whatever the value: the values alone look fine."""
    path = _write(tmp_path / "bad.gguf", kv={key: entry})
    result = validate_path(path)
    found = {f.rule: f for f in result.findings}
    assert found["gguf-kv-type"].severity == "error"
    assert result.status(strict=False) == "fail"
    message = found["gguf-kv-type"].message
    want = "UINT32" if key == "lora.rank" else "FLOAT32"
    assert key in message and stored in message and want in message


def test_missing_adapter_type_means_lora_and_says_so(tmp_path: Path) -> None:
    """Was: config-missing claiming every lora.* field absent."""
    path = _write(tmp_path / "untyped.gguf", kv={"lora.adapter_type": None})
    rules = _findings(path)
    assert set(rules) == {"gguf-type-default"}
    assert "lora.adapter_type" in rules["gguf-type-default"]
    assert RULES["gguf-type-default"].severity == "info"
    assert load_adapter(path).adapter_type == "lora"
    with open_adapter_source(path) as source:
        assert any("read as lora" in note for note in source.notes)
    assert load_raw(path).config_text == open_adapter_source(path).config_text


def test_missing_type_on_a_dora_file_is_a_type_disagreement(tmp_path: Path) -> None:
    """sa3.cpp would run a DoRA file without lora.adapter_type as plain LoRA."""
    path = _write(tmp_path / "untyped-dora.gguf", "dora-rows", kv={"lora.adapter_type": None})
    rules = _findings(path)
    assert "gguf-type-default" in rules and "type-disagreement" in rules


@pytest.mark.parametrize("missing", [["lora.rank"], ["lora.alpha"], ["lora.rank", "lora.alpha"]])
def test_missing_required_fields_are_named(tmp_path: Path, missing: list[str]) -> None:
    path = _write(tmp_path / "x.gguf", kv=dict.fromkeys(missing))
    rules = _findings(path)
    assert "config-missing" in rules
    assert f"GGUF {', '.join(missing)} absent" in rules["config-missing"]
    assert "lora.*" not in rules["config-missing"]


def test_f16_tensors_are_accepted_with_an_info(tmp_path: Path) -> None:
    path = _write(tmp_path / "f16.gguf", "dora-rows", tensor_dtype=np.float16)
    rules = _findings(path)
    assert set(rules) == {"gguf-f16"}  # no dtype-unconventional warning, no malformed
    assert RULES["gguf-f16"].severity == "info" and "F32" in RULES["gguf-f16"].hint
    adapter = read_gguf_adapter(path)
    assert set(adapter.tensor_types.values()) == {"F16"}
    want = _sa3cpp_tensors("dora-rows")
    for name, array in adapter.tensors.items():
        assert array.dtype == np.float32
        assert np.array_equal(array, want[name].astype(np.float16).astype(np.float32))
    assert load_adapter(path).adapter_type == "dora-rows"


@pytest.mark.parametrize("type_name", ["lora-xs", "dora-rows-xs"])
def test_xs_without_u_v_is_an_error_for_gguf(tmp_path: Path, type_name: str) -> None:
    """sa3.cpp has no SVD at load; a safetensors XS file without U/V is only an info."""
    path = _write(tmp_path / "xs.gguf", type_name)
    rules = _findings(path)
    assert "gguf-xs-no-bases" in rules and "xs-no-bases" not in rules
    assert RULES["gguf-xs-no-bases"].severity == "error"
    plain = {f.rule for f in validate_path(str(SMALL / f"{type_name}.safetensors")).findings}
    assert "xs-no-bases" in plain and "gguf-xs-no-bases" not in plain


def test_xs_with_u_v_passes(tmp_path: Path) -> None:
    tensors = _sa3cpp_tensors("lora-xs")
    rank = next(a for k, a in tensors.items() if k.endswith(".M_xs")).shape[0]
    rng = np.random.default_rng(0)
    with_bases = dict(tensors)
    for name in [k for k in tensors if k.endswith(".M_xs")]:
        stem = name[: -len(".M_xs")]
        fan_out, fan_in = _target_shape(stem)
        with_bases[f"{stem}.U"] = np.linalg.qr(rng.normal(size=(fan_out, rank)))[0]
        with_bases[f"{stem}.V"] = np.linalg.qr(rng.normal(size=(fan_in, rank)))[0]
    rules = _findings(_write(tmp_path / "xs.gguf", "lora-xs", tensors=with_bases))
    assert rules == {}  # no gguf-xs-no-bases, and the U/V shapes fit


def _target_shape(stem: str) -> tuple[int, int]:
    from sa3ckpt.names.adapter_keys import parse_adapter_key as parse
    from sa3ckpt.targets.families import FAMILIES

    parsed = parse(f"{stem}.M_xs", "sa3cpp")
    assert parsed is not None
    target = FAMILIES["tiny-small"].target(parsed.target)
    assert target is not None
    return target.shape


@pytest.mark.parametrize(
    ("arch", "name", "rules"),
    [
        ("llama", "sa3 lora adapter", {"gguf-architecture"}),
        ("", "sa3 lora adapter", {"gguf-architecture"}),  # GGUFWriter skips an empty arch
        ("sa3-lora", None, {"gguf-name"}),
        ("sa3-lora", "my adapter", {"gguf-name"}),
    ],
)
def test_general_architecture_and_name_are_warnings(
    tmp_path: Path, arch: str, name: str | None, rules: set[str]
) -> None:
    """sa3.cpp does not check them, so the file still loads: warnings, not malformed."""
    kv = {"general.name": None if name is None else (name, VT.STRING)}
    path = _write(tmp_path / "g.gguf", kv=kv, arch=arch)
    found = _findings(path)
    assert set(found) == rules
    assert all(RULES[r].severity == "warning" for r in rules)
    assert load_adapter(path).adapter_type == "lora"  # both reads accept it
