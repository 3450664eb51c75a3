"""Trainable SA3 adapters as MLX modules: wrap Linear / Conv1d layers, inject, save, load.

A wrapper keeps the original layer as a frozen child (`base`) and holds the adapter's own
parameters under their canonical names (`lora_A`, `lora_B`, `M_xs`, `magnitude`,
`magnitude_r`, `magnitude_c`), so the path of every trainable array already says which file
key it becomes. The forward pass goes through `sa3ckpt.adapters.formulas`, the same code that
merges and measures adapters, so a trained module and its saved checkpoint cannot disagree
about the math.

Fresh modules follow the official initialisation (../shared/reference/adapters.md): A is
kaiming-uniform, B and M_xs are zero and magnitudes are the norms of W0, which makes a freshly
injected model reproduce the base model's output (to fp32 rounding). XS bases U, V are
rebuilt from the base weight with `svd_bases` and kept frozen; like the official saver,
`state_dict` does not write them.

Dropout follows the official code: it is applied to the input of the adapter path only. For
DoRA/BoRA types the adapted weight is written as P ⊙ (W0 + c s ΔW), where P is the
elementwise scale the type's normaliser applies, and the layer output as
layer(x, P ⊙ W0) + layer(dropout(x), P ⊙ c s ΔW); see `decompose_weight`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from sa3ckpt import dtypes
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.adapters.config import LoraConfig
from sa3ckpt.adapters.formulas import EPS, TargetAdapter, adapted_weight, col_norm, row_norm
from sa3ckpt.adapters.types import AdapterType
from sa3ckpt.adapters.types import adapter_type as lookup_type
from sa3ckpt.adapters.xs_bases import svd_bases
from sa3ckpt.layout import from_canonical_2d, to_canonical_2d
from sa3ckpt.names import format_adapter_key, from_mlx_module, select

XS_BASES = ("U", "V")


# --------------------------------------------------------------------------- math helpers


def init_params(kind: AdapterType, w0: mx.array, rank: int) -> dict[str, mx.array]:
    """Fresh float32 parameters of one target, per the official initialisation.

    A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)), B = 0,
    M_xs = 0, magnitudes = norms of W0 along the type's norm direction (BoRA: row norms, then
    the column norms of the row-normalised R), so that f(W0; s) == W0 at the start.
    `w0` is the canonical 2-D base weight; it is upcast to float32 first.
    """
    w0 = w0.astype(mx.float32)
    fan_out, fan_in = w0.shape
    out: dict[str, mx.array] = {}
    for name in kind.required:
        if name == "lora_A":
            bound = 1.0 / math.sqrt(fan_in)
            out[name] = mx.random.uniform(-bound, bound, (rank, fan_in), dtype=mx.float32)
        elif name == "lora_B":
            out[name] = mx.zeros((fan_out, rank), dtype=mx.float32)
        elif name == "M_xs":
            out[name] = mx.zeros((rank, rank), dtype=mx.float32)
    rows = row_norm(w0)
    if kind.norm == "rows":
        out["magnitude"] = rows[:, 0]
    elif kind.norm == "cols":
        out["magnitude"] = col_norm(w0)[0]
    elif kind.norm == "both":
        out["magnitude_r"] = rows[:, 0]
        r = rows * w0 / (rows + EPS)
        out["magnitude_c"] = col_norm(r)[0]
    return out


def norm_scales(
    v: mx.array, kind: AdapterType, params: Mapping[str, mx.array]
) -> tuple[mx.array | None, mx.array | None]:
    """The row and column factors (a (fan_out, 1), g (1, fan_in)) of a type's normaliser.

    The normaliser maps V' to P ⊙ V' with P = a g; None stands for a factor of 1. Splitting
    it out lets the dropout path scale W0 and the low-rank update separately while keeping
    the gradient through the norms (which depend on V', hence on the adapter).
    """
    if kind.norm is None:
        return None, None
    if kind.norm == "rows":
        return params["magnitude"][:, None] / (row_norm(v) + EPS), None
    if kind.norm == "cols":
        return None, params["magnitude"][None, :] / (col_norm(v) + EPS)
    a = params["magnitude_r"][:, None] / (row_norm(v) + EPS)
    g = params["magnitude_c"][None, :] / (col_norm(a * v) + EPS)
    return a, g


def _scaled(w: mx.array, a: mx.array | None, g: mx.array | None) -> mx.array:
    if a is not None:
        w = a * w
    if g is not None:
        w = w * g
    return w


def decompose_weight(
    w0: mx.array, adapter: TargetAdapter, strength: float
) -> tuple[mx.array, mx.array]:
    """(P ⊙ W0, P ⊙ c s ΔW), float32, whose sum is `adapted_weight(w0, adapter, strength)`.

    This is the split the dropout path needs: the base part sees the clean input, the
    adapter part the dropped-out one. DoRA/BoRA types at s == 0 return (W0, 0), the exact
    bypass of the formulas.
    """
    w0 = w0.astype(mx.float32)
    if strength == 0 and adapter.kind.is_weight_decomposed:
        return w0, mx.zeros_like(w0)
    delta = (adapter.scale * strength) * adapter.low_rank().astype(mx.float32)
    a, g = norm_scales(w0 + delta, adapter.kind, adapter.params)
    return _scaled(w0, a, g), _scaled(delta, a, g)


def _check_hyper(rank: Any, alpha: Any, dropout: Any, strength: Any) -> None:
    """Reject hyper-parameters that would make a silently broken adapter."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    for label, value in (("alpha", alpha), ("strength", strength)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.number))
            or not math.isfinite(value)
        ):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float, np.number))
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


