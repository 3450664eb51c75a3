"""sa3.cpp GGUF output checked with the real `gguf` package (issue 14 item 5).

GGUFReader reads our output: the KV fields sa3.cpp's loader and contract name, with the
types it insists on, and the `sa3ckpt.*` fields that carry the rest of lora_config
(base_model, baked_norms, norm_base, alpha's JSON text) so sa3 -> GGUF -> sa3 loses none of
it. GGUFWriter makes the inputs sa3ckpt did not write itself (F16 tensors, a stale alpha).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import save_checkpoint
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.io.gguf_config import ALPHA_JSON_KV, CONFIG_KV
from sa3ckpt.ops.convert.adapters import convert_adapter
from tests.helpers import BASE_FAMILY, BASE_OFFICIAL

gguf = pytest.importorskip("gguf")

FIXTURES = DATA_DIR / "adapters" / BASE_FAMILY


def _sa3(tmp_path: Path, stem: str, alpha: int | float, **extra: object) -> Path:
    """A fixture adapter with its lora_config alpha (and extra fields) set as given."""
    ckpt = load_adapter(FIXTURES / f"{stem}.safetensors")
    ckpt.config.alpha = alpha
    ckpt.config.extra.update(extra)
    path = tmp_path / f"{stem}.safetensors"
    save_checkpoint(ckpt, path)
    return path


def _fields(path: Path) -> dict[str, tuple[object, str]]:
    """{key: (value, GGUF type name)} as the real GGUFReader sees them."""
    reader = gguf.GGUFReader(str(path))
    return {
        key: (fld.contents(), fld.types[0].name)
        for key, fld in reader.fields.items()
        if not key.startswith("GGUF.")
    }


def _to_gguf(src: Path, tmp_path: Path, base: bool = True) -> Path:
    out = tmp_path / "adapter.gguf"
    convert_adapter(
        str(src),
        str(out),
        to="sa3cpp",
        drop_conditioner=True,
        base_path=str(BASE_OFFICIAL) if base else None,
    )
    return out


def test_kv_types_and_values_read_by_the_real_reader(tmp_path: Path) -> None:
    src = _sa3(tmp_path, "dora-rows", 8, norm_base="tiny-small-base")
    fields = _fields(_to_gguf(src, tmp_path))
    assert fields["general.architecture"] == ("sa3-lora", "STRING")
    assert fields["general.name"] == ("sa3 dora-rows adapter", "STRING")
    assert fields["lora.adapter_type"] == ("dora-rows", "STRING")
    assert fields["lora.rank"] == (4, "UINT32")
    assert fields["lora.alpha"] == (8.0, "FLOAT32")
    assert fields["lora.n_targets"][1] == "UINT32"
    assert fields[CONFIG_KV["baked_norms"]] == (True, "BOOL")  # baked by --base
    assert fields[CONFIG_KV["norm_base"]] == ("tiny-small-base", "STRING")
    assert fields[CONFIG_KV["base_model"]] == ("tiny-small", "STRING")
    assert fields[ALPHA_JSON_KV] == ("8", "STRING")
    reader = gguf.GGUFReader(str(tmp_path / "adapter.gguf"))
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}  # what its tools write


@pytest.mark.parametrize("alpha", [8, 8.0, 0.1, 16, 3.5])
def test_alpha_keeps_its_json_type_and_value(tmp_path: Path, alpha: int | float) -> None:
    src = _sa3(tmp_path, "lora", alpha)
    back = tmp_path / "back.safetensors"
    convert_adapter(str(_to_gguf(src, tmp_path, base=False)), str(back), to="sa3")
    config = load_adapter(back).config
    assert type(config.alpha) is type(alpha) and config.alpha == alpha  # 8 stays 8, 0.1 is 0.1
    text = json.loads(load_adapter(back).file_metadata()["lora_config"])
    assert json.dumps(text["alpha"]) == json.dumps(alpha)


def test_config_fields_survive_sa3_gguf_sa3(tmp_path: Path) -> None:
    src = _sa3(tmp_path, "dora-rows", 8, norm_base="tiny-small-base")
    back = tmp_path / "back.safetensors"
    convert_adapter(str(_to_gguf(src, tmp_path)), str(back), to="sa3")
    ckpt = load_adapter(back)
    assert ckpt.config.base_model == "tiny-small"  # in the config, where family evidence looks
    assert ckpt.config.extra["baked_norms"] is True
    assert ckpt.config.extra["norm_base"] == "tiny-small-base"
    assert not any(key.startswith("sa3ckpt.") for key in ckpt.metadata)
    assert all("baked_vnorm_row" in params for params in ckpt.tensors.values())


def _rewrite(
    src: Path, out: Path, *, f16: bool = False, kv: dict[str, object] | None = None
) -> None:
    """`src` rewritten by the real GGUFWriter: tensors as F16 if asked, KV values replaced."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(out), arch="sa3-lora")
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = (kv or {}).get(key, fld.contents())
        writer.add_key_value(key, value, fld.types[0])
    kind = gguf.GGMLQuantizationType.F16 if f16 else gguf.GGMLQuantizationType.F32
    for tensor in reader.tensors:
        shape = tuple(reversed([int(d) for d in tensor.shape]))
        value = np.asarray(tensor.data).reshape(shape)
        writer.add_tensor(
            tensor.name, value.astype(np.float16 if f16 else np.float32), raw_dtype=kind
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_stale_alpha_json_yields_to_lora_alpha(tmp_path: Path) -> None:
    """sa3.cpp uses lora.alpha: when another tool changed it, our JSON text is not used."""
    src = _to_gguf(_sa3(tmp_path, "lora", 8), tmp_path, base=False)
    edited = tmp_path / "edited.gguf"
    _rewrite(src, edited, kv={"lora.alpha": 4.0})
    config = load_adapter(edited).config
    assert config.alpha == 4.0 and isinstance(config.alpha, float)


def test_f16_tensors_read_as_exact_f32(tmp_path: Path) -> None:
    src = _to_gguf(_sa3(tmp_path, "dora-rows", 8), tmp_path, base=False)
    f16 = tmp_path / "f16.gguf"
    _rewrite(src, f16, f16=True)
    reader = gguf.GGUFReader(str(f16))
    assert {t.tensor_type.name for t in reader.tensors} == {"F16"}
    want = {t.name: np.asarray(t.data).astype(np.float32) for t in reader.tensors}
    ckpt, ref = load_adapter(f16), load_adapter(src)
    assert ckpt.adapter_type == "dora-rows" and ckpt.config.alpha == 8
    for target, params in ckpt.tensors.items():
        for param, value in params.items():
            assert value.dtype == np.float32
            assert np.array_equal(value, np.asarray(ref.tensors[target][param])), (target, param)
    assert sum(v.size for v in want.values()) == sum(
        np.asarray(v).size for p in ckpt.tensors.values() for v in p.values()
    )
