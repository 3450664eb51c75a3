"""SA3 adapter checkpoints in memory: load from any adapter file dialect, save as sa3.

An `AdapterCheckpoint` holds canonical tensors (target -> param -> array, as stored), the
parsed `lora_config`, the resolved adapter type with its evidence, and a load ledger that
records every key that was not understood and every legacy repair that was made. Nothing
is dropped silently: callers print the ledger or fail on it under --strict.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.config import CONFIG_KEY, ConfigError, LoraConfig
from sa3ckpt.adapters.detect import TypeDetection, detect_type
from sa3ckpt.adapters.family_fans import (
    agreed_fans,
    checked_families,
    detect_shapes_family,
    expected_targets,
)
from sa3ckpt.adapters.formulas import TargetAdapter
from sa3ckpt.adapters.kernels import NumpyAdapter
from sa3ckpt.adapters.types import AdapterType, adapter_type
from sa3ckpt.adapters.xs_bases import XsBases, svd_bases
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.formats import FILE_DIALECTS, load_raw
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.layout import squeeze_magnitude
from sa3ckpt.names.adapter_keys import (
    detect_adapter_dialect,
    format_adapter_key,
    group_adapter_keys,
)
from sa3ckpt.names.base_keys import detect_base_naming

# Dialects whose files carry `lora_config` metadata and load directly (PEFT directories and
# sa3.cpp GGUF go through `convert`).
LOADABLE_DIALECTS = FILE_DIALECTS
FP32_PARAMS = frozenset({"baked_vnorm_row"})
Rebuild = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""rank -> (U_r, V_r) rebuilt from the base: lets a caller run one SVD for a whole stack."""


@dataclass
class LoadLedger:
    """What loading did with every key: parsed, rejected (with reason), repaired."""

    dialect: str
    keys: int
    parsed: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.parsed}/{self.keys} keys parsed as {self.dialect}"]
        out += [f"unmatched key {key}: {reason}" for key, reason in self.rejected]
        out += [f"repaired: {line}" for line in self.repairs]
        return out


@dataclass
class AdapterCheckpoint:
    """One adapter: config, resolved type, canonical tensors, other metadata, ledger."""

    config: LoraConfig
    adapter_type: str
    tensors: dict[str, dict[str, np.ndarray]]
    metadata: dict[str, str] = field(default_factory=dict)
    detection: TypeDetection | None = None
    ledger: LoadLedger | None = None
    path: str | None = None

    @property
    def kind(self) -> AdapterType:
        return adapter_type(self.adapter_type)

    def targets(self) -> list[str]:
        return list(self.tensors)

    def has_stored_bases(self, target: str) -> bool:
        params = self.tensors[target]
        return "U" in params and "V" in params

    def resolved_params(
        self,
        target: str,
        *,
        base_2d: np.ndarray | None = None,
        bases: XsBases | None = None,
        rebuild: Rebuild | None = None,
    ) -> tuple[dict[str, np.ndarray], str]:
        """A target's parameters as float32 NumPy arrays, XS bases resolved, and their source.

        XS bases are looked up in order: stored in the checkpoint, a bases file (its first
        `rank` columns; ValueError when it has fewer), an SVD of the base weight being
        adapted (the official behaviour; `rebuild` when given, else an SVD of `base_2d`).
        The second value says which ("stored", "bases file", "base SVD"), or "-" for
        non-XS types.
        """
        params = {
            name: dtypes.to_float32(np.asarray(a)) for name, a in self.tensors[target].items()
        }
        if not self.kind.xs:
            return params, "-"
        if self.has_stored_bases(target):
            return params, "stored"
        pair = bases.get(target, self.config.rank) if bases is not None else None
        if pair is not None:
            params["U"], params["V"] = pair
            return params, "bases file"
        if rebuild is not None:
            params["U"], params["V"] = rebuild(self.config.rank)
            return params, "base SVD"
        if base_2d is not None:
            params["U"], params["V"] = svd_bases(base_2d, self.config.rank)
            return params, "base SVD"
        raise ValueError(f"{target}: {self.adapter_type} needs XS bases (stored, file or base)")

    def target_adapter(
        self,
        target: str,
        *,
        base_2d: np.ndarray | None = None,
        bases: XsBases | None = None,
    ) -> tuple[TargetAdapter, str]:
        """The fp32 MLX adapter of one target (see `resolved_params` for XS bases)."""
        params, source = self.resolved_params(target, base_2d=base_2d, bases=bases)
        arrays = {name: mx.array(value) for name, value in params.items()}
        return TargetAdapter(self.kind, self.config.scale, arrays), source

    def numpy_adapter(
        self,
        target: str,
        *,
        base_2d: np.ndarray | None = None,
        bases: XsBases | None = None,
        rebuild: Rebuild | None = None,
    ) -> tuple[NumpyAdapter, str]:
        """The same adapter for the NumPy merge kernel."""
        params, source = self.resolved_params(target, base_2d=base_2d, bases=bases, rebuild=rebuild)
        return NumpyAdapter(self.kind, self.config.scale, params), source

    def file_tensors(self, dialect: str = "sa3", dtype: str = "F16") -> dict[str, np.ndarray]:
        """Tensors keyed in a dialect, floats cast to dtype (baked norms stay fp32)."""
        out: dict[str, np.ndarray] = {}
        for target, params in self.tensors.items():
            for param, array in params.items():
                code = "F32" if param in FP32_PARAMS else dtype
                value = np.asarray(array)
                if dtypes.is_floating(dtypes.code_for(value.dtype)):
                    value = dtypes.cast(value, code)
                out[format_adapter_key(target, param, dialect)] = value
        return out

    def file_metadata(self) -> dict[str, str]:
        out = dict(self.metadata)
        out[CONFIG_KEY] = self.config.to_json()
        return out