# --------------------------------------------------------------------------- the wrappers


class _Adapted(nn.Module):
    """Shared logic of AdaptedLinear / AdaptedConv1d; subclasses say how to run the layer."""

    LAYOUT = "linear"

    def __init__(
        self,
        base: nn.Module,
        adapter_type: str,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        strength: float = 1.0,
    ) -> None:
        super().__init__()
        kind = lookup_type(adapter_type)
        _check_hyper(rank, alpha, dropout, strength)
        weight = base.weight
        if not mx.issubdtype(weight.dtype, mx.floating):
            raise ValueError(f"base weight must be floating point, got {weight.dtype}")
        self.base = base
        self.kind = kind
        self.adapter_type = kind.name
        self.rank = int(rank)
        self.alpha = alpha
        self.dropout = float(dropout)
        self.strength = float(strength)
        w0 = self.base_weight_2d()
        self.fan_out, self.fan_in = (int(n) for n in w0.shape)
        if kind.xs:
            # The bases come from W0 exactly as stored (fp16 stays fp16 values; the upcast
            # to fp32 is exact), as the official trainer builds them.
            u, v = svd_bases(np.array(w0), self.rank)
            self.U = mx.array(u)
            self.V = mx.array(v)
            self.freeze(recurse=False, keys=list(XS_BASES))
        for name, value in init_params(kind, w0, self.rank).items():
            setattr(self, name, value)
        # Frozen last, so a constructor that fails (e.g. XS rank too big) leaves it as it was.
        self.base.freeze()
        mx.eval(self.parameters())

    # ---- views of the adapter

    @property
    def scale(self) -> float:
        """c = alpha / rank."""
        return self.alpha / self.rank

    @property
    def param_names(self) -> tuple[str, ...]:
        """The canonical (saved, trainable) parameter names of this adapter type."""
        return self.kind.required

    def adapter_params(self) -> dict[str, mx.array]:
        """The trainable adapter parameters by canonical name (no XS bases)."""
        return {name: self[name] for name in self.kind.required}

    def adapter(self) -> TargetAdapter:
        """This module's adapter as a formulas `TargetAdapter` (with U, V for XS types)."""
        params = self.adapter_params()
        if self.kind.xs:
            params.update(U=self["U"], V=self["V"])
        return TargetAdapter(self.kind, self.scale, params)

    def base_weight_2d(self) -> mx.array:
        """The base weight's canonical 2-D (fan_out, fan_in) view in float32."""
        return to_canonical_2d(self.base.weight, self.LAYOUT).astype(mx.float32)

    def merged_weight(self, strength: float | None = None) -> mx.array:
        """f(W0; s) on the canonical 2-D view, float32 (s defaults to `self.strength`)."""
        s = self.strength if strength is None else strength
        return adapted_weight(self.base_weight_2d(), self.adapter(), s)

    def _extra_repr(self) -> str:
        return (
            f"{self.adapter_type}, rank={self.rank}, alpha={self.alpha}, "
            f"dropout={self.dropout}, strength={self.strength}"
        )

    # ---- layer specifics (subclasses)

    def _layer(self, x: mx.array, w2d: mx.array) -> mx.array:
        """The layer applied with a canonical 2-D fp32 weight, no bias."""
        raise NotImplementedError

    def _base_fp32(self, x: mx.array) -> mx.array:
        """The base layer in fp32 with its stored weight (the exact s == 0 bypass)."""
        raise NotImplementedError

    def _low_rank_apply(self, x: mx.array) -> mx.array | None:
        """x @ ΔW.T without materialising ΔW, when the layer allows it (else None)."""
        return None

    def _bias(self) -> mx.array | None:
        return self.base["bias"].astype(mx.float32) if "bias" in self.base else None

    def _with_bias(self, y: mx.array) -> mx.array:
        bias = self._bias()
        return y if bias is None else y + bias

    # ---- forward

    def _dropped(self, x: mx.array) -> mx.array:
        keep = 1.0 - self.dropout
        mask = mx.random.bernoulli(keep, x.shape)
        return (mask * x) * (1.0 / keep)

    def __call__(self, x: mx.array) -> mx.array:
        x32 = x.astype(mx.float32)
        s = self.strength
        if s == 0 and self.kind.is_weight_decomposed:
            y = self._base_fp32(x32)
        elif self.dropout == 0 or not self.training:
            y = self._with_bias(self._layer(x32, self.merged_weight(s)))
        else:
            y = self._dropout_forward(x32, s)
        return y.astype(x.dtype)

    def _dropout_forward(self, x: mx.array, s: float) -> mx.array:
        w0 = self.base_weight_2d()
        dropped = self._dropped(x)
        if self.kind.norm is None:
            low = self._low_rank_apply(dropped)
            if low is not None:
                return self._with_bias(self._layer(x, w0) + (self.scale * s) * low)
        base_part, delta_part = decompose_weight(w0, self.adapter(), s)
        return self._with_bias(self._layer(x, base_part) + self._layer(dropped, delta_part))


