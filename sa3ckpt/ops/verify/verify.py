"""verify: check a merge at the output, by running the DiT with the adapters live and on MERGED.

`merge` is tested tensor by tensor; this checks what a user cares about, the network's
output, and works on any pair of base files `load_dit` reads (official, MLX, diffusers,
sa3.cpp GGUF with its conditioner sidecar; BASE
and MERGED may differ in format and dtype). On the fixed inputs of `verify_probe`, four
float32 runs are compared (`verify_report`): BASE, BASE with the adapters applied live, the
live model rounded to MERGED's stored dtypes (the rounding floor), and MERGED.

"Live" is the library's application to a live MLX model (`ops.apply.merged_updates`): the
MLX adapter formulas (`adapters.formulas`, the same ones `AdaptedLayer.merged_weight` and the
trainable modules' forward use) compute each target's effective fp32 weight from BASE, for
stacks, strengths and every `--semantics`; the trainable modules themselves hold one
adapter per layer and chain only runtime/blend, so they cannot express a stack or delta.
`merge` writes with the independent NumPy kernel (`adapters.kernels`), so the check compares
two implementations. Adapters on the seconds conditioner are applied live to the
Conditioner's `seconds_total_weight` array by the same math (it is addressed as
`cond.seconds_total_weight`, like the MLX runtime); when BASE or MERGED has no conditioner
arrays, both runs get random conditioning and those targets are skipped, with the reason.

Memory: one model at a time (MERGED is loaded, run and dropped before BASE is loaded).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from sa3ckpt import dtypes, mlx_streams
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.adapters.xs_sources import load_xs_bases
from sa3ckpt.errors import IncompatibleError, UnreadableFileError, UsageError
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.formats import identify
from sa3ckpt.mlx_runtime import Blas, reuse_mlx_buffers
from sa3ckpt.mlx_runtime import active as active_blas
from sa3ckpt.models import LoadedDiT, load_dit
from sa3ckpt.names.modules import MLX_ARRAY_PREFIX, root_of
from sa3ckpt.ops.apply import (
    AdapterSource,
    ApplyLedger,
    checkpoint_source,
    merged_updates,
    runtime_key,
)
from sa3ckpt.ops.convert import plan_conversion
from sa3ckpt.ops.merge import (
    ONLY_ROOTS,
    PROVENANCE_KEY,
    Excluded,
    StrengthMap,
    TargetStrength,
    adapter_sha256,
    apply_exclusions,
    parse_exclusions,
    parse_strength_map,
)
from sa3ckpt.ops.verify.probe import DEFAULT_FRAMES, DEFAULT_SEED, Probe, make_probe, run_probe
from sa3ckpt.ops.verify.report import (
    DEFAULT_TOLERANCE,
    EPSILON,
    FAIL,
    INCONCLUSIVE,
    PASS,
    Numbers,
    failure_hints,
    fmt,
    measure,
    verdict_of,
)
from sa3ckpt.progress import ProgressCallback, ProgressCounter
from sa3ckpt.strengths import AdapterArg

# Stored dtypes the floor rounds to in MLX (fast); wider ones are exact in a float32 run.
_MX_ROUNDING = {"F16": mx.float16, "BF16": mx.bfloat16}
_EXACT_IN_FP32 = frozenset({"F32", "F64"})
Params = dict[str, mx.array]
CHUNK = 16  # targets (or arrays) replaced at a time: bounds the extra memory to a few weights


@dataclass
class ModelFacts:
    """One of the two base files as loaded."""

    path: str
    naming: str
    container: str
    family: str
    conditioner: bool

    @classmethod
    def of(cls, loaded: LoadedDiT) -> ModelFacts:
        led = loaded.ledger
        return cls(led.path, led.naming, led.container, led.family, loaded.conditioner is not None)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self, role: str) -> str:
        cond = "with conditioner" if self.conditioner else "no conditioner arrays"
        return f"{role} {self.path} ({self.naming} {self.container}, family {self.family}, {cond})"


@dataclass
class VerifyReport:
    """Everything a verify run did and measured; `verdict` is pass, fail or inconclusive."""

    base: ModelFacts
    merged: ModelFacts
    semantics: str
    adapters: list[dict[str, Any]]
    probe: Probe
    tolerance: float
    numbers: Numbers
    verdict: str
    floor_dtypes: dict[str, int]  # MERGED's stored dtype of the applied targets -> count
    conditioning: str  # how cross/global cond were made
    applied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing_from_model: list[str] = field(default_factory=list)
    unmatched_keys: list[str] = field(default_factory=list)
    bases_sources: dict[str, str] = field(default_factory=dict)
    bases_file: str | None = None
    excluded: list[Excluded] = field(default_factory=list)
    unused_exclusions: list[str] = field(default_factory=list)
    provenance: dict[str, Any] | None = None
    provenance_notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    blas: Blas | None = None  # what MLX multiplied with (the timings depend on it)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def floor_dtype(self) -> str:
        return "+".join(self.floor_dtypes) or "-"

    def verdict_line(self) -> str:
        """The one-line conclusion (stdout's last line; stderr's error line on failure)."""
        n = self.numbers
        limit = f"limit {fmt(n.threshold)} = {self.tolerance:g} × floor + {EPSILON:g}"
        if self.verdict == FAIL:
            if not n.merged_finite:
                return f"FAIL: MERGED's output has NaN/Inf ({self.merged.path})"
            times = f", {fmt(n.ratio)}× the floor" if n.ratio is not None else ""
            return (
                f"FAIL: MERGED differs from BASE + adapters by {fmt(n.difference)}{times} "
                f"({self.floor_dtype} rounding floor {fmt(n.rounding_floor)}; {limit})"
            )
        if self.verdict == INCONCLUSIVE:
            return (
                f"INCONCLUSIVE: MERGED matches ({fmt(n.difference)} ≤ {fmt(n.threshold)}), but "
                f"so would BASE: the adapters change the output by only {fmt(n.base_difference)}"
            )
        resolution = n.strength_resolution
        shows = f"; strength errors above {resolution * 100:.2g}% would show" if resolution else ""
        return (
            f"PASS: MERGED computes BASE + adapters within the {self.floor_dtype} rounding floor "
            f"({fmt(n.difference)} ≤ {fmt(n.threshold)}){shows}"
        )

    def lines(self) -> list[str]:
        n = self.numbers
        total = len(self.applied) + len(self.missing_from_model) + len(self.skipped)
        conditioner = sum(root_of(t) == "conditioner" for t in self.applied)
        adapters = ", ".join(
            f"{a['path']} at {a['strength']:g} ({a['adapter_type']} r{a['rank']})"
            for a in self.adapters
        )
        out = [
            self.base.line("BASE  "),
            self.merged.line("MERGED"),
            f"adapters ({self.semantics} semantics): {adapters}",
            f"{len(self.applied)}/{total} adapter targets applied live in fp32 "
            f"({len(self.applied) - conditioner} DiT, {conditioner} conditioner)",
        ]
        out += [f"skipped {t}: {why}" for t, why in self.skipped]
        out += [
            f"excluded {e.target} from adapter {e.adapter} ({e.path}): --exclude {e.spec}"
            for e in self.excluded
        ]
        out += [f"--exclude {spec} matched no target" for spec in self.unused_exclusions]
        out += [f"missing from the model: {t}" for t in self.missing_from_model]
        out += [f"unmatched adapter key: {k}" for k in self.unmatched_keys]
        sources = Counter(self.bases_sources.values())
        out += [f"XS bases from {src}: {count} targets" for src, count in sorted(sources.items())]
        out += [
            f"inputs: {self.probe.line()}; {self.conditioning}",
            f"adapters' effect: {fmt(n.effect)} (‖y_live − y_base‖ / ‖y_base‖)",
            f"{self.floor_dtype} rounding floor: {fmt(n.rounding_floor)} "
            f"(‖y_rounded − y_live‖ / ‖y_live‖); limit {self.tolerance:g} × floor + {EPSILON:g} "
            f"= {fmt(n.threshold)}",
            f"difference: {fmt(n.difference)} (‖y_merged − y_live‖ / ‖y_live‖"
            + (f", {fmt(n.ratio)}× the floor)" if n.ratio is not None else ")"),
            f"MERGED's change from BASE: {fmt(n.apparent_scale)}× the adapters' "
            f"(off their direction: {fmt(n.off_direction)})",
        ]
        if self.blas is not None:
            out.append(self.blas.line())
        out += [f"note: {note}" for note in self.provenance_notes]
        out += [f"hint: {hint}" for hint in self.hints]
        out.append(self.verdict_line())
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "verdict_line": self.verdict_line(),
            "base": self.base.to_json(),
            "merged": self.merged.to_json(),
            "semantics": self.semantics,
            "adapters": self.adapters,
            "inputs": self.probe.to_json(),
            "conditioning": self.conditioning,
            "floor_dtype": self.floor_dtype,
            "floor_dtypes": self.floor_dtypes,
            "tolerance": self.tolerance,
            "epsilon": EPSILON,
            **self.numbers.to_json(),
            "applied": self.applied,
            "skipped": [{"target": t, "reason": r} for t, r in self.skipped],
            "missing_from_model": self.missing_from_model,
            "unmatched_keys": self.unmatched_keys,
            "bases_file": self.bases_file,
            "bases_sources": self.bases_sources,
            "excluded": [e.to_json() for e in self.excluded],
            "unused_exclusions": self.unused_exclusions,
            "provenance": self.provenance,
            "provenance_notes": self.provenance_notes,
            "hints": self.hints,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "seconds": round(self.seconds, 3),
            "blas": None if self.blas is None else self.blas.to_json(),
        }


# --- arguments ---------------------------------------------------------------------------------


def _check_arguments(
    base_path: str,
    adapters: Sequence[AdapterArg],
    merged_path: str,
    semantics: str,
    only: str | None,
    tolerance: float,
    frames: int,
) -> None:
    if semantics not in SEMANTICS:
        raise UsageError(f"unknown semantics {semantics!r} (known: {', '.join(SEMANTICS)})")
    if only is not None and only not in ONLY_ROOTS:
        raise UsageError(f"--only takes {' or '.join(ONLY_ROOTS)}, not {only!r}")
    if not adapters:
        raise UsageError("verify needs at least one adapter (verify BASE ADAPTER[:S]... MERGED)")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise UsageError(f"--tolerance must be a finite number > 0, got {tolerance!r}")
    if frames < 1:
        raise UsageError(f"--frames must be at least 1, got {frames}")
    for role, path in (("BASE", base_path), ("MERGED", merged_path)):
        if not os.path.exists(path):
            raise UnreadableFileError(path, "no such file")
        if identify(path).is_adapter:
            where = "first" if role == "BASE" else "last"
            raise UsageError(
                f"{path}: the {where} argument is an adapter, but verify takes {role} there "
                "(sa3ckpt verify BASE ADAPTER[:S]... MERGED)"
            )


def _adapter_rows(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]], paths: Sequence[str]
) -> list[dict[str, Any]]:
    return [
        {
            "path": path,
            "strength": strength,
            "adapter_type": ckpt.adapter_type,
            "rank": ckpt.config.rank,
            "alpha": ckpt.config.alpha,
            "targets": len(ckpt.tensors),
        }
        for (ckpt, strength), path in zip(ckpts, paths, strict=True)
    ]


# --- MERGED's stored dtypes and provenance -----------------------------------------------------


def _stored_codes(
    path: str, conditioner: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """(MLX key -> dtype code as MERGED stores it, MERGED's metadata), from the header."""
    with open_base(path, conditioner=conditioner) as base:
        plans, _, _ = plan_conversion(base, "mlx", cast_to=None, drop_unmapped=True)
        return {p.target: p.code_in for p in plans}, dict(base.metadata)


def _provenance(metadata: dict[str, str]) -> dict[str, Any] | None:
    text = metadata.get(PROVENANCE_KEY)
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _provenance_notes(
    provenance: dict[str, Any] | None,
    semantics: str,
    adapters: Sequence[AdapterArg],
    excluded: Sequence[Excluded],
    strength_map: Sequence[str] = (),
) -> list[str]:
    """Where MERGED's own record of its merge (`sa3ckpt_merge`) differs from this check."""
    if provenance is None:
        return []
    notes: list[str] = []
    recorded = provenance.get("adapters")
    if provenance.get("semantics") not in (None, semantics):
        notes.append(
            f"MERGED records {provenance['semantics']} semantics; this check used {semantics} "
            "(--semantics)"
        )
    if isinstance(recorded, list) and all(isinstance(a, dict) for a in recorded):
        strengths = [a.get("strength") for a in recorded]
        given = [a.strength for a in adapters]
        if len(recorded) != len(adapters):
            notes.append(f"MERGED records {len(recorded)} adapters; {len(adapters)} given here")
        elif strengths != given:
            notes.append(
                f"MERGED records strengths {', '.join(map(str, strengths))}; given here "
                f"{', '.join(f'{s:g}' for s in given)}"
            )
        for index, (row, arg) in enumerate(zip(recorded, adapters, strict=False), 1):
            digest = row.get("sha256")
            if digest and digest != adapter_sha256(arg.path):
                notes.append(f"adapter {index} ({arg.path}) is not the file MERGED records")
    recorded_map = provenance.get("strength_map") or []
    if isinstance(recorded_map, list) and list(recorded_map) != list(strength_map):
        recorded_text = " ".join(map(repr, recorded_map)) or "none"
        notes.append(
            f"MERGED records --strength-map {recorded_text}; this check used "
            f"{' '.join(map(repr, strength_map)) or 'none'}"
        )
    recorded_excl = provenance.get("excluded")
    if isinstance(recorded_excl, list):
        mine = sorted((e.target, e.adapter) for e in excluded)
        theirs = sorted(
            (e.get("target"), e.get("adapter")) for e in recorded_excl if isinstance(e, dict)
        )
        if mine != theirs:
            notes.append(
                f"MERGED records {len(theirs)} --exclude exclusions; this check made {len(mine)}"
            )
    return notes


# --- the model states ------------------------------------------------------------------------


def _params(loaded: LoadedDiT, with_conditioner: bool) -> Params:
    """Every array of the DiT (and the conditioner's, as `cond.*`) by MLX runtime key."""
    pairs: list[tuple[str, mx.array]] = tree_flatten(loaded.dit.parameters())  # type: ignore[assignment]
    flat = dict(pairs)
    if with_conditioner and loaded.conditioner is not None:
        cond: list[tuple[str, mx.array]] = tree_flatten(loaded.conditioner.parameters())  # type: ignore[assignment]
        flat.update({MLX_ARRAY_PREFIX + k: v for k, v in cond})
    return flat


def _set(loaded: LoadedDiT, pairs: Sequence[tuple[str, mx.array]]) -> None:
    """Write arrays into the DiT and the conditioner (keys `cond.*`)."""
    dit = [(k, v) for k, v in pairs if not k.startswith(MLX_ARRAY_PREFIX)]
    cond = [(k[len(MLX_ARRAY_PREFIX) :], v) for k, v in pairs if k.startswith(MLX_ARRAY_PREFIX)]
    if dit:
        loaded.dit.update(tree_unflatten(dit))
    if cond and loaded.conditioner is not None:
        loaded.conditioner.update(tree_unflatten(cond))
    mx.eval([v for _, v in pairs])


def _rounds(value: mx.array, code: str) -> bool:
    """Whether storing `value` as dtype `code` can change it (not for exact or integer ones)."""
    floating = mx.issubdtype(value.dtype, mx.floating)
    return floating and code not in _EXACT_IN_FP32 and dtypes.is_floating(code)


def _rounded(value: mx.array, code: str) -> mx.array:
    """`value` as MERGED's dtype `code` would hold it, back in float32."""
    if code in _MX_ROUNDING:
        return value.astype(_MX_ROUNDING[code]).astype(value.dtype)
    # other narrow floats (F8): through the NumPy cast the merge writer uses
    return mx.array(dtypes.to_float32(dtypes.cast(np.array(value), code)))


def _usual_code(codes: dict[str, str]) -> str:
    """MERGED's most common floating dtype: for keys its header does not list (a diffusers
    sidecar's conditioner arrays)."""
    floating = Counter(c for c in codes.values() if dtypes.is_floating(c))
    return floating.most_common(1)[0][0] if floating else "F32"


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def _round_to_merged(loaded: LoadedDiT, codes: dict[str, str], with_conditioner: bool) -> bool:
    """Round every array to the dtype MERGED stores it in, in place; False when none changes
    (MERGED stores all of them exactly, e.g. fp32). A chunk per stream at a time, like
    `_apply_live`."""
    usual = _usual_code(codes)
    params = _params(loaded, with_conditioner)
    keys = [k for k, v in params.items() if _rounds(v, codes.get(k, usual))]
    streams = mlx_streams.work_streams()
    chunks = _chunks(keys)
    with mlx_streams.blas_share(streams):
        for first in range(0, len(chunks), len(streams)):
            pending = []
            for stream, chunk in zip(streams, chunks[first : first + len(streams)], strict=False):
                with mx.stream(stream):
                    pending += [(k, _rounded(params.pop(k), codes.get(k, usual))) for k in chunk]
            _set(loaded, pending)
    return bool(keys)


def _apply_live(
    loaded: LoadedDiT,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    semantics: str,
    source: AdapterSource,
    with_conditioner: bool,
    strength_map: StrengthMap | None = None,
) -> ApplyLedger:
    """Write every target's live (adapted, fp32) weight into the model; return the ledger.

    `ops.apply.merged_updates` computes them, CHUNK targets at a time, each chunk written
    before the next is computed: peak memory is the model plus one chunk, not two models.
    With a `--strength-map`, a chunk's targets are applied in groups that share one strength
    per adapter (`merged_updates` takes one strength per checkpoint). One chunk per core is
    computed at once, each on its own stream (`mlx_streams`): the casts, sums and products
    of the formulas use one core per stream.
    """
    ledger = ApplyLedger(semantics)
    for ckpt, _ in ckpts:
        if ckpt.ledger is not None:
            ledger.unmatched_keys += [f"{key} ({reason})" for key, reason in ckpt.ledger.rejected]
    present = set(_params(loaded, with_conditioner))
    targets = list(dict.fromkeys(t for ckpt, _ in ckpts for t in ckpt.targets()))
    ledger.missing_targets = [t for t in targets if runtime_key(t) not in present]
    todo = [t for t in targets if t not in ledger.missing_targets]
    if not todo:
        raise IncompatibleError(
            f"BASE {loaded.ledger.path}: 0 of {len(targets)} adapter targets are in the model "
            f"(e.g. {(ledger.missing_targets or ['(no targets)'])[0]})"
        )
    given = tuple(strength for _, strength in ckpts)
    per_target = (
        strength_map.resolve(todo, [(set(c.tensors), s) for c, s in ckpts]) if strength_map else {}
    )
    streams = mlx_streams.work_streams()
    pending: list[tuple[str, mx.array]] = []
    with mlx_streams.blas_share(streams):
        for index, chunk in enumerate(_chunks(todo)):
            with mx.stream(streams[index % len(streams)]):
                pending += _chunk_updates(
                    loaded, ckpts, chunk, given, per_target, semantics, source, with_conditioner,
                    ledger,
                )  # fmt: skip
            if ledger.shape_mismatches:
                return ledger  # refused by the caller: no need to compute the rest
            if index % len(streams) == len(streams) - 1:
                _set(loaded, pending)
                pending = []
        _set(loaded, pending)
    return ledger


def _chunk_updates(
    loaded: LoadedDiT,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    chunk: Sequence[str],
    given: tuple[float, ...],
    per_target: dict[str, TargetStrength],
    semantics: str,
    source: AdapterSource,
    with_conditioner: bool,
    ledger: ApplyLedger,
) -> list[tuple[str, mx.array]]:
    """The live weights of one chunk's targets (not evaluated); the ledger takes the rest."""
    groups: dict[tuple[float, ...], set[str]] = {}
    for target in chunk:
        row = per_target.get(target)
        key = (
            given
            if row is None
            else tuple(s if v is None else v for s, v in zip(given, row.strengths, strict=True))
        )
        groups.setdefault(key, set()).add(target)
    updates = []
    for strengths, wanted in groups.items():
        part = [
            (
                dataclasses.replace(
                    ckpt,
                    tensors={t: p for t, p in ckpt.tensors.items() if t in wanted},
                    ledger=None,
                ),
                strength,
            )
            for (ckpt, _), strength in zip(ckpts, strengths, strict=True)
        ]
        try:
            group_updates, done = merged_updates(
                _params(loaded, with_conditioner), part, semantics, source
            )
        except IncompatibleError as exc:  # every target of the group misfits
            raise IncompatibleError(f"BASE {loaded.ledger.path}: {exc}") from None
        updates += group_updates
        ledger.applied += done.applied
        ledger.shape_mismatches += done.shape_mismatches
        ledger.bases_sources.update(done.bases_sources)
    return updates


def _shapes(loaded: LoadedDiT) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _params(loaded, True).items()}


