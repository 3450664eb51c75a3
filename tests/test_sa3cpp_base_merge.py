"""merge into an sa3.cpp DiT GGUF base: the same numbers as merging into the official base.

Every adapter type (and a stack of two) merged into an F32 GGUF base equals, bit for bit, the
same merge into the F32 official base it was converted from; the output keeps the base's KVs
and tensor types (F16 stays F16, Q8_0 is re-quantised by the gguf package, untouched quantised
tensors keep their bytes); a type without a quantiser is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io import gguf_base
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.names.base_keys import translate_base_key
from sa3ckpt.ops.convert import convert_base
from sa3ckpt.ops.merge import MergeOptions, merge_checkpoint
from sa3ckpt.strengths import AdapterArg
from tests.sa3cpp_reference import fields, tensors

gguf = pytest.importorskip("gguf")

FAMILY = "tiny-medium"
ADAPTERS = DATA_DIR / "adapters" / FAMILY
TYPES = tuple(ADAPTER_TYPES)  # every adapter type, in the library's order


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The F32 official base, its F32 GGUF (+ sidecar), and the F16 GGUF."""
    root = tmp_path_factory.mktemp("bases")
    official = root / "official.safetensors"
    convert_base(
        DATA_DIR / "bases" / f"{FAMILY}.official-full.safetensors",
        official,
        to="official",
        dtype="fp32",
    )
    f32, f16 = root / "dit32.gguf", root / "dit16.gguf"
    convert_base(official, f32, to="sa3cpp")
    convert_base(official, f16, to="sa3cpp", dtype="fp16")
    return {
        "official": official,
        "f32": f32,
        "f32-cond": root / "dit32-conditioner.gguf",
        "f16": f16,
        "f16-cond": root / "dit16-conditioner.gguf",
    }


def _official_tensors(path: Path) -> dict[str, np.ndarray]:
    handle = open_safetensors(str(path))
    try:
        return {k: handle.read(k) for k in handle.header.tensors}
    finally:
        handle.close()


def _gguf_tensors(dit: Path, cond: Path | None) -> dict[str, np.ndarray]:
    """Every tensor of an sa3.cpp base by its official name (layout back to official)."""
    with open_base(dit, conditioner=cond) as base:
        out = {}
        for key, info in base.tensors.items():
            official = translate_base_key(key, info.shape, "sa3cpp", "official")
            assert official is not None
            value = base.read(key)
            if key in ("dit.pre_conv.weight", "dit.post_conv.weight"):
                value = value[:, :, None]  # squeezed kernel-1 conv
            out[official] = value
        return out


def _merge(base: Path, out: Path, stack: list[tuple[str, float]], cond: Path | None = None):
    args = [AdapterArg(str(ADAPTERS / f"{name}.safetensors"), s) for name, s in stack]
    return merge_checkpoint(str(base), args, str(out), MergeOptions(conditioner=cond and str(cond)))


STACKS = [[(name, 0.8)] for name in TYPES] + [[("lora", 0.7), ("dora-cols", 0.5)]]


@pytest.mark.parametrize("stack", STACKS, ids=["+".join(n for n, _ in s) for s in STACKS])
def test_merging_into_the_gguf_equals_merging_into_official_bit_for_bit(
    tmp_path: Path, bases: dict[str, Path], stack: list[tuple[str, float]]
) -> None:
    want = tmp_path / "official.safetensors"
    got = tmp_path / "merged.gguf"
    official_ledger = _merge(bases["official"], want, stack)
    ledger = _merge(bases["f32"], got, stack, bases["f32-cond"])
    assert sorted(ledger.merged) == sorted(official_ledger.merged)
    sidecar = tmp_path / "merged-conditioner.gguf"
    assert sidecar.is_file()
    merged, expected = _gguf_tensors(got, sidecar), _official_tensors(want)
    assert set(expected) - set(merged) == {"model.model.transformer.rotary_pos_emb.inv_freq"}
    for key, value in merged.items():
        assert value.dtype == np.float32
        assert value.tobytes() == np.ascontiguousarray(expected[key]).tobytes(), key
    # the output is still an sa3.cpp file: same KVs (plus the merge provenance), same types
    kv = [f for f in fields(got) if f[0] != "sa3ckpt.metadata.sa3ckpt_merge"]
    assert kv == fields(bases["f32"])
    assert {n: t[:2] for n, t in tensors(got).items()} == {
        n: t[:2] for n, t in tensors(bases["f32"]).items()
    }


