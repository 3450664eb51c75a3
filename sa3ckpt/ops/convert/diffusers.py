"""The diffusers writer of `convert`: an adapter as diffusers LoRA files for SA3's pipeline.

What it writes is a folder (`io.diffusers_lora`): `pytorch_lora_weights.safetensors` with the
DiT's targets under `transformer.<StableAudio3DiTModel module>`, and, with
`--include-conditioner`, the seconds conditioner under `duration_embedder.linear` in
`duration_embedder_lora_weights.safetensors` (diffusers has no LoRA hook for that
component). The tensors are PEFT LoRA layers' (lora and dora-rows; -xs written as the plain
type they equal), with two runtime facts applied on the way out:

- medium's self-attention `to_qkv` rows are in diffusers' [q|q2|k|k2|v] order, so lora_B
  and the row magnitude are reordered (`layout.ROW_ORDERS`); lora_A is unchanged;
- diffusers' `preprocess_conv` / `postprocess_conv` are 1-wide Conv1d, whose PEFT LoRA
  layers hold lora_A (r, in, 1), lora_B (out, r, 1) and a (1, out, 1) magnitude.

The header metadata `lora_adapter_metadata` carries r, lora_alpha, use_dora and use_rslora
(diffusers otherwise takes lora_alpha = r) and full module paths as `target_modules`; since
PEFT matches list entries as name suffixes, the top-level `proj_in` / `proj_out` would also
pick every block's `ff.proj_in` / `ff.proj_out`, which `exclude_modules` then names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.errors import UsageError
from sa3ckpt.io.diffusers_lora import write_lora_folder
from sa3ckpt.layout import PEFT_CONV1D, rows_to_naming
from sa3ckpt.names.adapter_keys import format_adapter_key
from sa3ckpt.names.modules import (
    DIFFUSERS_TRANSFORMER,
    diffusers_component,
    diffusers_suffix_clashes,
    module_info,
    split_block,
    to_diffusers_path,
)
from sa3ckpt.targets.families import FAMILIES, family_for_base_model

DIALECT = "diffusers"
# diffusers' StableAudio3DiTModel builds its pre/post-process convs with kernel size 1.
CONV_KERNEL = 1
# The deepest known family: without a better guess, PEFT suffix clashes are named for as
# many blocks.
MAX_DEPTH = max(f.topology.depth for f in FAMILIES.values())

Factors = Callable[[AdapterCheckpoint, str], dict[str, np.ndarray]]


def conditioner_targets(ckpt: AdapterCheckpoint) -> list[str]:
    """Targets outside diffusers' transformer (the seconds conditioner's duration embedder)."""
    return [t for t in ckpt.tensors if diffusers_component(t) != DIFFUSERS_TRANSFORMER]


def check_expressible(ckpt: AdapterCheckpoint) -> None:
    """Refuse targets diffusers has no module for, and convs its 1-wide convs cannot hold."""
    for target, params in ckpt.tensors.items():
        if to_diffusers_path(target) is None:
            raise UsageError(f"{target}: diffusers' SA3 pipeline has no such module")
        info = module_info(target)
        if info is not None and info.layer_kind == "conv1d":
            fan_out, fan_in = _fans(params)
            if fan_in != fan_out * CONV_KERNEL:
                raise UsageError(
                    f"{target}: a Conv1d of canonical shape {(fan_out, fan_in)} has a kernel "
                    f"wider than {CONV_KERNEL}; diffusers' {to_diffusers_path(target)} is 1-wide"
                )


def _fans(params: Mapping[str, np.ndarray]) -> tuple[int, int]:
    if "lora_A" in params:
        return int(np.shape(params["lora_B"])[0]), int(np.shape(params["lora_A"])[1])
    return int(np.shape(params["U"])[0]), int(np.shape(params["V"])[0])


def _stored(target: str, factors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A target's canonical PEFT factors as diffusers stores them (row order, conv layout)."""
    fans = (int(factors["lora_B"].shape[0]), int(factors["lora_A"].shape[1]))
    out = {}
    conv = (info := module_info(target)) is not None and info.layer_kind == "conv1d"
    for param, value in factors.items():
        if param in ("lora_B", "magnitude"):
            value = rows_to_naming(DIALECT, target, fans, value)
        if conv:
            value = PEFT_CONV1D.from_canonical(param, value, CONV_KERNEL)
        out[param] = np.ascontiguousarray(value)
    return out


def _depth(ckpt: AdapterCheckpoint) -> int:
    """The model's block count as far as the adapter says: its family's, else one past its
    last block, else the deepest known family's."""
    fam = family_for_base_model(ckpt.config.base_model) if ckpt.config.base_model else None
    if fam is not None:
        return fam.topology.depth
    blocks = [split[0] for t in ckpt.tensors if (split := split_block(t)) is not None]
    return max(blocks) + 1 if blocks else MAX_DEPTH


def _arguments(ckpt: AdapterCheckpoint, modules: list[str]) -> dict[str, object]:
    """`peft.LoraConfig` arguments for one component (module paths relative to it)."""
    arguments: dict[str, object] = {
        "r": ckpt.config.rank,
        "lora_alpha": ckpt.config.alpha,
        "use_dora": ckpt.kind.norm == "rows",
        "use_rslora": False,
        "lora_dropout": ckpt.config.extra.get("dropout", 0.0),
        "bias": "none",
        "target_modules": sorted(modules),
    }
    targeted = set(modules)
    depth = _depth(ckpt)
    clashes = {c for m in modules for c in diffusers_suffix_clashes(m, depth)} - targeted
    if clashes:
        arguments["exclude_modules"] = sorted(clashes)
    return arguments


def diffusers_conv_kernels(ckpt: AdapterCheckpoint) -> dict[str, int]:
    """Kernel sizes of the Conv1d targets as diffusers' model has them (all 1-wide)."""
    return {
        t: CONV_KERNEL
        for t in ckpt.tensors
        if (info := module_info(t)) is not None and info.layer_kind == "conv1d"
    }


def write_diffusers(ckpt: AdapterCheckpoint, path: str, code: str, factors: Factors) -> None:
    """Write the diffusers LoRA folder; `factors` gives a target's plain PEFT factors."""
    tensors: dict[str, dict[str, np.ndarray]] = {}
    modules: dict[str, list[str]] = {}
    for target in ckpt.tensors:
        pipeline_path = to_diffusers_path(target)
        assert pipeline_path is not None  # check_expressible ran in preparation
        component, _, module = pipeline_path.partition(".")
        modules.setdefault(component, []).append(module)
        for param, value in _stored(target, factors(ckpt, target)).items():
            key = format_adapter_key(target, param, DIALECT)
            tensors.setdefault(component, {})[key] = dtypes.cast(value, code)
    arguments = {c: _arguments(ckpt, m) for c, m in modules.items()}
    write_lora_folder(path, tensors, arguments)
