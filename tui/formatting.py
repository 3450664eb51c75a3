"""Short human renderings of report values (sizes, counts, norms, shapes).

Kept apart from the widgets so the wording is the same in every panel and can be tested
without a running app.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sa3ckpt.ops.inspect import InspectReport, RankReport
from sa3ckpt.sizes import human_size

__all__ = ["counts", "coverage_line", "human_size", "maybe", "norm", "rank_text", "shape"]


def counts(mapping: Mapping[str, int]) -> str:
    """{'F16': 80, 'F32': 2} -> 'F16 ×80, F32 ×2'."""
    return ", ".join(f"{k} ×{v}" for k, v in mapping.items()) or "-"


def shape(dims: Sequence[int]) -> str:
    """(4, 12) -> '4×12'; a scalar shows as '()'."""
    return "×".join(str(d) for d in dims) if dims else "()"


def norm(value: float | None) -> str:
    """A norm with four significant digits, '-' when it could not be computed."""
    return "-" if value is None else f"{value:.4g}"


def maybe(value: object) -> str:
    """None as '-', everything else as its str()."""
    return "-" if value is None else str(value)


def rank_text(rank: RankReport) -> str:
    """The config rank, plus the tensor ranks when they say something else."""
    config, tensors = rank.config, rank.tensors
    found = ", ".join(str(r) for r in tensors)
    if config is None:
        return f"{found or '-'} (from tensors)"
    if tensors and tensors != [config]:
        return f"{config} (tensors: {found})"
    return str(config)


def coverage_line(report: InspectReport) -> str:
    """'40/40 targets, 0 missing' (or just the count when no include/exclude is known)."""
    targets = report.targets
    coverage = targets.coverage
    if not coverage:
        return f"{targets.count} targets"
    return f"{coverage.present}/{coverage.expected} targets, {len(coverage.missing)} missing"
