"""The route matrix's input files: every kind of file a user brings, generated once per session.

Each input lives alone in its own folder (`<root>/<id>/`), so the audit table route can be
pointed at the folder and see that one file. Adapters are written from `sa3ckpt.synth`
(rank 2: `combine --method cat` of two stays within the tiny families' smallest fan) in
every container and dialect the library reads; bases come from the committed fixtures or
are converted from them by the library. Which (kind, type) pairs exist and which cannot be
written at all is data (INPUT_KINDS, UNREPRESENTABLE); the test checks it against the
library's own tables.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fixtures.codec import CODEC_DIR
from fixtures.generate import DATA_DIR, official_full_base, official_xs_file
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.names.adapter_keys import selection_name
from sa3ckpt.ops.convert import convert_adapter, convert_base
from sa3ckpt.ops.convert.adapters import PEFT_TYPES
from sa3ckpt.synth import SynthAdapter, synth_adapter
from sa3ckpt.targets import FAMILIES

FAMILY_NAMES = ("tiny-small", "tiny-medium")  # tiny-small: Conv1d k=3 targets (PEFT Conv1d)
RANK, ALPHA = 2, 4.0

# Adapter containers and dialects (one input per adapter type and kind, unless the kind
# cannot hold the type: UNREPRESENTABLE). The value says what the kind is, for the docs.
ADAPTER_KINDS: dict[str, str] = {
    "sa3": "our sa3 safetensors (model.-rooted keys, full lora_config, -xs with U/V)",
    "official": "what the official SA3 saver writes: no U/V, lora_config without base_model",
    "bare": "early MLX writers' keys (no model. root)",
    "mlx": "MLX runtime module names",
    "peft": "a PEFT folder (adapter_config.json + adapter_model.safetensors)",
    "peft-diffusers": "a PEFT folder saved from diffusers' StableAudio3DiTModel",
    "diffusers": "a diffusers LoRA folder (pytorch_lora_weights.safetensors)",
    "gguf-f32": "an sa3.cpp adapter GGUF as sa3ckpt writes it (F32)",
    "gguf-f16": "an sa3.cpp adapter GGUF with F16 tensors (sa3.cpp's loader reads them)",
    "ckpt": "a legacy torch .ckpt (read only with --allow-pickle)",
}
# Single inputs beyond the type x kind grid: (kind, family or codec family, type or None).
EXTRA_KINDS: dict[str, str] = {
    "peft-rslora": "a PEFT folder with use_rslora (scale alpha/sqrt(r))",
    "peft-dora-conv": "a PEFT DoRA folder, tiny-small's Conv1d k=3 targets in PEFT's conv layout",
    "codec": "a SAME codec adapter (encoder or decoder targets)",
    "base-official": "a base, official naming (the DiT + conditioner weights adapters touch)",
    "base-official-full": "a complete official checkpoint (every DiT tensor: verify runs it)",
    "base-mlx-safetensors": "a base in MLX runtime naming, safetensors",
    "base-mlx-npz": "a base in MLX runtime naming, npz",
    "base-diffusers": "a diffusers transformer folder",
    "url": "an sa3 adapter by http:// URL (the tests' nginx): read by byte ranges, header only",
    "base-sa3cpp": "an sa3.cpp model GGUF (DiT) with its conditioner sidecar GGUF",
}
# What each kind exercises in the library's tables (the test checks that together they
# cover io.formats.FORMATS, names.ADAPTER_DIALECTS and names.BASE_NAMINGS, and that inspect
# reports the declared dialect): kind -> (format, dialect or base naming).
KIND_READS: dict[str, tuple[str, str]] = {
    "sa3": ("safetensors", "sa3"),
    "official": ("safetensors", "sa3"),
    "bare": ("safetensors", "bare"),
    "mlx": ("safetensors", "mlx"),
    "peft": ("peft", "peft"),
    "peft-diffusers": ("peft", "peft-diffusers"),
    "diffusers": ("diffusers-lora", "diffusers"),
    "gguf-f32": ("gguf", "sa3cpp"),
    "gguf-f16": ("gguf", "sa3cpp"),
    "ckpt": ("pickle", "sa3"),
    "peft-rslora": ("peft", "peft"),
    "peft-dora-conv": ("peft", "peft"),
    "codec": ("safetensors", "sa3"),
    "url": ("safetensors", "sa3"),
    "base-official": ("safetensors", "official"),
    "base-official-full": ("safetensors", "official"),
    "base-mlx-safetensors": ("safetensors", "mlx"),
    "base-mlx-npz": ("npz", "mlx"),
    "base-diffusers": ("diffusers-folder", "diffusers"),
    "base-sa3cpp": ("gguf-model", "sa3cpp"),
}
# Base namings another issue is adding; each becomes a row here when its reader lands.
# naming -> note. When the naming is in names.BASE_NAMINGS, add a "base-<naming>" kind (its
# writer, KIND_READS entry and a cell in every route of route_matrix_table) and drop it here.
PENDING_NAMINGS: dict[str, str] = {}
PEFT_LAYER_KINDS = ("peft", "peft-diffusers", "diffusers")
PEFT_EXTRAS = {"peft-rslora": "lora", "peft-dora-conv": "dora-rows"}  # extra kind -> its type
# Kinds in diffusers' module names: the seconds conditioner (another diffusers component) and
# Conv1d kernels wider than 1 (diffusers' DiT convs are 1-wide) have no slot there.
DIFFUSERS_KINDS = ("peft-diffusers", "diffusers")
# (kind, type) pairs no file can hold: PEFT layers have no per-column DoRA magnitude.
UNREPRESENTABLE: dict[tuple[str, str], str] = {
    (kind, type_name): "PEFT layers hold lora and dora-rows (and the -xs forms as those) only"
    for kind in PEFT_LAYER_KINDS
    for type_name in ADAPTER_TYPES
    if type_name not in PEFT_TYPES
}
CODEC_INPUTS = (  # (codec family, type): the committed codec adapter fixtures
    ("tiny-same-s-encoder", "lora"),
    ("tiny-same-l-decoder", "dora-rows"),
)


@dataclass(frozen=True)
class InputCase:
    """One input file of the matrix: its id (the test id's first half) and what it is."""

    kind: str
    family: str
    type_name: str | None = None

    @property
    def id(self) -> str:
        return ".".join(p for p in (self.family, self.type_name, self.kind) if p)

    @property
    def is_base(self) -> bool:
        return self.kind.startswith("base-")


def _family_for(type_index: int, kind_index: int) -> str:
    """A checkerboard over (type, kind): every kind and every type meets both families while
    the matrix stays one input per (type, kind) (the whole product would double its time)."""
    return FAMILY_NAMES[(type_index + kind_index) % 2]


URL_KINDS = ("url",)


class UrlInput(str):
    """A URL input where routes expect a path: a URL has no folder to walk, so `parent` (the
    audit table's `-r DIR`) is the URL itself, a table of one row."""

    @property
    def parent(self) -> str:
        return str(self)


def input_cases() -> list[InputCase]:
    cases = []
    for t, type_name in enumerate(ADAPTER_TYPES):
        for k, kind in enumerate(ADAPTER_KINDS):
            if (kind, type_name) not in UNREPRESENTABLE:
                cases.append(InputCase(kind, _family_for(t, k), type_name))
    # PEFT extras on tiny-small, whose Conv1d targets are k=3 (the checkerboard puts the
    # DoRA PEFT rows on tiny-medium, whose convs are 1-wide)
    cases += [InputCase(kind, "tiny-small", t) for kind, t in PEFT_EXTRAS.items()]
    cases += [InputCase("codec", fam, type_name) for fam, type_name in CODEC_INPUTS]
    cases += [InputCase("url", "tiny-small", "dora-rows")]  # served by nginx (test_route_matrix)
    for fam in FAMILY_NAMES:
        cases += [InputCase(kind, fam) for kind in EXTRA_KINDS if kind.startswith("base-")]
    return cases


# --- writing ---------------------------------------------------------------------------------


def official_base(family: str) -> Path:
    """The family's committed official base (the weights adapters touch)."""
    return DATA_DIR / "bases" / f"{family}.official.safetensors"


def _synth(case: InputCase) -> SynthAdapter:
    assert case.type_name is not None
    seed = (
        25
        + list(ADAPTER_TYPES).index(case.type_name)
        + 10 * list(ADAPTER_KINDS).index(case.kind if case.kind in ADAPTER_KINDS else "sa3")
    )
    fam = FAMILIES[case.family]
    exclude = []
    if case.kind in DIFFUSERS_KINDS:  # what diffusers' DiT has no LoRA slot for
        exclude = ["conditioners."] + [
            t.name for t in fam.targets if t.layer_kind == "conv1d" and t.kernel_size > 1
        ]
    return synth_adapter(fam, case.type_name, rank=RANK, alpha=ALPHA, seed=seed, exclude=exclude)


def _peft_config(adapter: SynthAdapter, family: str, dialect: str, rslora: bool) -> str:
    """adapter_config.json as PEFT writes it: target_modules in the dialect's module names."""
    doc = {
        "peft_type": "LORA",
        "base_model_name_or_path": family,
        "r": adapter.config["rank"],
        "lora_alpha": adapter.config["alpha"],
        "lora_dropout": 0.0,
        "use_dora": adapter.config["adapter_type"] == "dora-rows",
        "use_rslora": rslora,
        "target_modules": sorted(
            name for t in adapter.tensors if (name := selection_name(t, dialect)) is not None
        ),
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def _write_sa3(adapter: SynthAdapter, path: Path, dialect: str = "sa3") -> Path:
    write_safetensors(path, adapter.file_tensors(dialect), adapter.metadata())
    return path


def _via_convert(case: InputCase, folder: Path, to: str, name: str, **options: object) -> Path:
    """The library's own writer for `to`, from the sa3 file of the same adapter."""
    source = _write_sa3(_synth(case), folder.parent / f"{folder.name}.source.safetensors")
    out = folder / name
    convert_adapter(str(source), str(out), to=to, **options)  # type: ignore[arg-type]
    source.unlink()
    return out


def _gguf_f16(f32: Path, out: Path) -> Path:
    """An F32 adapter GGUF rewritten with every tensor F16 by the gguf package's writer."""
    import gguf

    reader = gguf.GGUFReader(str(f32))
    writer = gguf.GGUFWriter(str(out), arch="sa3-lora")
    for key, fld in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
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


def _our_sa3(case: InputCase, folder: Path) -> Path:
    """What sa3ckpt writes: -xs adapters carry U/V (convert --to sa3 --base bakes them)."""
    assert case.type_name is not None
    if not ADAPTER_TYPES[case.type_name].xs:
        return _write_sa3(_synth(case), folder / "adapter.safetensors")
    base = str(official_base(case.family))
    return _via_convert(case, folder, "sa3", "adapter.safetensors", base_path=base)


def _gguf_f16_of(case: InputCase, folder: Path) -> Path:
    scratch = folder.parent / f"{folder.name}.f32"
    scratch.mkdir()
    f32 = WRITERS["gguf-f32"](case, scratch)
    out = _gguf_f16(f32, folder / "adapter.f16.gguf")
    shutil.rmtree(scratch)
    return out


def _ckpt(adapter: SynthAdapter, path: Path) -> Path:
    import torch

    state = {k: torch.from_numpy(np.asarray(v)) for k, v in adapter.file_tensors().items()}
    torch.save({"state_dict": state, "lora_config": adapter.metadata()["lora_config"]}, path)
    return path


def _peft_folder(case: InputCase, folder: Path, dialect: str, rslora: bool = False) -> Path:
    adapter = _synth(case)
    out = folder / "adapter"
    out.mkdir()
    write_safetensors(
        out / "adapter_model.safetensors", adapter.file_tensors(dialect), {"format": "pt"}
    )
    (out / "adapter_config.json").write_text(_peft_config(adapter, case.family, dialect, rslora))
    return out


def _plain_type(case: InputCase) -> InputCase:
    """PEFT layers hold an -xs adapter as the plain type it equals: written from that."""
    assert case.type_name is not None
    plain = case.type_name.removesuffix("-xs")
    return InputCase(case.kind, case.family, plain)


WRITERS: dict[str, Callable[[InputCase, Path], Path]] = {
    "sa3": lambda c, d: _our_sa3(c, d),
    "url": lambda c, d: _our_sa3(c, d),  # the file nginx serves; the matrix passes its URL
    "official": lambda c, d: _official(c, d / "adapter.safetensors"),
    "bare": lambda c, d: _write_sa3(_synth(c), d / "adapter.safetensors", "bare"),
    "mlx": lambda c, d: _write_sa3(_synth(c), d / "adapter.safetensors", "mlx"),
    "peft": lambda c, d: _peft_folder(_plain_type(c), d, "peft"),
    "peft-diffusers": lambda c, d: _peft_folder(_plain_type(c), d, "peft-diffusers"),
    "peft-rslora": lambda c, d: _peft_folder(c, d, "peft", rslora=True),
    "peft-dora-conv": lambda c, d: _peft_folder(c, d, "peft"),
    "diffusers": lambda c, d: _via_convert(
        c, d, "diffusers", "adapter", dtype="fp32", base_path=str(official_base(c.family))
    ),
    "gguf-f32": lambda c, d: _via_convert(
        c, d, "sa3cpp", "adapter.gguf", drop_conditioner=True, base_path=_base_of(c)
    ),
    "gguf-f16": lambda c, d: _gguf_f16_of(c, d),
    "ckpt": lambda c, d: _ckpt(_synth(c), d / "adapter.ckpt"),
    "codec": lambda c, d: _copy(DATA_DIR / CODEC_DIR / f"{c.family}.{c.type_name}.safetensors", d),
    "base-official": lambda c, d: _copy(official_base(c.family), d),
    "base-official-full": lambda c, d: _copy(official_full_base(c.family), d),
    "base-mlx-safetensors": lambda c, d: _copy(
        DATA_DIR / "bases" / f"{c.family}.mlx.safetensors", d
    ),
    "base-mlx-npz": lambda c, d: _base(c, d / "base.npz", "mlx"),
    "base-diffusers": lambda c, d: _base(c, d / "transformer", "diffusers"),
    "base-sa3cpp": lambda c, d: _base(c, d / "base.gguf", "sa3cpp"),  # + base-conditioner.gguf
}


def _base_of(case: InputCase) -> str:
    return str(official_base(case.family))


def _official(case: InputCase, path: Path) -> Path:
    write_safetensors(path, *official_xs_file(_synth(case)))
    return path


def _copy(src: Path, folder: Path) -> Path:
    return Path(shutil.copy(src, folder / src.name))


def _base(case: InputCase, out: Path, to: str) -> Path:
    convert_base(str(official_full_base(case.family)), str(out), to=to)
    return out


def partner(family: str) -> InputCase:
    """The adapter a base input is merged with (and verified against): a family's lora."""
    return InputCase("partner", family, "lora")


def write_inputs(root: Path, *, with_pickles: bool = True) -> dict[str, Path]:
    """Every input case written under root: id -> the path a user would pass (partners too).
    Legacy .ckpt inputs need torch (optional): without it they are not written."""
    paths = {}
    for fam in FAMILY_NAMES:
        case = partner(fam)
        folder = root / case.id
        folder.mkdir(parents=True)
        paths[case.id] = _write_sa3(_synth(case), folder / "adapter.safetensors")
    for case in input_cases():
        if case.kind == "ckpt" and not with_pickles:
            continue
        folder = root / case.id
        folder.mkdir(parents=True)
        paths[case.id] = WRITERS[case.kind](case, folder)
    return paths
