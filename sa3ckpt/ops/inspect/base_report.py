"""inspect of a base checkpoint: its container, naming, family and tensor count, header-only.

A base given to `inspect` is a normal thing to look at (it is merge's first input), so it
gets its own short report instead of an adapter report full of "type None" and unmatched
keys. "Is this a base?" is the format registry's rule (`io.formats.identify`), the same one
the TUI uses for its BASE badge.
"""

from __future__ import annotations

import os
from collections import Counter

from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.io.bytesource import file_size
from sa3ckpt.io.gguf_facts import describe
from sa3ckpt.ops.inspect.checkpoint_kind import base_kind
from sa3ckpt.ops.inspect.report_model import BASE_KIND, BaseReport, FamilyReport
from sa3ckpt.targets.detect import FamilyDetection, detect_family
from sa3ckpt.targets.families import FAMILIES

STATS_NOTE = "--stats describes adapter tensors; a base has none"


def base_family(base: BaseCheckpoint) -> FamilyDetection:
    """The family whose target table the base's weight shapes (canonical 2-D) match."""
    observations = []
    for target, key in base.weight_keys().items():
        shape = base.tensors[key].shape
        fan_out, fan_in = base.layout_of(shape).canonical_shape(shape)
        observations.append((target, (fan_out, fan_in)))
    return detect_family(observations, candidates=list(FAMILIES))


def sa3cpp_facts(base: BaseCheckpoint) -> list[dict[str, object]] | None:
    """Per GGUF file of an sa3.cpp base: what it says it is (`io.gguf_facts.describe`)."""
    if base.gguf is None:
        return None
    return [
        {"path": f.path, **describe(f.architecture, f.kv, f.kv_types, f.types)}
        for f in base.gguf.files()
    ]


def _dtypes(base: BaseCheckpoint) -> dict[str, int]:
    """Tensor types counted: dtype codes, or an sa3.cpp GGUF's ggml types (quantised ones
    included, which read as F32)."""
    types = (
        base.gguf.types if base.gguf is not None else {k: t.dtype for k, t in base.tensors.items()}
    )
    return dict(sorted(Counter(types.values()).items()))


def inspect_base(
    path: str | os.PathLike[str],
    *,
    stats: bool = False,
    conditioner: str | os.PathLike[str] | None = None,
) -> BaseReport:
    """The report for one base checkpoint (MalformedFileError when it cannot be read)."""
    with open_base(path, conditioner=conditioner) as base:
        detection = base_family(base)
        return BaseReport(
            path=base.path,
            kind=BASE_KIND,
            format=base.container,
            size_bytes=file_size(base.path),
            tensors=len(base.tensors),
            naming=base.naming,
            family=FamilyReport(
                detection.family, False, list(detection.evidence), list(detection.fits)
            ),
            weights=len(base.weight_keys()),
            dtypes=_dtypes(base),
            metadata=dict(base.metadata),
            notes=[STATS_NOTE] if stats else [],
            checkpoint=base_kind(base),
            sa3cpp=sa3cpp_facts(base),
        )
