"""Convert a base checkpoint between the official, MLX runtime and diffusers namings.

The official full checkpoint (`model.model.…`, PyTorch Conv1d (out, in, k), RMSNorm
`.gamma`), the MLX optimized runtime (no root, `to_local_embed.seq.N`, Conv1d
(out, k, in), `.weight` norms, `cond.seconds_total_*` arrays) and a diffusers
`StableAudio3DiTModel` folder (`transformer_blocks.N`, medium to_qkv rows [q|q2|k|k2|v],
config.json, shards) hold the same numbers under different names and layouts. A conversion
is therefore a pure relabelling plus an axis swap or row reorder: it must never change a
value, so every converted tensor is checked against its source (after undoing the layout
change) before the output is committed, and the ledger reports the worst relative error
(0.0 unless a dtype cast was requested). Tensors the output container has no home for (the
seconds conditioner in a diffusers transformer folder) are dropped and named in the ledger.

Peak memory is one tensor: the output is planned from the input's index (names, dtypes,
shapes) and then streamed through the atomic writer, read one, convert, verify, write.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import IncompatibleError, UsageError, VerificationError
from sa3ckpt.io.base_checkpoint import (
    BaseCheckpoint,
    BaseTensor,
    FolderSpec,
    check_base_output,
    open_base,
    stream_writer,
)
from sa3ckpt.io.diffusers_folder import CONTAINER as FOLDER
from sa3ckpt.io.diffusers_folder import (
    DEFAULT_MAX_SHARD_SIZE,
    has_transformer_home,
    transformer_config,
)
from sa3ckpt.io.formats import BASE, check_output_suffix
from sa3ckpt.layout import Layout, stored_layout
from sa3ckpt.names.base_keys import (
    BASE_NAMINGS,
    MLX_PIPELINE_CONDITIONER_KEYS,
    parse_base_key,
    translate_base_key,
)
from sa3ckpt.progress import ProgressCallback, ProgressCounter

NAMINGS: tuple[str, ...] = tuple(BASE_NAMINGS)
CONTAINERS: tuple[str, ...] = ("safetensors", "npz", FOLDER)
# Why a tensor with a spelling in the target naming still has no place in the container.
NO_HOME_REASON = {
    FOLDER: "no home in a diffusers transformer folder: it is the separate "
    "StableAudio3DurationEmbedder's `linear` (its effect on the seconds conditioning is lost)"
}

# How many unmapped keys an error message names before it just counts.
_SHOWN_KEYS = 5
# Elements compared per step when verifying a cast, so verification adds bounded memory.
_VERIFY_CHUNK = 1 << 22


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: where it comes from and what happens to it on the way."""

    source: str
    target: str
    code_in: str
    code_out: str
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]
    layouts: tuple[Layout, Layout] | None  # (from, to) when the stored layouts differ


def _layouts(info: BaseTensor, source: str, target: str) -> tuple[Layout, Layout] | None:
    """(source, target) stored layouts of a weight whose layout changes between namings."""
    parsed = parse_base_key(info.key, source)
    if parsed is None or parsed[1] != "weight" or len(info.shape) not in (2, 3):
        return None
    # Every naming keeps a weight's rank and (fan_out, fan_in), so the per-module rule (the
    # diffusers to_qkv row order) decides from the same shape on both sides.
    module = parsed[0]
    pair = (stored_layout(source, info.shape, module), stored_layout(target, info.shape, module))
    return None if pair[0] == pair[1] else pair


def _out_code(code: str, cast_to: str | None) -> str:
    return cast_to if cast_to is not None and dtypes.is_floating(code) else code


def _plan_tensor(
    info: BaseTensor, target: str, source: str, to: str, cast_to: str | None
) -> TensorPlan:
    layouts = _layouts(info, source, to)
    shape_out = info.shape
    if layouts is not None:
        src, dst = layouts
        shape_out = dst.stored_shape(src.canonical_shape(info.shape), src.kernel_size(info.shape))
    code_out = _out_code(info.dtype, cast_to)
    return TensorPlan(info.key, target, info.dtype, code_out, info.shape, shape_out, layouts)


def _unmapped_error(keys: list[str], to: str) -> IncompatibleError:
    shown = ", ".join(keys[:_SHOWN_KEYS]) + (", …" if len(keys) > _SHOWN_KEYS else "")
    return IncompatibleError(
        f"{len(keys)} tensors have no {to} spelling ({shown}); "
        "pass --drop-unmapped to leave them out"
    )