def _check_same_model(base: LoadedDiT, merged_shapes: dict[str, tuple[int, ...]]) -> None:
    mine = {k: s for k, s in _shapes(base).items() if not k.startswith(MLX_ARRAY_PREFIX)}
    theirs = {k: s for k, s in merged_shapes.items() if not k.startswith(MLX_ARRAY_PREFIX)}
    if mine != theirs:
        differ = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
        key = differ[0]
        raise IncompatibleError(
            f"MERGED is not the same DiT as BASE ({base.ledger.family} vs its shapes: {key} "
            f"{mine.get(key, 'absent')} in BASE, {theirs.get(key, 'absent')} in MERGED)"
        )


# --- which targets are checked ---------------------------------------------------------------


def _narrowed(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]], only: str | None, no_conditioner: str | None
) -> tuple[list[tuple[AdapterCheckpoint, float]], list[tuple[str, str]]]:
    """Checkpoints without the targets this run leaves out, and (target, why) for each."""
    skipped: dict[str, str] = {}
    out = []
    for ckpt, strength in ckpts:
        kept = {}
        for target, params in ckpt.tensors.items():
            root = root_of(target)
            if only is not None and root != only:
                skipped[target] = f"--only {only}"
            elif root == "conditioner" and no_conditioner is not None:
                skipped[target] = no_conditioner
            else:
                kept[target] = params
        out.append((dataclasses.replace(ckpt, tensors=kept), strength))
    return out, list(skipped.items())


