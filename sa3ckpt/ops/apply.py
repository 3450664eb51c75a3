"""Fixed-strength application of adapter checkpoints to a live MLX model.

The model is addressed through its flattened parameters by MLX runtime keys
(`transformer.layers.0.self_attn.to_qkv.weight`, `cond.seconds_total_weight`), so any module
tree that uses the runtime names works, including the seconds conditioner that has no module.
Every call returns a ledger; zero applied targets is an error, never a silent no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.adapters.formulas import SEMANTICS, TargetAdapter, merge
from sa3ckpt.adapters.xs_bases import XsBases
from sa3ckpt.errors import IncompatibleError
from sa3ckpt.layout import stored_layout
from sa3ckpt.names.base_keys import mlx_base_key


@dataclass
class ApplyLedger:
    """What an application did, target by target."""

    semantics: str
    applied: list[str] = field(default_factory=list)
    missing_targets: list[str] = field(default_factory=list)  # in a checkpoint, not in the model
    shape_mismatches: list[str] = field(default_factory=list)  # "target: detail"
    unmatched_keys: list[str] = field(default_factory=list)  # file keys no target was parsed from
    bases_sources: dict[str, str] = field(default_factory=dict)  # XS targets: where U/V came from

    @property
    def ok(self) -> bool:
        return bool(self.applied) and not (
            self.missing_targets or self.shape_mismatches or self.unmatched_keys
        )

    def lines(self) -> list[str]:
        total = len(self.applied) + len(self.missing_targets) + len(self.shape_mismatches)
        out = [f"{len(self.applied)}/{total} targets applied ({self.semantics} semantics)"]
        out += [f"missing from model: {t}" for t in self.missing_targets]
        out += [f"shape mismatch: {line}" for line in self.shape_mismatches]
        out += [f"unmatched key: {line}" for line in self.unmatched_keys]
        return out


def _fit_problem(adapter: TargetAdapter, rank: int, fan_out: int, fan_in: int) -> str | None:
    """Why an adapter's tensors do not fit a (fan_out, fan_in) weight, or None."""
    for name, value in adapter.params.items():
        want = adapter.kind.param_shape(name, fan_out, fan_in, rank)
        if tuple(value.shape) != want:
            return (
                f"{name} {tuple(value.shape)} vs expected {want} for weight ({fan_out}, {fan_in})"
            )
    return None


AdapterSource = Callable[[AdapterCheckpoint, str, np.ndarray | None], tuple[TargetAdapter, str]]


def checkpoint_source(bases: XsBases | None) -> AdapterSource:
    """Each target's adapter straight from its checkpoint (XS bases: stored, `bases`, else an
    SVD of the weight being adapted); `merged_updates` callers without a cache use this."""

    def build(
        ckpt: AdapterCheckpoint, target: str, base_2d: np.ndarray | None
    ) -> tuple[TargetAdapter, str]:
        needs_base = ckpt.kind.xs and not ckpt.has_stored_bases(target)
        return ckpt.target_adapter(target, base_2d=base_2d if needs_base else None, bases=bases)

    return build


def merged_updates(
    originals: dict[str, mx.array],
    adapters: Sequence[tuple[AdapterCheckpoint, float]],
    semantics: str,
    source: AdapterSource,
) -> tuple[list[tuple[str, mx.array]], ApplyLedger]:
    """New weights for every target the adapters touch, computed from `originals`."""
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown semantics {semantics!r} (known: {', '.join(SEMANTICS)})")
    ledger = ApplyLedger(semantics)
    for ckpt, _ in adapters:
        if ckpt.ledger is not None:
            ledger.unmatched_keys += [f"{key} ({reason})" for key, reason in ckpt.ledger.rejected]
    targets = list(dict.fromkeys(t for ckpt, _ in adapters for t in ckpt.targets()))
    updates: list[tuple[str, mx.array]] = []
    for target in targets:
        key = runtime_key(target)
        weight = originals.get(key) if key is not None else None
        if key is None or weight is None:
            ledger.missing_targets.append(target)
            continue
        layout = stored_layout("mlx", weight.shape)  # the live model is an MLX runtime tree
        w2d = layout.to_canonical(weight)
        fan_out, fan_in = w2d.shape
        base_np = None
        stack: list[tuple[TargetAdapter, float]] = []
        problem = None
        for ckpt, strength in adapters:
            if target not in ckpt.tensors:
                continue
            if base_np is None and ckpt.kind.xs:
                base_np = np.array(w2d.astype(mx.float32))
            adapter, where = source(ckpt, target, base_np)
            problem = _fit_problem(adapter, ckpt.config.rank, fan_out, fan_in)
            if problem:
                break
            if where != "-":
                ledger.bases_sources[target] = where
            stack.append((adapter, strength))
        if problem:
            ledger.shape_mismatches.append(f"{target}: {problem}")
            continue
        merged = merge(w2d, stack, semantics, dtype=weight.dtype)
        updates.append((key, layout.from_canonical(merged, layout.kernel_size(weight.shape))))
        ledger.applied.append(target)
    if not ledger.applied:
        example = (ledger.missing_targets + ledger.shape_mismatches + ["(no targets)"])[0]
        raise IncompatibleError(
            f"0 of {len(targets)} adapter targets applied to the model "
            f"({len(ledger.missing_targets)} missing, {len(ledger.shape_mismatches)} shape "
            f"mismatches; e.g. {example})"
        )
    return updates, ledger