def _collision_error(clashes: dict[str, list[str]]) -> IncompatibleError:
    target, sources = next(iter(clashes.items()))
    return IncompatibleError(
        f"{len(clashes)} output keys would be written twice, e.g. {target} "
        f"from {' and '.join(sources)}"
    )


def plan_conversion(
    base: BaseCheckpoint,
    to: str,
    cast_to: str | None,
    drop_unmapped: bool,
    container: str | None = None,
) -> tuple[list[TensorPlan], list[str], list[str]]:
    """Every output tensor in input order, the input keys dropped as unmapped, and those
    dropped because the output container has no home for them (always reported).

    Decided from the index alone so naming problems surface before any byte is written.
    """
    plans: list[TensorPlan] = []
    unmapped: list[str] = []
    homeless: list[str] = []
    sources: dict[str, list[str]] = {}
    for key, info in base.tensors.items():
        target = translate_base_key(key, info.shape, base.naming, to)
        if target is None:
            unmapped.append(key)
            continue
        if container == FOLDER and not has_transformer_home(target):
            homeless.append(key)
            continue
        sources.setdefault(target, []).append(key)
        plans.append(_plan_tensor(info, target, base.naming, to, cast_to))
    if unmapped and not drop_unmapped:
        raise _unmapped_error(unmapped, to)
    clashes = {t: s for t, s in sources.items() if len(s) > 1}
    if clashes:
        raise _collision_error(clashes)
    return plans, unmapped, homeless


# --- converting and verifying one tensor ------------------------------------------------------


def _relayout(array: np.ndarray, from_layout: Layout, to_layout: Layout) -> np.ndarray:
    """A weight moved between stored layouts through the canonical 2-D view."""
    k = from_layout.kernel_size(tuple(array.shape))
    flat = from_layout.to_canonical(array)
    return np.ascontiguousarray(to_layout.from_canonical(flat, k))


def convert_tensor(array: np.ndarray, plan: TensorPlan) -> np.ndarray:
    """The source array in the target layout and dtype."""
    out = array if plan.layouts is None else _relayout(array, *plan.layouts)
    return out if plan.code_out == plan.code_in else dtypes.cast(out, plan.code_out)


def _undo_layout(converted: np.ndarray, plan: TensorPlan) -> np.ndarray:
    """The converted array back in the source layout (still in the output dtype)."""
    if plan.layouts is None:
        return converted
    return _relayout(converted, plan.layouts[1], plan.layouts[0])


def _chunks(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    for start in range(0, flat_a.size, _VERIFY_CHUNK):
        stop = start + _VERIFY_CHUNK
        yield flat_a[start:stop], flat_b[start:stop]


def _bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Byte equality: NaN payloads and signed zeros count, unlike `==`."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)
    )


def _cast_errors(source: np.ndarray, cast: np.ndarray, code: str) -> tuple[float, bool]:
    """(worst relative error, whether every element is within one rounding of `code`).

    One rounding to nearest is at most half a unit in the last place: eps/2 relative for
    normal values, half the smallest subnormal below the normal range. Relative errors use
    the smallest normal as the floor of the denominator, since precision is absolute there.
    """
    import ml_dtypes  # here, not at import: it takes ~0.45 s (`dtypes`)

    info = ml_dtypes.finfo(dtypes.numpy_dtype(code))
    eps, tiny, sub = float(info.eps), float(info.smallest_normal), float(info.smallest_subnormal)
    worst, ok = 0.0, True
    for a_part, b_part in _chunks(source, cast):
        a = a_part.astype(np.float64)
        b = b_part.astype(np.float64)
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        if same.all():
            continue
        a, b = a[~same], b[~same]
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(b - a)
            bound = np.maximum(np.abs(a) * (eps / 2), sub / 2)
            ok = ok and bool(np.all(err <= bound))
            rel = err / np.maximum(np.abs(a), tiny)
        worst = max(worst, float(np.max(rel)))
    return worst, ok


