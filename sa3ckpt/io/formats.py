"""The one registry of file formats: what a path is, its header view, and its full read.

Every command starts by asking "what is this file?" — an adapter (in which container and key
dialect), a base checkpoint (in which naming), a legacy pickle (never read without an
opt-in) or something else. The answer used to be computed in several places with different
rules; here each container is one row of `FORMATS` (how to sniff it, which suffixes it
uses, what it may hold, how to list its keys, open its header, read it whole), and
`identify` is the single decision built on those rows. A new container (diffusers adapter
files, a diffusers base folder) is a new row.

Adapters have two reads that must agree: `open_header` (shapes, dtypes, metadata and the
lora_config text, no tensor data: inspect and validate) and `load_raw` (every tensor in
memory, as stored: convert and the loaders in `adapters`). Both take the config and the
metadata from the same per-format functions, so a file cannot look configured in one and
unconfigured in the other.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import MalformedFileError, NeedsLocalFile, UnreadableFileError, UsageError
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.io.bytesource import exists, file_size, is_file
from sa3ckpt.io.diffusers_folder import CONTAINER as DIFFUSERS_FOLDER
from sa3ckpt.io.diffusers_folder import folder_keys, is_diffusers_dir
from sa3ckpt.io.diffusers_lora import LORA_WEIGHTS as DIFFUSERS_LORA_WEIGHTS
from sa3ckpt.io.diffusers_lora import METADATA_KEY as DIFFUSERS_LORA_METADATA
from sa3ckpt.io.diffusers_lora import METADATA_ORIGIN as DIFFUSERS_LORA_ORIGIN
from sa3ckpt.io.diffusers_lora import is_diffusers_lora, lora_files
from sa3ckpt.io.diffusers_lora import lora_config as diffusers_lora_config
from sa3ckpt.io.gguf_adapter import (
    DEFAULT_ADAPTER_TYPE,
    KEY_ADAPTER_TYPE,
    KEY_ALPHA,
    KEY_RANK,
    RESERVED_KEYS,
    SA3CPP_KV,
    is_gguf,
)
from sa3ckpt.io.gguf_base import gguf_architecture, open_gguf_model
from sa3ckpt.io.gguf_config import CARRIED_KEYS, carried_config, json_alpha
from sa3ckpt.io.gguf_facts import MODEL_ARCHES
from sa3ckpt.io.legacy_pickle import PickleRefusedError, looks_like_pickle, read_legacy_ckpt
from sa3ckpt.io.remote import is_url, unsupported_scheme
from sa3ckpt.io.safetensors import SafetensorsFile, open_safetensors, read_header
from sa3ckpt.io.sources import (
    CONFIG_KEY,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    AdapterSource,
    TensorEntry,
    TypedField,
    is_peft_dir,
    peft_to_lora_config,
    read_json,
)
from sa3ckpt.names.adapter_keys import detect_adapter_dialect
from sa3ckpt.names.base_keys import detect_base_naming

# What a file can be, as `identify` reports it.
ADAPTER, BASE, PICKLE, UNKNOWN = "adapter", "base", "pickle", "unknown"

# Key dialects a plain adapter file (safetensors or legacy pickle) may hold.
FILE_DIALECTS = ("sa3", "bare", "mlx")
# A PEFT folder saved from the official DiT (or its wrapper), or from diffusers' DiT.
PEFT_DIALECTS = ("peft", "peft-diffusers")

PEFT_CONTAINER_METADATA = frozenset({CONFIG_KEY})
"""Keys of adapter_model.safetensors that are not carried as metadata: adapter_config.json is
the config, so a stray lora_config there is ignored. The rest (save_pretrained's `format: pt`)
is metadata in both reads, as for any safetensors file."""


@dataclass
class RawAdapter:
    """An adapter file read whole: tensors under their file keys, as stored."""

    path: str
    format: str
    tensors: dict[str, np.ndarray]
    config_text: str | None
    metadata: dict[str, str]
    dialects: tuple[str, ...]  # key spellings this container may hold
    config_origin: str  # where config_text comes from, for messages
    notes: list[str] = field(default_factory=list)  # what the reader should know
    repairs: list[str] = field(default_factory=list)  # what reading changed (e.g. rsLoRA alpha)


HeaderOpener = Callable[[str, bool], AdapterSource]
RawLoader = Callable[[str, bool], RawAdapter]


@dataclass(frozen=True)
class Format:
    """One container: how to recognise it and how to read what it holds.

    `holds` says what the container can be (adapter and/or base). `keys` lists tensor keys
    without reading data, for identification; None means the container itself decides
    (a PEFT folder or an sa3.cpp GGUF is an adapter in `dialects[0]` by definition).
    """

    name: str
    sniff: Callable[[str], bool]
    suffixes: tuple[str, ...]
    holds: frozenset[str]
    dialects: tuple[str, ...] = ()
    keys: Callable[[str], list[str]] | None = None
    header: HeaderOpener | None = None
    load: RawLoader | None = None
    open_base: Callable[[str], BaseCheckpoint] | None = None


SAFETENSORS_ORIGIN = f"metadata {CONFIG_KEY}"
GGUF_ORIGIN = "GGUF lora.* fields"
PICKLE_ORIGIN = "pickled lora_config"

# --- safetensors ------------------------------------------------------------------------------


def _safetensors_source(path: str, handle: SafetensorsFile, fmt: str) -> AdapterSource:
    entries = {
        name: TensorEntry(name, info.dtype, tuple(info.shape), info.nbytes)
        for name, info in handle.header.tensors.items()
    }
    metadata = dict(handle.metadata)
    config_text = metadata.pop(CONFIG_KEY, None)
    return AdapterSource(
        path=path,
        format=fmt,
        size=handle.header.file_size,
        metadata=metadata,
        entries=entries,
        config_text=config_text,
        config_origin=SAFETENSORS_ORIGIN,
        _reader=handle.array,
        _closer=handle.close,
    )


def _safetensors_header(path: str, allow_pickle: bool) -> AdapterSource:
    return _safetensors_source(path, open_safetensors(path), "safetensors")


def _read_all(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor (copied out of the map, so the arrays outlive the file) and the metadata."""
    with open_safetensors(path) as f:
        return {key: np.array(f.array(key)) for key in f}, dict(f.metadata)


def _safetensors_load(path: str, allow_pickle: bool) -> RawAdapter:
    tensors, metadata = _read_all(path)
    config_text = metadata.pop(CONFIG_KEY, None)
    return RawAdapter(
        path, "safetensors", tensors, config_text, metadata, FILE_DIALECTS, SAFETENSORS_ORIGIN
    )


def _safetensors_keys(path: str) -> list[str]:
    return list(read_header(path).tensors)


# --- PEFT folders -----------------------------------------------------------------------------


def _peft_weights(path: str) -> str:
    weights = os.path.join(path, PEFT_WEIGHTS)
    if not exists(weights):
        raise MalformedFileError(path, f"PEFT folder without {PEFT_WEIGHTS}")
    return weights


def _peft_config(path: str) -> tuple[dict[str, object], list[str]]:
    config_path = os.path.join(path, PEFT_CONFIG)
    return peft_to_lora_config(read_json(config_path), config_path)


def _peft_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k not in PEFT_CONTAINER_METADATA}