class AdaptedLinear(_Adapted):
    """An `nn.Linear` with an SA3 adapter: y = x @ f(W0; s).T + b, computed in fp32."""

    LAYOUT = "linear"

    def __init__(
        self,
        base: nn.Linear,
        adapter_type: str,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        strength: float = 1.0,
    ) -> None:
        if not isinstance(base, nn.Linear):
            raise ValueError(f"AdaptedLinear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__(base, adapter_type, rank, alpha, dropout, strength)

    def _layer(self, x: mx.array, w2d: mx.array) -> mx.array:
        return x @ w2d.T

    def _base_fp32(self, x: mx.array) -> mx.array:
        weight = self.base.weight.astype(mx.float32)
        bias = self._bias()
        return x @ weight.T if bias is None else mx.addmm(bias, x, weight.T)

    def _low_rank_apply(self, x: mx.array) -> mx.array | None:
        if self.kind.xs:
            return ((x @ self["V"]) @ self["M_xs"].T) @ self["U"].T
        return (x @ self["lora_A"].T) @ self["lora_B"].T


class AdaptedConv1d(_Adapted):
    """An `nn.Conv1d` (groups == 1) with an SA3 adapter on its canonical (out, in*k) view.

    Stride, padding and dilation are read from the base layer at every call, so the wrapper
    convolves exactly like the layer it replaces.
    """

    LAYOUT = "mlx-conv1d"

    def __init__(
        self,
        base: nn.Conv1d,
        adapter_type: str,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        strength: float = 1.0,
    ) -> None:
        if not isinstance(base, nn.Conv1d):
            raise ValueError(f"AdaptedConv1d wraps an nn.Conv1d, got {type(base).__name__}")
        groups = getattr(base, "groups", 1)
        if groups != 1:
            # The SA3 adapter math is defined on the full (out, in*k) weight; a grouped
            # weight is block-diagonal there, and an adapter would break that structure.
            raise ValueError(f"AdaptedConv1d supports groups == 1 only, got groups={groups}")
        super().__init__(base, adapter_type, rank, alpha, dropout, strength)

    @property
    def kernel_size(self) -> int:
        return int(self.base.weight.shape[1])

    def _conv(self, x: mx.array, weight: mx.array) -> mx.array:
        b = self.base
        return mx.conv1d(x, weight, b.stride, b.padding, b.dilation, 1)

    def _layer(self, x: mx.array, w2d: mx.array) -> mx.array:
        return self._conv(x, from_canonical_2d(w2d, self.LAYOUT, self.kernel_size))

    def _base_fp32(self, x: mx.array) -> mx.array:
        return self._with_bias(self._conv(x, self.base.weight.astype(mx.float32)))


ADAPTED_TYPES = (AdaptedLinear, AdaptedConv1d)
Adapted = AdaptedLinear | AdaptedConv1d


# --------------------------------------------------------------------------- model walking


def _walk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) in definition order (named_modules lists them in reverse DFS)."""
    return list(reversed(model.named_modules()))


def _adapted_paths(model: nn.Module) -> list[tuple[str, Adapted]]:
    return [(path, m) for path, m in _walk(model) if isinstance(m, ADAPTED_TYPES)]


def adapter_modules(model: nn.Module) -> dict[str, Adapted]:
    """Canonical target name -> adapter module, in definition order."""
    out: dict[str, Adapted] = {}
    for path, module in _adapted_paths(model):
        name = from_mlx_module(path)
        if name in out:
            raise ValueError(f"two adapter modules map to the canonical name {name}")
        out[name] = module
    return out


def _freeze_outside_adapters(model: nn.Module) -> None:
    """Freeze every array that is not an adapter parameter (adapter modules stay as they are).

    Not a blanket `model.freeze()`: that would also freeze adapters injected earlier.
    """
    for _, module in model.named_modules():
        if not isinstance(module, ADAPTED_TYPES):
            module.freeze(recurse=False)


def _unadaptable(module: nn.Module, kind: AdapterType, rank: int) -> str | None:
    """Why `module` cannot take this adapter, or None (the wrappers' checks, done up front)."""
    weight = module.weight
    if not mx.issubdtype(weight.dtype, mx.floating):
        return f"base weight must be floating point, got {weight.dtype}"
    if isinstance(module, nn.Conv1d):
        groups = getattr(module, "groups", 1)
        if groups != 1:
            return f"AdaptedConv1d supports groups == 1 only, got groups={groups}"
        fan_out, fan_in = weight.shape[0], weight.shape[1] * weight.shape[2]
    else:
        fan_out, fan_in = weight.shape
    if kind.xs and rank > min(fan_out, fan_in):
        return f"{kind.name} rank {rank} exceeds min(fan_out, fan_in) = {min(fan_out, fan_in)}"
    return None


def inject(
    model: nn.Module,
    adapter_type: str,
    rank: int,
    alpha: float,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    dropout: float = 0.0,
    *,
    freeze_rest: bool = True,
) -> list[str]:
    """Wrap the selected Linear / Conv1d modules of `model` in adapters; return their names.

    Module paths are mapped to canonical names (`from_mlx_module`) and filtered with the
    official include/exclude rules, so the patterns of a `lora_config` select the same layers
    here as in the official trainer. Raises ValueError when nothing matches (a typo in a
    pattern must not give a silently unadapted model), when a selected module is already
    adapted, or when a selected layer cannot be adapted (e.g. grouped Conv1d); the model is
    left untouched on error. With `freeze_rest` (default) every non-adapter array of the
    model is frozen too, so `nn.value_and_grad(model, ...)` trains the adapters only.
    """
    kind = lookup_type(adapter_type)
    _check_hyper(rank, alpha, dropout, 1.0)
    walked = _walk(model)
    adapted_prefixes = {path for path, m in walked if isinstance(m, ADAPTED_TYPES)}
    fresh: list[tuple[str, str, nn.Module]] = []
    already: list[tuple[str, str]] = []
    for path, module in walked:
        if not path:
            continue  # the root cannot be replaced in its parent
        if isinstance(module, ADAPTED_TYPES):
            already.append((path, from_mlx_module(path)))
        elif isinstance(module, (nn.Linear, nn.Conv1d)):
            parent, _, leaf = path.rpartition(".")
            if leaf == "base" and parent in adapted_prefixes:
                continue  # the frozen layer inside a wrapper
            fresh.append((path, from_mlx_module(path), module))
    chosen = set(select([name for _, name, _ in fresh], include, exclude))
    refused = set(select([name for _, name in already], include, exclude))
    if refused:
        raise ValueError(
            f"inject: {len(refused)} selected module(s) already adapted: "
            f"{', '.join(sorted(refused))}"
        )
    picked = [(path, name, module) for path, name, module in fresh if name in chosen]
    if not picked:
        raise ValueError(
            f"inject: no Linear/Conv1d module matched include={list(include or [])} "
            f"exclude={list(exclude or [])} ({len(fresh)} candidate modules)"
        )
    names = [name for _, name, _ in picked]
    taken = set(adapter_modules(model))
    clashes = sorted({n for n in names if names.count(n) > 1 or n in taken})
    if clashes:
        raise ValueError(f"inject: several modules map to the same target: {', '.join(clashes)}")
    # Check every layer before wrapping any: a wrapper freezes its base, which is the
    # model's own layer, so a failure half-way would leave the model partly frozen.
    for _, name, module in picked:
        problem = _unadaptable(module, kind, int(rank))
        if problem:
            raise ValueError(f"inject: {name}: {problem}")
    wrappers: list[tuple[str, nn.Module]] = []
    for path, _, module in picked:
        cls = AdaptedConv1d if isinstance(module, nn.Conv1d) else AdaptedLinear
        wrappers.append((path, cls(module, kind.name, rank, alpha, dropout)))
    model.update_modules(tree_unflatten(wrappers))
    if freeze_rest:
        _freeze_outside_adapters(model)
    return names


# --------------------------------------------------------------------------- parameters


def trainable_parameters(model: nn.Module) -> dict[str, mx.array]:
    """Flattened MLX path -> array for the (unfrozen) adapter parameters only.

    XS bases and base weights never appear, whatever the rest of the model's freeze state.
    """
    out: dict[str, mx.array] = {}
    for path, module in _adapted_paths(model):
        unfrozen = module.trainable_parameters()
        for name in module.param_names:
            if name in unfrozen:
                out[f"{path}.{name}"] = module[name]
    return out


def _to_numpy(value: mx.array) -> np.ndarray:
    return np.array(value.astype(mx.float32), dtype=np.float32)


def state_dict(model: nn.Module) -> dict[str, np.ndarray]:
    """Canonical sa3 file key -> float32 array of every adapter parameter (no U / V).

    U and V are left out like the official saver does: they are rebuilt from the base.
    """
    out: dict[str, np.ndarray] = {}
    for name, module in adapter_modules(model).items():
        for param, value in module.adapter_params().items():
            out[format_adapter_key(name, param, "sa3")] = _to_numpy(value)
    return out


def _uniform_setting(modules: Mapping[str, Adapted], attr: str) -> Any:
    values = {getattr(m, attr) for m in modules.values()}
    if len(values) != 1:
        raise ValueError(f"adapter modules disagree on {attr}: {sorted(map(str, values))}")
    return values.pop()


def to_checkpoint(
    model: nn.Module,
    adapter_type: str,
    rank: int,
    alpha: float,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> AdapterCheckpoint:
    """An `AdapterCheckpoint` of the model's adapters, ready for `save_checkpoint`.

    The stated type / rank / alpha must be those the modules were injected with: the config
    is what a loader trusts, so a mismatch would write a file that means something else.
    `extra` fields (step, epoch, base_model, ...) are kept in `lora_config`; the modules'
    dropout is recorded there too unless `extra` says otherwise.
    """
    modules = adapter_modules(model)
    if not modules:
        raise ValueError("to_checkpoint: the model has no adapter modules")
    kind = lookup_type(adapter_type)
    stated = {"adapter_type": kind.name, "rank": rank, "alpha": alpha}
    for attr, value in stated.items():
        actual = _uniform_setting(modules, attr)
        if actual != value:
            raise ValueError(f"to_checkpoint: {attr} {value!r} given, modules have {actual!r}")
    fields = dict(extra or {})
    if "dropout" not in fields:
        dropouts = {m.dropout for m in modules.values()}
        if len(dropouts) == 1:
            fields["dropout"] = dropouts.pop()
    config = LoraConfig(
        rank=rank,
        alpha=alpha,
        adapter_type=kind.name,
        include=list(include or []),
        exclude=list(exclude or []),
        extra=fields,
    )
    tensors = {
        name: {p: _to_numpy(v) for p, v in m.adapter_params().items()}
        for name, m in modules.items()
    }
    return AdapterCheckpoint(config=config, adapter_type=kind.name, tensors=tensors)


def load_into(model: nn.Module, checkpoint: AdapterCheckpoint) -> list[str]:
    """Copy a checkpoint's parameters into the model's injected adapters; return targets.

    All or nothing: every problem (type / scale mismatch, missing or unexpected targets,
    missing params, shape mismatches) is collected into one ValueError before anything is
    written. XS bases stored in the checkpoint replace the ones rebuilt from this model's
    base, because they are the bases the adapter was trained with. Optional extras such as
    `baked_vnorm_row` are not used by the training math and are ignored.
    """
    modules = adapter_modules(model)
    if not modules:
        raise ValueError("load_into: the model has no adapter modules (inject first)")
    problems: list[str] = []
    kind = checkpoint.kind
    for attr in ("adapter_type", "scale"):
        actual = _uniform_setting(modules, attr)
        wanted = kind.name if attr == "adapter_type" else checkpoint.config.scale
        if actual != wanted:
            problems.append(f"{attr}: checkpoint has {wanted!r}, modules have {actual!r}")
    missing = [t for t in modules if t not in checkpoint.tensors]
    unexpected = [t for t in checkpoint.tensors if t not in modules]
    if missing:
        problems.append(f"missing targets ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected targets ({len(unexpected)}): {', '.join(unexpected)}")
    updates: list[tuple[Adapted, str, mx.array]] = []
    for target, module in modules.items():
        stored = checkpoint.tensors.get(target)
        if stored is None:
            continue
        names = list(module.param_names)
        if module.kind.xs and all(b in stored for b in XS_BASES):
            names += XS_BASES
        for param in names:
            if param not in stored:
                problems.append(f"{target}: missing parameter {param}")
                continue
            array = np.asarray(stored[param])
            want = tuple(module[param].shape)
            if tuple(array.shape) != want:
                problems.append(
                    f"{target}.{param}: shape mismatch, checkpoint {tuple(array.shape)} "
                    f"vs module {want}"
                )
                continue
            updates.append((module, param, mx.array(dtypes.to_float32(array))))
    if problems:
        raise ValueError("load_into: " + "; ".join(problems))
    for module, param, value in updates:
        setattr(module, param, value)
    mx.eval([value for _, _, value in updates])
    return list(modules)


__all__ = [
    "ADAPTED_TYPES",
    "AdaptedConv1d",
    "AdaptedLinear",
    "adapter_modules",
    "decompose_weight",
    "init_params",
    "inject",
    "load_into",
    "norm_scales",
    "state_dict",
    "to_checkpoint",
    "trainable_parameters",
]
