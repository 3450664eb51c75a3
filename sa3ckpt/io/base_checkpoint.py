"""Base checkpoints (the weights adapters are merged into), read lazily and written in streams.

Three namings (official full: `model.model.…`, `conditioner.conditioners.…`; MLX runtime:
no root, `to_local_embed.seq.N`, Conv1d (out, k, in), `cond.seconds_total_weight`;
diffusers: `transformer_blocks.N`, medium to_qkv rows [q|q2|k|k2|v]) in three containers
(safetensors; NumPy `.npz`; a diffusers transformer folder of safetensors shards,
`io.diffusers_folder`). A `BaseCheckpoint` lists every tensor with its dtype
and shape without reading data, maps adapter targets to keys, and reads one tensor at a time,
so a merge never holds more than the tensor it is working on.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import MalformedFileError, UnreadableFileError
from sa3ckpt.io.atomic import (
    TEMPS,
    AtomicFile,
    check_output_path,
    discard_or_remove_since,
    output_error,
)
from sa3ckpt.io.bytesource import is_file
from sa3ckpt.io.diffusers_folder import CONTAINER as FOLDER_CONTAINER
from sa3ckpt.io.diffusers_folder import (
    DEFAULT_MAX_SHARD_SIZE,
    FolderLayout,
    FolderStreamWriter,
    is_diffusers_dir,
    open_folder,
)
from sa3ckpt.io.gguf_adapter import is_gguf
from sa3ckpt.io.gguf_base import CONTAINER as GGUF_CONTAINER
from sa3ckpt.io.gguf_base import (
    METADATA_PREFIX,
    GgufModelFile,
    GgufSpec,
    GgufStreamWriter,
    open_gguf_model,
)
from sa3ckpt.io.gguf_facts import BASE_ARCHES, CONDITIONER_ARCH, DIT_ARCH, conditioner_beside
from sa3ckpt.io.npz_members import NPY_HEADER_READERS, stored_array_offset
from sa3ckpt.io.npz_writer import NpzPositionalWriter
from sa3ckpt.io.remote import is_url
from sa3ckpt.io.safetensors import SafetensorsStreamWriter, open_safetensors
from sa3ckpt.layout import Layout, stored_layout
from sa3ckpt.names.base_keys import (
    detect_base_naming,
    is_sa3cpp_conditioner_key,
    parse_base_key,
)


@dataclass(frozen=True)
class BaseTensor:
    key: str
    dtype: str  # safetensors dtype code
    shape: tuple[int, ...]


@dataclass
class BaseCheckpoint:
    """A base checkpoint's index plus a reader; use as a context manager."""

    path: str
    container: str  # "safetensors" | "npz" | "diffusers-folder" | "gguf"
    naming: str  # a `names.BASE_NAMINGS` key: "official" | "mlx" | "diffusers" | "sa3cpp"
    tensors: dict[str, BaseTensor]
    metadata: dict[str, str]
    _read: Callable[[str], np.ndarray]
    _close: Callable[[], None]
    folder: FolderLayout | None = None  # config and shards of a folder container
    # (file, absolute offset) of a tensor's raw little-endian bytes, where the container
    # stores them plainly (safetensors, folder shards, uncompressed npz members), else None:
    # lets a merge read row tiles and copy tensors as bytes.
    _locate: Callable[[str], tuple[str, int] | None] | None = None
    gguf: GgufFiles | None = None  # the DiT and conditioner files of a GGUF container

    def read(self, key: str) -> np.ndarray:
        """One tensor's data as a private array (read, not mapped: RSS stays one tensor)."""
        return self._read(key)

    def stored_bytes(self, key: str) -> tuple[str, int] | None:
        """Where tensor `key`'s raw bytes are: (file, offset), or None if not stored plainly."""
        return self._locate(key) if self._locate is not None else None

    def target_key(self, target: str) -> str | None:
        """The key holding a canonical target's weight, if the base has it."""
        return self.weight_keys().get(target)

    def weight_keys(self) -> dict[str, str]:
        """canonical module -> key of its `weight` (2-D or 3-D tensors only)."""
        if not hasattr(self, "_weight_keys"):
            found: dict[str, str] = {}
            for key, info in self.tensors.items():
                parsed = parse_base_key(key, self.naming)
                if parsed is not None and parsed[1] == "weight" and len(info.shape) in (2, 3):
                    found[parsed[0]] = key
            self._weight_keys = found
        return self._weight_keys

    def layout_of(self, shape: tuple[int, ...], key: str | None = None) -> Layout:
        """The stored layout of a weight of this shape in this base's naming; with its `key`,
        a per-module layout (diffusers' medium to_qkv row order) is taken into account."""
        parsed = parse_base_key(key, self.naming) if key is not None else None
        return stored_layout(self.naming, tuple(shape), parsed[0] if parsed else None)

    def gguf_output(self, output: str) -> GgufOutput | None:
        """How to write a base like this one to `output` (an sa3.cpp GGUF: the same
        architecture, KVs and tensor types; its sidecar beside `output`), else None."""
        if self.gguf is None:
            return None
        files = self.gguf
        dit = files.spec(files.dit) if files.dit is not None else None
        cond = files.spec(files.conditioner) if files.conditioner is not None else None
        if dit is None:  # a conditioner file on its own is written as itself
            assert cond is not None
            return GgufOutput(cond)
        beside = conditioner_beside(output) if cond is not None else None
        return GgufOutput(dit, cond, beside)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> BaseCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class GgufFiles:
    """An sa3.cpp base: its DiT GGUF and/or its conditioner sidecar, each opened header-only.

    `types` is every tensor's ggml type (F32, F16 or a quantised type, read dequantised)."""

    dit: GgufModelFile | None
    conditioner: GgufModelFile | None

    def files(self) -> list[GgufModelFile]:
        return [f for f in (self.dit, self.conditioner) if f is not None]

    def file_of(self, key: str) -> GgufModelFile:
        for f in self.files():
            if key in f.shapes:
                return f
        raise KeyError(key)

    @property
    def types(self) -> dict[str, str]:
        return {k: t for f in self.files() for k, t in f.types.items()}

    def spec(self, key_file: GgufModelFile) -> GgufSpec:
        """How to write a file like `key_file` again: same architecture, KVs and types."""
        entries = tuple(
            (key, value, key_file.kv_types[key])
            for key, value in key_file.kv.items()
            if key != "general.architecture"
            and not key.startswith(METADATA_PREFIX)
            and not key_file.kv_types[key].startswith("ARRAY")
        )
        return GgufSpec(key_file.architecture or DIT_ARCH, entries, dict(key_file.types), key_file)

    def close(self) -> None:
        for f in self.files():
            f.close()


