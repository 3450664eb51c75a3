"""The diffusers transformer folder: `config.json` plus one or more safetensors shards.

A diffusers `StableAudio3DiTModel` is saved as a folder: `config.json` (the constructor's
arguments plus `_class_name`) and `diffusion_pytorch_model.safetensors`, or, when larger
than a shard limit, `diffusion_pytorch_model-0000N-of-0000M.safetensors` shards listed by
`diffusion_pytorch_model.safetensors.index.json` (`weight_map`: key -> shard file). This
module reads such a folder lazily (one shard handle per file, one tensor at a time) and
writes one the same way (every shard open at once, tensors written whole or in parts at
their place; config and index last, the whole folder committed atomically), so a merge or
conversion keeps peak memory at one tensor or a few tiles.

Names inside the shards are the `diffusers` base naming (`names.base_keys`); which tensors a
transformer folder can hold at all (not the duration embedder's) is decided here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import MalformedFileError, OutputError
from sa3ckpt.io.atomic import StagedOutput, output_error
from sa3ckpt.io.safetensors import SafetensorsFile, SafetensorsStreamWriter, open_safetensors
from sa3ckpt.io.sources import read_json
from sa3ckpt.names.base_keys import parse_diffusers_base_key
from sa3ckpt.names.modules import DIFFUSERS_BLOCK_PREFIX, DIFFUSERS_TRANSFORMER, diffusers_component

CONTAINER = "diffusers-folder"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
CLASS_NAME = "StableAudio3DiTModel"
# The diffusers release whose StableAudio3DiTModel these folders were checked against.
DIFFUSERS_VERSION = "0.42.1"
# diffusers' own `save_pretrained` default (10 GB, decimal like the Hub's sizes).
DEFAULT_MAX_SHARD_SIZE = 10 * 10**9
SHARD_METADATA = {"format": "pt"}  # what save_pretrained writes in every shard

Shape = tuple[int, ...]


def shard_name(index: int, count: int) -> str:
    """The file name of shard `index` (1-based) of `count`, as diffusers names them."""
    if count == 1:
        return WEIGHTS_NAME
    stem = WEIGHTS_NAME.removesuffix(".safetensors")
    return f"{stem}-{index:05d}-of-{count:05d}.safetensors"


def is_diffusers_dir(path: str | os.PathLike[str]) -> bool:
    """A folder with config.json and diffusers weights (a single file or an index)."""
    spath = os.fspath(path)
    return (
        os.path.isdir(spath)
        and os.path.isfile(os.path.join(spath, CONFIG_NAME))
        and any(os.path.isfile(os.path.join(spath, n)) for n in (WEIGHTS_NAME, INDEX_NAME))
    )


def has_transformer_home(key: str) -> bool:
    """Whether a diffusers-named tensor belongs in the transformer folder (not in another
    pipeline component such as the duration embedder)."""
    parsed = parse_diffusers_base_key(key)
    return parsed is None or diffusers_component(".".join(parsed)) == DIFFUSERS_TRANSFORMER


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderLayout:
    """What a folder holds besides tensors: its config and which keys each shard file has."""

    config: dict[str, Any]
    shards: tuple[tuple[str, tuple[str, ...]], ...]  # (file name, keys in file order)


def _shard_files(path: str) -> tuple[list[str], dict[str, str] | None]:
    """The shard file names in order (the index's files, or the single weights file) and
    the index's weight_map when there is one."""
    index_path = os.path.join(path, INDEX_NAME)
    if not os.path.isfile(index_path):
        return [WEIGHTS_NAME], None
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise MalformedFileError(index_path, "no weight_map of key -> shard file")
    files = sorted(set(weight_map.values()))
    for name in files:
        if os.path.basename(name) != name or not name.endswith(".safetensors"):
            raise MalformedFileError(index_path, f"shard {name!r} is not a file in the folder")
    return files, dict(weight_map)


def _check_index(
    path: str, handles: Mapping[str, SafetensorsFile], weight_map: dict[str, str] | None
) -> None:
    """The index must list exactly the tensors the shards hold, each in its own shard."""
    if weight_map is None:
        return
    index_path = os.path.join(path, INDEX_NAME)
    held = {key: name for name, handle in handles.items() for key in handle.header.tensors}
    if held != weight_map:
        wrong = sorted(set(held.items()) ^ set(weight_map.items()))
        raise MalformedFileError(
            index_path, f"weight_map does not match the shards (e.g. {wrong[0][0]!r})"
        )


@dataclass
class OpenFolder:
    """An opened folder: every tensor's (dtype, shape) and a reader, plus its layout."""

    tensors: dict[str, tuple[str, Shape]]
    metadata: dict[str, str]
    layout: FolderLayout
    read: Callable[[str], np.ndarray]
    close: Callable[[], None]
    # (shard file, absolute offset) of a tensor's plain bytes (a merge reads row tiles there)
    locate: Callable[[str], tuple[str, int]] | None = None


def open_folder(path: str | os.PathLike[str]) -> OpenFolder:
    """Open a diffusers transformer folder header-only (each shard's header, no data)."""
    spath = os.fspath(path)
    if not is_diffusers_dir(spath):
        raise MalformedFileError(
            spath, f"not a diffusers model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    config = read_json(os.path.join(spath, CONFIG_NAME))
    if not isinstance(config, dict):
        raise MalformedFileError(os.path.join(spath, CONFIG_NAME), "not a JSON object")
    handles: dict[str, SafetensorsFile] = {}
    try:
        files, weight_map = _shard_files(spath)
        for name in files:
            shard = os.path.join(spath, name)
            if not os.path.isfile(shard):
                raise MalformedFileError(spath, f"shard {name} is missing")
            handles[name] = open_safetensors(shard)
        _check_index(spath, handles, weight_map)
    except BaseException:
        for handle in handles.values():
            handle.close()
        raise
    owner: dict[str, SafetensorsFile] = {}
    tensors: dict[str, tuple[str, Shape]] = {}
    for handle in handles.values():
        for key, info in handle.header.tensors.items():
            if key in owner:
                raise MalformedFileError(spath, f"tensor {key!r} is in two shards")
            owner[key] = handle
            tensors[key] = (info.dtype, tuple(info.shape))
    first = next(iter(handles.values()))
    layout = FolderLayout(
        dict(config),
        tuple((name, tuple(h.header.tensors)) for name, h in handles.items()),
    )

    def close() -> None:
        for handle in handles.values():
            handle.close()

    def locate(key: str) -> tuple[str, int]:
        header = owner[key].header
        return owner[key].path, header.data_offset + header.tensors[key].begin

    return OpenFolder(
        tensors, dict(first.metadata), layout, lambda key: owner[key].read(key), close, locate
    )


def folder_keys(path: str) -> list[str]:
    """Every tensor key of a folder (headers only), for identification."""
    opened = open_folder(path)
    try:
        return list(opened.tensors)
    finally:
        opened.close()


# --- the model config -------------------------------------------------------------------------

# StableAudio3DiTModel arguments read off one tensor's shape: (argument, key, axis).
_SHAPE_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("io_channels", "preprocess_conv.weight", 0),
    ("embed_dim", "proj_in.weight", 0),
    ("cond_token_dim", "to_cond_embed.0.weight", 1),
    ("global_cond_dim", "to_global_embed.0.weight", 1),
    ("local_add_cond_dim", f"{DIFFUSERS_BLOCK_PREFIX}0.to_local_embed.0.weight", 1),
    ("timestep_features_dim", "to_timestep_embed.0.weight", 1),
)
_HEAD_NORM = f"{DIFFUSERS_BLOCK_PREFIX}0.self_attn.q_norm.gamma"
_QKV = f"{DIFFUSERS_BLOCK_PREFIX}0.self_attn.to_qkv.weight"
_FF_OUT = f"{DIFFUSERS_BLOCK_PREFIX}0.ff.proj_out.weight"


def transformer_config(shapes: Mapping[str, Shape]) -> dict[str, Any]:
    """The StableAudio3DiTModel config that builds exactly these tensors (diffusers naming).

    Every argument follows from a shape: widths from the projections, the head count from
    the q-norm width (the head dim), depth from the block indices, differential attention
    from the 5E-row to_qkv, the patch size from proj_in's input over the latent channels.
    """
    missing = [key for _, key, _ in _SHAPE_FIELDS if key not in shapes]
    missing += [key for key in (_HEAD_NORM, _QKV, _FF_OUT) if key not in shapes]
    if missing:
        raise ValueError(f"cannot derive the diffusers config: no {missing[0]}")
    config: dict[str, Any] = {"_class_name": CLASS_NAME, "_diffusers_version": DIFFUSERS_VERSION}
    for name, key, axis in _SHAPE_FIELDS:
        config[name] = shapes[key][axis]
    embed = config["embed_dim"]
    blocks = {
        k[len(DIFFUSERS_BLOCK_PREFIX) :].split(".", 1)[0]
        for k in shapes
        if k.startswith(DIFFUSERS_BLOCK_PREFIX)
    }
    config["depth"] = len({b for b in blocks if b.isdigit()})
    config["num_heads"] = embed // shapes[_HEAD_NORM][0]
    config["patch_size"] = shapes["proj_in.weight"][1] // config["io_channels"]
    config["ff_mult"] = float(shapes[_FF_OUT][1] / embed)
    config["num_memory_tokens"] = shapes["memory_tokens"][0] if "memory_tokens" in shapes else 0
    config["use_differential_attention"] = shapes[_QKV][0] == 5 * embed
    return config


# --- writing ----------------------------------------------------------------------------------

TensorSpec = tuple[str, str, Shape]


def total_size(specs: Iterable[TensorSpec]) -> int:
    """Bytes of the tensors' data (an index's `total_size`, the shard cut's measure)."""
    return sum(
        dtypes.itemsize(code) * int(np.prod(shape, dtype=np.int64)) for _, code, shape in specs
    )


def plan_shards(
    specs: Sequence[TensorSpec], max_shard_size: int
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Tensors in order, cut into shards of at most `max_shard_size` bytes (a tensor larger
    than the limit gets a shard of its own), named as diffusers names them."""
    if max_shard_size <= 0:
        raise ValueError(f"max shard size must be positive, not {max_shard_size}")
    groups: list[list[str]] = [[]]
    size = 0
    for spec in specs:
        key = spec[0]
        nbytes = total_size([spec])
        if groups[-1] and size + nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    count = len(groups)
    return tuple((shard_name(i, count), tuple(g)) for i, g in enumerate(groups, 1))


class FolderStreamWriter:
    """Write a diffusers transformer folder, committed as a whole.

    Every shard's `SafetensorsStreamWriter` is opened on entry (each an atomic temp file in
    a staged folder) and tensors go to their shard's writer: whole (`write`, in spec order
    within a shard) or at their place in any order (`write_at`, `copy_from`: the positional
    interface of `io.tensor_rows`, for merge workers). On success every shard is committed,
    then config.json and, for more than one shard, the index are written and the folder
    appears under `path` (replacing an existing diffusers folder needs `overwrite`); on any
    error or interrupt every shard is discarded with the staged folder. `shards` keeps a
    given assignment (a merge keeps its base's); by default the specs are cut at
    `max_shard_size`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str],
        config: Mapping[str, Any],
        *,
        shards: Sequence[tuple[str, Sequence[str]]] | None = None,
        max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
        inputs: Sequence[str] = (),
        overwrite: bool = True,
    ) -> None:
        homeless = [key for key, _, _ in specs if not has_transformer_home(key)]
        if homeless:
            raise ValueError(f"{homeless[0]} has no place in a diffusers transformer folder")
        self.path = os.fspath(path)
        self._specs = list(specs)
        self._metadata = {**SHARD_METADATA, **metadata}
        self._config = dict(config)
        plan = tuple(shards) if shards is not None else plan_shards(self._specs, max_shard_size)
        self._shards = [(name, tuple(keys)) for name, keys in plan]
        self._check_plan()
        self._staged = StagedOutput(
            self.path,
            inputs=inputs,
            overwrite=overwrite,
            directory=True,
            replaceable=is_diffusers_dir,
        )
        self._by_key = {spec[0]: spec for spec in self._specs}
        self._writers: list[SafetensorsStreamWriter] = []  # the open shards, in order
        self._shard_of: dict[str, SafetensorsStreamWriter] = {}

    def _check_plan(self) -> None:
        """Every spec in exactly one shard, shards contiguous in spec order."""
        flat = [key for _, keys in self._shards for key in keys]
        if flat != [key for key, _, _ in self._specs]:
            raise ValueError("the shard plan does not list the tensors once each, in order")

    def __enter__(self) -> FolderStreamWriter:
        try:
            os.mkdir(self._staged.temp_path)
            for name, keys in self._shards:
                writer = SafetensorsStreamWriter(
                    os.path.join(self._staged.temp_path, name),
                    [self._by_key[key] for key in keys],
                    self._metadata,
                ).__enter__()
                self._writers.append(writer)
                self._shard_of.update(dict.fromkeys(keys, writer))
        except BaseException as exc:  # __exit__ never runs when __enter__ fails
            self._discard(exc)
            if isinstance(exc, OSError | OutputError):
                raise output_error(self.path, exc) from exc
            raise
        return self

    def _writer(self, name: str) -> SafetensorsStreamWriter:
        writer = self._shard_of.get(name)
        if writer is None:
            raise ValueError(f"unexpected tensor {name!r}: not in any shard")
        return writer

    def write(self, name: str, array: np.ndarray) -> None:
        """Append tensor `name` to its shard (the next of that shard's specs)."""
        self._writer(name).write(name, array)

    def write_at(self, name: str, start: int, data: np.ndarray | memoryview | bytes) -> None:
        """Write bytes [start, start + len) of tensor `name` in its shard."""
        self._writer(name).write_at(name, start, data)

    def copy_from(self, name: str, src_fd: int, src_offset: int) -> None:
        """Write tensor `name` whole into its shard from its raw bytes in `src_fd`."""
        self._writer(name).copy_from(name, src_fd, src_offset)

    def _discard(self, exc: BaseException) -> BaseException:
        """Discard every shard and the staged folder; the error to report (a shard's own
        write error, if closing one failed on a full disk)."""
        writers, self._writers = self._writers, []
        try:
            for writer in writers:
                try:
                    writer.__exit__(type(exc), exc, None)
                except (OSError, OutputError) as shard_exc:
                    exc = shard_exc
        finally:
            self._staged.discard()
        return exc

    def _finish(self) -> None:
        writers, self._writers = self._writers, []
        for done, writer in enumerate(writers):  # each checks that it is complete, commits
            try:
                writer.__exit__(None, None, None)
            except BaseException as exc:
                for rest in writers[done + 1 :]:
                    rest.__exit__(type(exc), exc, None)
                raise
        folder = self._staged.temp_path
        with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self._config, f, indent=2, sort_keys=True)
            f.write("\n")
        if len(self._shards) > 1:
            total = total_size(self._specs)
            weight_map = {key: name for name, keys in self._shards for key in keys}
            index = {
                "metadata": {"total_size": total},
                "weight_map": dict(sorted(weight_map.items())),
            }
            with open(os.path.join(folder, INDEX_NAME), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
                f.write("\n")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            exc = self._discard(exc)
            if isinstance(exc, OSError | OutputError):  # name the folder, not a shard's temp
                raise output_error(self.path, exc) from exc
            return
        try:
            self._finish()
        except (OSError, OutputError) as finish_exc:
            self._staged.discard()
            raise output_error(self.path, finish_exc) from finish_exc
        except BaseException:
            self._staged.discard()
            raise
        self._staged.commit()