def _no_conditioner_reason(base: bool, merged: bool) -> str | None:
    missing = [role for role, has in (("BASE", base), ("MERGED", merged)) if not has]
    if not missing:
        return None
    return (
        f"{' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no conditioner "
        "arrays, so the seconds conditioner cannot be compared"
    )


# --- the run -----------------------------------------------------------------------------------


# The phases of a check in order, as the progress bar names each while it runs (the last
# one only when MERGED has to run again without its conditioner).
PHASES = (
    "loading the adapters",
    "MERGED: load and run",
    "BASE: load and run",
    "BASE + adapters live",
    "BASE rounded as MERGED",
    "MERGED again, no conditioner",
)
USUAL_PHASES = 5


@dataclass
class _Timer:
    """Seconds per phase for the report; each lap is also a step for the progress callback."""

    progress: ProgressCallback | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)
    _steps: ProgressCounter = field(init=False)

    def __post_init__(self) -> None:
        self._steps = ProgressCounter(self.progress, USUAL_PHASES, unit="steps")
        self._steps.advance(0, PHASES[0])

    def lap(self, name: str, more: bool = False) -> None:
        """End phase `name`; `more`: one more phase than usual follows."""
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now
        self._steps.total += more
        done = self._steps.done + 1
        self._steps.advance(1, PHASES[done] if done < self._steps.total else "")


