"""Merging: adapters baked into a base at fixed strengths, streaming, with a ledger.

Owns the merge driver (plan, kernel driver, containers), the codec merge, the preview, the
semantics comparison, `--exclude`, `--strength-map` and the ledger (its own module: the DiT
merge, the codec merge and the preview all speak it).
"""

from sa3ckpt.ops.merge.compare_semantics import (
    SemanticsComparison,
)
from sa3ckpt.ops.merge.driver import (
    merge_checkpoint,
    preview_merge,
)
from sa3ckpt.ops.merge.exclusions import (
    Excluded,
    apply_exclusions,
    parse_exclusions,
)
from sa3ckpt.ops.merge.ledger import (
    PROVENANCE_KEY,
    MergeLedger,
    adapter_sha256,
    file_sha256,
)
from sa3ckpt.ops.merge.options import (
    DEFAULTS,
    ONLY_ROOTS,
    MergeOptions,
)
from sa3ckpt.ops.merge.preview import (
    MergePreview,
)
from sa3ckpt.ops.merge.strength_map import (
    StrengthMap,
    TargetStrength,
    parse_strength_map,
)

__all__ = [
    "DEFAULTS",
    "ONLY_ROOTS",
    "PROVENANCE_KEY",
    "Excluded",
    "MergeLedger",
    "MergeOptions",
    "MergePreview",
    "SemanticsComparison",
    "StrengthMap",
    "TargetStrength",
    "adapter_sha256",
    "apply_exclusions",
    "file_sha256",
    "merge_checkpoint",
    "parse_exclusions",
    "parse_strength_map",
    "preview_merge",
]