def _group(
    raw: Mapping[str, np.ndarray], dialect: str, ledger: LoadLedger
) -> dict[str, dict[str, np.ndarray]]:
    """Parse keys into target -> param -> array; one slot per target (renumbered to 0)."""
    groups = group_adapter_keys(raw, dialect)
    ledger.parsed = groups.parsed
    ledger.rejected = [(r.key, r.reason) for r in groups.rejected]
    for target in groups.multi_slot_targets():
        used = sorted(groups.slots[target])
        raise ValueError(f"{target} has parametrization slots {used}: stacked adapters in one file")
    for target, slot in groups.nonzero_slots().items():
        ledger.repairs.append(f"{target}: slot {slot} renumbered to 0")
    if dialect == "bare":
        ledger.repairs.append(f"{len(groups.targets)} bare targets given their `model.` root")
    return {
        target: {param: raw[key] for param, key in params.items()}
        for target, params in groups.targets.items()
    }


def _squeeze_magnitudes(grouped: dict[str, dict[str, np.ndarray]], ledger: LoadLedger) -> None:
    for target, params in grouped.items():
        for name in ("magnitude", "magnitude_r", "magnitude_c"):
            value = params.get(name)
            if value is None or value.ndim == 1:
                continue
            fan_out = params["lora_B"].shape[0] if "lora_B" in params else value.shape[0]
            fan_in = params["lora_A"].shape[-1] if "lora_A" in params else value.shape[-1]
            squeezed, _orient = squeeze_magnitude(value, fan_out, fan_in)
            params[name] = squeezed
            ledger.repairs.append(f"{target}: 2-D {name} {tuple(value.shape)} squeezed to 1-D")


def _detect(
    grouped: Mapping[str, Mapping[str, np.ndarray]], config: LoraConfig, dialect: str
) -> TypeDetection:
    """Type detection; XS magnitudes need fans, which only a family's target table knows.

    When the tensors alone cannot tell rows from cols (orientation open), the family is
    detected from the shapes as inspect and validate detect it (`family_fans`: base_model
    and the include/exclude selection break ties), and the fans every remaining family
    agrees on are tried; without them the claimed type decides (detect_type records when
    nothing did: `orientation_guessed`).
    """
    shapes = {t: {p: tuple(a.shape) for p, a in params.items()} for t, params in grouped.items()}
    detection = detect_type(shapes, config.adapter_type)
    if not detection.orientation_open:
        return detection
    family = detect_shapes_family(
        shapes, config.base_model, lambda fam: expected_targets(fam, config, dialect)
    )
    families = checked_families(family)
    fans = agreed_fans(families, grouped) if families else {}
    if fans:
        candidate = detect_type(shapes, config.adapter_type, fans)
        if candidate.from_tensors is not None:
            names = ", ".join(fam.name for fam in families)
            candidate.evidence.append(f"fans from the {names} target table")
            return candidate
    return detection