def _peft_header(path: str, allow_pickle: bool) -> AdapterSource:
    weights = _peft_weights(path)
    config, notes = _peft_config(path)
    source = _safetensors_source(path, open_safetensors(weights), "peft")
    source.metadata = _peft_metadata(source.metadata)
    source.config_text = json.dumps(config)
    source.config_origin = PEFT_CONFIG
    source.notes.extend(notes)
    return source


def _peft_load(path: str, allow_pickle: bool) -> RawAdapter:
    """Tensors as stored (Conv1d factors stay 3-D: folding them is the adapter layer's job)."""
    weights = _peft_weights(path)
    config, notes = _peft_config(path)
    # The module list only informs coverage analysis; it is not carried into other formats.
    config.pop("peft_target_modules", None)
    tensors, metadata = _read_all(weights)
    metadata = _peft_metadata(metadata)
    return RawAdapter(
        path,
        "peft",
        tensors,
        json.dumps(config),
        metadata,
        PEFT_DIALECTS,
        PEFT_CONFIG,
        repairs=notes,
    )


# --- diffusers LoRA (a folder with pytorch_lora_weights.safetensors, or that file) -----------

DIFFUSERS_LORA = "diffusers-lora"


def _diffusers_config(
    path: str,
    metadata_texts: Mapping[str, str | None],
    shapes: Mapping[str, tuple[int, ...]],
    keep_modules: bool,
) -> tuple[str, list[str]]:
    config, notes = diffusers_lora_config(metadata_texts, shapes, path)
    if not keep_modules:  # as for PEFT: the module rule only informs coverage analysis
        config.pop("peft_target_modules", None)
    return json.dumps(config), notes


