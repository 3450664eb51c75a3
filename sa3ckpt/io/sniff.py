"""What a file's first bytes say it is: safetensors, a torch zip pickle, or a raw pickle.

One answer for every caller (`legacy_pickle.looks_like_pickle`, the format registry's pickle
row), in this order, because the cues overlap:

1. safetensors: an 8-byte little-endian header length that fits the file, then a JSON
   object's `{`. Checked first because a header length whose low byte is 0x80 (one valid
   file in 256 header sizes, one in 32 of the 8-byte-padded ones real writers produce)
   starts with the same byte as a pickle.
2. a zip archive holding a `*/data.pkl` member (torch.save's format since 1.6); only the
   central directory is read.
3. a raw pickle (torch's legacy format): the PROTO opcode 0x80 with a protocol number
   pickle knows, followed by an opcode stream that parses. `pickletools.genops` decodes
   opcodes and their arguments from a bounded prefix without building any object, so
   nothing is executed and nothing large is allocated.

Unreadable files are None: sniffing never raises; readers report the reason.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile

from sa3ckpt.errors import Sa3ckptError
from sa3ckpt.io.remote import is_url

SAFETENSORS, TORCH_ZIP, RAW_PICKLE = "safetensors", "torch-zip", "raw-pickle"
PICKLES = frozenset({TORCH_ZIP, RAW_PICKLE})

ZIP_MAGIC = b"PK\x03\x04"
PROTO = 0x80
PROTOCOLS = range(2, pickle.HIGHEST_PROTOCOL + 1)  # PROTO exists from protocol 2 on
PICKLE_PREFIX = 4096
"""Bytes of a candidate raw pickle decoded by genops: enough for torch's leading records."""
MIN_OPCODES = 4
"""Opcodes that must decode (unless STOP comes first) for a 0x80 start to be a pickle."""


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte header length that fits a file of `size` bytes, followed by `{`."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + length <= size


def looks_like_raw_pickle(head: bytes) -> bool:
    """PROTO with a known protocol, then opcodes that decode (STOP, or MIN_OPCODES of them).

    The opcode stream may be cut by the prefix bound: running out of bytes after enough
    opcodes is fine, an unknown opcode or bad argument before that is not a pickle.
    """
    if len(head) < 2 or head[0] != PROTO or head[1] not in PROTOCOLS:
        return False
    count = 0
    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(head[:PICKLE_PREFIX])):
            count += 1
            if opcode.name == "STOP" or count >= MIN_OPCODES:
                return True
    except (ValueError, EOFError, UnicodeDecodeError, OverflowError):
        return False
    return False


def _has_data_pkl(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


def _remote_head(url: str) -> tuple[bytes, int] | None:
    """The first bytes and size of a URL (from the range already fetched), None if unreadable."""
    from sa3ckpt.io.bytesource import remote_file

    try:
        source = remote_file(url)
        return source.read_at(0, PICKLE_PREFIX), source.size
    except Sa3ckptError:
        return None


def sniff_container(path: str | os.PathLike[str]) -> str | None:
    """SAFETENSORS, TORCH_ZIP, RAW_PICKLE or None, judged in that order from the first bytes.

    A URL is judged from its first fetched range; a zip archive there counts as a torch
    pickle without listing it (its directory is at the far end, and it is never read anyway).
    """
    spath = os.fspath(path)
    if is_url(spath):
        got = _remote_head(spath)
        if got is None:
            return None
        head, size = got
    else:
        try:
            with open(spath, "rb") as f:
                head = f.read(PICKLE_PREFIX)
                size = os.fstat(f.fileno()).st_size
        except OSError:
            return None
    if looks_like_safetensors(head, size):
        return SAFETENSORS
    if head.startswith(ZIP_MAGIC):
        if is_url(spath):
            return TORCH_ZIP
        return TORCH_ZIP if _has_data_pkl(spath) else None
    if looks_like_raw_pickle(head):
        return RAW_PICKLE
    return None
