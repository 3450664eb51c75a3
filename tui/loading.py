"""Everything the TUI learns about one checkpoint, computed off the UI thread.

These functions call the sa3ckpt library and turn every failure into data: a worker that
raised would either crash the app or leave a panel stuck on "loading", and an unreadable
file is an expected outcome here, not an exceptional one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sa3ckpt.errors import MalformedFileError, Sa3ckptError
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.bytesource import file_size
from sa3ckpt.io.formats import open_adapter_source
from sa3ckpt.ops.inspect import (
    CODEC_WEIGHTS,
    PICKLE_FILE,
    UNKNOWN,
    InspectReport,
    KindReport,
    OtherReport,
    StatsReport,
    analyze,
    identify_kind,
    inspect_path,
    other_report,
)
from sa3ckpt.ops.validate import FileResult
from tui.paths import looks_like_base
from tui.validation_options import ValidationOptions


@dataclass(frozen=True)
class TensorRow:
    """One stored tensor of a target, as the coverage detail lists it."""

    param: str
    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class Loaded:
    """What one path is: an adapter (report, validation, tensors), a base, codec weights
    (`other`), or unreadable; `kind` says which in the library's words, and
    `validation_options` what the validation was computed with."""

    path: str
    report: InspectReport | None = None
    error: str | None = None
    validation: FileResult | None = None
    validation_error: str | None = None
    tensors: dict[str, list[TensorRow]] = field(default_factory=dict)
    base: dict[str, Any] | None = None
    other: OtherReport | None = None
    kind: KindReport | None = None
    validation_options: ValidationOptions = field(default_factory=ValidationOptions)

    @property
    def is_base(self) -> bool:
        return self.base is not None

    @property
    def is_other(self) -> bool:
        return self.other is not None

    @property
    def not_a_dit_adapter(self) -> KindReport | None:
        """The kind when the file is readable but not an SA3 DiT adapter (None otherwise)."""
        kind = self.kind
        if kind is None or kind.is_dit_adapter or kind.kind in (UNKNOWN, PICKLE_FILE):
            return None
        return kind


def describe_error(exc: BaseException) -> str:
    """One line for any failure; a malformed file's cause without its (already shown) path."""
    if isinstance(exc, MalformedFileError):
        return " ".join(exc.cause.split())
    if isinstance(exc, Sa3ckptError):
        return exc.one_line()
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    text = " ".join(str(exc).split())[:300]
    return f"internal error: {type(exc).__name__}: {text}"


def run_validation(
    path: str, options: ValidationOptions | None = None
) -> tuple[FileResult | None, str | None]:
    """The CLI's validation with `options`, anything it raises reported, not propagated."""
    try:
        return (options or ValidationOptions()).validate(path), None
    except Exception as exc:  # a library bug must not take the UI down
        return None, describe_error(exc)


def codec_summary(path: str) -> OtherReport | None:
    """The report of a file with codec (SAME) weights, None for any other file."""
    return other_report(path)


def target_tensors(path: str) -> dict[str, list[TensorRow]]:
    """Each target's stored tensors (header only), for the coverage cell detail."""
    with open_adapter_source(path) as source:
        analysis = analyze(source)
        rows: dict[str, list[TensorRow]] = {}
        for target, params in analysis.groups.targets.items():
            rows[target] = [
                TensorRow(p, k, e.dtype, tuple(e.shape), e.nbytes)
                for p, k in sorted(params.items())
                for e in [source.entries[k]]
            ]
        return rows


def base_summary(path: str) -> dict[str, Any]:
    """Container, naming, tensor count, dtypes and metadata of a base checkpoint (header only)."""
    with open_base(path) as base:
        return {
            "path": path,
            "container": base.container,
            "naming": base.naming,
            "size_bytes": file_size(path),
            "tensors": len(base.tensors),
            "dtypes": dict(sorted(Counter(t.dtype for t in base.tensors.values()).items())),
            "metadata": dict(base.metadata),
        }


def load_checkpoint(path: str, options: ValidationOptions | None = None) -> Loaded:
    """Read `path` as a base if it is one, else inspect and validate it (with `options`);
    never raises."""
    loaded = Loaded(path, validation_options=options or ValidationOptions())
    loaded.kind = identify_kind(path)
    if loaded.kind.kind == CODEC_WEIGHTS:
        try:
            loaded.other = codec_summary(path)
        except Exception as exc:
            loaded.error = describe_error(exc)
        if loaded.other is not None:
            return loaded
    if looks_like_base(path):
        try:
            loaded.base = base_summary(path)
            return loaded
        except Exception as exc:  # changed on disk since the sniff: fall through to inspect
            loaded.error = describe_error(exc)
    try:
        loaded.report = inspect_path(path)
        loaded.tensors = target_tensors(path)
        loaded.error = None
    except Exception as exc:
        loaded.error = describe_error(exc)
    loaded.validation, loaded.validation_error = run_validation(path, loaded.validation_options)
    return loaded


def load_stats(path: str) -> tuple[StatsReport | None, str | None]:
    """The report's `stats` section (reads every tensor), or the one-line reason it failed."""
    try:
        return inspect_path(path, stats=True).stats, None
    except Exception as exc:
        return None, describe_error(exc)
