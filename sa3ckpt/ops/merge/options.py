"""The choices of one merge, as one frozen value shared by the merge, its preview and the UIs.

`merge_checkpoint` and `preview_merge` run the same steps up to the first write; passing one
`MergeOptions` instead of a dozen keywords keeps the two from drifting apart, and lets the CLI
and the TUI build the value once and hand it to both.
"""

from __future__ import annotations

from dataclasses import dataclass

from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.errors import UsageError
from sa3ckpt.names.modules import ROOTS

ONLY_ROOTS = ROOTS


@dataclass(frozen=True)
class MergeOptions:
    """How to merge. semantics: runtime | blend | delta (`sa3ckpt.semantics`). dtype: the
    output dtype name, None keeps the base's. only: merge one root (dit | conditioner).
    bases_path: a `sa3ckpt bases` file of XS bases. exclude: `[ADAPTER=]PATTERN` specs
    (`ops.merge.exclusions`). strength_map: `--strength-map` values, per-target strength
    factors (`ops.merge.strength_map`). compare: also measure how far the semantics' results
    are apart (`ledger.comparison`). conditioner: the sidecar GGUF of an sa3.cpp DiT base
    (its merged copy is written beside the output). strict: stack-report warnings and adapter
    tensors without a place in the base refuse the merge (exit 4) before anything is
    written; a preview reports that refusal instead of raising it."""

    semantics: str = "runtime"
    dtype: str | None = None
    only: str | None = None
    bases_path: str | None = None
    allow_pickle: bool = False
    force: bool = False
    strict: bool = False
    exclude: tuple[str, ...] = ()
    compare: bool = False
    strength_map: tuple[str, ...] = ()
    conditioner: str | None = None  # an sa3.cpp DiT GGUF base's conditioner sidecar GGUF

    def __post_init__(self) -> None:
        # Sequences given as lists stay hashable and immutable.
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "strength_map", tuple(self.strength_map))

    def check(self) -> None:
        """The usage errors an options value can have on its own (exit 2)."""
        if self.semantics not in SEMANTICS:
            raise UsageError(
                f"unknown semantics {self.semantics!r} (known: {', '.join(SEMANTICS)})"
            )
        if self.only is not None and self.only not in ONLY_ROOTS:
            raise UsageError(f"--only takes {' or '.join(ONLY_ROOTS)}, not {self.only!r}")


DEFAULTS = MergeOptions()  # the CLI's defaults: runtime semantics, the base's dtype, no filters
