"""`load_dit`: an MLX DiT and its conditioner from an official, MLX-runtime or diffusers base.

Every input is read through the one base-checkpoint registry (`io.base_checkpoint`) and
translated to the MLX runtime's names and layouts by the base-conversion plan, so the rules
for key spellings (names.base_keys) and shapes (layout) are not restated here. The family is
read off the tensor shapes (width, depth, differential q/k, head width, memory tokens), so
any file of the SA3 topology loads, published size or not.

Loading is strict, unlike the official MLX runtime (which silently keeps random init for a
missing key): every DiT parameter must come from the file with its exact shape, and every
file key that is not used is named in the ledger with the reason. The conditioner's three
arrays load when the file holds them (official and MLX files do; a diffusers transformer
folder holds the padding embedding and its pipeline's `duration_embedder` the seconds
Linear).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from sa3ckpt.errors import IncompatibleError
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.models.config import DiTConfig
from sa3ckpt.models.dit import DiT, build_conditioner
from sa3ckpt.models.embeddings import Conditioner
from sa3ckpt.names.base_keys import MLX_PIPELINE_CONDITIONER_KEYS
from sa3ckpt.names.modules import MLX_ARRAY_PREFIX
from sa3ckpt.ops.convert_base import convert_tensor, plan_conversion
from sa3ckpt.targets.families import FAMILIES
from sa3ckpt.targets.topology import Topology

Shape = tuple[int, ...]
_SHOWN = 5
# Arrays kept in float32 whatever the run dtype: a fixed table, not a weight.
_KEEP_FP32 = frozenset({"transformer.rotary_pos_emb.inv_freq"})
# diffusers keeps the seconds Linear in a sibling pipeline component.
_DURATION_FOLDER = "duration_embedder"
_DURATION_KEYS = {
    "linear.weight": "cond.seconds_total_weight",
    "linear.bias": "cond.seconds_total_bias",
}


@dataclass
class LoadLedger:
    """What a load did: every key of the file is in exactly one of these."""

    path: str
    naming: str
    container: str
    family: str  # a FAMILIES name, or "custom (E=…, depth …)" for an unnamed topology
    loaded: int = 0  # DiT parameters loaded
    cast: dict[str, int] = field(default_factory=dict)  # "F16->float32" -> count
    conditioner: list[str] = field(default_factory=list)  # `cond.*` arrays loaded
    conditioner_missing: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # file key -> why it was not used

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [
            f"{self.path}: {self.naming} naming ({self.container}), family {self.family}",
            f"  DiT parameters loaded: {self.loaded}",
        ]
        out += [f"  dtype cast {pair}: {n}" for pair, n in sorted(self.cast.items())]
        if self.conditioner:
            out.append(f"  conditioner arrays loaded: {', '.join(self.conditioner)}")
        if self.conditioner_missing:
            out.append(f"  conditioner arrays missing: {', '.join(self.conditioner_missing)}")
        for key, why in self.ignored.items():
            out.append(f"  not used: {key} ({why})")
        return out


@dataclass
class LoadedDiT:
    dit: DiT
    conditioner: Conditioner | None  # None when the file lacks any of its three arrays
    ledger: LoadLedger


def _layer_indices(shapes: Mapping[str, Shape]) -> set[int]:
    prefix = "transformer.layers."
    return {
        int(key[len(prefix) :].split(".", 1)[0])
        for key in shapes
        if key.startswith(prefix) and key[len(prefix) :].split(".", 1)[0].isdigit()
    }


def _need(shapes: Mapping[str, Shape], key: str, path: str) -> Shape:
    if key not in shapes:
        raise IncompatibleError(f"{path}: not a complete SA3 DiT (no {key})")
    return shapes[key]


def topology_from_shapes(shapes: Mapping[str, Shape], path: str = "") -> tuple[Topology, int]:
    """(topology, memory tokens) of an MLX-named DiT state, read off its tensor shapes."""
    embed, io = _need(shapes, "transformer.project_in.weight", path)
    depth = len(_layer_indices(shapes))
    block = "transformer.layers.0."
    qkv = _need(shapes, block + "self_attn.to_qkv.weight", path)[0]
    ff_hidden = _need(shapes, block + "ff.ff.2.weight", path)[1]
    seconds = shapes.get("cond.seconds_total_weight", (0, 256))[1]
    topology = Topology(
        embed_dim=embed,
        depth=depth,
        differential=qkv == 5 * embed,
        io_channels=io,
        cond_token_dim=_need(shapes, "to_cond_embed.0.weight", path)[1],
        timestep_features=_need(shapes, "to_timestep_embed.0.weight", path)[1],
        seconds_features=seconds,
        global_mult=_need(shapes, "transformer.global_cond_embedder.2.weight", path)[0] // embed,
        ff_mult=ff_hidden // embed,
        conv_kernel=_need(shapes, "preprocess_conv.weight", path)[1],
        head_dim=_need(shapes, block + "self_attn.q_norm.weight", path)[0],
    )
    memory = shapes.get("transformer.memory_tokens", (0,))[0]
    return topology, memory


def family_name(topology: Topology) -> str:
    """The family whose topology this is, or a description of an unnamed one."""
    for name, fam in FAMILIES.items():
        if fam.topology == topology:
            return name
    kind = "differential" if topology.differential else "standard"
    return f"custom (E={topology.embed_dim}, depth {topology.depth}, {kind} attention)"


def _translated(base: BaseCheckpoint, ledger: LoadLedger) -> dict[str, np.ndarray]:
    """Every mappable tensor of the base in MLX names and layouts (float arrays as stored)."""
    plans, unmapped, _ = plan_conversion(base, "mlx", cast_to=None, drop_unmapped=True)
    for key in unmapped:
        ledger.ignored[key] = "no MLX DiT or conditioner spelling (not part of the DiT)"
    return {plan.target: convert_tensor(base.read(plan.source), plan) for plan in plans}


def _diffusers_duration(path: str) -> dict[str, np.ndarray]:
    """The seconds Linear from a diffusers pipeline's `duration_embedder` beside the transformer."""
    parent = os.path.dirname(os.path.abspath(path))
    for folder in (os.path.join(path, _DURATION_FOLDER), os.path.join(parent, _DURATION_FOLDER)):
        weights = os.path.join(folder, "diffusion_pytorch_model.safetensors")
        if os.path.isfile(weights):
            handle = open_safetensors(weights)
            try:
                return {
                    mlx_key: handle.read(key)
                    for key, mlx_key in _DURATION_KEYS.items()
                    if key in handle.header.tensors
                }
            finally:
                handle.close()
    return {}