def _merged_outputs(
    path: str,
    probe: Probe | None,
    seed: int,
    frames: int,
    use_conditioner: bool,
    conditioner: str | None = None,
) -> tuple[LoadedDiT, Probe, list[np.ndarray]]:
    """MERGED loaded and run (with its conditioner unless told not to); the probe is made from
    its topology on the first call. `conditioner`: an sa3.cpp MERGED's sidecar GGUF."""
    merged = load_dit(path, conditioner=conditioner)
    probe = probe or make_probe(merged.dit.topology, seed, frames)
    cond = merged.conditioner if use_conditioner else None
    return merged, probe, run_probe(merged.dit, cond, probe)


def _check_fit(ledger: ApplyLedger, strict: bool, skipped_for_conditioner: list[str]) -> None:
    if ledger.shape_mismatches:
        raise IncompatibleError(
            f"{len(ledger.shape_mismatches)} adapter targets do not fit BASE "
            f"(e.g. {ledger.shape_mismatches[0]}); wrong base for this adapter?"
        )
    if strict:
        unchecked = ledger.missing_targets + ledger.unmatched_keys + skipped_for_conditioner
        if unchecked:
            raise IncompatibleError(
                f"--strict: not every adapter tensor is checked ({len(unchecked)}, e.g. "
                f"{unchecked[0]})"
            )


