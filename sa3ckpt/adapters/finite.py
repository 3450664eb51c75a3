"""NaN/Inf in adapter tensors: found before anything is written, refused unless allowed.

A NaN in one factor spreads to every weight the adapter touches, and the relative-error
checks that prove a conversion (‖x − y‖ / ‖x‖) are NaN themselves, which compares false
with any tolerance: without a scan first, a broken adapter would pass as "verified, error
0". merge refuses a non-finite merged weight; convert and combine refuse non-finite inputs
and outputs here (exit 4, naming the tensor, nothing written) unless the user explicitly
passes --allow-nonfinite, in which case the ledger says what was kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import IncompatibleError

ALLOW_FLAG = "--allow-nonfinite"


@dataclass(frozen=True)
class NonFinite:
    """One tensor holding NaN or ±Inf: where, and how many of its values."""

    target: str
    param: str
    count: int

    def __str__(self) -> str:
        values = "value" if self.count == 1 else "values"
        return f"{self.target} {self.param} ({self.count} NaN/Inf {values})"


def count_nonfinite(value: Any) -> int:
    """How many entries of a floating tensor are NaN or ±Inf (0 for integer tensors)."""
    array = np.asarray(value)
    try:
        floating = dtypes.is_floating(dtypes.code_for(array.dtype))
    except ValueError:  # a dtype outside the table holds no floats we could judge
        return 0
    if not floating:
        return 0
    # float64 stays as is: narrowing 1e300 to float32 would invent an Inf.
    values = array if array.dtype == np.float64 else dtypes.to_float32(array)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def find_nonfinite(tensors: Mapping[str, Mapping[str, Any]]) -> list[NonFinite]:
    """Every (target, param) tensor with NaN/Inf, in the mapping's order."""
    found = []
    for target, params in tensors.items():
        for param, value in params.items():
            count = count_nonfinite(value)
            if count:
                found.append(NonFinite(target, param, count))
    return found


def summary(found: list[NonFinite]) -> str:
    """The first offending tensor and how many more, for one line."""
    more = f" and {len(found) - 1} more tensors" if len(found) > 1 else ""
    return f"{found[0]}{more}"


def refuse_nonfinite(where: str, found: list[NonFinite], verb: str) -> None:
    """Raise the one-line exit-4 refusal when `found` is not empty."""
    if found:
        raise IncompatibleError(
            f"{where}: tensor {summary(found)} is not finite; nothing was written "
            f"(pass {ALLOW_FLAG} to {verb} it anyway)"
        )
