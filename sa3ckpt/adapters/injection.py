"""Injecting adapters into an MLX module tree, and finding them there again.

Module paths are mapped to canonical target names (`from_mlx_module`) and filtered with the
official include/exclude rules, so the patterns of a `lora_config` select the same layers
here as in the official trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from sa3ckpt.adapters.params import check_hyper
from sa3ckpt.adapters.types import adapter_type as lookup_type
from sa3ckpt.adapters.wrappers import AdaptedLayer, check_semantics, wrapper_for
from sa3ckpt.names import from_mlx_module, select


def _walk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) in definition order (named_modules lists them in reverse DFS)."""
    return list(reversed(model.named_modules()))


def adapted_paths(model: nn.Module) -> list[tuple[str, AdaptedLayer]]:
    """(MLX module path, adapter module) in definition order."""
    return [(path, m) for path, m in _walk(model) if isinstance(m, AdaptedLayer)]


def adapter_modules(model: nn.Module) -> dict[str, AdaptedLayer]:
    """Canonical target name -> adapter module, in definition order."""
    out: dict[str, AdaptedLayer] = {}
    for path, module in adapted_paths(model):
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
        if not isinstance(module, AdaptedLayer):
            module.freeze(recurse=False)


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
    semantics: str = "runtime",
) -> list[str]:
    """Wrap the selected Linear / Conv1d modules of `model` in adapters; return their names.

    Raises ValueError when nothing matches (a typo in a pattern must not give a silently
    unadapted model), when a selected module is already adapted, or when a selected layer
    cannot be adapted (e.g. grouped Conv1d); the model is left untouched on error. With
    `freeze_rest` (default) every non-adapter array of the model is frozen too, so
    `nn.value_and_grad(model, ...)` trains the adapters only. `semantics` (runtime or blend)
    is how every wrapper's strength acts on its magnitudes.
    """
    kind = lookup_type(adapter_type)
    check_hyper(rank, alpha, dropout, 1.0)
    check_semantics(semantics)
    walked = _walk(model)
    adapted_prefixes = {path for path, m in walked if isinstance(m, AdaptedLayer)}
    fresh: list[tuple[str, str, nn.Module, type[AdaptedLayer]]] = []
    already: list[tuple[str, str]] = []
    for path, module in walked:
        if not path:
            continue  # the root cannot be replaced in its parent
        if isinstance(module, AdaptedLayer):
            already.append((path, from_mlx_module(path)))
            continue
        wrapper = wrapper_for(module)
        if wrapper is not None:
            parent, _, leaf = path.rpartition(".")
            if leaf == "base" and parent in adapted_prefixes:
                continue  # the frozen layer inside a wrapper
            fresh.append((path, from_mlx_module(path), module, wrapper))
    chosen = set(select([name for _, name, _, _ in fresh], include, exclude))
    refused = set(select([name for _, name in already], include, exclude))
    if refused:
        raise ValueError(
            f"inject: {len(refused)} selected module(s) already adapted: "
            f"{', '.join(sorted(refused))}"
        )
    picked = [row for row in fresh if row[1] in chosen]
    if not picked:
        raise ValueError(
            f"inject: no Linear/Conv1d module matched include={list(include or [])} "
            f"exclude={list(exclude or [])} ({len(fresh)} candidate modules)"
        )
    names = [name for _, name, _, _ in picked]
    taken = set(adapter_modules(model))
    clashes = sorted({n for n in names if names.count(n) > 1 or n in taken})
    if clashes:
        raise ValueError(f"inject: several modules map to the same target: {', '.join(clashes)}")
    # Check every layer before wrapping any: a wrapper freezes its base, which is the
    # model's own layer, so a failure half-way would leave the model partly frozen.
    for _, name, module, wrapper in picked:
        problem = wrapper.refusal(module, kind, int(rank))
        if problem:
            raise ValueError(f"inject: {name}: {problem}")
    wrappers = [
        (path, wrapper(module, kind.name, rank, alpha, dropout, semantics=semantics))
        for path, _, module, wrapper in picked
    ]
    model.update_modules(tree_unflatten(wrappers))
    if freeze_rest:
        _freeze_outside_adapters(model)
    return names


def trainable_parameters(model: nn.Module) -> dict[str, mx.array]:
    """Flattened MLX path -> array for the (unfrozen) adapter parameters only.

    XS bases and base weights never appear, whatever the rest of the model's freeze state.
    """
    out: dict[str, mx.array] = {}
    for path, module in adapted_paths(model):
        unfrozen = module.trainable_parameters()
        for name in module.param_names:
            if name in unfrozen:
                out[f"{path}.{name}"] = module[name]
    return out


__all__ = ["adapted_paths", "adapter_modules", "inject", "trainable_parameters"]