def _diffusers_metadata(handles: Iterable[SafetensorsFile]) -> dict[str, str]:
    """Every file's metadata but the LoRA config (it is the config, not metadata)."""
    merged: dict[str, str] = {}
    for handle in handles:
        merged.update({k: v for k, v in handle.metadata.items() if k != DIFFUSERS_LORA_METADATA})
    return merged


def _diffusers_header(path: str, allow_pickle: bool) -> AdapterSource:
    handles = [open_safetensors(f) for f in lora_files(path)]
    try:
        entries: dict[str, TensorEntry] = {}
        owner: dict[str, SafetensorsFile] = {}
        for handle in handles:
            for name, info in handle.header.tensors.items():
                if name in entries:
                    raise MalformedFileError(path, f"tensor {name} is in two of its files")
                entries[name] = TensorEntry(name, info.dtype, tuple(info.shape), info.nbytes)
                owner[name] = handle
        texts = {h.path: h.metadata.get(DIFFUSERS_LORA_METADATA) for h in handles}
        shapes = {name: entry.shape for name, entry in entries.items()}
        config_text, notes = _diffusers_config(path, texts, shapes, keep_modules=True)
    except BaseException:
        for handle in handles:
            handle.close()
        raise

    def close() -> None:
        for handle in handles:
            handle.close()

    return AdapterSource(
        path=path,
        format=DIFFUSERS_LORA,
        size=sum(h.header.file_size for h in handles),
        metadata=_diffusers_metadata(handles),
        entries=entries,
        config_text=config_text,
        config_origin=DIFFUSERS_LORA_ORIGIN,
        notes=notes,
        _reader=lambda key: owner[key].array(key),
        _closer=close,
    )


def _diffusers_load(path: str, allow_pickle: bool) -> RawAdapter:
    """Tensors as stored: diffusers' row order and conv layouts are the adapter layer's job."""
    tensors: dict[str, np.ndarray] = {}
    texts: dict[str, str | None] = {}
    metadata: dict[str, str] = {}
    for file in lora_files(path):
        file_tensors, file_metadata = _read_all(file)
        clash = sorted(set(file_tensors) & set(tensors))
        if clash:
            raise MalformedFileError(path, f"tensor {clash[0]} is in two of its files")
        tensors.update(file_tensors)
        texts[file] = file_metadata.pop(DIFFUSERS_LORA_METADATA, None)
        metadata.update(file_metadata)
    shapes = {name: tuple(value.shape) for name, value in tensors.items()}
    config_text, notes = _diffusers_config(path, texts, shapes, keep_modules=False)
    return RawAdapter(
        path,
        DIFFUSERS_LORA,
        tensors,
        config_text,
        metadata,
        ("diffusers",),
        DIFFUSERS_LORA_ORIGIN,
        repairs=notes,
    )


# --- sa3.cpp GGUF -----------------------------------------------------------------------------

GGUF_NOTE = "sa3.cpp GGUF: include/exclude are not recorded in this format"