def verify_merge(
    base_path: str,
    adapters: Sequence[AdapterArg],
    merged_path: str,
    *,
    semantics: str = "runtime",
    only: str | None = None,
    bases_path: str | None = None,
    allow_pickle: bool = False,
    exclude: Sequence[str] = (),
    strength_map: Sequence[str] = (),
    strict: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = DEFAULT_SEED,
    frames: int = DEFAULT_FRAMES,
    progress: ProgressCallback | None = None,
    base_conditioner: str | None = None,
    merged_conditioner: str | None = None,
) -> VerifyReport:
    """Compare MERGED's DiT output with BASE + adapters live; return the report.

    BASE and MERGED may be sa3.cpp DiT GGUFs; `base_conditioner` / `merged_conditioner` are
    their conditioner sidecar GGUFs (without one, that model has no conditioner).

    Raises UsageError (bad arguments, an adapter where BASE or MERGED belongs),
    MalformedFileError (unreadable files) and IncompatibleError (adapters that do not fit
    BASE, BASE and MERGED of different shapes, NaN/Inf in the live output, and under
    `strict` any adapter tensor left unchecked). A failed check is a report whose verdict
    is `fail`, not an exception; the CLI turns it into exit 1. progress: the phases done of
    all (`PHASES`), with the one now running.
    """
    with reuse_mlx_buffers():  # BASE's model takes MERGED's freed buffers, and so on
        return _verify(
            base_path,
            adapters,
            merged_path,
            semantics=semantics,
            only=only,
            bases_path=bases_path,
            allow_pickle=allow_pickle,
            exclude=exclude,
            strength_map=strength_map,
            strict=strict,
            tolerance=tolerance,
            seed=seed,
            frames=frames,
            progress=progress,
            base_conditioner=base_conditioner,
            merged_conditioner=merged_conditioner,
        )