def _resolve(path: str) -> str:
    """A diffusers pipeline root loads its `transformer` component."""
    inner = os.path.join(path, "transformer")
    if os.path.isdir(path) and os.path.isdir(inner):
        return inner
    return path


def _to_mx(key: str, value: np.ndarray, dtype: mx.Dtype, ledger: LoadLedger) -> mx.array:
    target = mx.float32 if key in _KEEP_FP32 else dtype
    array = mx.array(value)
    if np.issubdtype(value.dtype, np.floating) and array.dtype != target:
        pair = f"{value.dtype}->{str(target).rpartition('.')[2]}"
        ledger.cast[pair] = ledger.cast.get(pair, 0) + 1
        array = array.astype(target)
    return array


def _shapes(module: nn.Module) -> dict[str, Shape]:
    flat: list[tuple[str, mx.array]] = tree_flatten(module.parameters())  # type: ignore[assignment]
    return {key: tuple(value.shape) for key, value in flat}


def _check_complete(
    dit: DiT, tensors: Mapping[str, np.ndarray], ledger: LoadLedger
) -> list[tuple[str, np.ndarray]]:
    """The (key, array) pairs for every DiT parameter; refuse a missing one or a wrong shape."""
    expected = _shapes(dit)
    missing = [key for key in expected if key not in tensors]
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (", …" if len(missing) > _SHOWN else "")
        raise IncompatibleError(f"{ledger.path}: {len(missing)} DiT parameters missing ({shown})")
    wrong = [
        f"{key} {tuple(tensors[key].shape)} (expected {shape})"
        for key, shape in expected.items()
        if tuple(tensors[key].shape) != shape
    ]
    if wrong:
        raise IncompatibleError(f"{ledger.path}: shape mismatch: {'; '.join(wrong[:_SHOWN])}")
    for key in tensors:
        if key not in expected and not key.startswith(MLX_ARRAY_PREFIX):
            ledger.ignored[key] = "an MLX DiT spelling, but the model has no such parameter"
    return [(key, tensors[key]) for key in expected]


def load_dit(path: str | os.PathLike[str], dtype: mx.Dtype = mx.float32) -> LoadedDiT:
    """The DiT (and conditioner) of a base file or folder, every parameter from the file.

    `dtype` is the run dtype every floating array is cast to (the RoPE table stays fp32);
    the ledger counts the casts. Raises MalformedFileError for a file that is not an SA3
    base and IncompatibleError for a base that does not fill the model.
    """
    spath = _resolve(os.fspath(path))
    with open_base(spath) as base:
        ledger = LoadLedger(spath, base.naming, base.container, "")
        tensors = _translated(base, ledger)
    if base.naming == "diffusers":
        tensors.update(_diffusers_duration(spath))
    topology, memory = topology_from_shapes({k: tuple(v.shape) for k, v in tensors.items()}, spath)
    ledger.family = family_name(topology)
    try:
        config = DiTConfig(topology, memory_tokens=memory)
    except ValueError as exc:
        raise IncompatibleError(f"{spath}: {exc}") from None
    dit = DiT(config)
    pairs = _check_complete(dit, tensors, ledger)
    dit.load_weights([(k, _to_mx(k, v, dtype, ledger)) for k, v in pairs], strict=True)
    ledger.loaded = len(pairs)
    dit.eval()
    return LoadedDiT(dit, _conditioner(config, tensors, dtype, ledger), ledger)


def _conditioner(
    config: DiTConfig, tensors: Mapping[str, np.ndarray], dtype: mx.Dtype, ledger: LoadLedger
) -> Conditioner | None:
    keys = MLX_PIPELINE_CONDITIONER_KEYS
    present = [k for k in keys if k in tensors]
    ledger.conditioner_missing = [k for k in keys if k not in tensors]
    extra = [k for k in tensors if k.startswith(MLX_ARRAY_PREFIX) and k not in keys]
    for key in extra:
        ledger.ignored[key] = "a conditioner array this model does not use"
    if ledger.conditioner_missing:
        for key in present:
            ledger.ignored[key] = "conditioner incomplete, not loaded"
        return None
    cond = build_conditioner(config)
    weights = [(k[len(MLX_ARRAY_PREFIX) :], _to_mx(k, tensors[k], dtype, ledger)) for k in keys]
    expected = _shapes(cond)
    wrong = [f"{k} {tuple(v.shape)}" for k, v in weights if tuple(v.shape) != expected[k]]
    if wrong:
        raise IncompatibleError(f"{ledger.path}: conditioner shape mismatch: {', '.join(wrong)}")
    cond.load_weights(weights, strict=True)
    ledger.conditioner = list(keys)
    return cond


__all__ = ["LoadLedger", "LoadedDiT", "family_name", "load_dit", "topology_from_shapes"]