def verify_tensor(source: np.ndarray, converted: np.ndarray, plan: TensorPlan) -> float:
    """Check a converted tensor against its source; return its worst relative error.

    Bit-exact when the dtype is unchanged, within one rounding when cast; Conv1d weights are
    compared after the inverse layout change, which also proves the round trip.
    """
    back = _undo_layout(converted, plan)
    if tuple(back.shape) != plan.shape_in or tuple(converted.shape) != plan.shape_out:
        raise VerificationError(f"{plan.source}: conversion changed the shape to {back.shape}")
    if plan.code_out == plan.code_in:
        if not _bit_equal(back, source):
            raise VerificationError(f"{plan.source} -> {plan.target}: values changed (not exact)")
        return 0.0
    worst, ok = _cast_errors(source, back, plan.code_out)
    if not ok:
        raise VerificationError(
            f"{plan.source}: casting {plan.code_in} -> {plan.code_out} is not within one "
            f"rounding (worst relative error {worst:.3g}; values out of range?)",
            worst=worst,
            target=plan.target,
        )
    return worst


# --- the ledger -------------------------------------------------------------------------------


@dataclass
class BaseConvertLedger:
    """What a base conversion did, so a user can see nothing but names and layouts changed."""

    input_path: str
    output_path: str
    from_naming: str
    to_naming: str
    container: str
    input_container: str = ""
    dtype: str | None = None
    tensors: int = 0
    renamed: int = 0
    transposed: int = 0
    reordered: int = 0
    dropped: list[str] = field(default_factory=list)
    no_home: list[str] = field(default_factory=list)
    cast: int = 0
    worst_rel_error: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        exact = (
            "all tensors bit-exact"
            if self.worst_rel_error == 0.0
            else f"worst relative error {self.worst_rel_error:.3g} (one rounding)"
        )
        out = [
            f"{self.input_path} ({self.from_naming} {self.input_container}) -> "
            f"{self.output_path} ({self.to_naming} {self.container})",
            f"{self.tensors} tensors converted: {self.renamed} renamed, "
            f"{self.transposed} Conv1d transposed, {self.reordered} rows reordered, "
            f"{self.cast} cast" + (f" to {self.dtype}" if self.dtype else ""),
            f"verified against the input: {exact}",
        ]
        out += [f"dropped (no {self.to_naming} spelling): {key}" for key in self.dropped]
        reason = NO_HOME_REASON.get(self.container, "no home in the output")
        out += [f"dropped ({reason}): {key}" for key in self.no_home]
        out += [f"note: {note}" for note in self.notes]
        return out

    def to_json(self) -> dict[str, Any]:
        """The ledger as plain JSON-ready data."""
        return {
            "input": self.input_path,
            "output": self.output_path,
            "from": self.from_naming,
            "to": self.to_naming,
            "container": self.container,
            "input_container": self.input_container,
            "dtype": self.dtype,
            "tensors": self.tensors,
            "renamed": self.renamed,
            "transposed": self.transposed,
            "reordered": self.reordered,
            "dropped": list(self.dropped),
            "no_home": list(self.no_home),
            "cast": self.cast,
            "worst_relative_error": self.worst_rel_error,
            "notes": list(self.notes),
        }


# --- what the target runtime will make of the output -----------------------------------------


def mlx_pipeline_notes(container: str, written: set[str]) -> list[str]:
    """What the official MLX pipeline cannot load from an MLX output, one sentence each.

    Its DiT loader takes .npz or .safetensors, but its conditioner loader reads the same
    path with `np.load` (prefix `cond.`), so the conditioner only loads from an .npz, and it
    needs all of `MLX_PIPELINE_CONDITIONER_KEYS`.
    """
    notes: list[str] = []
    if container == "safetensors":
        notes.append(
            "the official MLX pipeline loads this DiT but reads the conditioner (cond.*) from "
            "the same file with np.load, which needs an .npz: write -o <name>.npz for a file "
            "it loads completely (as its shipped dit_<name>_f16.npz)"
        )
    missing = [key for key in MLX_PIPELINE_CONDITIONER_KEYS if key not in written]
    if missing:
        notes.append(
            f"no {', '.join(missing)} in the output: the official MLX pipeline's conditioner "
            f"loader needs all of {', '.join(MLX_PIPELINE_CONDITIONER_KEYS)}"
        )
    return notes


# --- the operation ----------------------------------------------------------------------------


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise UsageError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _output_container(output: str, container: str | None, to: str) -> str:
    """The requested container, else the output suffix's (`.npz` -> npz, `.safetensors` ->
    safetensors), else a folder for diffusers and safetensors for the others."""
    if container is not None:
        _choice(container, CONTAINERS, "container")
        if container == FOLDER and to != "diffusers":
            raise UsageError(f"a {FOLDER} output holds the diffusers naming, not {to}")
        return container
    lowered = output.lower()
    if lowered.endswith(".npz"):
        return "npz"
    if lowered.endswith(".safetensors") or to != "diffusers":
        return "safetensors"
    return FOLDER


