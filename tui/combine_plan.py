"""The combine form's logic: adapters with weights, method, rank and options -> the library.

Weights are read by the CLI's own strength parser (`sa3ckpt.strengths`), and the methods
are the library's (`ops.combine.METHODS`), so the form accepts what `sa3ckpt combine`
accepts. The run is `ops.combine.combine`, the function the CLI calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.ops.library import METHODS, RANK_FROM_INPUTS, CombineLedger, combine
from sa3ckpt.strengths import AdapterArg, StrengthError, parse_strength
from tui.convert_plan import PlanError

DEFAULT_DTYPE = "fp16"  # `combine --dtype`'s default for cat and svd
# RANK_FROM_INPUTS: the methods whose rank is fixed by their inputs (the library refuses
# --rank with them): cat (the sum of the ranks) and mean (the one rank of the run).
METHOD_NOTES = {
    "cat": "cat: exact, the output rank is the sum of the input ranks",
    "svd": "svd: re-factored to the rank you give",
    "mean": "mean: the weighted average of checkpoints of one run (type, rank, alpha kept)",
}


class CombinePlanError(PlanError):
    """A combine form value the library would refuse; shown as one line."""


@dataclass(frozen=True)
class CombineRequest:
    """Validated arguments for `ops.combine.combine`."""

    adapters: tuple[AdapterArg, ...]
    output: str
    method: str
    rank: int | None
    base: str | None
    dtype: str
    allow_pickle: bool
    allow_nonfinite: bool
    force: bool


def parse_rank(text: str, method: str) -> int | None:
    """The rank field: empty is none; a positive integer otherwise (never for cat or mean)."""
    text = text.strip()
    if method in RANK_FROM_INPUTS or not text:
        return None
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise CombinePlanError(f"rank {text!r} is not a positive integer")
    return int(text)


def make_combine_request(
    adapters: list[tuple[str, str]],
    output: str,
    *,
    method: str,
    rank: str = "",
    base: str = "",
    dtype: str = DEFAULT_DTYPE,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    force: bool = False,
) -> CombineRequest:
    """Check the form (paths and weights as typed) and build the request."""
    if not adapters:
        raise CombinePlanError("add at least one adapter")
    args = []
    for path, text in adapters:
        try:
            weight = parse_strength(text, of=path)
        except StrengthError as exc:
            raise CombinePlanError(str(exc)) from None
        args.append(AdapterArg(path, weight))
    if method not in METHODS:
        raise CombinePlanError(f"choose a method: {', '.join(METHODS)}")
    if dtype not in DTYPE_NAMES:
        raise CombinePlanError(f"choose a dtype: {', '.join(DTYPE_NAMES)}")
    output = output.strip()
    if not output:
        raise CombinePlanError("choose an output path")
    return CombineRequest(
        tuple(args),
        output,
        method,
        parse_rank(rank, method),
        base.strip() or None,
        dtype,
        allow_pickle,
        allow_nonfinite,
        force,
    )


def run_combine(request: CombineRequest) -> CombineLedger:
    """The library call `sa3ckpt combine` makes for these arguments."""
    return combine(
        list(request.adapters),
        request.output,
        method=request.method,
        rank=request.rank,
        base_path=request.base,
        dtype=request.dtype,
        allow_pickle=request.allow_pickle,
        allow_nonfinite=request.allow_nonfinite,
        force=request.force,
    )


def suggested_output(first_adapter: str, method: str) -> str:
    """`a/lora.safetensors` -> `a/lora.combined-cat.safetensors` ('' without an adapter)."""
    if not first_adapter.strip():
        return ""
    path = first_adapter.strip().rstrip("/\\")
    root, ext = os.path.splitext(path)
    stem = root if ext.lower() == ".safetensors" else path
    return f"{stem}.combined-{method}.safetensors"
