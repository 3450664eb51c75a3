"""convert: any adapter dialect in, any out, proven by reconstruction before it is committed.

Readers (`adapters.formats`) bring every container to canonical form, with legacy repairs in
the load ledger. Writers are rows in WRITERS. The output is written to a temporary path next
to the destination, read back with the same reader a user would use, and compared with the
input target by target — the low-rank update c·ΔW (measured without forming ΔW) and every
magnitude — before it is renamed into place (`io.atomic.StagedOutput`). The ledger reports
the worst relative error.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint, save_checkpoint
from sa3ckpt.adapters.config import LoraConfig
from sa3ckpt.adapters.finite import ALLOW_FLAG, find_nonfinite, refuse_nonfinite, summary
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.adapters.types import type_for
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.atomic import StagedOutput
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.io.formats import ADAPTER, check_output_suffix
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.io.sources import PEFT_CONFIG, PEFT_WEIGHTS, is_peft_dir
from sa3ckpt.layout import PEFT_CONV1D
from sa3ckpt.names.adapter_keys import format_adapter_key
from sa3ckpt.names.modules import module_info, to_sa3cpp_stem
from sa3ckpt.targets.families import FAMILIES

ADAPTER_TARGETS = ("sa3", "bare", "mlx", "peft", "sa3cpp")
PEFT_TYPES = ("lora", "dora-rows")  # what PEFT can express (use_dora = per-row magnitudes)
# Relative error allowed between input and rebuilt output, by output dtype (a few roundings).
TOLERANCE = {"F16": 4e-3, "BF16": 3e-2, "F32": 1e-6, "F64": 1e-12}
EPS = 1e-12


@dataclass
class ConvertLedger:
    input: str
    output: str
    to: str
    adapter_type: str
    targets: int = 0
    repairs: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    baked: list[str] = field(default_factory=list)
    worst_error: float = 0.0
    worst_target: str | None = None
    nonfinite: list[str] = field(default_factory=list)  # kept under --allow-nonfinite

    def lines(self) -> list[str]:
        out = [
            f"{self.targets} targets of a {self.adapter_type} adapter converted to {self.to}: "
            f"{self.input} -> {self.output}",
        ]
        out += [f"repaired: {line}" for line in self.repairs]
        out += [f"dropped: {line}" for line in self.dropped]
        out += [f"baked: {line}" for line in self.baked]
        if self.nonfinite:
            out.append(
                f"kept NaN/Inf ({ALLOW_FLAG}) in {len(self.nonfinite)} tensor(s), e.g. "
                f"{self.nonfinite[0]}; verified with NaN/Inf positions compared as equal"
            )
        where = f" ({self.worst_target})" if self.worst_target else ""
        out.append(f"verified: worst relative error {self.worst_error:.3g}{where}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "to": self.to,
            "adapter_type": self.adapter_type,
            "targets": self.targets,
            "repairs": self.repairs,
            "dropped": self.dropped,
            "baked": self.baked,
            "worst_relative_error": self.worst_error,
            "worst_target": self.worst_target,
            "nonfinite_kept": self.nonfinite,
        }


# --- preparing the output checkpoint ----------------------------------------------------------


def _base_2d(base: BaseCheckpoint, target: str) -> np.ndarray:
    key = base.target_key(target)
    if key is None:
        raise IncompatibleError(f"{target} is not in the base {base.path}")
    stored = base.read(key)
    return np.ascontiguousarray(base.layout_of(stored.shape, key).to_canonical(stored))


def _resolve_variant(ckpt: AdapterCheckpoint, variant: str | None, ledger: ConvertLedger) -> str:
    """The adapter type to write: the detected one, or the DoRA orientation --dora-variant names."""
    adapter_type = ckpt.adapter_type
    kind = ckpt.kind
    ambiguous = ckpt.detection is not None and ckpt.detection.orientation_open
    if variant is not None:
        if not kind.is_dora:
            raise UsageError(f"--dora-variant applies to DoRA adapters, not {adapter_type}")
        wanted = type_for(variant, kind.xs).name
        if wanted != adapter_type:
            if not ambiguous:
                raise UsageError(
                    f"the tensors say {adapter_type}; --dora-variant {variant} contradicts them"
                )
            ledger.repairs.append(f"DoRA orientation set to {wanted} by --dora-variant")
        return wanted
    if ambiguous:
        raise UsageError(
            "square layers only: the magnitudes cannot tell dora-rows from dora-cols; "
            "name it with --dora-variant rows|cols"
        )
    return adapter_type


def _prepare(
    ckpt: AdapterCheckpoint,
    to: str,
    base: BaseCheckpoint | None,
    variant: str | None,
    drop_conditioner: bool,
    ledger: ConvertLedger,
) -> AdapterCheckpoint:
    adapter_type = _resolve_variant(ckpt, variant, ledger)
    if adapter_type != ckpt.config.adapter_type:
        ledger.repairs.append(
            f"lora_config adapter_type {ckpt.config.adapter_type!r} written as {adapter_type!r}"
        )
    if to == "peft" and adapter_type not in PEFT_TYPES:
        raise UsageError(
            f"PEFT cannot express {adapter_type} (only lora, and dora-rows as use_dora); "
            "keep it in sa3, mlx or sa3cpp"
        )
    tensors = {t: dict(p) for t, p in ckpt.tensors.items()}
    if to == "sa3cpp":
        for target in [t for t in tensors if to_sa3cpp_stem(t) is None]:
            if not drop_conditioner:
                raise UsageError(
                    f"sa3.cpp has no stem for {target}; pass --drop-conditioner to convert without "
                    "it (its adaptation of the seconds conditioning is then lost)"
                )
            del tensors[target]
            ledger.dropped.append(f"{target} (sa3.cpp has no stem: its effect is lost)")
    config = LoraConfig(
        ckpt.config.rank,
        ckpt.config.alpha,
        adapter_type,
        list(ckpt.config.include),
        list(ckpt.config.exclude),
        dict(ckpt.config.extra),
    )
    out = AdapterCheckpoint(config, adapter_type, tensors, dict(ckpt.metadata))
    needs_bases = to == "sa3cpp" and out.kind.xs
    if base is not None or needs_bases:
        _bake(out, base, to, ledger)
    return out


def _bake(
    out: AdapterCheckpoint, base: BaseCheckpoint | None, to: str, ledger: ConvertLedger
) -> None:
    """U/V for XS (stored in the output) and baked_vnorm_row for dora-rows types, from the base."""
    kind = out.kind
    baked_uv = baked_norms = 0
    for target, params in out.tensors.items():
        if kind.xs and not ("U" in params and "V" in params):
            if base is None:
                raise UsageError(
                    f"sa3.cpp needs XS bases U/V and {target} has none stored; pass --base BASE"
                )
            resolved, _ = out.resolved_params(
                target, base_2d=dtypes.to_float32(_base_2d(base, target))
            )
            params["U"], params["V"] = resolved["U"], resolved["V"]
            baked_uv += 1
        if base is not None and kind.norm == "rows" and to != "peft":
            w0 = dtypes.to_float32(_base_2d(base, target)).astype(np.float64)
            p = {k: dtypes.to_float32(np.asarray(v)).astype(np.float64) for k, v in params.items()}
            delta = p["U"] @ p["M_xs"] @ p["V"].T if kind.xs else p["lora_B"] @ p["lora_A"]
            v = w0 + out.config.scale * delta
            params["baked_vnorm_row"] = np.sqrt(np.einsum("ij,ij->i", v, v)).astype(np.float32)
            baked_norms += 1
    if baked_uv:
        ledger.baked.append(f"XS bases U/V for {baked_uv} targets (SVD of the base)")
    if baked_norms:
        out.config.extra["baked_norms"] = True
        ledger.baked.append(
            f"baked_vnorm_row (fp32 row norms of V' at s=1) for {baked_norms} targets"
        )


# --- writers ---------------------------------------------------------------------------------


def _write_dialect(dialect: str) -> Callable[[AdapterCheckpoint, str, str], None]:
    def write(ckpt: AdapterCheckpoint, path: str, code: str) -> None:
        save_checkpoint(ckpt, path, dtype=code, dialect=dialect)

    return write


def _conv_kernel(target: str, shape: tuple[int, int]) -> int:
    """Kernel size of a Conv1d target, from the family whose table has this exact shape."""
    for fam in FAMILIES.values():
        spec = fam.target(target)
        if spec is not None and spec.layer_kind == "conv1d" and spec.shape == shape:
            return spec.kernel_size
    return 1


def _write_peft(ckpt: AdapterCheckpoint, path: str, code: str) -> None:
    os.makedirs(path, exist_ok=False)
    tensors: dict[str, np.ndarray] = {}
    for target, params in ckpt.tensors.items():
        a, b = np.asarray(params["lora_A"]), np.asarray(params["lora_B"])
        info = module_info(target)
        conv_k = None
        if info is not None and info.layer_kind == "conv1d":  # PEFT keeps Conv1d adapters as convs
            conv_k = _conv_kernel(target, (b.shape[0], a.shape[1]))
        for param in ("lora_A", "lora_B", "magnitude"):
            if param not in params:
                continue
            value = dtypes.to_float32(np.asarray(params[param]))
            if conv_k is not None:
                value = PEFT_CONV1D.from_canonical(param, value, conv_k)
            tensors[format_adapter_key(target, param, "peft")] = dtypes.cast(value, code)
    write_safetensors(os.path.join(path, PEFT_WEIGHTS), tensors, {"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": ckpt.config.rank,
        "lora_alpha": ckpt.config.alpha,
        "use_dora": ckpt.adapter_type == "dora-rows",
        "use_rslora": False,
        "lora_dropout": ckpt.config.extra.get("dropout", 0.0),
        "bias": "none",
        "target_modules": sorted(ckpt.tensors),
        "base_model_name_or_path": ckpt.config.base_model,
    }
    with open(os.path.join(path, PEFT_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1, sort_keys=True)
        f.write("\n")


def _write_sa3cpp(ckpt: AdapterCheckpoint, path: str, code: str) -> None:
    from sa3ckpt.io.gguf_adapter import write_gguf_adapter

    tensors = {
        format_adapter_key(target, param, "sa3cpp"): dtypes.to_float32(np.asarray(value))
        for target, params in ckpt.tensors.items()
        for param, value in params.items()
    }
    extra = {"sa3ckpt.base_model": ckpt.config.base_model} if ckpt.config.base_model else None
    write_gguf_adapter(
        path,
        tensors,
        adapter_type=ckpt.adapter_type,
        rank=ckpt.config.rank,
        alpha=float(ckpt.config.alpha),
        n_targets=len(ckpt.tensors),
        extra_kv=extra,
    )


WRITERS: dict[str, Callable[[AdapterCheckpoint, str, str], None]] = {
    "sa3": _write_dialect("sa3"),
    "bare": _write_dialect("bare"),
    "mlx": _write_dialect("mlx"),
    "peft": _write_peft,
    "sa3cpp": _write_sa3cpp,
}
FORCED_DTYPE = {"sa3cpp": "F32"}  # sa3.cpp adapters are F32 by definition


# --- verification ----------------------------------------------------------------------------


def _f64(value: Any) -> np.ndarray:
    return dtypes.to_float32(np.asarray(value)).astype(np.float64)


def _factors(ckpt: AdapterCheckpoint, target: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(c·B, A) such that c·ΔW = B @ A; None for XS without both bases (compare c·M then)."""
    p = ckpt.tensors[target]
    c = ckpt.config.scale
    if "lora_A" in p:
        return c * _f64(p["lora_B"]), _f64(p["lora_A"])
    if "U" in p and "V" in p:
        return c * (_f64(p["U"]) @ _f64(p["M_xs"])), _f64(p["V"]).T
    return None