def _gguf_metadata(files: GgufFiles) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in files.files():
        for key, value in f.kv.items():
            if key.startswith(METADATA_PREFIX) and isinstance(value, str):
                out[key[len(METADATA_PREFIX) :]] = value
    return out


def _open_gguf_file(path: str, want: tuple[str, ...]) -> GgufModelFile:
    opened = open_gguf_model(path)
    if opened.architecture not in want:
        arch = opened.architecture
        raise MalformedFileError(
            path,
            f"general.architecture is {arch!r}, not an sa3.cpp {' or '.join(want)} model file",
        )
    return opened


def _open_gguf_base(spath: str, conditioner: str | None) -> BaseCheckpoint:
    """A DiT GGUF (+ its conditioner sidecar), or a conditioner GGUF alone, as one base."""
    first = _open_gguf_file(spath, BASE_ARCHES)
    if first.architecture == CONDITIONER_ARCH:
        if conditioner is not None:
            raise MalformedFileError(spath, "a conditioner GGUF, given as the DiT")
        files = GgufFiles(None, first)
    else:
        cond = None if conditioner is None else _open_gguf_file(conditioner, (CONDITIONER_ARCH,))
        files = GgufFiles(first, cond)
    tensors: dict[str, BaseTensor] = {}
    for f in files.files():
        for key, shape in f.shapes.items():
            tensors[key] = BaseTensor(key, f.code(key), shape)
    if detect_base_naming(list(tensors)) != "sa3cpp":
        files.close()
        raise MalformedFileError(spath, "an sa3.cpp GGUF without sa3.cpp DiT tensor names")
    return BaseCheckpoint(
        spath,
        GGUF_CONTAINER,
        "sa3cpp",
        tensors,
        _gguf_metadata(files),
        lambda key: files.file_of(key).read(key),
        files.close,
        gguf=files,
    )


