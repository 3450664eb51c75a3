"""Reading legacy PyTorch ``.ckpt``/``.pt``/``.pth`` adapter checkpoints, safely.

Why this module is careful: a legacy checkpoint is a Python pickle, and unpickling runs
whatever the file tells it to (``__reduce__`` can call any importable function). Adapters are
downloaded from strangers, so by default we refuse to read them at all, before torch is even
imported. With an explicit opt-in we read them with ``torch.load(weights_only=True)`` only:
torch's restricted unpickler, which accepts tensors, storages and plain containers and rejects
every other global. Passing ``weights_only=True`` explicitly also means the
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable cannot turn the restriction off
(torch only honours it when the argument is left unset).

Torch is an optional extra, so it is imported lazily and only on the opt-in path; the rest of
sa3ckpt (and ``looks_like_pickle``, used by validate) works without it.

Layouts accepted (the reference trainer writes the first):

* ``{"state_dict": {name: tensor}, "lora_config": dict | JSON string, ...}``: other top-level
  scalars (step, epoch, ...) are kept as strings for provenance;
* a bare ``{name: tensor}`` dict (optionally with a ``lora_config`` entry).
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import MalformedFileError, UnreadableFileError, UsageError
from sa3ckpt.io.sniff import PICKLES, ZIP_MAGIC, sniff_container

PICKLE_REFUSAL = (
    "legacy .ckpt is a Python pickle; refusing to load it "
    "(pass --allow-pickle to read it with torch.load(weights_only=True))"
)
"""The one-line cause of `PickleRefusedError`; the CLI flag it names is the only way past it."""

TORCH_MISSING = "reading legacy .ckpt needs the torch extra: pip install 'sa3ckpt[torch]'"
"""Usage error when the user opted in but torch is not installed."""

STATE_DICT_KEY = "state_dict"
CONFIG_KEY = "lora_config"

MAX_CAUSE_CHARS = 300
"""Torch's errors run to paragraphs; the CLI prints one line, so causes are cut to this."""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_KEY_SHOWN = 80


class PickleRefusedError(MalformedFileError):
    """A pickle-based checkpoint that we will not unpickle without an explicit opt-in (exit 3).

    A subclass of `MalformedFileError` so callers that report "cannot read this file" need no
    special case, while validate/inspect can still tell "refused" from "broken".
    """

    def __init__(self, path: str | os.PathLike[str], cause: str = PICKLE_REFUSAL) -> None:
        super().__init__(path, cause)


@dataclass
class LegacyCheckpoint:
    """What a legacy checkpoint holds, converted to numpy so nothing downstream needs torch.

    ``extra`` keeps the other top-level scalars (step, epoch, ...) as strings: they are
    provenance to show and carry into safetensors metadata, which only holds strings.
    """

    tensors: dict[str, np.ndarray]
    lora_config: dict[str, Any] | None
    extra: dict[str, str] = field(default_factory=dict)
    path: str = ""


def looks_like_pickle(path: str | os.PathLike[str]) -> bool:
    """Whether a file looks like a torch pickle checkpoint, judged without unpickling anything.

    True for a zip archive (torch's default format since 1.6) holding a ``*/data.pkl`` member,
    or a raw pickle (the 0x80 protocol marker, a known protocol, a decodable opcode stream),
    and never for a safetensors file, even one whose header length starts with 0x80: the one
    sniffer in `sa3ckpt.io.sniff` decides, in that order. Unreadable files give False: this is
    a sniffing predicate, and reading errors are reported elsewhere.
    """
    return sniff_container(path) in PICKLES