def _lowrank_error(x: tuple[np.ndarray, np.ndarray], y: tuple[np.ndarray, np.ndarray]) -> float:
    """‖B1A1 − B2A2‖_F / ‖B1A1‖_F without forming either product (Gram matrices)."""

    def sq_norm(b: np.ndarray, a: np.ndarray) -> float:
        return float(np.sum((b.T @ b) * (a @ a.T)))

    diff = sq_norm(np.hstack([x[0], -y[0]]), np.vstack([x[1], y[1]]))
    return float(np.sqrt(max(diff, 0.0)) / (np.sqrt(max(sq_norm(*x), 0.0)) + EPS))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + EPS))


SCALED_PARAMS = ("lora_B", "M_xs")  # the factor c multiplies in c·ΔW


def _elementwise_errors(
    source: AdapterCheckpoint, rebuilt: AdapterCheckpoint, target: str
) -> list[float]:
    """Tensor-by-tensor errors for a target holding NaN/Inf (norms of it would be NaN).

    NaN and ±Inf must sit at the same positions with the same values (NaN equals NaN);
    the finite entries are compared by relative error. Anything else is an infinite error.
    """
    errors = []
    for name, value in source.tensors[target].items():
        other = rebuilt.tensors[target].get(name)
        if other is None:
            raise IncompatibleError(f"{target} {name} is missing from the converted output")
        x, y = _f64(value), _f64(other)
        if name in SCALED_PARAMS:
            x, y = source.config.scale * x, rebuilt.config.scale * y
        bad = ~np.isfinite(x)
        same_bad = x.shape == y.shape and np.array_equal(bad, ~np.isfinite(y))
        if not same_bad or not np.array_equal(x[bad], y[bad], equal_nan=True):
            errors.append(math.inf)
        else:
            errors.append(_rel(x[~bad], y[~bad]))
    return errors


