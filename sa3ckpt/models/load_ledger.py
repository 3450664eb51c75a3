"""`LoadLedger`: what a loader did with every tensor of its input, so nothing is silent.

Shared by `load_dit` and the SAME encoder's `load_same_encoder` (`model` names which
network the loaded parameters belong to).

The official MLX runtime loads with `strict=False`: an extra key is dropped and a missing one
keeps its random init without a word. `load_dit` refuses both for the DiT and keeps this
account instead: each input key is in exactly one of `loaded` (a DiT parameter),
`conditioner` (a conditioner array) or `ignored` (with the reason), and every dtype cast is
counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadLedger:
    """The account of one load. Keys are the input's own spelling; a pipeline's duration
    embedder tensors are prefixed `duration_embedder.` as diffusers' pipeline names them."""

    path: str
    naming: str
    container: str
    family: str  # a FAMILIES name ("custom (E=…, …)" unnamed), or a SAME codec name
    dtype: str = "float32"  # the run dtype asked for
    sources: list[str] = field(default_factory=list)  # files and folders read
    loaded: dict[str, str] = field(default_factory=dict)  # input key -> model parameter
    conditioner: dict[str, str] = field(default_factory=dict)  # input key -> `cond.*` array
    conditioner_missing: dict[str, str] = field(default_factory=dict)  # array -> input spelling
    ignored: dict[str, str] = field(default_factory=dict)  # input key -> why it was not used
    stored: Counter[str] = field(default_factory=Counter)  # input dtype -> tensors used
    cast: Counter[str] = field(default_factory=Counter)  # "float16->float32" -> count
    notes: list[str] = field(default_factory=list)
    model: str = "DiT"  # the network `loaded` fills: "DiT", "SAME encoder"

    @property
    def keys(self) -> set[str]:
        """Every input key the ledger accounts for."""
        return set(self.loaded) | set(self.conditioner) | set(self.ignored)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        stored = ", ".join(f"{code} x{n}" for code, n in sorted(self.stored.items()))
        out = [
            f"{self.path}: {self.naming} naming ({self.container}), family {self.family}",
            f"  {self.model} parameters loaded: {len(self.loaded)}, run dtype {self.dtype}",
            f"  stored dtypes of the tensors used: {stored or 'none'}",
        ]
        out += [f"  dtype cast {pair}: {n}" for pair, n in sorted(self.cast.items())]
        if self.conditioner:
            out.append(f"  conditioner arrays loaded: {', '.join(self.conditioner.values())}")
        if self.conditioner_missing:
            missing = ", ".join(f"{k} ({v})" for k, v in self.conditioner_missing.items())
            out.append(f"  conditioner not loaded, missing: {missing}")
        out += [f"  not used: {key} ({why})" for key, why in self.ignored.items()]
        out += [f"  note: {note}" for note in self.notes]
        return out
