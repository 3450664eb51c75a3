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

An sa3.cpp base (`--to sa3cpp`) is a DiT GGUF with the `dit.*` KVs and `general.*` fields
sa3.cpp's loaders key on, plus its conditioner sidecar GGUF beside it (`io.sa3cpp_output`);
its kernel-1 convs are stored squeezed, its F16 encoding keeps vectors F32, and the rotary
`inv_freq` sa3.cpp recomputes is not written (named in the ledger). Reading one back
(`--to official|mlx|diffusers`) takes its conditioner with `conditioner=`; quantised
tensors are dequantised by the gguf package (the ledger counts them).

Peak memory is one tensor: the output is planned from the input's index (names, dtypes,
shapes) and then streamed through the atomic writer, read one, convert, verify, write.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import IncompatibleError, UsageError, VerificationError
from sa3ckpt.io.base_checkpoint import (
    BaseCheckpoint,
    BaseTensor,
    FolderSpec,
    GgufOutput,
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
from sa3ckpt.io.gguf_base import CONTAINER as GGUF
from sa3ckpt.io.gguf_base import PLAIN_TYPES
from sa3ckpt.io.gguf_facts import ENCODINGS
from sa3ckpt.io.sa3cpp_output import identify_model, sa3cpp_output
from sa3ckpt.layout import Layout, stored_layout, target_layout
from sa3ckpt.names.base_keys import (
    BASE_NAMINGS,
    MLX_PIPELINE_CONDITIONER_KEYS,
    SA3CPP_RECOMPUTED,
    parse_base_key,
    translate_base_key,
)
from sa3ckpt.progress import ProgressCallback, ProgressCounter

NAMINGS: tuple[str, ...] = tuple(BASE_NAMINGS)
CONTAINERS: tuple[str, ...] = ("safetensors", "npz", FOLDER, GGUF)
# The one container each naming that has one is written in (sa3.cpp reads GGUF only).
NAMING_CONTAINER = {"sa3cpp": GGUF}
# Why a tensor with a spelling in the target naming still has no place in the container.
NO_HOME_REASON = {
    FOLDER: "no home in a diffusers transformer folder: it is the separate "
    "StableAudio3DurationEmbedder's `linear` (its effect on the seconds conditioning is lost)",
    GGUF: "not stored by sa3.cpp: it recomputes the rotary frequencies from dit.rot and "
    "dit.rope_base",
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
    # The target layout follows from what the weight is (layer kind, canonical shape, kernel
    # size), not from the source's stored rank: sa3.cpp squeezes kernel-1 convs to 2-D.
    module = parsed[0]
    src = stored_layout(source, info.shape, module)
    shape_2d = src.canonical_shape(info.shape)
    dst = target_layout(target, src.layer_kind, shape_2d, src.kernel_size(info.shape), module)
    return None if src == dst else (src, dst)


def _out_code(code: str, cast_to: str | None) -> str:
    return cast_to if cast_to is not None and dtypes.is_floating(code) else code


# A function of (output name, output shape) giving the dtype code of an output tensor, for
# containers whose tensor types follow a rule (sa3.cpp's encodings) rather than one cast.
TypeRule = Callable[[str, tuple[int, ...]], str]


def _plan_tensor(
    info: BaseTensor,
    target: str,
    source: str,
    to: str,
    cast_to: str | None,
    type_rule: TypeRule | None = None,
) -> TensorPlan:
    layouts = _layouts(info, source, to)
    shape_out = info.shape
    if layouts is not None:
        src, dst = layouts
        shape_out = dst.stored_shape(src.canonical_shape(info.shape), src.kernel_size(info.shape))
    code_out = _out_code(info.dtype, cast_to)
    if type_rule is not None and dtypes.is_floating(info.dtype):
        code_out = type_rule(target, shape_out)
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


def _recomputed(key: str, naming: str, to: str) -> bool:
    """A tensor the target runtime recomputes instead of storing (sa3.cpp: rotary inv_freq)."""
    parsed = parse_base_key(key, naming)
    return to == "sa3cpp" and parsed is not None and parsed in SA3CPP_RECOMPUTED


def plan_conversion(
    base: BaseCheckpoint,
    to: str,
    cast_to: str | None,
    drop_unmapped: bool,
    container: str | None = None,
    type_rule: TypeRule | None = None,
) -> tuple[list[TensorPlan], list[str], list[str]]:
    """Every output tensor in input order, the input keys dropped as unmapped (or because the
    target runtime recomputes them), and those dropped because the output container has no
    home for them (always reported).

    Decided from the index alone so naming problems surface before any byte is written.
    """
    plans: list[TensorPlan] = []
    unmapped: list[str] = []
    homeless: list[str] = []
    sources: dict[str, list[str]] = {}
    for key, info in base.tensors.items():
        target = translate_base_key(key, info.shape, base.naming, to)
        if target is None:
            if not _recomputed(key, base.naming, to):
                unmapped.append(key)
            else:
                homeless.append(key)
            continue
        if container == FOLDER and not has_transformer_home(target):
            homeless.append(key)
            continue
        sources.setdefault(target, []).append(key)
        plans.append(_plan_tensor(info, target, base.naming, to, cast_to, type_rule))
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
    squeezed: int = 0  # kernel-1 Conv1d squeezed to 2-D or unsqueezed back (sa3.cpp)
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
            + (f"{self.squeezed} kernel-1 Conv1d squeezed/unsqueezed, " if self.squeezed else "")
            + f"{self.cast} cast"
            + (f" to {self.dtype}" if self.dtype else ""),
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
            "squeezed": self.squeezed,
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
    safetensors), else a folder for diffusers and safetensors for the others; a naming with
    a container of its own (`NAMING_CONTAINER`: sa3cpp -> gguf) always gets that one."""
    own = NAMING_CONTAINER.get(to)
    if container is not None:
        _choice(container, CONTAINERS, "container")
        if container == FOLDER and to != "diffusers":
            raise UsageError(f"a {FOLDER} output holds the diffusers naming, not {to}")
        if (container == GGUF) != (own == GGUF):
            raise UsageError(f"--to {to} is not written as {container}")
        return container
    if own is not None:
        return own
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
        src, dst = plan.layouts
        squeezed = len(src.axes) != len(dst.axes)
        moved_axes = src.axes != dst.axes and not squeezed
        ledger.squeezed += squeezed
        ledger.transposed += moved_axes
        ledger.reordered += not moved_axes and not squeezed
    ledger.cast += plan.code_out != plan.code_in
    ledger.worst_rel_error = max(ledger.worst_rel_error, rel_error)


def _stream(
    base: BaseCheckpoint,
    plans: list[TensorPlan],
    ledger: BaseConvertLedger,
    force: bool,
    folder: FolderSpec | None,
    progress: ProgressCallback | None,
    gguf: GgufOutput | None = None,
    inputs: list[str] | None = None,
) -> None:
    """Read, convert, verify and write each tensor; the output appears only if all pass."""
    specs = [(p.target, p.code_out, p.shape_out) for p in plans]
    counter = ProgressCounter(progress, sum(_nbytes(p) for p in plans))
    writer = stream_writer(
        ledger.container,
        ledger.output_path,
        specs,
        dict(base.metadata),
        inputs=inputs or [ledger.input_path],
        overwrite=force,
        folder=folder,
        gguf=gguf,
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


def _encoding(base: BaseCheckpoint, dtype: str | None) -> str:
    """sa3.cpp's encoding for the output: --dtype fp32/fp16, else F32 when every floating
    input tensor is F32 (nothing to round), F16 otherwise (its vectors F32: widened exactly)."""
    if dtype is not None:
        code = _cast_code(dtype)
        if code not in ENCODINGS:
            raise UsageError(
                f"sa3.cpp bases are written F32 or F16 (--dtype fp32 or fp16), not {dtype}"
            )
        assert code is not None
        return code
    floats = [t.dtype for t in base.tensors.values() if dtypes.is_floating(t.dtype)]
    return "F32" if all(code == "F32" for code in floats) else "F16"


def _gguf_notes(base: BaseCheckpoint, plans: list[TensorPlan]) -> list[str]:
    """What a reader of a GGUF input's conversion should know (dequantised tensors)."""
    if base.gguf is None:
        return []
    types = base.gguf.types
    quantised = [p.source for p in plans if types.get(p.source, "F32") not in PLAIN_TYPES]
    if not quantised:
        return []
    kinds = sorted({types[k] for k in quantised})
    return [
        f"{len(quantised)} quantised tensors ({', '.join(kinds)}) dequantised to F32 by the "
        "gguf package: the values are the quantised ones, not the original checkpoint's"
    ]


def _sa3cpp_target(
    base: BaseCheckpoint,
    plans: list[TensorPlan],
    out: str,
    *,
    variant: str | None,
    training_base: bool | None,
    encoding: str,
) -> tuple[GgufOutput, list[str]]:
    """The GGUF output spec for the planned tensors, and the ledger notes about it."""
    from sa3ckpt.ops.inspect import base_family  # the family table settles the variant

    family = base_family(base).family
    kv = base.gguf.dit.kv if base.gguf is not None and base.gguf.dit is not None else None
    identity = identify_model(
        variant=variant, training_base=training_base, family=family, input_path=base.path, kv=kv
    )
    shapes = {p.target: p.shape_out for p in plans}
    try:
        spec = sa3cpp_output(shapes, identity, encoding=encoding, output_path=out)
    except IncompatibleError as exc:  # one line naming the input, as --to diffusers does
        raise IncompatibleError(f"{base.path} is {exc}") from None
    notes = [
        f"sa3.cpp model {identity.model} (general.finetune {identity.finetune!r}"
        + (", dit.training_base = true" if identity.training_base else "")
        + f"), encoding {encoding}"
    ]
    if spec.conditioner_path is not None:
        notes.append(f"conditioner sidecar (sa3-conditioner, F32): {spec.conditioner_path}")
    elif not any(k.startswith("te.") for k in shapes):
        notes.append("no conditioner tensors in the input: no sidecar written")
    kept = [p.target for p in plans if p.layouts is None and len(p.shape_out) == 3]
    if kept:
        notes.append(
            f"{', '.join(kept)}: Conv1d kernel > 1 kept 3-D (sa3.cpp's converter keeps kernel "
            "1 squeezed and would drop the other taps; its DiT cannot run this file)"
        )
    return spec, notes


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
    conditioner: str | os.PathLike[str] | None = None,
    variant: str | None = None,
    training_base: bool | None = None,
) -> BaseConvertLedger:
    """Write the base at `input_path` in naming `to` to `output_path`, verified and atomic.

    Same naming in and out is a pure container and/or dtype change. `to="diffusers"` writes
    a diffusers transformer folder (config.json, shards of at most `max_shard_size` bytes
    with an index when there is more than one) unless the output ends in .safetensors/.npz;
    the seconds conditioner Linear has no home there and is dropped, named in the ledger.
    `to="sa3cpp"` writes the DiT GGUF and its conditioner sidecar beside it; `variant` and
    `training_base` say which model it is when the input's names do not (`conditioner`: the
    sidecar of an sa3.cpp input). Raises UsageError for bad arguments, an output that is the
    input or exists without `force`; IncompatibleError for tensors with no spelling in `to`
    (unless `drop_unmapped`) or a failed verification. progress: output bytes written so
    far, after each tensor.
    """
    src, out = os.fspath(input_path), os.fspath(output_path)
    _choice(to, NAMINGS, "target naming")
    if container is None:  # an explicit container is the caller's own choice of name
        check_output_suffix(out, BASE, to)
    out_container = _output_container(out, container, to)
    cast_to = None if out_container == GGUF else _cast_code(dtype)
    inputs = [src] + ([os.fspath(conditioner)] if conditioner is not None else [])
    check_base_output(out, out_container, inputs=inputs, overwrite=force)  # before any work
    with open_base(src, conditioner=conditioner) as base:
        rule: TypeRule | None = None
        encoding = ""
        if out_container == GGUF:
            encoding = _encoding(base, dtype)
            rule = _gguf_type_rule(encoding)
        plans, dropped, homeless = plan_conversion(
            base, to, cast_to, drop_unmapped, out_container, rule
        )
        folder = _folder_spec(base, plans, max_shard_size) if out_container == FOLDER else None
        ledger = BaseConvertLedger(
            src,
            out,
            base.naming,
            to,
            out_container,
            base.container,
            dtype or (encoding.lower() if encoding else None),
            dropped=dropped,
            no_home=homeless,
        )
        ledger.notes += _gguf_notes(base, plans)
        gguf: GgufOutput | None = None
        if out_container == GGUF:
            gguf, notes = _sa3cpp_target(
                base, plans, out, variant=variant, training_base=training_base, encoding=encoding
            )
            ledger.notes += notes
            if gguf.conditioner_path is not None:
                check_base_output(gguf.conditioner_path, GGUF, inputs=inputs, overwrite=force)
        elif base.container == GGUF and base.naming == "sa3cpp" and to != "sa3cpp":
            ledger.notes.append(
                "no transformer.rotary_pos_emb.inv_freq: sa3.cpp files do not store it"
            )
        if to == "mlx":
            ledger.notes += mlx_pipeline_notes(out_container, {p.target for p in plans})
        _stream(base, plans, ledger, force, folder, progress, gguf, inputs)
    return ledger


def _gguf_type_rule(encoding: str) -> TypeRule:
    from sa3ckpt.io.gguf_facts import tensor_type

    return lambda name, shape: tensor_type(name, shape, encoding)