def read_legacy_ckpt(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> LegacyCheckpoint:
    """Read a legacy torch adapter checkpoint into numpy arrays.

    Without ``allow_pickle`` this raises `PickleRefusedError` before torch is imported or a
    byte of the file is read (only its existence is checked, so a typo in the path is not
    reported as a pickle). With it, the file is loaded with ``torch.load(map_location="cpu",
    weights_only=True)`` and nothing else; every failure becomes a one-line
    `MalformedFileError`. A missing torch is a `UsageError` naming the extra to install.
    """
    spath = os.fspath(path)
    _check_regular_file(spath)
    if not allow_pickle:
        raise PickleRefusedError(spath)
    torch = _import_torch()
    obj = _torch_load(torch, spath)
    return _from_loaded(torch, spath, obj)


def load_weights_only(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> tuple[Any, Any]:
    """(torch, the loaded object) of any torch pickle, with the same opt-in and restrictions.

    For pickles that are not adapter checkpoints (the official ``svd_bases.pt``): the same
    refusal without ``allow_pickle``, the same ``torch.load(weights_only=True)`` and one-line
    errors; the caller checks the object's layout and converts tensors with `tensor_to_numpy`.
    """
    spath = os.fspath(path)
    _check_regular_file(spath)
    if not allow_pickle:
        raise PickleRefusedError(spath)
    torch = _import_torch()
    return torch, _torch_load(torch, spath)


def tensor_to_numpy(torch: Any, path: str, name: str, value: Any) -> np.ndarray:
    """A loaded tensor as an independent numpy copy (MalformedFileError for non-tensors)."""
    if not isinstance(value, torch.Tensor):
        raise MalformedFileError(path, f"{_show_key(name)} is a {_type_name(value)}, not a tensor")
    return _to_numpy(torch, path, name, value)


def _check_regular_file(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnreadableFileError(path, f"cannot open: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MalformedFileError(path, "not a regular file")


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError(TORCH_MISSING) from None
    return torch


def _torch_load(torch: Any, path: str) -> Any:
    # Warnings (e.g. "looks like a TorchScript archive") precede an error we report anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
        except Exception as exc:  # any failure of an untrusted file is "malformed"
            raise MalformedFileError(path, _load_failure(torch, path, exc)) from None


def _load_failure(torch: Any, path: str, exc: BaseException) -> str:
    """One line saying why torch.load refused the file, keeping the part that names the cause.

    The weights-only unpickler wraps its reason ("Unsupported global: GLOBAL os.system ...")
    in paragraphs of advice, including re-running with ``weights_only=False``: exactly what we
    do not want users to do blindly with a file that was just refused, so only the reason is
    kept. Other errors (truncated zip, EOF) are often cryptic, so a cheap diagnosis of the
    file itself is put in front of them.
    """
    text = _fold(_ANSI.sub("", str(exc)))
    if text.startswith(_WO_PREFIX):
        return _cut(
            f"rejected by torch.load(weights_only=True): {_weights_only_reason(torch, text)}"
        )
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    hint = _diagnose(path)
    prefix = f"{hint}; " if hint else ""
    return _cut(f"{prefix}torch.load(weights_only=True) failed: {detail}")


_WO_PREFIX = "Weights only load failed."
_WO_MARKER = "WeightsUnpickler error:"
_WO_DOCS = " Check the documentation of torch.load"
_WO_NOT_ALLOWED = " was not an allowed global by default"


def _weights_only_reason(torch: Any, text: str) -> str:
    """The unpickler's own reason out of torch's wrapped weights-only message."""
    if _WO_MARKER in text:
        reason = text.rsplit(_WO_MARKER, 1)[1]
    else:
        reason = text[len(_WO_PREFIX) :]
        advice = _fold(str(getattr(getattr(torch, "serialization", None), "UNSAFE_MESSAGE", "")))
        if advice:
            reason = reason.replace(advice, " ")
    reason = reason.split(_WO_DOCS, 1)[0].split(_WO_NOT_ALLOWED, 1)[0]
    return _fold(reason) or "disallowed content"


def _diagnose(path: str) -> str | None:
    """A short statement of what is visibly wrong with the file, if anything (no unpickling).

    Only the zip structure is examined (its central directory and member CRCs), and only
    after torch has already failed, so the cost is paid on the error path alone.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(ZIP_MAGIC))
    except OSError:
        return None
    if not head:
        return "file is empty"
    if head != ZIP_MAGIC:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError):
        return "truncated or corrupt zip archive"
    if bad is not None:
        return f"corrupt zip member {_show_key(bad)}"
    return None


def _fold(text: str) -> str:
    return " ".join(text.split())


def _cut(text: str, limit: int = MAX_CAUSE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _show_key(key: object) -> str:
    return _cut(repr(key), _KEY_SHOWN)


def _type_name(value: object) -> str:
    return type(value).__name__


def _from_loaded(torch: Any, path: str, obj: Any) -> LegacyCheckpoint:
    """Split a loaded top-level object into tensors, config and provenance, checking types."""
    if not isinstance(obj, Mapping):
        raise MalformedFileError(
            path, f"expected a dict at the top level of the checkpoint, got {_type_name(obj)}"
        )
    for key in obj:
        if not isinstance(key, str):
            raise MalformedFileError(path, f"top-level key {_show_key(key)} is not a string")
    config = _parse_config(path, obj[CONFIG_KEY]) if CONFIG_KEY in obj else None

    if STATE_DICT_KEY in obj:
        state = obj[STATE_DICT_KEY]
        if not isinstance(state, Mapping):
            raise MalformedFileError(
                path, f"'{STATE_DICT_KEY}' is a {_type_name(state)}, not a dict of tensors"
            )
        extra = {
            key: text
            for key, value in obj.items()
            if key not in (STATE_DICT_KEY, CONFIG_KEY)
            and (text := _scalar_text(torch, value)) is not None
        }
        where = f"'{STATE_DICT_KEY}' entry"
    else:
        state = {key: value for key, value in obj.items() if key != CONFIG_KEY}
        extra = {}
        where = "entry"

    tensors: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise MalformedFileError(path, f"{where} key {_show_key(name)} is not a string")
        if not isinstance(value, torch.Tensor):
            hint = "" if STATE_DICT_KEY in obj else f" (and there is no '{STATE_DICT_KEY}' entry)"
            raise MalformedFileError(
                path, f"{where} {_show_key(name)} is a {_type_name(value)}, not a tensor{hint}"
            )
        tensors[name] = _to_numpy(torch, path, name, value)
    return LegacyCheckpoint(tensors=tensors, lora_config=config, extra=extra, path=path)


def _parse_config(path: str, raw: Any) -> dict[str, Any] | None:
    """The lora_config as a JSON-compatible dict (None when explicitly None).

    Writers store either a dict or its JSON text. A dict is round-tripped through JSON so
    that what we return is exactly what a safetensors ``lora_config`` string could hold
    (tuples become lists; values JSON cannot represent are reported, not carried along).
    """
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedFileError(path, f"'{CONFIG_KEY}' bytes are not UTF-8") from None
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise MalformedFileError(path, f"'{CONFIG_KEY}' is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise MalformedFileError(
                path, f"'{CONFIG_KEY}' JSON is a {_type_name(parsed)}, not an object"
            )
        return parsed
    if not isinstance(raw, Mapping):
        raise MalformedFileError(
            path, f"'{CONFIG_KEY}' is a {_type_name(raw)}, not a dict or a JSON string"
        )
    try:
        return json.loads(json.dumps(dict(raw)))
    except (TypeError, ValueError) as exc:
        raise MalformedFileError(
            path, _cut(f"'{CONFIG_KEY}' cannot be represented as JSON: {_fold(str(exc))}")
        ) from None


def _scalar_text(torch: Any, value: Any) -> str | None:
    """A top-level provenance value as text, or None for anything that is not a scalar."""
    if isinstance(value, (bool, int, float, str)):
        return value if isinstance(value, str) else str(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.layout == torch.strided:
        try:
            return str(value.item())
        except (RuntimeError, TypeError, ValueError):
            return None
    return None


def _to_numpy(torch: Any, path: str, name: str, value: Any) -> np.ndarray:
    """An independent, writable CPU numpy copy of a tensor, exact in every dtype we know.

    numpy has no bfloat16/float8, and ``Tensor.numpy()`` rejects them, so those are
    reinterpreted bit for bit through a same-width integer view (exact by construction).
    The result is copied: ``.numpy()`` shares the tensor's storage, and checkpoints may tie
    several tensors to one storage, so callers mutating one array must not change another.
    """
    import ml_dtypes  # here, not at import: it takes ~0.45 s (`dtypes`)

    reinterpret = {
        torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
        torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
        torch.float8_e5m2: (torch.uint8, ml_dtypes.float8_e5m2),
    }
    try:
        if value.layout != torch.strided or value.is_quantized:
            raise MalformedFileError(
                path, f"tensor {_show_key(name)} is not a dense tensor ({value.layout})"
            )
        tensor = value.detach().cpu().contiguous()
        if tensor.dtype in reinterpret:
            int_dtype, np_dtype = reinterpret[tensor.dtype]
            array = tensor.view(int_dtype).numpy().view(np_dtype)
        else:
            array = tensor.numpy()
        dtypes.code_for(array.dtype)  # ValueError for complex and other unsupported types
        return np.array(array, copy=True)
    except MalformedFileError:
        raise
    except (RuntimeError, TypeError, ValueError) as exc:
        raise MalformedFileError(
            path,
            _cut(
                f"tensor {_show_key(name)} ({getattr(value, 'dtype', '?')}) cannot be read: "
                f"{_fold(str(exc))}"
            ),
        ) from None