def checkpoint_from_raw(
    raw: Mapping[str, np.ndarray],
    config_text: str | None,
    metadata: Mapping[str, str],
    path: str = "<memory>",
    dialects: tuple[str, ...] = LOADABLE_DIALECTS,
    config_origin: str = f"{CONFIG_KEY} metadata",
) -> AdapterCheckpoint:
    """Build a checkpoint from file keys + lora_config text; MalformedFileError on failure.

    `dialects` are the key spellings this container may hold (PEFT folders and sa3.cpp
    GGUF files pass their own; plain safetensors adapter files carry sa3, bare or mlx keys).
    """
    guess = detect_adapter_dialect(raw)
    if guess.dialect is None:
        naming = detect_base_naming(list(raw))
        if naming is not None:  # say what it is, as an .npz or a diffusers folder is told
            raise MalformedFileError(
                path, f"a base checkpoint ({naming} naming), not an adapter: adapters merge into it"
            )
        raise MalformedFileError(path, f"no adapter tensors: {guess.evidence}")
    if guess.dialect not in dialects:
        raise MalformedFileError(
            path, f"{guess.dialect} keys ({guess.evidence}); convert it to sa3 first"
        )
    if config_text is None:
        raise MalformedFileError(
            path, f"no {CONFIG_KEY} ({config_origin} absent): rank and alpha unknown"
        )
    try:
        config = LoraConfig.from_json(config_text)
    except ConfigError as exc:
        raise MalformedFileError(path, str(exc)) from None
    ledger = LoadLedger(guess.dialect, len(raw))
    try:
        grouped = _group(raw, guess.dialect, ledger)
        _squeeze_magnitudes(grouped, ledger)
    except ValueError as exc:
        raise MalformedFileError(path, str(exc)) from None
    detection = _detect(grouped, config, guess.dialect)
    fatal = [
        f for f in detection.findings if f.severity == "error" and f.rule != "type-disagreement"
    ]
    if detection.adapter_type is None or fatal:
        reason = fatal[0].message if fatal else "adapter type cannot be determined"
        raise MalformedFileError(path, reason)
    return AdapterCheckpoint(
        config=config,
        adapter_type=detection.adapter_type,
        tensors=grouped,
        metadata=dict(metadata),
        detection=detection,
        ledger=ledger,
        path=path,
    )


def load_checkpoint(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> AdapterCheckpoint:
    """Load an adapter file (sa3, bare or mlx keys in safetensors; legacy .ckpt opt-in).

    Any container the registry reads is opened, but only plain-file dialects are accepted:
    PEFT folders and sa3.cpp GGUF are refused with a pointer to `convert`.
    """
    spath = os.fspath(path)
    raw = load_raw(spath, allow_pickle=allow_pickle)
    return checkpoint_from_raw(
        raw.tensors, raw.config_text, raw.metadata, spath, config_origin=raw.config_origin
    )


def save_checkpoint(
    checkpoint: AdapterCheckpoint,
    path: str | os.PathLike[str],
    *,
    dtype: str = "F16",
    dialect: str = "sa3",
    inputs: tuple[str | os.PathLike[str], ...] = (),
    overwrite: bool = True,
) -> Path:
    """Write atomically in the sa3 format (fp16 by default; baked norms stay fp32)."""
    write_safetensors(
        path,
        checkpoint.file_tensors(dialect, dtype),
        checkpoint.file_metadata(),
        inputs=inputs,
        overwrite=overwrite,
    )
    return Path(path)