def verify(
    source: AdapterCheckpoint, rebuilt: AdapterCheckpoint, skip: set[str]
) -> tuple[float, str | None]:
    """Worst relative error of c·ΔW and magnitudes over targets; raises on a structural loss."""
    if rebuilt.adapter_type != source.adapter_type:
        raise IncompatibleError(f"rebuilt type {rebuilt.adapter_type} != {source.adapter_type}")
    worst, where = 0.0, None
    for target in source.tensors:
        if target in skip:
            continue
        if target not in rebuilt.tensors:
            raise IncompatibleError(f"{target} is missing from the converted output")
        x, y = _factors(source, target), _factors(rebuilt, target)
        errors = []
        if find_nonfinite({target: source.tensors[target]}) or find_nonfinite(
            {target: rebuilt.tensors[target]}
        ):
            errors = _elementwise_errors(source, rebuilt, target)
        elif x is not None and y is not None:
            errors.append(_lowrank_error(x, y))
        else:
            cx = source.config.scale * _f64(source.tensors[target]["M_xs"])
            cy = rebuilt.config.scale * _f64(rebuilt.tensors[target]["M_xs"])
            errors.append(_rel(cx, cy))
        for name in ("magnitude", "magnitude_r", "magnitude_c"):
            if name in source.tensors[target]:
                errors.append(
                    _rel(_f64(source.tensors[target][name]), _f64(rebuilt.tensors[target][name]))
                )
        error = max(errors)
        if math.isnan(error):  # NaN compares false with any tolerance: it is a failure
            error = math.inf
        if error > worst:
            worst, where = error, target
    return worst, where


