"""The `convert --to` targets by input kind, each with the runtime that reads its output.

`io.formats.CONVERT_OUTPUTS` is the registry of what each target writes (its rows and
suffixes); this module adds the words a person choosing a target needs: who reads the
result and what it cannot hold. The TUI's convert screen offers exactly these rows for the
kind of file it was given (a test keeps the two tables on the same keys), so a target the
library cannot write for that kind is never offered. Facts from ../shared/reference/
formats.md and the interop table (docs/guides/converting.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from sa3ckpt.io.formats import ADAPTER, BASE, BY_NAME, CONVERT_OUTPUTS, output_suffixes
from sa3ckpt.ops.convert.adapters import PEFT_LAYER_OUTPUTS, PEFT_REFUSAL, PEFT_TYPES


@dataclass(frozen=True)
class ConvertTarget:
    """One `--to` value for one input kind: who reads the output, and its one limit."""

    kind: str  # ADAPTER | BASE
    name: str
    reader: str
    limit: str

    @property
    def suffixes(self) -> tuple[str, ...]:
        """The output suffixes the registry allows (empty: a folder, named without one)."""
        return output_suffixes(self.kind, self.name)

    @property
    def main_suffix(self) -> str:
        """The suffix of the registry's first format for this target ('' for a folder)."""
        first = BY_NAME[CONVERT_OUTPUTS[(self.kind, self.name)][0]]
        return first.suffixes[0] if first.suffixes else ""

    def line(self) -> str:
        """`reader; limit`: the wording next to the target's name."""
        return f"{self.reader}; {self.limit}"


_ROWS = (
    ConvertTarget(
        ADAPTER,
        "sa3",
        "official PyTorch loader",
        "all 8 types (load_lora_safetensors, merge_loras_into_base_model)",
    ),
    ConvertTarget(
        ADAPTER,
        "bare",
        "early MLX writers (no model. root)",
        "all 8 types; the official loader loads nothing from it",
    ),
    ConvertTarget(
        ADAPTER,
        "mlx",
        "MLX LoRA primitives (runtime names)",
        "all 8 types, keys as the MLX runtime's modules",
    ),
    ConvertTarget(
        ADAPTER,
        "peft",
        "PEFT from_pretrained (a folder)",
        "lora, dora-rows and their -xs only (PEFT's DoRA magnitude is per output row)",
    ),
    ConvertTarget(
        ADAPTER,
        "sa3cpp",
        "sa3.cpp (GGUF, F32)",
        "all 8 types (-xs need U/V); the seconds conditioner has no stem there",
    ),
    ConvertTarget(
        ADAPTER,
        "diffusers",
        "diffusers + PEFT load_lora_adapter (folder)",
        "lora, dora-rows and their -xs only; diffusers itself has no SA3 LoRA loader",
    ),
    ConvertTarget(
        BASE,
        "official",
        "official PyTorch pipeline",
        "full checkpoint (model.model. keys), bit-exact both ways",
    ),
    ConvertTarget(
        BASE,
        "mlx",
        "official MLX pipeline (optimized/mlx)",
        "its conditioner (cond.*) loads only from an .npz output",
    ),
    ConvertTarget(
        BASE,
        "diffusers",
        "diffusers StableAudio3DiTModel",
        "a transformer folder for from_pretrained; the seconds conditioner has no home there",
    ),
    ConvertTarget(
        BASE,
        "sa3cpp",
        "sa3.cpp (DiT GGUF + conditioner sidecar, F32 or F16)",
        "the KVs its loaders read; rotary inv_freq not stored (sa3.cpp recomputes it)",
    ),
)
TARGETS: dict[tuple[str, str], ConvertTarget] = {(t.kind, t.name): t for t in _ROWS}


def targets_for(kind: str, adapter_type: str | None = None) -> list[ConvertTarget]:
    """The targets `convert` writes for an input of `kind`, in the registry's order.

    With the adapter's type, targets made of PEFT layers are left out for types they cannot
    express (dora-cols, bora): convert refuses those before writing anything.
    """
    rows = [TARGETS[key] for key in CONVERT_OUTPUTS if key[0] == kind]
    if kind == ADAPTER and adapter_type is not None and adapter_type not in PEFT_TYPES:
        rows = [t for t in rows if t.name not in PEFT_LAYER_OUTPUTS]
    return rows


def refused_for(adapter_type: str) -> tuple[list[str], str]:
    """The adapter targets left out for `adapter_type`, and convert's reason ('' if none)."""
    left_out = [] if adapter_type in PEFT_TYPES else list(PEFT_LAYER_OUTPUTS)
    return left_out, PEFT_REFUSAL.format(type=adapter_type) if left_out else ""
