"""merge and combine take every adapter container inspect reads (issue 14 item 6).

Each fixture adapter is converted with our own `convert` to every format (bare, mlx, PEFT
folder, diffusers LoRA folder, sa3.cpp GGUF F32 and F16, legacy .ckpt), then merged into the
fixture base (and combined by cat); the result must equal the one from the sa3 original.

Tolerance: none, every output tensor is compared byte for byte, except PEFT and diffusers -xs
(`XS_ULPS` below). Exact because merge and combine work in float32 from the adapter's float32
view: the sa3 fixtures are fp16 and every format holds those values exactly (GGUF F32 widens
them exactly, GGUF F16, PEFT and diffusers keep them; PEFT Conv1d factors are only reshaped;
diffusers' medium to_qkv row order is undone on reading). The XS bases U/V sa3.cpp needs are
baked by `convert --base` with the same float32 SVD of the base that merge does (so GGUF F16,
which would round them, is tested on the non-XS types). sa3.cpp has no stem for the seconds
conditioner (`--drop-conditioner`), so GGUF merges are compared with the sa3 merge restricted
to the DiT (`--only dit`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.ops.convert.adapters import convert_adapter
from sa3ckpt.ops.library.combine import combine
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from tests.helpers import BASE_FAMILY, run_cli

gguf = pytest.importorskip("gguf")

# combine cat adds ranks (4 + 4): tiny-medium is where rank 8 fits every target.
CAT_FIXTURES = DATA_DIR / "adapters" / "tiny-medium"
ALL_TYPES = (
    "lora",
    "dora-rows",
    "dora-cols",
    "bora",
    "lora-xs",
    "dora-rows-xs",
    "dora-cols-xs",
    "bora-xs",
)
PEFT_TYPES = ("lora", "dora-rows")
PEFT_XS_TYPES = ("lora-xs", "dora-rows-xs")
# PEFT and diffusers -xs are the inexact rows: the file holds B = U·M, formed in float64 and
# stored as float32, where merge forms U·M·Vᵀ in float32 from the same SVD bases; the two
# differ by float32 rounding of B (relative ~1e-7 of ΔW), which can move a merged fp16 weight
# by one unit in its last place. Allowed: at most that, per element.
XS_ULPS = 1
XS = {t for t in ALL_TYPES if t.endswith("-xs")}


def _base_of(src: Path) -> Path:
    """The fixture base of an adapter fixture's family (its folder name)."""
    return DATA_DIR / "bases" / f"{src.parent.name}.official.safetensors"


def _convert(
    to: str, suffix: str, bake: bool = False, **kwargs: Any
) -> Callable[[Path, Path], Path]:
    """A writer by our own convert; `bake` passes the family's base (XS bases U/V)."""

    def make(src: Path, directory: Path) -> Path:
        out = directory / f"adapter{suffix}"
        base = str(_base_of(src)) if bake else None
        convert_adapter(str(src), str(out), to=to, base_path=base, **kwargs)
        return out

    return make


def _gguf_f16(src: Path, directory: Path) -> Path:
    """Our GGUF output rewritten with the real GGUFWriter as F16 tensors, KVs kept."""
    f32 = _convert("sa3cpp", ".f32.gguf", bake=src.stem in XS, drop_conditioner=True)(
        src, directory
    )
    reader = gguf.GGUFReader(str(f32))
    out = directory / "adapter.f16.gguf"
    writer = gguf.GGUFWriter(str(out), arch="sa3-lora")
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        writer.add_key_value(key, fld.contents(), fld.types[0])
    for tensor in reader.tensors:
        shape = tuple(reversed([int(d) for d in tensor.shape]))
        value = np.asarray(tensor.data).reshape(shape).astype(np.float16)
        writer.add_tensor(tensor.name, value, raw_dtype=gguf.GGMLQuantizationType.F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _legacy_ckpt(src: Path, directory: Path) -> Path:
    """The sa3 file as a Lightning-style torch pickle: state_dict + lora_config dict."""
    torch = pytest.importorskip("torch")
    with open_safetensors(src) as f:
        tensors = {key: torch.from_numpy(np.array(f.read(key))) for key in f}
        config = json.loads(f.metadata["lora_config"])
    out = directory / "adapter.ckpt"
    torch.save({"state_dict": tensors, "lora_config": config}, out)
    return out


def _gguf_f32(src: Path, directory: Path) -> Path:
    """sa3.cpp needs U/V for XS types: baked from the base by the same SVD merge does."""
    return _convert("sa3cpp", ".gguf", bake=src.stem in XS, drop_conditioner=True)(src, directory)


@dataclass(frozen=True)
class Row:
    """One adapter format of the matrix: how to write it and how to compare its merge."""

    make: Callable[[Path, Path], Path]
    types: tuple[str, ...]  # the adapter types the format expresses
    family: str = BASE_FAMILY  # fixtures (and base) it is tested on
    dit_only: bool = False  # no seconds-conditioner target in the format: compare --only dit
    pickle: bool = False  # needs --allow-pickle
    ulps: int = 0  # fp16 units in the last place a merged weight may differ by


NON_XS = tuple(t for t in ALL_TYPES if t not in XS)
FORMATS: dict[str, Row] = {
    "bare": Row(_convert("bare", ".safetensors"), ALL_TYPES),
    "mlx": Row(_convert("mlx", ".safetensors"), ALL_TYPES),
    "peft": Row(_convert("peft", ""), PEFT_TYPES),
    "peft-xs": Row(_convert("peft", "", bake=True, dtype="fp32"), PEFT_XS_TYPES, ulps=XS_ULPS),
    # diffusers keeps 1-wide convs only (tiny-small's are k=3) and reorders medium to_qkv
    # rows: tiny-medium; the seconds conditioner goes to the duration-embedder sidecar.
    "diffusers": Row(
        _convert("diffusers", "", include_conditioner=True), PEFT_TYPES, "tiny-medium"
    ),
    "diffusers-xs": Row(
        _convert("diffusers", "", bake=True, dtype="fp32", include_conditioner=True),
        PEFT_XS_TYPES,
        "tiny-medium",
        ulps=XS_ULPS,
    ),
    "gguf-f32": Row(_gguf_f32, ALL_TYPES, dit_only=True),
    # F16 only for non-XS types: XS U/V are baked in float32 (an SVD), which F16 would round.
    "gguf-f16": Row(_gguf_f16, NON_XS, dit_only=True),
    "pickle": Row(_legacy_ckpt, ALL_TYPES, pickle=True),
}
CASES = [(fmt, t) for fmt, row in FORMATS.items() for t in row.types]


def _ulps(got: bytes, want: bytes) -> int:
    """Largest distance in fp16 units in the last place between two fp16 tensors' bytes."""
    a = np.frombuffer(got, np.float16).astype(np.float64)
    b = np.frombuffer(want, np.float16).astype(np.float64)
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float64)
    return int(np.max(np.round(np.abs(a - b) / spacing))) if a.size else 0


