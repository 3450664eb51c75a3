"""Byte sources: where header readers get their bytes, a local file or a remote range reader.

The format readers (safetensors headers, GGUF headers, the container sniffers) only ever
need "the bytes at offset o, n of them" and the file size. Reading through this one small
interface lets the same parser serve a local file (pread) and a URL (HTTP byte ranges,
`sa3ckpt.io.remote`), so there is one parser per format, not one per transport.

The path helpers here (`is_file`, `exists`, `file_size`, `read_small`) answer the questions
the format registry asks about an input for either kind of input.
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.remote import is_folder, is_url


class ByteSource(Protocol):
    """Random access to the front of one file."""

    name: str  # for messages: the path or the URL as given
    size: int

    def read_at(self, offset: int, count: int) -> bytes:
        """Bytes [offset, offset + count), fewer only at the end of the file."""
        ...


class LocalFile:
    """A regular local file read with pread (no state shared between reads)."""

    def __init__(self, path: str) -> None:
        st = os.stat(path)  # before open: opening a FIFO for reading would block
        if not stat.S_ISREG(st.st_mode):
            raise MalformedFileError(path, "not a regular file")
        self.name = path
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def read_at(self, offset: int, count: int) -> bytes:
        parts = []
        while count > 0:
            chunk = os.pread(self._fd, count, offset)
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
            count -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remote_file(url: str) -> ByteSource:
    """The remote file at `url` (its front fetched by range; RemoteError when unreadable)."""
    from sa3ckpt.io import remote

    return remote.open_file(url)


def is_file(path: str | os.PathLike[str]) -> bool:
    """A regular file, or a URL spelled as a file (whether it is there is the fetch's answer)."""
    spath = os.fspath(path)
    if is_url(spath):
        return not is_folder(spath)
    return os.path.isfile(spath)


def is_dir(path: str | os.PathLike[str]) -> bool:
    """A folder, or a URL spelled as a folder."""
    spath = os.fspath(path)
    if is_url(spath):
        return is_folder(spath)
    return os.path.isdir(spath)


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a file is there; for a URL a 404 is False and other failures raise."""
    spath = os.fspath(path)
    if is_url(spath):
        from sa3ckpt.io import remote

        return not is_folder(spath) and remote.exists(spath)
    return os.path.isfile(spath)


def file_size(path: str | os.PathLike[str]) -> int:
    spath = os.fspath(path)
    if is_url(spath):
        return remote_file(spath).size
    return os.path.getsize(spath)


def read_small(path: str | os.PathLike[str], limit: int) -> bytes:
    """A small file whole (configs): MalformedFileError when larger than `limit` bytes.

    Local OS errors are raised as OSError for the caller's wording.
    """
    spath = os.fspath(path)
    if is_url(spath):
        source = remote_file(spath)
        if source.size > limit:
            raise MalformedFileError(spath, f"larger than {limit} bytes")
        return source.read_at(0, source.size)
    if os.path.getsize(spath) > limit:
        raise MalformedFileError(spath, f"larger than {limit} bytes")
    with open(spath, "rb") as f:
        return f.read()
