"""Trained adapter modules to and from checkpoints: state dicts, `AdapterCheckpoint`s, loading.

U and V are left out of what is written, like the official saver does: they are rebuilt from
the base weight. Loading is all or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.adapters.config import LoraConfig
from sa3ckpt.adapters.injection import adapter_modules
from sa3ckpt.adapters.types import BASIS_PARAMS
from sa3ckpt.adapters.types import adapter_type as lookup_type
from sa3ckpt.adapters.wrappers import AdaptedLayer
from sa3ckpt.names import format_adapter_key


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


def _uniform_setting(modules: Mapping[str, AdaptedLayer], attr: str) -> Any:
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
    updates: list[tuple[AdaptedLayer, str, mx.array]] = []
    for target, module in modules.items():
        stored = checkpoint.tensors.get(target)
        if stored is None:
            continue
        names = list(module.param_names)
        if module.kind.xs and all(b in stored for b in BASIS_PARAMS):
            names += BASIS_PARAMS
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


__all__ = ["load_into", "state_dict", "to_checkpoint"]