# What zipfile raises on a damaged or unusual member, besides BadZipFile: an unsupported
# compression method (NotImplementedError), an encrypted member (RuntimeError), a truncated
# or corrupt deflate stream (zlib.error, EOFError). Each is a malformed file, never a traceback.
_ZIP_MEMBER_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    zlib.error,
    zipfile.BadZipFile,
)


def _npz_index(path: str) -> tuple[dict[str, BaseTensor], zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise MalformedFileError(path, f"not a readable .npz ({exc})") from None
    tensors: dict[str, BaseTensor] = {}
    for member in archive.infolist():
        if not member.filename.endswith(".npy"):
            continue
        key = member.filename[: -len(".npy")]
        try:
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = NPY_HEADER_READERS.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, _fortran, dtype = read_header(f)
        except _ZIP_MEMBER_ERRORS as exc:
            archive.close()
            raise MalformedFileError(path, f"member {key!r} is not a valid .npy ({exc})") from None
        if dtype.hasobject:
            raise MalformedFileError(path, f"member {key!r} holds Python objects (refused)")
        try:
            code = dtypes.code_for(dtype)
        except ValueError:
            raise MalformedFileError(
                path, f"member {key!r} has unsupported dtype {dtype}"
            ) from None
        tensors[key] = BaseTensor(key, code, tuple(shape))
    return tensors, archive


def npz_header(path: str | os.PathLike[str]) -> dict[str, BaseTensor]:
    """Key -> dtype and shape of every array in an .npz, from the members' .npy headers only
    (for files that are no base: the MLX runtime's codec encoder file, say what it holds)."""
    tensors, archive = _npz_index(os.fspath(path))
    archive.close()
    return tensors


def _read_npz_member(path: str, archive: zipfile.ZipFile, key: str) -> np.ndarray:
    try:
        with archive.open(f"{key}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except _ZIP_MEMBER_ERRORS as exc:
        raise MalformedFileError(path, f"member {key!r} cannot be read ({exc})") from None


def _npz_locator(path: str, archive: zipfile.ZipFile) -> Callable[[str], tuple[str, int] | None]:
    """`BaseCheckpoint.stored_bytes` of an .npz: each member's array offset, found (from its
    local and .npy headers) the first time it is asked for."""
    found: dict[str, int | None] = {}

    def locate(key: str) -> tuple[str, int] | None:
        if key not in found:  # two threads may both look: the same answer, no harm
            found[key] = stored_array_offset(path, archive.getinfo(f"{key}.npy"))
        offset = found[key]
        return None if offset is None else (path, offset)

    return locate


def _open_folder_base(spath: str) -> BaseCheckpoint:
    opened = open_folder(spath)
    tensors = {k: BaseTensor(k, code, shape) for k, (code, shape) in opened.tensors.items()}
    if detect_base_naming(list(tensors)) != "diffusers":
        opened.close()
        raise MalformedFileError(spath, "a diffusers folder, but not of an SA3 transformer")
    return BaseCheckpoint(
        spath,
        FOLDER_CONTAINER,
        "diffusers",
        tensors,
        opened.metadata,
        opened.read,
        opened.close,
        opened.layout,
        _locate=opened.locate,
    )


def open_base(
    path: str | os.PathLike[str], *, conditioner: str | os.PathLike[str] | None = None
) -> BaseCheckpoint:
    """Open a base checkpoint header-only: a safetensors or .npz file (official, MLX or
    diffusers naming), a diffusers transformer folder, or an sa3.cpp DiT GGUF (with its
    conditioner sidecar GGUF when `conditioner` is given)."""
    spath = os.fspath(path)
    if os.path.isdir(spath):
        return _open_folder_base(spath)
    if not is_file(spath):
        raise UnreadableFileError(spath, "no such file")
    if conditioner is not None and not is_gguf(spath):
        raise MalformedFileError(spath, "a conditioner file goes with an sa3.cpp DiT GGUF only")
    if is_gguf(spath):
        return _open_gguf_base(spath, None if conditioner is None else os.fspath(conditioner))
    if not is_url(spath) and zipfile.is_zipfile(spath):
        tensors, archive = _npz_index(spath)
        container, metadata = "npz", {}
        read = lambda key: _read_npz_member(spath, archive, key)  # noqa: E731
        close = archive.close
        locate = _npz_locator(spath, archive)
    else:
        handle = open_safetensors(spath)
        tensors = {
            k: BaseTensor(k, i.dtype, tuple(i.shape)) for k, i in handle.header.tensors.items()
        }
        container, metadata = "safetensors", dict(handle.metadata)
        read, close = handle.read, handle.close
        header = handle.header
        locate = lambda key: (spath, header.data_offset + header.tensors[key].begin)  # noqa: E731
    naming = detect_base_naming(list(tensors))
    if naming is None:
        close()
        raise MalformedFileError(
            spath,
            "not an SA3 base checkpoint (neither official `model.model.` nor MLX runtime keys)",
        )
    return BaseCheckpoint(spath, container, naming, tensors, metadata, read, close, _locate=locate)


class NpzStreamWriter:
    """Write an uncompressed .npz one array at a time, committed atomically (like np.savez).

    The sequential reference: outputs are written by `io.npz_writer.NpzPositionalWriter`
    (`stream_writer`), whose archive is byte for byte this one's for the same arrays (tested).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, inputs: Sequence[str] = (), overwrite: bool = True
    ) -> None:
        self.path = os.fspath(path)
        self._inputs = inputs
        self._overwrite = overwrite
        self._out: AtomicFile | None = None
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> NpzStreamWriter:
        mark = TEMPS.mark()  # as in SafetensorsStreamWriter: __exit__ never runs if this fails
        try:
            self._out = AtomicFile(self.path, inputs=self._inputs, overwrite=self._overwrite)
            self._zip = zipfile.ZipFile(self._out.file, "w", zipfile.ZIP_STORED, allowZip64=True)
            return self
        except BaseException:
            discard_or_remove_since(self._out, mark)
            raise

    def write(self, name: str, array: np.ndarray) -> None:
        assert self._zip is not None
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._out is not None and self._zip is not None
        try:  # an interrupt while closing the archive must not leave the temp file
            if exc_type is None:
                try:
                    self._zip.close()  # writes the central directory: can still hit a full disk
                except OSError as close_exc:
                    raise output_error(self.path, close_exc) from close_exc
                self._out.commit()
                return
            with contextlib.suppress(Exception):
                self._zip.close()
        except BaseException:
            self._out.discard()
            raise
        self._out.discard()
        if isinstance(exc, OSError):  # a full disk, not a bad input: exit 5, user's name
            raise output_error(self.path, exc) from exc


def base_container_of(path: str | os.PathLike[str]) -> str:
    """The container a base at `path` is (decided from the path alone: folders are diffusers
    folders, .npz archives npz, the rest safetensors), so outputs can be checked first."""
    spath = os.fspath(path)
    if os.path.isdir(spath):
        return FOLDER_CONTAINER
    if is_gguf(spath):
        return GGUF_CONTAINER
    return "npz" if zipfile.is_zipfile(spath) else "safetensors"


def check_base_output(
    path: str | os.PathLike[str],
    container: str,
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = True,
) -> None:
    """The output-path policy for a base written in `container`: a folder container may
    replace only a diffusers folder, a file container never a folder."""
    folder = container == FOLDER_CONTAINER
    check_output_path(
        path,
        inputs=inputs,
        overwrite=overwrite,
        directory=folder,
        replaceable=is_diffusers_dir if folder else None,
    )


@dataclass(frozen=True)
class FolderSpec:
    """How to write a folder container: its config.json and its shards (kept as given, e.g.
    a merged base's, or cut at `max_shard_size`)."""

    config: dict[str, Any]
    shards: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE


@dataclass(frozen=True)
class GgufOutput:
    """How to write an sa3.cpp base: the DiT file's spec and, when the base has conditioner
    tensors, the sidecar's spec and path (the `te.*` tensors go there)."""

    dit: GgufSpec
    conditioner: GgufSpec | None = None
    conditioner_path: str | None = None


class GgufPairWriter:
    """The DiT GGUF and its conditioner sidecar written as one output: each tensor goes to the
    file its name belongs in; neither is committed unless both were written completely (the
    two renames themselves are one after the other)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Sequence[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str],
        out: GgufOutput,
        *,
        inputs: Sequence[str] = (),
        overwrite: bool = True,
    ) -> None:
        dit_specs = [s for s in specs if not is_sa3cpp_conditioner_key(s[0])]
        cond_specs = [s for s in specs if is_sa3cpp_conditioner_key(s[0])]
        self._writers: dict[bool, GgufStreamWriter] = {}
        if dit_specs or not cond_specs:
            self._writers[False] = GgufStreamWriter(
                path, dit_specs, metadata, out.dit, inputs=inputs, overwrite=overwrite
            )
        if cond_specs:
            # a conditioner file written on its own is the output itself, with its own spec
            spec = out.conditioner if dit_specs else (out.conditioner or out.dit)
            where = out.conditioner_path if dit_specs else os.fspath(path)
            if spec is None or where is None:
                raise ValueError("conditioner tensors need the sidecar's spec and path")
            self._writers[True] = GgufStreamWriter(
                where,
                cond_specs,
                metadata if not dit_specs else {},
                spec,
                inputs=inputs,
                overwrite=overwrite,
            )
        self.paths = [w.path for w in self._writers.values()]

    def __enter__(self) -> GgufPairWriter:
        entered: list[GgufStreamWriter] = []
        try:
            for writer in self._writers.values():
                writer.__enter__()
                entered.append(writer)
        except BaseException as exc:
            for writer in entered:
                writer.__exit__(type(exc), exc, None)
            raise
        return self

    def write(self, name: str, array: np.ndarray) -> None:
        self._writers[is_sa3cpp_conditioner_key(name)].write(name, array)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        writers = list(self._writers.values())
        try:
            for writer in writers:
                writer.finish(exc)
        except BaseException:
            for writer in writers:
                writer.discard()
            raise
        if exc is not None:
            return
        for done, writer in enumerate(writers):
            try:
                writer.commit()
            except BaseException:
                for rest in writers[done + 1 :]:
                    rest.discard()
                raise


def stream_writer(
    container: str,
    path: str | os.PathLike[str],
    specs: Sequence[tuple[str, str, tuple[int, ...]]],
    metadata: dict[str, str],
    *,
    inputs: Sequence[str] = (),
    overwrite: bool = True,
    folder: FolderSpec | None = None,
    gguf: GgufOutput | None = None,
) -> SafetensorsStreamWriter | NpzPositionalWriter | FolderStreamWriter | GgufPairWriter:
    """A streaming writer for the container (npz keeps no metadata: it has no place for it;
    a folder needs its `folder` spec, a GGUF its `gguf` output spec)."""
    if container == GGUF_CONTAINER:
        if gguf is None:
            raise ValueError("an sa3.cpp GGUF output needs its KVs and types (GgufOutput)")
        return GgufPairWriter(path, specs, metadata, gguf, inputs=inputs, overwrite=overwrite)
    if container == "npz":
        return NpzPositionalWriter(path, specs, inputs=inputs, overwrite=overwrite)
    if container == FOLDER_CONTAINER:
        if folder is None:
            raise ValueError("a diffusers folder output needs its config (FolderSpec)")
        return FolderStreamWriter(
            path,
            specs,
            metadata,
            folder.config,
            shards=folder.shards,
            max_shard_size=folder.max_shard_size,
            inputs=inputs,
            overwrite=overwrite,
        )
    return SafetensorsStreamWriter(path, specs, metadata, inputs=inputs, overwrite=overwrite)