def runtime_key(target: str) -> str | None:
    """The model parameter key of a target's weight; None when the runtime has no name."""
    try:
        return mlx_base_key(target)
    except ValueError:
        return None


def _flat_parameters(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.parameters()))


def apply_checkpoints(
    model: nn.Module,
    adapters: Sequence[tuple[AdapterCheckpoint, float]],
    semantics: str = "runtime",
    *,
    bases: XsBases | None = None,
) -> ApplyLedger:
    """Write merged weights for (checkpoint, strength) pairs into the model; return the ledger.

    The current weights are the base. Apply once, or use `AdapterSession` to change
    strengths repeatedly without compounding.
    """
    updates, ledger = merged_updates(
        _flat_parameters(model), adapters, semantics, checkpoint_source(bases)
    )
    model.update(tree_unflatten(updates))
    mx.eval(model.parameters())
    return ledger


class AdapterSession:
    """Base-preserving application: strengths can change any number of times.

    The original weights of every touched target are kept (MLX arrays are immutable, so
    this costs references, not copies); each `materialize` recomputes from them, and
    `restore` puts them back. Per-target adapters (including SVD-built XS bases) are cached.
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoints: Sequence[AdapterCheckpoint],
        strengths: Sequence[float] | None = None,
        semantics: str = "runtime",
        *,
        bases: XsBases | None = None,
    ) -> None:
        self.model = model
        self.checkpoints = list(checkpoints)
        self.strengths = list(strengths) if strengths is not None else [1.0] * len(checkpoints)
        self.semantics = semantics
        self._bases = bases
        self._originals: dict[str, mx.array] | None = None
        self._cache: dict[tuple[int, str], tuple[TargetAdapter, str]] = {}
        self._check_lengths()

    def _check_lengths(self) -> None:
        if len(self.strengths) != len(self.checkpoints):
            raise ValueError(
                f"{len(self.strengths)} strengths for {len(self.checkpoints)} checkpoints"
            )

    def set_strengths(self, strengths: Sequence[float]) -> None:
        self.strengths = list(strengths)
        self._check_lengths()

    def _source(
        self, ckpt: AdapterCheckpoint, target: str, base_2d: np.ndarray | None
    ) -> tuple[TargetAdapter, str]:
        key = (id(ckpt), target)
        if key not in self._cache:
            self._cache[key] = checkpoint_source(self._bases)(ckpt, target, base_2d)
        return self._cache[key]

    def materialize(self) -> ApplyLedger:
        """Write weights for the current strengths, computed from the original weights."""
        if self._originals is None:
            self._originals = _flat_parameters(self.model)
        adapters = list(zip(self.checkpoints, self.strengths, strict=True))
        updates, ledger = merged_updates(self._originals, adapters, self.semantics, self._source)
        self.model.update(tree_unflatten(updates))
        mx.eval(self.model.parameters())
        return ledger

    def restore(self) -> None:
        """Put every touched weight back to its original array."""
        if self._originals is None:
            return
        touched = {runtime_key(t) for ckpt in self.checkpoints for t in ckpt.targets()}
        originals = [(k, v) for k, v in self._originals.items() if k in touched]
        self.model.update(tree_unflatten(originals))
        mx.eval(self.model.parameters())
