"""merge: bake adapters into a base checkpoint at fixed strengths, streaming tensor by tensor.

The output keeps the base's container (safetensors / npz / diffusers folder, with the folder's
config and sharding / sa3.cpp DiT GGUF with its KVs, tensor types and conditioner sidecar,
`io.gguf_base`), naming (official / MLX / diffusers / sa3cpp) and dtype unless asked; targets are
merged in the canonical view (diffusers' medium to_qkv rows are put in official order for the
merge and back after it, `layout.BASE_MODULE_LAYOUTS`); every tensor that is not a merged
target is copied bit-exactly; merged targets are computed in float32 by the one merge kernel
(`adapters.tiled`, row tiles read and written where they lie: `ops.merge.target`, two
targets in parallel) and cast once. Peak memory is bounded by one
tensor's working set, not the model. Every run returns a ledger, and nothing is written
unless the whole merge succeeds (atomic output; NaN/Inf in a merged weight aborts it).

Before writing, the stack report (`ops.inspect.stack_report`) predicts sign flips, negative
magnitudes, drift and a DoRA/BoRA stack on the seconds conditioner; its warnings go into the
ledger (and refuse the merge under --strict). `--exclude` (`ops.merge.exclusions`) leaves targets
out of one adapter or all; `--strength-map` (`ops.merge.strength_map`) scales an adapter's
strength per target, and every consumer of the stack (both kernels, the stack report, the
comparison) takes the stack of a target from `_Plan.stack_of`; `compare=True` adds the
semantics comparison (`ops.merge.compare_semantics`), and without an output nothing is written.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from sa3ckpt import __version__, dtypes
from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.adapters.xs_bases import XsBases
from sa3ckpt.adapters.xs_sources import load_xs_bases
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.base_checkpoint import (
    BaseCheckpoint,
    FolderSpec,
    base_container_of,
    check_base_output,
    open_base,
    stream_writer,
)
from sa3ckpt.io.formats import identify
from sa3ckpt.io.gguf_base import CONTAINER as GGUF
from sa3ckpt.io.gguf_base import has_quantiser, no_quantiser_reason
from sa3ckpt.io.gguf_facts import conditioner_beside
from sa3ckpt.io.tensor_rows import PositionalWriter
from sa3ckpt.lineage import adapter_lineage, base_lineage, lineage_mismatch
from sa3ckpt.names.modules import root_of
from sa3ckpt.ops.inspect import (
    CODEC_WEIGHTS,
    NEEDS_BASE_NORMS,
    StackMember,
    StackReport,
    identify_kind,
    stack_report,
)
from sa3ckpt.ops.merge.base_norms import base_norms
from sa3ckpt.ops.merge.codec import merge_codec
from sa3ckpt.ops.merge.compare_semantics import SemanticsComparison, target_differences
from sa3ckpt.ops.merge.exclusions import apply_exclusions, parse_exclusions
from sa3ckpt.ops.merge.ledger import PROVENANCE_KEY, MergeLedger, adapter_sha256
from sa3ckpt.ops.merge.options import DEFAULTS, MergeOptions
from sa3ckpt.ops.merge.preview import MergePreview
from sa3ckpt.ops.merge.strength_map import TargetStrength, parse_strength_map
from sa3ckpt.ops.merge.target import TargetReport, canonical_w0, merge_target, target_stack
from sa3ckpt.progress import ProgressCallback, ProgressCounter
from sa3ckpt.semantics import info as semantics_info
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.threads import blas_limited_pool, blas_worker_pool, limit_blas


def _fit_problem(ckpt: AdapterCheckpoint, target: str, fan: tuple[int, int]) -> str | None:
    for param, value in ckpt.tensors[target].items():
        want = ckpt.kind.param_shape(param, *fan, ckpt.config.rank)
        if tuple(value.shape) != want:
            return f"{target}: {param} {tuple(value.shape)} vs {want} for base weight {fan}"
    return None


@dataclass
class _Plan:
    targets: dict[str, str]  # base key -> canonical target to merge there
    ledger: MergeLedger
    strengths: dict[str, TargetStrength] = field(default_factory=dict)  # --strength-map

    def stack_of(
        self, target: str | None, ckpts: Sequence[tuple[AdapterCheckpoint, float]]
    ) -> list[tuple[AdapterCheckpoint, float]]:
        """The stack as merged at `target`: each adapter at its strength there (the map's)."""
        scaled = self.strengths.get(target) if target is not None else None
        if scaled is None:
            return list(ckpts)
        return [
            (ckpt, strength if value is None else value)
            for (ckpt, strength), value in zip(ckpts, scaled.strengths, strict=True)
        ]


def _plan(
    base: BaseCheckpoint,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    only: str | None,
    ledger: MergeLedger,
) -> _Plan:
    weight_keys = base.weight_keys()
    targets: dict[str, str] = {}
    wanted = list(dict.fromkeys(t for ckpt, _ in ckpts for t in ckpt.targets()))
    for target in wanted:
        if only is not None and root_of(target) != only:
            ledger.skipped.append((target, f"--only {only}"))
            continue
        key = weight_keys.get(target)
        if key is None:
            ledger.missing_from_base.append(target)
            continue
        shape = base.tensors[key].shape
        fan = base.layout_of(shape, key).canonical_shape(shape)
        problems = [
            p
            for ckpt, _ in ckpts
            if target in ckpt.tensors
            for p in [_fit_problem(ckpt, target, fan)]
            if p
        ]
        if problems:
            ledger.shape_mismatches.extend(problems)
            continue
        targets[key] = target
    return _Plan(targets, ledger)


def _check_base_first(base_path: str) -> None:
    """An adapter where the base belongs is the arguments swapped: say so, not "no base keys"."""
    if identify(base_path).is_adapter:
        raise UsageError(
            f"{base_path}: the first argument is an adapter; merge takes BASE first "
            "(sa3ckpt merge BASE ADAPTER[:STRENGTH]... -o OUT)"
        )


@dataclass
class _Prepared:
    """A merge ready to write: the open base, the stack after --exclude, the plan, the
    ledger so far (everything but what writing learns) and what --strict would refuse."""

    base: BaseCheckpoint
    ckpts: list[tuple[AdapterCheckpoint, float]]
    plan: _Plan
    bases: XsBases | None
    inputs: list[str]
    out_code: str | None
    strict_refusal: str | None


@contextmanager
def _prepare(
    base_path: str,
    adapters: Sequence[AdapterArg],
    output: str | None,
    options: MergeOptions,
    *,
    strict: bool,
) -> Iterator[_Prepared]:
    """Every step of a merge before the first byte is written, shared by `merge_checkpoint`
    and `preview_merge` so a preview and the merge after it cannot disagree.

    strict: raise the --strict refusal as soon as it is known (the merge); without it the
    refusal is only recorded (the preview reports it and shows the stack report).
    """
    options.check()
    semantics, bases_path, allow_pickle = (
        options.semantics,
        options.bases_path,
        options.allow_pickle,
    )
    if not adapters:
        raise UsageError("merge needs at least one adapter")
    out_code = dtypes.code_from_name(options.dtype) if options.dtype else None
    paths = [a.path for a in adapters]
    exclusions = parse_exclusions(options.exclude, paths)
    smap = parse_strength_map(options.strength_map, paths)
    sidecar = [options.conditioner] if options.conditioner else []
    inputs = [base_path, *sidecar, *paths, *([bases_path] if bases_path else [])]
    _check_base_first(base_path)  # before the output check: swapped arguments say so
    if output is not None:
        check_base_output(
            output, base_container_of(base_path), inputs=inputs, overwrite=options.force
        )
        if sidecar:  # the merged sidecar goes beside the output (`io.gguf_facts`)
            check_base_output(
                conditioner_beside(output), GGUF, inputs=inputs, overwrite=options.force
            )
    # Every container inspect reads (sa3/bare/mlx files, PEFT folders, diffusers LoRA
    # folders, sa3.cpp GGUF, legacy pickles with the opt-in), through the registry path convert
    # uses.
    ckpts = [(load_adapter(a.path, allow_pickle=allow_pickle), a.strength) for a in adapters]
    ckpts, excluded, unused = apply_exclusions(ckpts, paths, exclusions)
    bases = load_xs_bases(bases_path, allow_pickle=allow_pickle) if bases_path else None
    with open_base(base_path, conditioner=options.conditioner) as base:
        if base.gguf is not None and out_code is not None:
            raise UsageError(
                "a merge into an sa3.cpp GGUF keeps its tensor types: no --dtype "
                "(convert the base --to sa3cpp --dtype first for another encoding)"
            )
        ledger = MergeLedger(base_path, output or "-", semantics, base.naming, base.container)
        ledger.excluded, ledger.unused_exclusions = excluded, unused
        ledger.written = output is not None
        if bases is not None:
            ledger.bases_file = f"{bases_path} ({bases.origin})"
        for (ckpt, strength), arg in zip(ckpts, adapters, strict=True):
            ledger.adapters.append(
                {
                    "path": arg.path,
                    "sha256": adapter_sha256(arg.path),
                    "strength": strength,
                    "adapter_type": ckpt.adapter_type,
                    "rank": ckpt.config.rank,
                    "alpha": ckpt.config.alpha,
                    "targets": len(ckpt.tensors),
                }
            )
            if ckpt.ledger is not None:
                ledger.unmatched_keys += [f"{arg.path}: {k} ({r})" for k, r in ckpt.ledger.rejected]
        plan = _plan(base, ckpts, options.only, ledger)
        _check_writable_types(base, plan)
        into = base_lineage(base)
        for (ckpt, _strength), arg in zip(ckpts, adapters, strict=True):
            mismatch = lineage_mismatch(adapter_lineage(ckpt.config.base_model), into)
            if mismatch is not None:
                ledger.lineage.append(f"lineage-mismatch: {arg.path}: {mismatch}")
        if ledger.shape_mismatches:
            raise IncompatibleError(
                f"{len(ledger.shape_mismatches)} adapter targets do not fit {base_path} "
                f"(e.g. {ledger.shape_mismatches[0]}); wrong base for this adapter?"
            )
        if not plan.targets:
            raise IncompatibleError(
                f"0 adapter targets found in {base_path} ({len(ledger.missing_from_base)} missing, "
                f"e.g. {(ledger.missing_from_base or ['-'])[0]}; "
                f"{len(ledger.excluded)} excluded by --exclude)"
            )
        if smap:
            held = [(set(ckpt.tensors), strength) for ckpt, strength in ckpts]
            plan.strengths = smap.resolve(list(plan.targets.values()), held)
            ledger.strength_map = list(smap.specs)
            ledger.target_strengths = list(plan.strengths.values())
        refusal = None
        if ledger.missing_from_base or ledger.unmatched_keys:
            first = (ledger.missing_from_base + ledger.unmatched_keys)[0]
            refusal = f"--strict: not every adapter tensor has a place in the base ({first})"
            if strict:
                raise IncompatibleError(refusal)
        ledger.stack = _stack_report(base, plan, ckpts, paths, semantics)
        if options.compare:
            ledger.comparison = _comparison(base, plan, ckpts, bases)
        if refusal is None and ledger.warnings:
            refusal = (
                f"--strict: the stack report has {len(ledger.warnings)} warnings "
                f"(first: {ledger.warnings[0]}); nothing was written"
            )
            if strict:
                raise IncompatibleError(refusal)
        yield _Prepared(base, ckpts, plan, bases, inputs, out_code, refusal)


def _check_writable_types(base: BaseCheckpoint, plan: _Plan) -> None:
    """Refuse, before anything is written, a merge that changes a quantised GGUF tensor
    whose type the gguf package cannot quantise (it is never written in another type)."""
    if base.gguf is None:
        return
    types = base.gguf.types
    for key in plan.targets:
        if not has_quantiser(types.get(key, "F32")):
            raise IncompatibleError(no_quantiser_reason(key, types[key]))


def _codec_route(base_path: str, adapters: Sequence[AdapterArg]) -> bool:
    """True when the base is SAME codec weights (a codec merge); refuses mixing codec
    adapters with a DiT base and DiT adapters with codec weights (exit 4, one line)."""

    base_kind = identify_kind(base_path)
    kinds = [(a.path, identify_kind(a.path)) for a in adapters]
    if base_kind.kind == CODEC_WEIGHTS:
        for path, kind in kinds:
            if not kind.is_codec_adapter:
                raise IncompatibleError(
                    f"{path}: {kind.label}, not a codec adapter: {base_path} is "
                    f"{base_kind.label} (merge DiT adapters into an SA3 base)"
                )
        return True
    for path, kind in kinds:
        if kind.is_codec_adapter:
            raise IncompatibleError(
                f"{path}: {kind.label}: merge it into the SAME codec weights "
                f"(the official autoencoder safetensors), not into {base_path}"
            )
    return False


def merge_checkpoint(
    base_path: str,
    adapters: Sequence[AdapterArg],
    output: str | None,
    options: MergeOptions = DEFAULTS,
    *,
    progress: ProgressCallback | None = None,
) -> MergeLedger:
    """Merge adapters into a base and write `output` atomically; return the ledger.

    output None (only with `options.compare`) writes nothing. Under `options.strict`,
    stack-report warnings refuse the merge (exit 4) before anything is written. progress:
    called with output bytes written so far, of all of them, after each tensor
    (`sa3ckpt.progress`).
    """
    started = time.perf_counter()
    if output is None and not options.compare:
        raise UsageError("merge needs -o OUT (or --compare-semantics to only report)")
    codec = _codec_route(base_path, adapters)
    if codec:
        if options.only or options.bases_path or options.exclude or options.compare:
            raise UsageError(
                "--only, --bases, --exclude and --compare-semantics are DiT merge options; "
                "a codec merge takes --semantics, --dtype and --force"
            )
        ledger = merge_codec(
            base_path,
            adapters,
            output,
            semantics=options.semantics,
            dtype=options.dtype,
            force=options.force,
        )
        ledger.seconds = time.perf_counter() - started
        return ledger
    with _prepare(base_path, adapters, output, options, strict=options.strict) as ready:
        ledger = ready.plan.ledger
        if output is not None:
            _write(
                ready.base,
                ready.ckpts,
                ready.plan,
                output,
                options.semantics,
                ready.out_code,
                ready.bases,
                ready.inputs,
                options.force,
                progress,
            )
    ledger.seconds = time.perf_counter() - started
    return ledger


def preview_merge(
    base_path: str,
    adapters: Sequence[AdapterArg],
    output: str | None = None,
    options: MergeOptions = DEFAULTS,
) -> MergePreview:
    """What `merge_checkpoint` with the same arguments would do, writing nothing.

    The same steps up to the first write (argument and output checks, --exclude, the plan,
    the stack report, the semantics comparison with `compare`) raise the same errors; what
    --strict would refuse is returned as `strict_refusal` instead of raised, so the report
    that explains it can be shown. The ledger's head says nothing was written.
    """
    with _prepare(base_path, adapters, output, options, strict=False) as ready:
        ledger = ready.plan.ledger
        ledger.written = False
        planned = list(ready.plan.targets.values())
        kept = [set(ckpt.tensors) for ckpt, _ in ready.ckpts]
    return MergePreview.of(ledger, planned, kept, options.dtype, ready.strict_refusal)


def _provenance(ledger: MergeLedger) -> str:
    return json.dumps(
        {
            "tool": f"sa3ckpt {__version__}",
            "semantics": ledger.semantics,
            "semantics_meaning": semantics_info(ledger.semantics).meaning,
            "semantics_runtimes": list(semantics_info(ledger.semantics).runtimes),
            "adapters": [
                {k: a[k] for k in ("path", "sha256", "strength", "adapter_type")}
                for a in ledger.adapters
            ],
            "excluded": [e.to_json() for e in ledger.excluded],
            "strength_map": ledger.strength_map,
        },
        sort_keys=True,
    )


WORKERS = 2  # targets merged in parallel (NumPy releases the GIL)
LOOKAHEAD = 6  # merged targets computed ahead of the writer: bounds memory to a few tensors


def _write(
    base: BaseCheckpoint,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    plan: _Plan,
    output: str,
    semantics: str,
    out_code: str | None,
    bases: XsBases | None,
    inputs: Sequence[str],
    force: bool,
    progress: ProgressCallback | None,
) -> None:
    """Write every tensor in base order; targets are computed ahead by a small thread pool.

    At most LOOKAHEAD merged tensors exist at once (finished ones waiting for the writer and
    the ones being computed), which bounds peak memory by a few of the largest tensors while
    letting the workers run on when the kernel throttles the writer's page-cache writes.
    """
    ledger = plan.ledger
    specs = []
    for key, info in base.tensors.items():
        code = out_code if out_code and dtypes.is_floating(info.dtype) else info.dtype
        specs.append((key, code, info.shape))
    metadata = dict(base.metadata)
    metadata[PROVENANCE_KEY] = _provenance(ledger)
    counter = ProgressCounter(progress, sum(_nbytes(code, shape) for _, code, shape in specs))
    target_specs = [(key, code) for key, code, _ in specs if key in plan.targets]
    # A folder keeps its config and its sharding (each shard holds the same keys as before).
    folder = FolderSpec(base.folder.config, base.folder.shards) if base.folder else None
    writer = stream_writer(
        base.container,
        output,
        specs,
        metadata,
        inputs=inputs,
        overwrite=force,
        folder=folder,
        gguf=base.gguf_output(output),
    )
    if isinstance(writer, PositionalWriter):  # every container but GGUF
        with writer:
            _write_positional(base, ckpts, plan, specs, semantics, bases, writer, counter)
        return
    stop = threading.Event()  # running workers give up at their next tile
    with blas_limited_pool(WORKERS) as pool, writer:
        pending: dict[str, Future[tuple[np.ndarray | None, TargetReport]]] = {}
        queue = iter(target_specs)

        def top_up() -> None:
            while len(pending) < LOOKAHEAD:
                nxt = next(queue, None)
                if nxt is None:
                    return
                key, code = nxt
                target = plan.targets[key]
                stack = plan.stack_of(target, ckpts)
                pending[key] = pool.submit(
                    merge_target, base, key, code, target, stack, semantics, bases, None, stop
                )

        try:
            for key, code, shape in specs:
                top_up()
                target = plan.targets.get(key)
                if target is None:
                    stored = base.read(key)
                    if code != base.tensors[key].dtype:
                        stored = dtypes.cast(dtypes.to_float32(stored), code)
                        ledger.cast += 1  # each tensor counted once: cast or copied
                    else:
                        ledger.copied += 1
                    writer.write(key, stored)
                else:
                    array, report = pending.pop(key).result()
                    assert array is not None  # no positional writer: the tensor comes back
                    writer.write(key, array)
                    ledger.merged.append(target)
                    report.record(target, ledger)
                counter.advance(_nbytes(code, shape), key)
        except BaseException:
            stop.set()
            for future in pending.values():
                future.cancel()
            raise


def _nbytes(code: str, shape: Sequence[int]) -> int:
    """The bytes a tensor of this dtype and shape takes in the output (progress counts these)."""
    return dtypes.itemsize(code) * int(np.prod(shape, dtype=np.int64))


def _write_positional(
    base: BaseCheckpoint,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    plan: _Plan,
    specs: Sequence[tuple[str, str, tuple[int, ...]]],
    semantics: str,
    bases: XsBases | None,
    writer: PositionalWriter,
    counter: ProgressCounter,
) -> None:
    """An output written by the workers themselves, each tensor at its place.

    Each worker reads, merges and writes a whole tensor (targets tile by tile, `tiled`;
    untouched tensors copied by the kernel), so a tile goes from the base file through the
    cache to the output without a trip through a queue, and the two cores share the reading
    and writing. The main thread only waits for the tensors in file order, to fold their
    results into the ledger and report progress. Memory is a few tiles per worker (plus a
    W0 whose XS bases are rebuilt by an SVD, or a compressed npz member, read whole).

    The pool is joined (after `stop` tells running workers to give up at their next tile)
    before the writer's `with` block ends, so no worker writes to a closed or discarded file.
    """
    ledger = plan.ledger
    stop = threading.Event()
    pool = blas_worker_pool(WORKERS)
    try:
        with limit_blas(WORKERS):
            futures = [
                pool.submit(
                    _put_tensor,
                    base,
                    key,
                    code,
                    plan.targets.get(key),
                    plan.stack_of(plan.targets.get(key), ckpts),
                    semantics,
                    bases,
                    writer,
                    stop,
                )
                for key, code, _shape in specs
            ]
            for (key, code, shape), future in zip(specs, futures, strict=True):
                outcome, report = future.result()
                target = plan.targets.get(key)
                if target is not None:
                    ledger.merged.append(target)
                    assert report is not None
                    report.record(target, ledger)
                elif outcome == "cast":
                    ledger.cast += 1  # each tensor counted once: cast or copied
                else:
                    ledger.copied += 1
                counter.advance(_nbytes(code, shape), key)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _put_tensor(
    base: BaseCheckpoint,
    key: str,
    code: str,
    target: str | None,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    semantics: str,
    bases: XsBases | None,
    writer: PositionalWriter,
    stop: threading.Event,
) -> tuple[str, TargetReport | None]:
    """Write one tensor of the output (worker thread): ("merged" | "copied" | "cast", report)."""
    if stop.is_set():
        raise tiled.Cancelled
    info = base.tensors[key]
    where = base.stored_bytes(key)
    if target is None:
        if code == info.dtype and where is not None:
            path, offset = where
            fd = os.open(path, os.O_RDONLY)
            try:
                writer.copy_from(key, fd, offset)
            finally:
                os.close(fd)
            return "copied", None
        stored = base.read(key)
        if code == info.dtype:
            writer.write_at(key, 0, stored)
            return "copied", None
        writer.write_at(key, 0, dtypes.cast(dtypes.to_float32(stored), code))
        return "cast", None
    _, report = merge_target(base, key, code, target, ckpts, semantics, bases, writer, stop)
    return "merged", report


def _stack_report(
    base: BaseCheckpoint,
    plan: _Plan,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    paths: Sequence[str],
    semantics: str,
) -> StackReport:
    """The stack report over the planned targets; the base norms it needs (blend, delta) are
    read only for targets with a DoRA/BoRA adapter, streamed tile by tile (`base_norms`)."""
    stacks: dict[str, list[StackMember]] = {}
    wanted: dict[str, str] = {}  # base key -> target whose base norms the semantics needs
    for key, target in plan.targets.items():
        stack = plan.stack_of(target, ckpts)
        members = [
            StackMember(i, path, ckpt.kind, strength, ckpt.tensors[target])
            for i, ((ckpt, strength), path) in enumerate(zip(stack, paths, strict=True), 1)
            if target in ckpt.tensors
        ]
        stacks[target] = members
        decomposed = any(m.kind.is_weight_decomposed and m.strength != 0 for m in members)
        if decomposed and semantics in NEEDS_BASE_NORMS:
            wanted[key] = target
    by_key = base_norms(base, list(wanted), WORKERS)  # streamed, WORKERS targets at a time
    return stack_report(stacks, semantics, {wanted[key]: n for key, n in by_key.items()})


def _comparison(
    base: BaseCheckpoint,
    plan: _Plan,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    bases: XsBases | None,
) -> SemanticsComparison:
    """Every planned target merged under each implemented semantics, pairwise differences."""
    out = SemanticsComparison(list(SEMANTICS))
    for key, target in plan.targets.items():
        w2d = canonical_w0(base, key)
        shape = (int(w2d.shape[0]), int(w2d.shape[1]))
        stack, _report = target_stack(
            base, key, partial(np.asarray, w2d), shape, target, plan.stack_of(target, ckpts), bases
        )
        out.add(target, target_differences(w2d, stack, out.semantics))
    return out
