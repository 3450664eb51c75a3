"""The strength semantics by name: what each means and which runtimes use it.

One table (`SEMANTICS_TABLE`) that `merge --semantics` help, docs/guides/stacking.md, the TUI
and the merge provenance all read, so a user picking a semantics sees which of their other tools
compute the same weights. The math lives in `adapters.formulas` / `adapters.kernels`
(`SEMANTICS`, `PENDING`); this module holds only the words (tests check both tables list
the same names). Facts from ../shared/reference/adapters.md "Strength semantics".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SemanticsInfo:
    """One named semantics: a one-line meaning and the runtimes that compute it."""

    name: str
    meaning: str
    runtimes: tuple[str, ...]

    def line(self) -> str:
        """`name: meaning (used by: a, b, c)`: the help and TUI wording."""
        return f"{self.name}: {self.meaning} (used by: {', '.join(self.runtimes)})"


SEMANTICS_TABLE: dict[str, SemanticsInfo] = {
    info.name: info
    for info in (
        SemanticsInfo(
            "runtime",
            "adapters chained in order, strength inside each direction, stored magnitudes",
            (
                "sa3.cpp",
                "upstream MLX apply_lora_checkpoints",
                "TensorRT merge script",
                "official PyTorch set_lora_strength before PR #102",
            ),
        ),
        SemanticsInfo(
            "blend",
            "as runtime, and each magnitude interpolates toward the incoming weight's norms",
            ("official PyTorch with PR #102",),
        ),
        SemanticsInfo(
            "delta",
            "W0 + Σ s·(f(W0; 1) − W0), each adapter's full effect faded, order-independent",
            (
                "official merge_loras_into_base_model",
                "upstream MLX lora_merge",
                "TFLite patching",
                "TensorRT branch engines",
            ),
        ),
    )
}


def info(name: str) -> SemanticsInfo:
    """The table entry of a semantics (KeyError names the known ones)."""
    try:
        return SEMANTICS_TABLE[name]
    except KeyError:
        raise KeyError(
            f"no description of semantics {name!r} ({', '.join(SEMANTICS_TABLE)})"
        ) from None


def help_text(names: Iterable[str]) -> str:
    """The `--semantics` help: one clause per implemented semantics, in table order."""
    wanted = set(names)
    return "; ".join(i.line() for n, i in SEMANTICS_TABLE.items() if n in wanted)


def markdown_table(names: Iterable[str]) -> str:
    """The docs table of the implemented semantics (a test keeps docs/guides/stacking.md equal)."""
    wanted = set(names)
    rows = ["| semantics | meaning | used by |", "|---|---|---|"]
    rows += [
        f"| `{n}` | {i.meaning} | {', '.join(i.runtimes)} |"
        for n, i in SEMANTICS_TABLE.items()
        if n in wanted
    ]
    return "\n".join(rows)
