"""Verification of a merge at the output: the DiT run with the adapters live and on MERGED.

Owns the fixed probe inputs, the comparison and its verdict (PASS / FAIL / INCONCLUSIVE).
"""

from sa3ckpt.ops.verify.probe import (
    DEFAULT_FRAMES,
    DEFAULT_SEED,
)
from sa3ckpt.ops.verify.report import (
    DEFAULT_TOLERANCE,
    EPSILON,
    FAIL,
    INCONCLUSIVE,
    PASS,
)
from sa3ckpt.ops.verify.verify import (
    verify_merge,
)

__all__ = [
    "DEFAULT_FRAMES",
    "DEFAULT_SEED",
    "DEFAULT_TOLERANCE",
    "EPSILON",
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "verify_merge",
]
