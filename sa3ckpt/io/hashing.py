"""Content hashes of checkpoint files: the tensor-data sha256 and the whole-file sha256.

Users compare files across hubs and folders by hash, and a whole-file sha256 changes as soon
as anyone edits the metadata (a renamed run, a corrected `base_model`), although the weights
are the same. The tensor-data hash ignores the header:

- safetensors: sha256 of the data section, i.e. the file's bytes from offset 8 + N to its end,
  where N is the little-endian u64 header length in the first 8 bytes. This is the hash
  civitai lists as AutoV3 and kohya's trainers write as `sshs_model_hash` (the file minus its
  8-byte length prefix and JSON header); A1111/Forge infotexts quote its first 12 hex digits.
  Header edits (metadata, key order, padding) do not change it; rewriting the data section
  (another dtype, another tensor order) does.
- GGUF: sha256 of the tensor data section (from the reader's data offset to the end), for the
  same reason: KV fields are the metadata.
- legacy pickles have no separate data section: only the whole-file hash is given.

Folders that are one adapter (PEFT, diffusers LoRA) are hashed through their weight files:
one file gives that file's hashes; several (a diffusers LoRA with a sidecar) are hashed as one
stream in the listed order. Both hashes are computed in a single read of each file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Protocol

from sa3ckpt.errors import MalformedFileError, UnreadableFileError
from sa3ckpt.io.bytesource import is_dir, is_file
from sa3ckpt.io.diffusers_lora import is_diffusers_lora, lora_files
from sa3ckpt.io.gguf_adapter import is_gguf
from sa3ckpt.io.remote import is_url
from sa3ckpt.io.safetensors import read_header
from sa3ckpt.io.sniff import SAFETENSORS, sniff_container
from sa3ckpt.io.sources import PEFT_WEIGHTS, is_peft_dir

CHUNK = 1 << 20


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


# What the tensor hash covers, per container (the `scope` of a result).
SAFETENSORS_SCOPE = "safetensors data section (bytes after the 8-byte length and the header)"
GGUF_SCOPE = "GGUF tensor data section (bytes from the data offset to the end)"
NO_SCOPE = "none: this container has no data section apart from its metadata"


@dataclass(frozen=True)
class FileHashes:
    """The hashes of one path (a file, or an adapter folder through its weight files)."""

    path: str
    files: list[str]  # the files read, in order
    tensor_sha256: str | None  # None: no separable data section (see scope)
    file_sha256: str
    scope: str

    @property
    def short(self) -> str | None:
        """The first 12 hex digits of the tensor hash, as hub infotexts quote it."""
        return self.tensor_sha256[:12] if self.tensor_sha256 else None


def weight_files(path: str | os.PathLike[str]) -> list[str]:
    """The files that hold an adapter's tensors: the file itself, or a folder's weights."""
    spath = os.fspath(path)
    if not is_dir(spath):
        return [spath]
    if is_peft_dir(spath):
        return [os.path.join(spath, PEFT_WEIGHTS)]
    if is_diffusers_lora(spath):
        return lora_files(spath)
    raise MalformedFileError(spath, "a folder, but not an adapter folder (PEFT or diffusers LoRA)")


def _gguf_data_offset(path: str) -> int:
    from sa3ckpt.io.gguf_adapter import parsed_gguf_header

    return parsed_gguf_header(path).data_offset


def data_offset(path: str) -> tuple[int | None, str]:
    """(where the tensor data starts, the scope) of one file; None when there is no section.

    The header is parsed and validated first, so a damaged safetensors file is reported as
    malformed rather than hashed from a meaningless offset.
    """
    if sniff_container(path) == SAFETENSORS:
        return read_header(path).data_offset, SAFETENSORS_SCOPE
    if is_gguf(path):
        return _gguf_data_offset(path), GGUF_SCOPE
    if is_file(path) and path.endswith(".safetensors"):
        read_header(path)  # raises the precise reason it is not one
    return None, NO_SCOPE


class _Split:
    """A sink feeding every byte to `whole` and the bytes from `offset` on to `data`."""

    def __init__(self, offset: int | None, whole: Any, data: Any) -> None:
        self.offset, self.whole, self.data = offset, whole, data
        self.position = 0

    def update(self, chunk: bytes) -> None:
        self.whole.update(chunk)
        offset = self.offset
        if offset is not None and self.position + len(chunk) > offset:
            self.data.update(chunk[max(offset - self.position, 0) :])
        self.position += len(chunk)


def _feed_remote(url: str, offset: int | None, whole: Any, data: Any) -> tuple[Any, Any]:
    """Stream a URL's body once through both hashes, nothing kept; a retried transfer
    starts again from copies of the hashes as they were before this file."""
    from sa3ckpt.io import remote

    done = remote.stream_into(url, lambda: _Split(offset, whole.copy(), data.copy()))
    return done.whole, done.data


def _feed(path: str, offset: int | None, whole: _Hasher, data: _Hasher) -> None:
    """Read `path` once, feeding every byte to `whole` and the bytes from `offset` to `data`."""
    position = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                whole.update(chunk)
                if offset is not None and position + len(chunk) > offset:
                    data.update(chunk[max(offset - position, 0) :])
                position += len(chunk)
    except OSError as exc:
        raise UnreadableFileError(path, exc.strerror or str(exc)) from None


def hash_path(path: str | os.PathLike[str]) -> FileHashes:
    """Both hashes of a file or adapter folder; MalformedFileError when it cannot be read."""
    spath = os.fspath(path)
    files = weight_files(spath)
    whole, data = hashlib.sha256(), hashlib.sha256()
    scopes = []
    for name in files:
        if is_url(name):
            offset, scope = data_offset(name)
            whole, data = _feed_remote(name, offset, whole, data)
            scopes.append(scope)
            continue
        if not os.path.isfile(name):
            raise UnreadableFileError(name, "no such file")
        offset, scope = data_offset(name)
        scopes.append(scope)
        _feed(name, offset, whole, data)
    has_data = all(s != NO_SCOPE for s in scopes)
    return FileHashes(
        spath,
        files,
        data.hexdigest() if has_data else None,
        whole.hexdigest(),
        scopes[0] if has_data else NO_SCOPE,
    )


def file_sha256_only(path: str | os.PathLike[str]) -> str:
    """The whole-file sha256 of a file that may not parse (a damaged download)."""
    spath = os.fspath(path)
    if is_url(spath):
        return str(_feed_remote(spath, None, hashlib.sha256(), hashlib.sha256())[0].hexdigest())
    whole = hashlib.sha256()
    _feed(spath, None, whole, hashlib.sha256())
    return whole.hexdigest()