def _plain(value: object) -> object:
    """numpy scalars as python values (JSON needs them); everything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _gguf_missing(kv: Mapping[str, object]) -> list[str]:
    """The KV fields sa3.cpp requires (no default) that the file lacks."""
    return [rule.key for rule in SA3CPP_KV if rule.default is None and rule.key not in kv]


def gguf_lora_config(kv: Mapping[str, object]) -> str | None:
    """The lora_config text equivalent to a GGUF's lora.* fields, read as sa3.cpp reads them.

    `lora.rank` and `lora.alpha` are required: without either there is no config. A missing
    `lora.adapter_type` is `lora`, sa3.cpp's default. Values are passed on as the file typed
    them (not coerced: a float rank is an error for `LoraConfig` to report, not something to
    truncate), so both reads of a file agree on its config.
    """
    if _gguf_missing(kv):
        return None
    config = {
        "rank": _plain(kv[KEY_RANK]),
        "alpha": _plain(kv[KEY_ALPHA]),
        "adapter_type": _plain(kv.get(KEY_ADAPTER_TYPE, DEFAULT_ADAPTER_TYPE)),
    }
    config["alpha"] = json_alpha(kv, config["alpha"])
    return json.dumps({**carried_config(kv), **config, "include": [], "exclude": []})


def gguf_origin(kv: Mapping[str, object]) -> str:
    """Where the config comes from, naming the required fields when some are absent (the
    analysis says "no lora_config (<origin> absent)")."""
    missing = _gguf_missing(kv)
    return f"GGUF {', '.join(missing)}" if missing else GGUF_ORIGIN


def gguf_notes(kv: Mapping[str, object]) -> list[str]:
    """What a reader of this GGUF should know (include/exclude lost, a defaulted type)."""
    notes = [GGUF_NOTE]
    if KEY_ADAPTER_TYPE not in kv:
        notes.append(f"no {KEY_ADAPTER_TYPE}: read as {DEFAULT_ADAPTER_TYPE}, as sa3.cpp does")
    return notes


def gguf_metadata(kv: Mapping[str, object]) -> dict[str, str]:
    """KV fields that are not the adapter's structure (architecture, name, alignment, lora.*)
    nor lora_config fields carried in `sa3ckpt.*` KVs (`io.gguf_config`)."""
    return {
        k: str(v)
        for k, v in kv.items()
        if k not in RESERVED_KEYS and k not in CARRIED_KEYS and not k.startswith("lora.")
    }


def _gguf_header(path: str, allow_pickle: bool) -> AdapterSource:
    from sa3ckpt.io.gguf_adapter import open_gguf_header, read_gguf_adapter

    # sa3.cpp does not check general.architecture: a file it would load is read, and
    # validate warns about the architecture instead.
    header = open_gguf_header(path, require_arch=False)
    entries = {
        name: TensorEntry(name, kind, tuple(shape), (2 if kind == "F16" else 4) * math.prod(shape))
        for name, (shape, kind) in header.tensors.items()
    }
    cache: dict[str, np.ndarray] = {}

    def read(key: str) -> np.ndarray:
        if not cache:
            cache.update(read_gguf_adapter(path, require_arch=False).tensors)
        return cache[key]

    return AdapterSource(
        path=path,
        format="gguf",
        size=file_size(path),
        metadata=gguf_metadata(header.kv),
        entries=entries,
        config_text=gguf_lora_config(header.kv),
        config_origin=gguf_origin(header.kv),
        notes=gguf_notes(header.kv),
        fields={k: TypedField(v, header.kv_types[k]) for k, v in header.kv.items()},
        _reader=read,
    )


def _gguf_load(path: str, allow_pickle: bool) -> RawAdapter:
    from sa3ckpt.io.gguf_adapter import read_gguf_adapter

    adapter = read_gguf_adapter(path, require_arch=False)
    return RawAdapter(
        path,
        "gguf",
        adapter.tensors,
        gguf_lora_config(adapter.kv),
        gguf_metadata(adapter.kv),
        ("sa3cpp",),
        gguf_origin(adapter.kv),
        gguf_notes(adapter.kv),
    )


# sa3.cpp model files (DiT, conditioner sidecar, SAME codec) are GGUFs too; their
# `general.architecture` (what sa3.cpp's loaders key on) tells them from adapters.
GGUF_MODEL = "gguf-model"


def is_gguf_model(path: str) -> bool:
    """A GGUF whose architecture is an sa3.cpp model (sa3-dit, sa3-conditioner, sa3-ae)."""
    return is_gguf(path) and gguf_architecture(path) in MODEL_ARCHES


def _gguf_model_keys(path: str) -> list[str]:
    opened = open_gguf_model(path)
    try:
        return list(opened.shapes)
    finally:
        opened.close()


# --- legacy pickles ---------------------------------------------------------------------------

PICKLE_NOTE = "read with torch.load(weights_only=True) after an explicit opt-in"


def _pickle_load(path: str, allow_pickle: bool) -> RawAdapter:
    if is_url(path):  # refused before anything is fetched, opted in or not
        if not allow_pickle:
            raise PickleRefusedError(path)
        raise NeedsLocalFile(path, "loading a pickle")
    legacy = read_legacy_ckpt(path, allow_pickle=allow_pickle)  # refuses unless allowed
    config_text = json.dumps(legacy.lora_config) if legacy.lora_config is not None else None
    return RawAdapter(
        path,
        "pickle",
        dict(legacy.tensors),
        config_text,
        dict(legacy.extra),
        FILE_DIALECTS,
        PICKLE_ORIGIN,
        [PICKLE_NOTE],
    )


def _pickle_header(path: str, allow_pickle: bool) -> AdapterSource:
    """A pickle has no header to read apart from its data: the view is over the full read."""
    raw = _pickle_load(path, allow_pickle)
    entries = {
        key: TensorEntry(key, dtypes.code_for(a.dtype), tuple(a.shape), a.nbytes)
        for key, a in raw.tensors.items()
    }
    return AdapterSource(
        path=path,
        format="pickle",
        size=os.path.getsize(path),
        metadata=raw.metadata,
        entries=entries,
        config_text=raw.config_text,
        config_origin=raw.config_origin,
        notes=list(raw.notes),
        _reader=raw.tensors.__getitem__,
    )


# --- NumPy archives (bases only) --------------------------------------------------------------


def _npz_members(path: str) -> list[str] | None:
    """The member names of a zip archive, None when `path` is not one."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None