def test_an_f16_base_stays_f16_with_its_f32_vectors(tmp_path: Path, bases: dict[str, Path]) -> None:
    out = tmp_path / "merged.gguf"
    _merge(bases["f16"], out, [("dora-rows", 1.0)])
    before, after = tensors(bases["f16"]), tensors(out)
    assert {n: t[:2] for n, t in after.items()} == {n: t[:2] for n, t in before.items()}
    changed = [n for n in after if after[n][2].tobytes() != before[n][2].tobytes()]
    assert changed and all(after[n][0] == "F16" for n in changed if n.endswith(".weight"))


def _q8_base(src: Path, out: Path) -> list[str]:
    """`src` rewritten with every tensor whose rows fill Q8_0 blocks quantised to Q8_0."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(out), arch="sa3-dit")
    for key, fld in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            writer.add_key_value(key, fld.contents(), fld.types[0])
    q8 = gguf.GGMLQuantizationType.Q8_0
    quantised = []
    for t in reader.tensors:
        value = np.array(t.data).reshape(tuple(reversed([int(d) for d in t.shape])))
        if value.ndim == 2 and value.shape[-1] % 32 == 0:
            writer.add_tensor(t.name, gguf.quants.quantize(value, q8), raw_dtype=q8)
            quantised.append(t.name)
        else:
            writer.add_tensor(t.name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return quantised


def test_a_q8_0_base_is_requantised_with_the_gguf_quantiser(
    tmp_path: Path, bases: dict[str, Path]
) -> None:
    q8 = tmp_path / "q8.gguf"
    quantised = _q8_base(bases["f32"], q8)
    assert "dit.0.ff.out.weight" in quantised
    out, plain = tmp_path / "merged.gguf", tmp_path / "plain.safetensors"
    ledger = _merge(q8, out, [("lora", 1.0)])
    assert "model.transformer.layers.0.ff.ff.2" in ledger.merged
    before, after = tensors(q8), tensors(out)
    assert {n: t[:2] for n, t in after.items()} == {n: t[:2] for n, t in before.items()}
    # the same merge into the dequantised values, quantised once by gguf
    convert_base(q8, plain, to="official", drop_unmapped=True)
    ref = tmp_path / "ref.safetensors"
    _merge(plain, ref, [("lora", 1.0)])
    merged = _official_tensors(ref)["model.model.transformer.layers.0.ff.ff.2.weight"]
    want = gguf.quants.quantize(merged.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    assert after["dit.0.ff.out.weight"][2].tobytes() == want.tobytes()


def test_a_type_without_a_quantiser_is_refused_before_anything_is_written(
    tmp_path: Path, bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    q8 = tmp_path / "q8.gguf"
    _q8_base(bases["f32"], q8)
    monkeypatch.setitem(gguf_base._QUANTISERS, "Q8_0", False)  # as for Q4_K, Q6_K, …
    out = tmp_path / "merged.gguf"
    with pytest.raises(IncompatibleError, match="no Q8_0 quantiser"):
        _merge(q8, out, [("lora", 1.0)])
    assert not out.exists()


def test_dtype_is_refused_for_a_gguf_base(tmp_path: Path, bases: dict[str, Path]) -> None:
    args = [AdapterArg(str(ADAPTERS / "lora.safetensors"), 1.0)]
    with pytest.raises(UsageError, match="keeps its tensor types"):
        merge_checkpoint(
            str(bases["f32"]), args, str(tmp_path / "o.gguf"), MergeOptions(dtype="fp16")
        )
