"""PyTorch stand-ins for SA3 models, for tests that load our outputs into the real libraries.

PEFT (and diffusers, which uses PEFT) find adapter slots by module name, so the stand-in only
has to reproduce the module *tree* of a family: every target a bias-free `nn.Linear` or
`nn.Conv1d` with the family's shape, at its canonical path (`model.transformer.layers.0.
self_attn.to_qkv`, `model.preprocess_conv`, `conditioners.seconds_total.embedder.embedding.1`).
Wrapped by PEFT, the root gives exactly the keys PEFT writes: `base_model.model.<target>…`.

The weights come from the base the sa3ckpt side merges into (canonical 2-D arrays, reshaped
to PyTorch's (out, in, k) for convolutions), so both sides start from identical numbers.
Import only from tests that `pytest.importorskip("torch")` (or "peft") first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from sa3ckpt.targets import Family, Target

WeightSource = Callable[[Target], np.ndarray]  # target -> canonical 2-D (fan_out, fan_in)


def _leaf(target: Target) -> nn.Module:
    """The bias-free torch layer of one target (only the weight takes part in the adapter)."""
    if target.layer_kind == "conv1d":
        out, cin, k = target.weight_shape
        return nn.Conv1d(cin, out, k, bias=False)
    out, fan_in = target.shape
    return nn.Linear(fan_in, out, bias=False)


def _container(root: nn.Module, path: list[str]) -> nn.Module:
    """The module at `path` under `root`, creating empty containers on the way."""
    node = root
    for part in path:
        child = node._modules.get(part)
        if child is None:
            child = nn.Module()
            node.add_module(part, child)
        node = child
    return node


def build_torch_tree(
    family: Family,
    weights: WeightSource,
    *,
    targets: list[str] | None = None,
    rename: Callable[[str], str] | None = None,
) -> nn.Module:
    """A module tree with one torch layer per target (all of the family's unless `targets`).

    `weights(target)` gives the canonical 2-D weight; `rename` maps a canonical target name to
    the module path to use (e.g. diffusers names), identity by default.
    """
    root = nn.Module()
    wanted = set(targets) if targets is not None else None
    for target in family.targets:
        if wanted is not None and target.name not in wanted:
            continue
        path = (rename(target.name) if rename else target.name).split(".")
        layer = _leaf(target)
        w2d = np.asarray(weights(target), dtype=np.float32).reshape(target.weight_shape)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w2d)))
        _container(root, path[:-1]).add_module(path[-1], layer)
    return root


def canonical_weights(
    root: nn.Module, family: Family, rename: Callable[[str], str] | None = None
) -> dict[str, np.ndarray]:
    """Every target's weight in `root` as a float64 canonical 2-D array (after a merge)."""
    modules = dict(root.named_modules())
    out: dict[str, np.ndarray] = {}
    for target in family.targets:
        module = modules.get(rename(target.name) if rename else target.name)
        if module is None:
            continue
        weight = module.weight.detach().to(torch.float64).numpy()
        out[target.name] = weight.reshape(target.shape)
    return out


def module_names(family: Family, targets: Mapping[str, object] | None = None) -> list[str]:
    """Full module paths of the family's targets (PEFT `target_modules` without ambiguity)."""
    return [t.name for t in family.targets if targets is None or t.name in targets]
