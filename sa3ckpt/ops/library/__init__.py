"""Operations on a library of adapters: combine, soup, extract, resize, XS bases.

Owns making adapters from adapters (combine: cat, svd, mean soups), from full fine-tunes
(extract), re-ranking one (resize), the low-rank helpers they share, and computing a base's XS
bases once into a file.
"""

from sa3ckpt.ops.library.bases import (
    DEFAULT_RANK,
    compute_bases_file,
)
from sa3ckpt.ops.library.combine import (
    METHODS,
    RANK_FROM_INPUTS,
    CombineLedger,
    combine,
)
from sa3ckpt.ops.library.extract import (
    DEFAULT_THRESHOLD,
    TYPES,
    extract,
)
from sa3ckpt.ops.library.resize import (
    resize,
)

__all__ = [
    "DEFAULT_RANK",
    "DEFAULT_THRESHOLD",
    "METHODS",
    "RANK_FROM_INPUTS",
    "TYPES",
    "CombineLedger",
    "combine",
    "compute_bases_file",
    "extract",
    "resize",
]