def is_npz(path: str) -> bool:
    """A zip archive of `.npy` members only (what numpy.savez writes)."""
    names = _npz_members(path)
    return bool(names) and all(n.endswith(".npy") for n in names or ())


def _npz_keys(path: str) -> list[str]:
    return [n[: -len(".npy")] for n in _npz_members(path) or ()]


# --- the table --------------------------------------------------------------------------------

# First match wins: folders, then content sniffs, then safetensors as the strict fallback
# (its parser gives the precise reason a damaged file is not one).
FORMATS: tuple[Format, ...] = (
    Format(
        "peft",
        is_peft_dir,
        (),
        frozenset({ADAPTER}),
        PEFT_DIALECTS,
        header=_peft_header,
        load=_peft_load,
    ),
    Format(
        DIFFUSERS_FOLDER,
        is_diffusers_dir,
        (),
        frozenset({BASE}),
        keys=folder_keys,
        open_base=open_base,
    ),
    Format(
        DIFFUSERS_LORA,
        is_diffusers_lora,
        (),
        frozenset({ADAPTER}),
        ("diffusers",),
        header=_diffusers_header,
        load=_diffusers_load,
    ),
    Format(
        "pickle",
        looks_like_pickle,  # the one sniffer: never a safetensors file starting with 0x80
        (".ckpt", ".pt", ".pth"),
        frozenset({ADAPTER}),
        FILE_DIALECTS,
        header=_pickle_header,
        load=_pickle_load,
    ),
    Format(
        GGUF_MODEL,
        is_gguf_model,
        (".gguf",),
        frozenset({BASE}),
        keys=_gguf_model_keys,
        open_base=open_base,
    ),
    Format(
        "gguf",
        is_gguf,
        (".gguf",),
        frozenset({ADAPTER}),
        ("sa3cpp",),
        header=_gguf_header,
        load=_gguf_load,
    ),
    Format("npz", is_npz, (".npz",), frozenset({BASE}), keys=_npz_keys, open_base=open_base),
    Format(
        "safetensors",
        is_file,
        (".safetensors",),
        frozenset({ADAPTER, BASE}),
        FILE_DIALECTS,
        keys=_safetensors_keys,
        header=_safetensors_header,
        load=_safetensors_load,
        open_base=open_base,
    ),
)
BY_NAME = {f.name: f for f in FORMATS}

ADAPTER_SUFFIXES = tuple(s for f in FORMATS if ADAPTER in f.holds for s in f.suffixes)
CHECKPOINT_SUFFIXES = tuple(dict.fromkeys(s for f in FORMATS for s in f.suffixes))