def _verify(
    base_path: str,
    adapters: Sequence[AdapterArg],
    merged_path: str,
    *,
    semantics: str,
    only: str | None,
    bases_path: str | None,
    allow_pickle: bool,
    exclude: Sequence[str],
    strength_map: Sequence[str],
    strict: bool,
    tolerance: float,
    seed: int,
    frames: int,
    progress: ProgressCallback | None,
    base_conditioner: str | None,
    merged_conditioner: str | None,
) -> VerifyReport:
    """`verify_merge`'s work (its arguments, checked by it)."""
    started = time.perf_counter()
    timer = _Timer(progress)
    _check_arguments(base_path, adapters, merged_path, semantics, only, tolerance, frames)
    paths = [a.path for a in adapters]
    exclusions = parse_exclusions(exclude, paths)
    smap = parse_strength_map(strength_map, paths)
    loaded_ckpts = [(load_adapter(a.path, allow_pickle=allow_pickle), a.strength) for a in adapters]
    ckpts, excluded, unused = apply_exclusions(loaded_ckpts, paths, exclusions)
    bases = load_xs_bases(bases_path, allow_pickle=allow_pickle) if bases_path else None
    timer.lap("load_adapters")

    # MERGED first, then dropped: only one model is in memory at a time.
    merged, probe, y_merged = _merged_outputs(
        merged_path, None, seed, frames, True, merged_conditioner
    )
    merged_facts = ModelFacts.of(merged)
    merged_shapes = _shapes(merged)
    codes, metadata = _stored_codes(merged.ledger.path, merged_conditioner)
    del merged
    timer.lap("merged")

    base = load_dit(base_path, conditioner=base_conditioner)
    base_facts = ModelFacts.of(base)
    _check_same_model(base, merged_shapes)
    no_cond = _no_conditioner_reason(base_facts.conditioner, merged_facts.conditioner)
    use_cond = no_cond is None
    ckpts, skipped = _narrowed(ckpts, only, no_cond)
    if not any(ckpt.tensors for ckpt, _ in ckpts):
        first = f"{skipped[0][0]}: {skipped[0][1]}" if skipped else "every target excluded"
        raise IncompatibleError(
            f"no adapter target is left to check ({len(skipped)} skipped, e.g. {first}; "
            f"{len(excluded)} excluded by --exclude)"
        )
    y_base = run_probe(base.dit, base.conditioner if use_cond else None, probe)
    timer.lap("base")

    ledger = _apply_live(base, ckpts, semantics, checkpoint_source(bases), use_cond, smap)
    _check_fit(ledger, strict, [t for t, why in skipped if why == no_cond])
    y_live = run_probe(base.dit, base.conditioner if use_cond else None, probe)
    if not all(np.isfinite(y).all() for y in (*y_base, *y_live)):
        raise IncompatibleError(
            f"BASE {'with the adapters ' if all(np.isfinite(y).all() for y in y_base) else ''}"
            "gives NaN/Inf outputs: nothing to compare MERGED with"
        )
    timer.lap("live")

    if _round_to_merged(base, codes, use_cond):
        y_floor = run_probe(base.dit, base.conditioner if use_cond else None, probe)
    else:  # MERGED stores every array exactly (fp32/fp64): rounding changes nothing
        y_floor = y_live
    del base
    again = not use_cond and merged_facts.conditioner
    timer.lap("floor", more=again)

    if again:  # run MERGED again without its conditioner
        _, _, y_merged = _merged_outputs(
            merged_path, probe, seed, frames, False, merged_conditioner
        )
        timer.lap("merged")

    numbers = measure(
        y_base, y_live, y_floor, y_merged, tolerance, [c.to_json() for c in probe.cases]
    )
    verdict = verdict_of(numbers)
    target_codes = Counter(
        codes.get(k, "?") for k in (runtime_key(t) for t in ledger.applied) if k is not None
    )
    provenance = _provenance(metadata)
    report = VerifyReport(
        base=base_facts,
        merged=merged_facts,
        semantics=semantics,
        adapters=_adapter_rows(loaded_ckpts, paths),
        probe=probe,
        tolerance=tolerance,
        numbers=numbers,
        verdict=verdict,
        floor_dtypes=dict(target_codes.most_common()),
        conditioning=(
            "cross/global cond from each model's conditioner (prompt tokens "
            f"{probe.to_json()['prompt_tokens']} + {probe.to_json()['padding_tokens']} padding, "
            f"{probe.seconds:g} s)"
            if use_cond
            else "random cross/global cond (the conditioner is not compared)"
        ),
        applied=list(ledger.applied),
        skipped=skipped,
        missing_from_model=list(ledger.missing_targets),
        unmatched_keys=list(ledger.unmatched_keys),
        bases_sources=dict(ledger.bases_sources),
        bases_file=f"{bases_path} ({bases.origin})" if bases is not None else None,
        excluded=excluded,
        unused_exclusions=unused,
        provenance=provenance,
        provenance_notes=_provenance_notes(
            provenance, semantics, adapters, excluded, list(smap.specs)
        ),
        hints=failure_hints(numbers) if verdict == FAIL else [],
        timings=timer.timings,
        blas=active_blas(),
    )
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["ONLY_ROOTS", "ModelFacts", "VerifyReport", "verify_merge"]