def _tensors(path: Path) -> dict[str, bytes]:
    with open_base(path) as base:
        return {key: base.read(key).tobytes() for key in base.tensors}


def _merge(
    tmp_path: Path, family: str, adapter: Path, name: str, **kwargs: Any
) -> dict[str, bytes]:
    out = tmp_path / f"{name}.safetensors"
    base = DATA_DIR / "bases" / f"{family}.official.safetensors"
    merge_checkpoint(str(base), [AdapterArg(str(adapter), 0.7)], str(out), MergeOptions(**kwargs))
    return _tensors(out)


@pytest.mark.parametrize(("fmt", "adapter_type"), CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_merge_of_every_format_equals_the_sa3_merge(
    tmp_path: Path, fmt: str, adapter_type: str
) -> None:
    row = FORMATS[fmt]
    src = DATA_DIR / "adapters" / row.family / f"{adapter_type}.safetensors"
    converted = row.make(src, tmp_path)
    only = "dit" if row.dit_only else None
    want = _merge(tmp_path, row.family, src, "from-sa3", only=only)
    got = _merge(tmp_path, row.family, converted, "from-" + fmt, only=only, allow_pickle=row.pickle)
    assert list(got) == list(want)  # same tensors, same order
    differing = [key for key in want if got[key] != want[key]]
    if row.ulps:
        worst = {key: _ulps(got[key], want[key]) for key in differing}
        assert all(u <= row.ulps for u in worst.values()), worst
        return
    assert differing == [], f"{fmt}: {len(differing)} tensors differ, e.g. {differing[:3]}"


COMBINE_FORMATS = ("bare", "mlx", "peft", "diffusers", "gguf-f32", "gguf-f16", "pickle")


@pytest.mark.parametrize("fmt", COMBINE_FORMATS)
def test_combine_cat_of_every_format_equals_the_sa3_combine(tmp_path: Path, fmt: str) -> None:
    row = FORMATS[fmt]
    first, second = CAT_FIXTURES / "lora.safetensors", CAT_FIXTURES / "lora.layers-0.safetensors"
    converted = row.make(first, tmp_path)
    if row.dit_only:  # GGUF has no conditioner target: compare with a DiT-only sa3 input
        first = tmp_path / "lora.dit.safetensors"
        ckpt = load_adapter(CAT_FIXTURES / "lora.safetensors")
        ckpt.tensors = {t: p for t, p in ckpt.tensors.items() if t.startswith("model.")}
        from sa3ckpt.adapters.checkpoint import save_checkpoint

        save_checkpoint(ckpt, first)
    args = [AdapterArg(str(second), 0.5)]
    combine([AdapterArg(str(first), 1.5), *args], str(tmp_path / "want.safetensors"))
    combine(
        [AdapterArg(str(converted), 1.5), *args],
        str(tmp_path / "got.safetensors"),
        allow_pickle=row.pickle,
    )
    with open_safetensors(tmp_path / "want.safetensors") as w:
        want = {key: np.array(w.read(key)).tobytes() for key in w}
    with open_safetensors(tmp_path / "got.safetensors") as g:
        got = {key: np.array(g.read(key)).tobytes() for key in g}
    assert sorted(got) == sorted(want)
    assert [key for key in want if got[key] != want[key]] == []


def test_cli_merge_and_combine_take_a_peft_folder_and_a_gguf(tmp_path: Path) -> None:
    peft = CAT_FIXTURES / "peft-lora"
    gguf_file = _gguf_f32(CAT_FIXTURES / "lora.safetensors", tmp_path)
    merged = tmp_path / "merged.safetensors"
    base = DATA_DIR / "bases" / "tiny-medium.official.safetensors"
    result = run_cli("merge", str(base), f"{peft}:0.5", str(gguf_file), "-o", str(merged))
    assert result.returncode == 0, result.stderr
    assert "merged" in result.stdout
    result = run_cli(
        "combine", str(peft), str(gguf_file), "-o", str(tmp_path / "c.safetensors"),
        "--method", "cat", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    shas = [a["sha256"] for a in doc["adapters"]]
    assert all(isinstance(s, str) and len(s) == 64 for s in shas)  # a folder's weights hashed