# What `convert --to TO` writes for an adapter or a base, as rows of FORMATS: an output may
# carry one of those rows' suffixes, no suffix, or one no row claims; a suffix of another
# row names another format and is refused (`--to sa3cpp -o x.safetensors` would put GGUF
# under a safetensors name). A PEFT folder and a diffusers LoRA folder (which gets
# `pytorch_lora_weights.safetensors`) have no suffix of their own.
CONVERT_OUTPUTS: Mapping[tuple[str, str], tuple[str, ...]] = {
    (ADAPTER, "sa3"): ("safetensors",),
    (ADAPTER, "bare"): ("safetensors",),
    (ADAPTER, "mlx"): ("safetensors",),
    (ADAPTER, "peft"): ("peft",),
    (ADAPTER, "sa3cpp"): ("gguf",),
    (ADAPTER, "diffusers"): (DIFFUSERS_LORA,),
    (BASE, "official"): ("safetensors", "npz"),
    (BASE, "mlx"): ("safetensors", "npz"),
    (BASE, "diffusers"): (DIFFUSERS_FOLDER, "safetensors", "npz"),
    (BASE, "sa3cpp"): (GGUF_MODEL,),
}


# How the messages name the folder a suffix-less `--to` writes.
FOLDER_OUTPUTS = {"peft": "a PEFT", "diffusers": "a diffusers LoRA"}


def output_suffixes(kind: str, to: str) -> tuple[str, ...]:
    """The suffixes a `convert --to TO` output of this kind (ADAPTER or BASE) may carry."""
    return tuple(s for name in CONVERT_OUTPUTS[(kind, to)] for s in BY_NAME[name].suffixes)


def check_output_suffix(path: str | os.PathLike[str], kind: str, to: str) -> None:
    """Refuse (exit 2) an output whose suffix names a format `--to TO` does not write."""
    spath = os.fspath(path)
    suffix = os.path.splitext(spath)[1].lower()
    allowed = output_suffixes(kind, to)
    if suffix not in CHECKPOINT_SUFFIXES or suffix in allowed:
        return
    if allowed:
        writes = f"{' or '.join(CONVERT_OUTPUTS[(kind, to)])}: name it *{' or *'.join(allowed)}"
    else:
        folder = FOLDER_OUTPUTS.get(to, to)
        writes = f"{folder} folder: name it without a checkpoint suffix"
    raise UsageError(f"output {spath}: --to {to} writes {writes} (not *{suffix})")


def sniff(path: str | os.PathLike[str]) -> Format | None:
    """The first row whose sniff accepts `path` (no row for folders that are not PEFT)."""
    spath = os.fspath(path)
    return next((f for f in FORMATS if f.sniff(spath)), None)


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    found = sniff(path)
    return found.name if found else None


# --- what is this file ------------------------------------------------------------------------


@dataclass(frozen=True)
class FileIdentity:
    """The answer to "what is this file": kind, container, and the key naming inside.

    `naming` is the adapter key dialect (sa3, bare, mlx, peft, sa3cpp) for adapters and the
    base naming (official, mlx) for bases; `reason` says why a file is `unknown`.
    """

    path: str
    kind: str  # ADAPTER | BASE | PICKLE | UNKNOWN
    format: str | None
    naming: str | None = None
    reason: str = ""

    @property
    def is_adapter(self) -> bool:
        return self.kind == ADAPTER

    @property
    def is_base(self) -> bool:
        return self.kind == BASE


def classify_keys(
    keys: Iterable[str], holds: frozenset[str] = frozenset({ADAPTER, BASE})
) -> tuple[str, str | None]:
    """(kind, naming) of a set of tensor keys: the one rule for "adapter or base".

    Adapter keys win: bare adapter keys (`transformer.layers…lora_A`) also parse as MLX
    base names, while no base tensor parses as an adapter key.
    """
    key_list = list(keys)
    if ADAPTER in holds:
        dialect = detect_adapter_dialect(key_list).dialect
        if dialect is not None:
            return ADAPTER, dialect
    if BASE in holds:
        naming = detect_base_naming(key_list)
        if naming is not None:
            return BASE, naming
    return UNKNOWN, None