def _folder_spec(base: BaseCheckpoint, plans: list[TensorPlan], max_shard_size: int) -> FolderSpec:
    """config.json (the input folder's, else derived from the output shapes) and the cut."""
    if base.folder is not None:
        config = dict(base.folder.config)
    else:
        try:
            config = transformer_config({p.target: p.shape_out for p in plans})
        except ValueError as exc:
            raise IncompatibleError(
                f"{base.path} is not a complete SA3 DiT for a diffusers folder ({exc})"
            ) from None
    return FolderSpec(config, None, max_shard_size)


def _cast_code(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    try:
        return dtypes.code_from_name(dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _record(ledger: BaseConvertLedger, plan: TensorPlan, rel_error: float) -> None:
    ledger.tensors += 1
    ledger.renamed += plan.target != plan.source
    if plan.layouts is not None:
        moved_axes = plan.layouts[0].axes != plan.layouts[1].axes
        ledger.transposed += moved_axes
        ledger.reordered += not moved_axes
    ledger.cast += plan.code_out != plan.code_in
    ledger.worst_rel_error = max(ledger.worst_rel_error, rel_error)


def _stream(
    base: BaseCheckpoint,
    plans: list[TensorPlan],
    ledger: BaseConvertLedger,
    force: bool,
    folder: FolderSpec | None,
    progress: ProgressCallback | None,
) -> None:
    """Read, convert, verify and write each tensor; the output appears only if all pass."""
    specs = [(p.target, p.code_out, p.shape_out) for p in plans]
    counter = ProgressCounter(progress, sum(_nbytes(p) for p in plans))
    writer = stream_writer(
        ledger.container,
        ledger.output_path,
        specs,
        dict(base.metadata),
        inputs=[ledger.input_path],
        overwrite=force,
        folder=folder,
    )
    with writer:
        for plan in plans:
            source = base.read(plan.source)
            converted = convert_tensor(source, plan)
            rel_error = verify_tensor(source, converted, plan)
            writer.write(plan.target, converted)
            _record(ledger, plan, rel_error)
            counter.advance(_nbytes(plan), plan.target)


def _nbytes(plan: TensorPlan) -> int:
    """The bytes a converted tensor takes in the output (progress counts these)."""
    return dtypes.itemsize(plan.code_out) * math.prod(plan.shape_out)


def convert_base(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    to: str,
    container: str | None = None,
    dtype: str | None = None,
    drop_unmapped: bool = False,
    force: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    progress: ProgressCallback | None = None,
) -> BaseConvertLedger:
    """Write the base at `input_path` in naming `to` to `output_path`, verified and atomic.

    Same naming in and out is a pure container and/or dtype change. `to="diffusers"` writes
    a diffusers transformer folder (config.json, shards of at most `max_shard_size` bytes
    with an index when there is more than one) unless the output ends in .safetensors/.npz;
    the seconds conditioner Linear has no home there and is dropped, named in the ledger.
    Raises UsageError for bad arguments, an output that is the input or exists without
    `force`; IncompatibleError for tensors with no spelling in `to` (unless `drop_unmapped`)
    or a failed verification. progress: output bytes written so far, after each tensor.
    """
    src, out = os.fspath(input_path), os.fspath(output_path)
    _choice(to, NAMINGS, "target naming")
    if container is None:  # an explicit container is the caller's own choice of name
        check_output_suffix(out, BASE, to)
    out_container = _output_container(out, container, to)
    cast_to = _cast_code(dtype)
    check_base_output(out, out_container, inputs=[src], overwrite=force)  # before any work
    with open_base(src) as base:
        plans, dropped, homeless = plan_conversion(base, to, cast_to, drop_unmapped, out_container)
        folder = _folder_spec(base, plans, max_shard_size) if out_container == FOLDER else None
        ledger = BaseConvertLedger(
            src,
            out,
            base.naming,
            to,
            out_container,
            base.container,
            dtype,
            dropped=dropped,
            no_home=homeless,
        )
        if to == "mlx":
            ledger.notes += mlx_pipeline_notes(out_container, {p.target for p in plans})
        _stream(base, plans, ledger, force, folder, progress)
    return ledger