# --- the command ------------------------------------------------------------------------------


def convert_adapter(
    input_path: str,
    output: str,
    *,
    to: str,
    dtype: str | None = None,
    base_path: str | None = None,
    dora_variant: str | None = None,
    drop_conditioner: bool = False,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    force: bool = False,
) -> ConvertLedger:
    """Convert an adapter to the `to` dialect; verified before the output is committed.

    NaN/Inf in the input is refused (exit 4, nothing written) unless `allow_nonfinite`;
    then they are carried over, listed in the ledger, and must come back at the same places.
    """
    if to not in WRITERS:
        raise UsageError(f"unknown --to {to!r} (known: {', '.join(WRITERS)})")
    if dora_variant not in (None, "rows", "cols"):
        raise UsageError("--dora-variant takes rows or cols")
    check_output_suffix(output, ADAPTER, to)
    inputs = [input_path] + ([base_path] if base_path else [])
    # PEFT output is a folder: it may replace an old PEFT folder under --force, nothing else.
    staged = StagedOutput(
        output, inputs=inputs, overwrite=force, directory=to == "peft", replaceable=is_peft_dir
    )
    ckpt = load_adapter(input_path, allow_pickle=allow_pickle)
    code = FORCED_DTYPE.get(to) or (dtypes.code_from_name(dtype) if dtype else "F16")
    ledger = ConvertLedger(input_path, output, to, ckpt.adapter_type)
    nonfinite = find_nonfinite(ckpt.tensors)
    if not allow_nonfinite:
        refuse_nonfinite(input_path, nonfinite, "convert")
    ledger.nonfinite = [str(f) for f in nonfinite]
    if ckpt.ledger is not None:
        ledger.repairs += ckpt.ledger.repairs
        if ckpt.ledger.rejected:
            key, reason = ckpt.ledger.rejected[0]
            raise IncompatibleError(
                f"{len(ckpt.ledger.rejected)} keys are not adapter tensors (e.g. {key}: {reason}); "
                "converting would drop them"
            )
    base = open_base(base_path) if base_path else None
    try:
        prepared = _prepare(ckpt, to, base, dora_variant, drop_conditioner, ledger)
    finally:
        if base is not None:
            base.close()
    ledger.adapter_type = prepared.adapter_type
    ledger.targets = len(prepared.tensors)
    with staged:
        WRITERS[to](prepared, staged.temp_path, code)
        rebuilt = load_adapter(staged.temp_path)
        introduced = find_nonfinite(rebuilt.tensors)
        if introduced and not nonfinite:
            raise IncompatibleError(
                f"{output}: converted tensor {summary(introduced)} is not finite in {code} "
                "(values beyond its range); nothing was written (try --dtype fp32)"
            )
        source = AdapterCheckpoint(prepared.config, prepared.adapter_type, ckpt.tensors)
        skip = {t for t in ckpt.tensors if t not in prepared.tensors}
        ledger.worst_error, ledger.worst_target = verify(source, rebuilt, skip)
        tolerance = TOLERANCE.get(code, 1e-3)
        if ledger.worst_error > tolerance:
            raise IncompatibleError(
                f"verification failed: {ledger.worst_target} differs by {ledger.worst_error:.3g} "
                f"(> {tolerance:g} for {code}); nothing was written"
            )
    return ledger