def identify(path: str | os.PathLike[str]) -> FileIdentity:
    """What `path` is, from headers only; never raises (unreadable files are `unknown`)."""
    spath = os.fspath(path)
    row = sniff(spath)
    if row is None:
        if unsupported_scheme(spath) is not None:
            reason = unsupported_scheme(spath) or ""
        elif is_url(spath):
            reason = _remote_folder_reason(spath)
        elif os.path.isdir(spath):
            reason = f"a folder, but not a PEFT adapter (no {PEFT_CONFIG}) nor a diffusers model"
        else:
            reason = "no such file"
        return FileIdentity(spath, UNKNOWN, None, reason=reason)
    if row.name == "pickle":
        return FileIdentity(spath, PICKLE, row.name, reason="pickles are read only on opt-in")
    if row.keys is None:
        return FileIdentity(spath, ADAPTER, row.name, row.dialects[0])
    try:
        keys = row.keys(spath)
    except (MalformedFileError, OSError) as exc:
        cause = exc.cause if isinstance(exc, MalformedFileError) else str(exc)
        return FileIdentity(spath, UNKNOWN, row.name, reason=cause)
    kind, naming = classify_keys(keys, row.holds)
    if kind == UNKNOWN:
        held = " or ".join(sorted(row.holds))
        return FileIdentity(spath, UNKNOWN, row.name, reason=f"no {held} tensor keys")
    return FileIdentity(spath, kind, row.name, naming)


def is_base_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a base checkpoint (weights in a known naming, no adapter keys)."""
    return identify(path).is_base


# --- reading ----------------------------------------------------------------------------------


def _remote_folder_reason(url: str) -> str:
    """Why a folder URL is no adapter: a failure fetching its config (access denied, a
    timeout), or neither adapter file being there."""
    try:
        exists(os.path.join(url, PEFT_CONFIG))
    except MalformedFileError as exc:
        return exc.cause
    return (
        f"a folder URL, but neither {PEFT_CONFIG} (PEFT) nor {DIFFUSERS_LORA_WEIGHTS} "
        "(diffusers LoRA) is there"
    )


def _adapter_row(spath: str) -> Format:
    scheme_cause = unsupported_scheme(spath)
    if scheme_cause is not None:
        raise MalformedFileError(spath, scheme_cause)
    row = sniff(spath)
    if row is None and is_url(spath):
        raise MalformedFileError(spath, _remote_folder_reason(spath))
    if row is None:
        if os.path.isdir(spath):
            raise MalformedFileError(spath, f"a folder, but not a PEFT adapter (no {PEFT_CONFIG})")
        raise UnreadableFileError(spath, "no such file")
    if ADAPTER not in row.holds:
        raise MalformedFileError(spath, f"a {row.name} file holds base checkpoints, not adapters")
    return row


def open_adapter_source(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> AdapterSource:
    """Open any adapter file or PEFT folder header-only; MalformedFileError when unreadable."""
    spath = os.fspath(path)
    row = _adapter_row(spath)
    assert row.header is not None
    return row.header(spath, allow_pickle)


def load_raw(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> RawAdapter:
    """Read an adapter whole, tensors as stored; MalformedFileError when unreadable."""
    spath = os.fspath(path)
    if is_url(spath):
        raise NeedsLocalFile(spath, "this step")
    row = _adapter_row(spath)
    assert row.load is not None
    return row.load(spath, allow_pickle)


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """A folder that is one adapter (PEFT, diffusers LoRA), not a folder of adapters."""
    return os.path.isdir(path) and (is_peft_dir(path) or is_diffusers_lora(path))


def walk_adapter_paths(paths: list[str]) -> list[str]:
    """Expand folders into the adapter files and adapter folders below them (sorted, stable)."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path) or is_adapter_dir(path):
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            peft = [d for d in dirs if is_adapter_dir(os.path.join(root, d))]
            found.extend(os.path.join(root, d) for d in peft)
            dirs[:] = [d for d in dirs if d not in peft and not d.startswith(".")]
            found.extend(
                os.path.join(root, f) for f in sorted(files) if f.endswith(ADAPTER_SUFFIXES)
            )
    return found
