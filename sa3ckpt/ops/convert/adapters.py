"""convert: any adapter dialect in, any out, proven by reconstruction before it is committed.

Readers (`adapters.formats`) bring every container to canonical form, with legacy repairs in
the load ledger. Writers are rows in WRITERS. The output is written to a temporary path next
to the destination, read back with the same reader a user would use, and compared with the
input target by target — the low-rank update c·ΔW (measured without forming ΔW) and every
magnitude — before it is renamed into place (`io.atomic.StagedOutput`). The ledger reports
the worst relative error.

For dialects that keep Conv1d adapter tensors as convolutions (PEFT), the read-back also
checks the files as that library reads them: the stored 3-D factors must have the shapes
it allocates for the torch Conv1d, and the update it forms from them (a 1-wide conv of
lora_B over lora_A) must equal c·ΔW in the torch (out, in, k) weight layout.

PEFT expresses lora and dora-rows, and their -xs forms exactly: B = U·M, A = Vᵀ with the same
scale alpha/rank (the XS bases from the file, `--bases` or an SVD of `--base`). Its DoRA
magnitude is per output row, so dora-cols and bora(-xs) have no PEFT form.
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
from sa3ckpt.adapters.formats import canonical_checkpoint, load_adapter
from sa3ckpt.adapters.types import adapter_type as lookup_type
from sa3ckpt.adapters.types import type_for
from sa3ckpt.adapters.xs_bases import XsBases
from sa3ckpt.adapters.xs_sources import load_xs_bases
from sa3ckpt.errors import IncompatibleError, UsageError, VerificationError
from sa3ckpt.io.atomic import StagedOutput
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.io.diffusers_lora import SIDECAR_WEIGHTS, is_diffusers_lora
from sa3ckpt.io.formats import ADAPTER, check_output_suffix, load_raw
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.io.sources import PEFT_CONFIG, PEFT_WEIGHTS, is_peft_dir
from sa3ckpt.layout import LAYOUTS, FactorLayout, factor_layout
from sa3ckpt.names.adapter_keys import format_adapter_key
from sa3ckpt.names.modules import (
    DIFFUSERS_TRANSFORMER,
    diffusers_component,
    module_info,
    to_sa3cpp_stem,
)
from sa3ckpt.ops.convert.diffusers import check_expressible, diffusers_conv_kernels, write_diffusers
from sa3ckpt.targets.families import FAMILIES

ADAPTER_TARGETS = ("sa3", "bare", "mlx", "peft", "sa3cpp", "diffusers")
# What PEFT can express: plain LoRA and per-output-row DoRA (use_dora), XS or not. An XS
# adapter is written as the plain type it equals (B = U·M, A = Vᵀ).
PEFT_TYPES = ("lora", "dora-rows", "lora-xs", "dora-rows-xs")
PEFT_REFUSAL = (
    "PEFT cannot express {type}: PEFT's DoRA magnitude is per output row (use_dora), so only "
    "lora, dora-rows and their -xs forms map; keep it in sa3, mlx or sa3cpp"
)
# Outputs made of PEFT LoRA layers (diffusers' LoRA files are PEFT's layers too): the types
# they hold, an XS adapter written as the plain type it equals, and nothing baked for DoRA.
PEFT_LAYER_OUTPUTS = ("peft", "diffusers")
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
    # The dtype written and the read-back bound it was held to (not in lines/JSON: the
    # verified line states the error; a caller showing pass/fail needs the bound too).
    code: str = ""
    tolerance: float = 0.0

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
    """The adapter type to write: the detected one, or the DoRA orientation --dora-variant names.

    --dora-variant may name any orientation the tensors leave open (it overrides the
    lora_config's claim, recorded as a repair); without it, only an orientation nothing
    settled (`TypeDetection.orientation_guessed`) is refused.
    """
    adapter_type = ckpt.adapter_type
    kind = ckpt.kind
    detection = ckpt.detection
    ambiguous = detection is not None and detection.orientation_open
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
    if detection is not None and detection.orientation_guessed:
        raise UsageError(
            "square layers only: the magnitudes cannot tell dora-rows from dora-cols; "
            "name it with --dora-variant rows|cols"
        )
    return adapter_type


def written_type(adapter_type: str, to: str) -> str:
    """The adapter type a `to` output holds: PEFT layers hold an XS adapter as its plain type."""
    kind = lookup_type(adapter_type)
    plain = to in PEFT_LAYER_OUTPUTS and kind.xs
    return type_for(kind.norm, False).name if plain else adapter_type


def _prepare(
    ckpt: AdapterCheckpoint,
    to: str,
    base: BaseCheckpoint | None,
    bases: XsBases | None,
    variant: str | None,
    drop_conditioner: bool,
    ledger: ConvertLedger,
    include_conditioner: bool = False,
) -> AdapterCheckpoint:
    adapter_type = _resolve_variant(ckpt, variant, ledger)
    if adapter_type != ckpt.config.adapter_type:
        ledger.repairs.append(
            f"lora_config adapter_type {ckpt.config.adapter_type!r} written as {adapter_type!r}"
        )
    if to == "peft" and adapter_type not in PEFT_TYPES:
        raise UsageError(PEFT_REFUSAL.format(type=adapter_type))
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
    if to == "diffusers":
        if adapter_type not in PEFT_TYPES:
            raise UsageError(
                f"diffusers cannot express {adapter_type}: its LoRA layers are PEFT's (DoRA "
                "magnitude per output row), so only lora, dora-rows and their -xs forms map; "
                "keep it in sa3, mlx or sa3cpp"
            )
        _diffusers_conditioner(tensors, drop_conditioner, include_conditioner, ledger)
    config = LoraConfig(
        ckpt.config.rank,
        ckpt.config.alpha,
        adapter_type,
        list(ckpt.config.include),
        list(ckpt.config.exclude),
        dict(ckpt.config.extra),
    )
    out = AdapterCheckpoint(config, adapter_type, tensors, dict(ckpt.metadata))
    needs_bases = to in XS_BASES_NEEDED and out.kind.xs
    if base is not None or bases is not None or needs_bases:
        _bake(out, base, bases, to, ledger)
    if to == "diffusers":
        check_expressible(out)  # after the bake: an XS target's fans come from U/V
    return out


# Outputs that cannot hold an XS adapter without its bases: sa3.cpp does no SVD at load, and
# PEFT's (and diffusers') factors are B = U·M, A = Vᵀ.
XS_BASES_NEEDED = {"sa3cpp": "sa3.cpp", "peft": "PEFT", "diffusers": "diffusers"}


def _diffusers_conditioner(
    tensors: dict[str, dict[str, Any]], drop: bool, include: bool, ledger: ConvertLedger
) -> None:
    """The seconds conditioner has no LoRA slot in diffusers: written to the sidecar only on
    request (--include-conditioner), dropped with its loss reported (--drop-conditioner),
    else refused."""
    for target in [t for t in tensors if diffusers_component(t) != DIFFUSERS_TRANSFORMER]:
        if include:
            ledger.repairs.append(
                f"{target} written to {SIDECAR_WEIGHTS} as duration_embedder.linear: diffusers "
                "has no LoRA hook for the duration embedder, load it there with PEFT"
            )
        elif drop:
            del tensors[target]
            ledger.dropped.append(
                f"{target} (diffusers' transformer has no such module: its effect is lost)"
            )
        else:
            raise UsageError(
                f"{target} is the seconds conditioner, which lives in diffusers' duration "
                "embedder and has no LoRA slot there; pass --include-conditioner to write it "
                f"to {SIDECAR_WEIGHTS} (loaded with PEFT by hand), or --drop-conditioner to "
                "convert without it (its adaptation of the seconds conditioning is then lost)"
            )


def _bake(
    out: AdapterCheckpoint,
    base: BaseCheckpoint | None,
    bases: XsBases | None,
    to: str,
    ledger: ConvertLedger,
) -> None:
    """U/V for XS (stored in the output; from `bases`, else an SVD of the base) and
    baked_vnorm_row for dora-rows types, from the base."""
    kind = out.kind
    if kind.xs and bases is not None and bases.rank < out.config.rank:
        raise IncompatibleError(
            f"the XS bases file has rank {bases.rank}, fewer columns than the adapter rank "
            f"{out.config.rank} (a file of higher rank serves: its leading columns are used)"
        )
    baked_uv: dict[str, int] = {}
    baked_norms = 0
    for target, params in out.tensors.items():
        if kind.xs and not ("U" in params and "V" in params):
            in_file = bases is not None and bases.get(target) is not None
            if base is None and not in_file:
                runtime = XS_BASES_NEEDED.get(to, to)
                raise UsageError(
                    f"{runtime} needs XS bases U/V and {target} has none stored; "
                    "pass --bases FILE or --base BASE"
                )
            base_2d = (
                dtypes.to_float32(_base_2d(base, target))
                if base is not None and not in_file
                else None
            )
            resolved, origin = out.resolved_params(target, base_2d=base_2d, bases=bases)
            params["U"], params["V"] = resolved["U"], resolved["V"]
            baked_uv[origin] = baked_uv.get(origin, 0) + 1
        if base is not None and kind.norm == "rows" and to not in PEFT_LAYER_OUTPUTS:
            w0 = dtypes.to_float32(_base_2d(base, target)).astype(np.float64)
            p = {k: dtypes.to_float32(np.asarray(v)).astype(np.float64) for k, v in params.items()}
            delta = p["U"] @ p["M_xs"] @ p["V"].T if kind.xs else p["lora_B"] @ p["lora_A"]
            v = w0 + out.config.scale * delta
            params["baked_vnorm_row"] = np.sqrt(np.einsum("ij,ij->i", v, v)).astype(np.float32)
            baked_norms += 1
    for origin, count in sorted(baked_uv.items()):
        what = "SVD of the base" if origin == "base SVD" else origin
        ledger.baked.append(f"XS bases U/V for {count} targets ({what})")
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
    raise UsageError(
        f"{target}: no known model family has a Conv1d of canonical shape {shape}, so its "
        "kernel size is unknown (PEFT stores Conv1d factors as (r, in, k))"
    )


def conv_kernels(ckpt: AdapterCheckpoint) -> dict[str, int]:
    """Kernel sizes of the checkpoint's Conv1d targets (the writers of conv layouts need k)."""
    kernels = {}
    for target in ckpt.tensors:
        info = module_info(target)
        if info is not None and info.layer_kind == "conv1d":
            kernels[target] = _conv_kernel(target, _fans(ckpt, target))
    return kernels


def _fans(ckpt: AdapterCheckpoint, target: str) -> tuple[int, int]:
    """(fan_out, fan_in) of a target from its tensors (factors, or the XS bases)."""
    p = ckpt.tensors[target]
    if "lora_A" in p:
        return int(np.shape(p["lora_B"])[0]), int(np.shape(p["lora_A"])[1])
    return int(np.shape(p["U"])[0]), int(np.shape(p["V"])[0])


def peft_factors(ckpt: AdapterCheckpoint, target: str) -> dict[str, np.ndarray]:
    """A target's tensors as PEFT's canonical params: lora_A, lora_B and, for DoRA, magnitude.

    XS adapters become the plain factors they equal: B = U·M (fan_out, r), A = Vᵀ (r, fan_in),
    with the scale alpha/rank unchanged (computed in float64, cast once by the writer).
    """
    p = ckpt.tensors[target]
    out: dict[str, np.ndarray] = {}
    if ckpt.kind.xs:
        out["lora_A"] = np.ascontiguousarray(_f64(p["V"]).T)
        out["lora_B"] = _f64(p["U"]) @ _f64(p["M_xs"])
    else:
        out["lora_A"], out["lora_B"] = _f64(p["lora_A"]), _f64(p["lora_B"])
    if "magnitude" in p:
        out["magnitude"] = _f64(p["magnitude"])
    return out


def write_factor_tensors(ckpt: AdapterCheckpoint, dialect: str, code: str) -> dict[str, np.ndarray]:
    """File tensors of a PEFT-style dialect, Conv1d targets in the dialect's factor layout."""
    layout = factor_layout(dialect)
    kernels = conv_kernels(ckpt) if layout is not None else {}
    tensors: dict[str, np.ndarray] = {}
    for target in ckpt.tensors:
        for param, value in peft_factors(ckpt, target).items():
            if layout is not None and target in kernels:
                value = layout.from_canonical(param, value, kernels[target])
            key = format_adapter_key(target, param, dialect)
            tensors[key] = dtypes.cast(np.ascontiguousarray(value), code)
    return tensors


def _write_peft(ckpt: AdapterCheckpoint, path: str, code: str) -> None:
    os.makedirs(path, exist_ok=False)
    tensors = write_factor_tensors(ckpt, "peft", code)
    write_safetensors(os.path.join(path, PEFT_WEIGHTS), tensors, {"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": ckpt.config.rank,
        "lora_alpha": ckpt.config.alpha,
        "use_dora": ckpt.kind.norm == "rows",
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
    from sa3ckpt.io.gguf_config import config_kv

    tensors = {
        format_adapter_key(target, param, "sa3cpp"): dtypes.to_float32(np.asarray(value))
        for target, params in ckpt.tensors.items()
        for param, value in params.items()
    }
    write_gguf_adapter(
        path,
        tensors,
        adapter_type=ckpt.adapter_type,
        rank=ckpt.config.rank,
        alpha=float(ckpt.config.alpha),
        n_targets=len(ckpt.tensors),
        extra_kv=config_kv(ckpt.config.extra, ckpt.config.alpha),
    )


WRITERS: dict[str, Callable[[AdapterCheckpoint, str, str], None]] = {
    "sa3": _write_dialect("sa3"),
    "bare": _write_dialect("bare"),
    "mlx": _write_dialect("mlx"),
    "peft": _write_peft,
    "sa3cpp": _write_sa3cpp,
    "diffusers": lambda ckpt, path, code: write_diffusers(ckpt, path, code, peft_factors),
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
            raise VerificationError(f"{target} {name} is missing from the converted output")
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
    source: AdapterCheckpoint,
    rebuilt: AdapterCheckpoint,
    skip: set[str],
    expected_type: str | None = None,
) -> tuple[float, str | None]:
    """Worst relative error of c·ΔW and magnitudes over targets; raises on a structural loss.

    `expected_type` is the type the output should hold when it differs from the source's
    (an XS adapter written to PEFT or diffusers comes back as the plain type it equals).
    """
    want = expected_type or source.adapter_type
    if rebuilt.adapter_type != want:
        raise VerificationError(f"rebuilt type {rebuilt.adapter_type} != {want}")
    worst, where = 0.0, None
    for target in source.tensors:
        if target in skip:
            continue
        if target not in rebuilt.tensors:
            raise VerificationError(f"{target} is missing from the converted output")
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


def _bases_of(ckpt: AdapterCheckpoint, target: str) -> dict[str, Any]:
    """The XS bases U/V a prepared target carries (none for non-XS or dropped targets)."""
    params = ckpt.tensors.get(target, {})
    return {b: params[b] for b in ("U", "V") if b in params}


def conv_factor_delta(lora_a: np.ndarray, lora_b: np.ndarray) -> np.ndarray:
    """The (out, in, k) update PEFT forms from Conv1d factors A (r, in, k), B (out, r, 1).

    PEFT's lora_B of a Conv1d is a 1-wide convolution applied after lora_A, so its weight
    update is ΔW[o, i, t] = Σ_r B[o, r, 0] · A[r, i, t] (PEFT then adds scale · ΔW to the
    torch Conv1d weight, whose layout is (out, in, k)).
    """
    if lora_a.ndim != 3 or lora_b.ndim != 3 or lora_b.shape[2] != 1:
        raise IncompatibleError(
            f"Conv1d factors {lora_a.shape} / {lora_b.shape} are not (r, in, k) / (out, r, 1)"
        )
    return np.einsum("or,rit->oit", lora_b[:, :, 0], lora_a)


def verify_factor_layout(
    source: AdapterCheckpoint,
    stored: dict[str, np.ndarray],
    dialect: str,
    skip: set[str],
    kernels: Callable[[AdapterCheckpoint], dict[str, int]] | None = None,
) -> tuple[float, str | None]:
    """Check the Conv1d targets of a PEFT-style output as the library reads them.

    Not after folding back: the stored 3-D tensors must have the shapes PEFT allocates for
    the torch Conv1d of the family (lora_A (r, in, k), lora_B (out, r, 1), magnitude
    (1, out, 1)), and the update PEFT forms from them must equal the source's c·ΔW laid out
    as the torch weight (out, in, k). Returns the worst relative error over these targets.
    """
    layout: FactorLayout | None = factor_layout(dialect)
    if layout is None:
        return 0.0, None
    worst, where = 0.0, None
    torch_conv = LAYOUTS["torch-conv1d"]
    for target, k in (kernels or conv_kernels)(source).items():
        if target in skip:
            continue
        keys = {p: format_adapter_key(target, p, dialect) for p in ("lora_A", "lora_B")}
        a, b = (_f64(stored[keys[p]]) for p in ("lora_A", "lora_B"))
        fan_out, fan_in = _fans(source, target)
        rank = source.config.rank
        want = {"lora_A": (rank, fan_in // k, k), "lora_B": (fan_out, rank, 1)}
        for param, shape in want.items():
            got = tuple(stored[keys[param]].shape)
            if got != shape:
                raise VerificationError(
                    f"{target}.{param} is stored as {got}; {dialect} reads {shape}"
                )
        magnitude = None
        if "magnitude" in source.tensors[target]:
            magnitude = stored[format_adapter_key(target, "magnitude", dialect)]
            if tuple(magnitude.shape) != (1, fan_out, 1):
                raise VerificationError(
                    f"{target}.magnitude is stored as {tuple(magnitude.shape)}; "
                    f"{dialect} reads {(1, fan_out, 1)}"
                )
        if find_nonfinite({target: source.tensors[target]}):
            continue  # NaN/Inf kept on request: `verify` compares them element by element
        factors = _factors(source, target)
        assert factors is not None  # XS bases were resolved before writing
        expected = torch_conv.from_canonical(factors[0] @ factors[1], k)
        errors = [_rel(expected, source.config.scale * conv_factor_delta(a, b))]
        if magnitude is not None:
            errors.append(_rel(_f64(source.tensors[target]["magnitude"]), _f64(magnitude[0, :, 0])))
        if max(errors) > worst:
            worst, where = max(errors), target
    return worst, where


# Outputs that are folders, and what an existing folder must be for --force to replace it.
FOLDER_OUTPUTS: dict[str, Callable[[str], bool]] = {
    "peft": is_peft_dir,
    "diffusers": lambda path: os.path.isdir(path) and is_diffusers_lora(path),
}
# Outputs whose runtime fixes the Conv1d kernel sizes (not looked up in the family tables).
OUTPUT_KERNELS: dict[str, Callable[[AdapterCheckpoint], dict[str, int]]] = {
    "diffusers": diffusers_conv_kernels,
}


# --- the command ------------------------------------------------------------------------------


def convert_adapter(
    input_path: str,
    output: str,
    *,
    to: str,
    dtype: str | None = None,
    base_path: str | None = None,
    bases_path: str | None = None,
    dora_variant: str | None = None,
    drop_conditioner: bool = False,
    include_conditioner: bool = False,
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
    inputs = [input_path] + [p for p in (base_path, bases_path) if p]
    if include_conditioner and to != "diffusers":
        raise UsageError("--include-conditioner applies to --to diffusers")
    # PEFT and diffusers outputs are folders: under --force they may replace an old folder
    # of their own kind, nothing else.
    folder_kind = FOLDER_OUTPUTS.get(to)
    staged = StagedOutput(
        output,
        inputs=inputs,
        overwrite=force,
        directory=folder_kind is not None,
        replaceable=folder_kind,
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
    bases = load_xs_bases(bases_path, allow_pickle=allow_pickle) if bases_path else None
    base = open_base(base_path) if base_path else None
    try:
        prepared = _prepare(
            ckpt, to, base, bases, dora_variant, drop_conditioner, ledger, include_conditioner
        )
    finally:
        if base is not None:
            base.close()
    ledger.adapter_type = prepared.adapter_type
    out_type = written_type(prepared.adapter_type, to)
    if out_type != prepared.adapter_type:
        ledger.repairs.append(
            f"{prepared.adapter_type} written as the {out_type} it equals (B = U·M, A = Vᵀ)"
        )
    ledger.targets = len(prepared.tensors)
    with staged:
        WRITERS[to](prepared, staged.temp_path, code)
        raw = load_raw(staged.temp_path)
        stored = dict(raw.tensors)  # as written: the canonical read below folds convolutions
        rebuilt = canonical_checkpoint(raw)
        introduced = find_nonfinite(rebuilt.tensors)
        if introduced and not nonfinite:
            raise IncompatibleError(
                f"{output}: converted tensor {summary(introduced)} is not finite in {code} "
                "(values beyond its range); nothing was written (try --dtype fp32)"
            )
        # The input's tensors (not the prepared copy) and, for XS, the bases the output used.
        tensors = {t: {**p, **_bases_of(prepared, t)} for t, p in ckpt.tensors.items()}
        source = AdapterCheckpoint(prepared.config, prepared.adapter_type, tensors)
        skip = {t for t in ckpt.tensors if t not in prepared.tensors}
        checks = [
            verify(source, rebuilt, skip, out_type),
            # writer names are dialect names; diffusers' convs are 1-wide whatever the family
            verify_factor_layout(source, stored, to, skip, OUTPUT_KERNELS.get(to)),
        ]
        ledger.worst_error, ledger.worst_target = max(checks, key=lambda c: c[0])
        tolerance = TOLERANCE.get(code, 1e-3)
        ledger.code, ledger.tolerance = code, tolerance
        if ledger.worst_error > tolerance:
            raise VerificationError(
                f"verification failed: {ledger.worst_target} differs by {ledger.worst_error:.3g} "
                f"(> {tolerance:g} for {code}); nothing was written",
                worst=ledger.worst_error,
                target=ledger.worst_target,
                tolerance=tolerance,
            )
    return ledger
