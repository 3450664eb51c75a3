"""validate: rules over an adapter's analysis, producing findings with stable ids.

Each rule is a row in `sa3ckpt.findings.RULES` (id, severity, title, fix hint) and is
checked by a function in CHECKS. The exit code of a run follows the CLI contract and comes
from the error classes: MalformedFileError's if any input is unreadable or malformed, else
ValidationFailed's if any error (or, with --strict, any warning), else EXIT_OK.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import EXIT_OK, MalformedFileError, UsageError, ValidationFailed
from sa3ckpt.findings import Finding, severity_order
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.formats import (
    BASE,
    classify_keys,
    open_adapter_source,
    sniff_format,
    walk_adapter_paths,
)
from sa3ckpt.io.gguf_adapter import (
    ARCHITECTURE,
    KEY_ARCHITECTURE,
    KEY_NAME,
    SA3CPP_KV,
    general_name,
)
from sa3ckpt.io.gguf_adapter import TENSOR_TYPES as GGUF_TENSOR_TYPES
from sa3ckpt.io.gguf_facts import Identity
from sa3ckpt.io.legacy_pickle import PickleRefusedError
from sa3ckpt.io.remote import is_url
from sa3ckpt.io.sources import AdapterSource
from sa3ckpt.lineage import adapter_lineage, base_lineage, lineage_mismatch
from sa3ckpt.names.base_keys import mlx_base_key
from sa3ckpt.names.modules import SECONDS_CONDITIONER
from sa3ckpt.ops.codec import analyze_codec
from sa3ckpt.ops.inspect import PICKLE_FILE, UNKNOWN, Analysis, KindReport, analyze, identify_kind
from sa3ckpt.targets.codec_families import CODEC_TARGET_FAMILIES
from sa3ckpt.targets.families import FAMILIES, family_for_base_model


@dataclass
class FileResult:
    """Validation of one path: findings, plus a short identity of what was found."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    malformed: bool = False
    adapter_type: str | None = None
    family: str | None = None
    coverage: str | None = None
    checkpoint: KindReport | None = None  # what the file is (ops.checkpoint_kind)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def status(self, strict: bool) -> str:
        if self.malformed:
            return "malformed"
        if self.count("error") or (strict and self.count("warning")):
            return "fail"
        return "pass"

    def to_json(self, strict: bool) -> dict[str, object]:
        return {
            "path": self.path,
            "status": self.status(strict),
            "adapter_type": self.adapter_type,
            "family": self.family,
            "coverage": self.coverage,
            "checkpoint": self.checkpoint.to_json() if self.checkpoint else None,
            "findings": [f.to_json() for f in self.findings],
        }


def _say(rule: str, message: str) -> Finding:
    return Finding.of(rule, message)


def _first(items: list[str], limit: int = 3) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; … and {len(items) - limit} more" if len(items) > limit else "")


Check = Callable[[Analysis, "Context"], Iterator[Finding]]


@dataclass
class Context:
    deep: bool
    model: str
    base: Identity | None = None  # the model `--base` is (`sa3ckpt.lineage`), when known


def _check_config(a: Analysis, ctx: Context) -> Iterator[Finding]:
    if a.config_error is not None and a.groups.targets:
        rule = "config-missing" if a.source.config_text is None else "config-invalid"
        yield _say(rule, a.config_error)


def _check_type(a: Analysis, ctx: Context) -> Iterator[Finding]:
    if a.detection is None:
        return
    for f in a.detection.findings:
        yield f.reported()


def _check_keys(a: Analysis, ctx: Context) -> Iterator[Finding]:
    # "Is this a base?" is the format registry's one rule, asked of the keys already read.
    if not a.groups.targets and classify_keys(a.source.entries)[0] == BASE:
        yield _say(
            "not-an-adapter", f"{len(a.source.entries)} base weight tensors, no adapter keys"
        )
        return
    if not a.groups.targets:
        yield _say("no-targets", f"0 targets recognised ({a.dialect.evidence})")
        return
    if a.groups.rejected:
        reasons = [f"{r.key}: {r.reason}" for r in a.groups.rejected]
        yield _say(
            "unmatched-key", f"{len(reasons)} keys are not adapter tensors: {_first(reasons)}"
        )
    if a.dialect.dialect == "bare":
        yield _say(
            "bare-keys", f"{len(a.groups.targets)} targets have bare keys (no `model.` root)"
        )
    elif a.dialect.dialect not in (None, "sa3", "bare", "sa3cpp"):  # GGUF is sa3.cpp's own
        yield _say("foreign-dialect", f"keys are in the {a.dialect.dialect} dialect")
    multi = a.groups.multi_slot_targets()
    if multi:
        yield _say(
            "inconsistent-tensors", f"several parametrization slots on one target: {_first(multi)}"
        )
    nonzero = [f"{t} (slot {s})" for t, s in a.groups.nonzero_slots().items()]
    if nonzero:
        yield _say("nonzero-slot", f"{len(nonzero)} targets use a non-zero slot: {_first(nonzero)}")


def _check_family(a: Analysis, ctx: Context) -> Iterator[Finding]:
    if not a.groups.targets:
        return
    if a.family_undetermined:  # not an error: check what every fitting family agrees on
        yield _say(
            "family-undetermined",
            f"the file fits {', '.join(a.family_candidates)} equally and nothing in it "
            "(shapes, target set, base_model) tells which",
        )
    elif a.family is None:
        yield _say("family-unknown", _first(a.family_evidence or ["no shapes to compare"]))
        return
    if a.unknown_targets and a.family is not None:
        yield _say(
            "unknown-target",
            f"{len(a.unknown_targets)} targets not in {a.family.name}: {_first(a.unknown_targets)}",
        )
    if a.shape_problems:
        yield _say("shape-mismatch", f"{len(a.shape_problems)} tensors: {_first(a.shape_problems)}")
    claimed = a.config.base_model if a.config else None
    if claimed and a.family is not None:
        named = family_for_base_model(claimed)
        if named is not None and named.name != a.family.name:
            yield _say(
                "base-model-mismatch",
                f"base_model {claimed!r} is {named.name}, tensors fit {a.family.name}",
            )


def _check_lineage(a: Analysis, ctx: Context) -> Iterator[Finding]:
    """A training-base adapter for the post-trained model or the reverse (with `--base`)."""
    claimed = a.config.base_model if a.config else None
    mismatch = lineage_mismatch(adapter_lineage(claimed), ctx.base)
    if mismatch is not None:
        yield _say("lineage-mismatch", mismatch)


def _check_tensors(a: Analysis, ctx: Context) -> Iterator[Finding]:
    if a.param_problems:
        yield _say(
            "inconsistent-tensors", f"{len(a.param_problems)} targets: {_first(a.param_problems)}"
        )
    rank = a.config.rank if a.config else None
    if len(a.ranks) > 1:
        yield _say("rank-mismatch", f"tensors use several ranks: {sorted(a.ranks)}")
    elif rank is not None and a.ranks and rank not in a.ranks:
        yield _say(
            "rank-mismatch",
            f"lora_config.rank is {rank} but the tensors have rank {next(iter(a.ranks))}",
        )
    if a.rank_problems:
        yield _say(
            "rank-exceeds-target", f"{len(a.rank_problems)} targets: {_first(a.rank_problems)}"
        )
    conventional = "F32" if a.source.format == "gguf" else "F16"  # sa3.cpp stores F32
    accepted = {conventional, *GGUF_TENSOR_TYPES} if a.source.format == "gguf" else {conventional}
    unusual = sorted(
        code
        for code in a.dtypes
        if code not in accepted  # GGUF F16 is `gguf-f16` (info): sa3.cpp reads it
        and dtypes.is_floating(code)
        and any(
            e.dtype == code and not e.key.endswith("baked_vnorm_row")
            for e in a.source.entries.values()
        )
    )
    if unusual:
        yield _say(
            "dtype-unconventional",
            f"tensors stored as {', '.join(unusual)} ({conventional} is conventional here)",
        )


def _check_coverage(a: Analysis, ctx: Context) -> Iterator[Finding]:
    cov = a.coverage
    if cov is None:
        return
    if cov.missing:
        yield _say("coverage-missing", f"{cov.line()}: {_first(cov.missing)}")
    if cov.unselected:
        yield _say(
            "coverage-unselected", f"{len(cov.unselected)} targets: {_first(cov.unselected)}"
        )


def _check_runtime(a: Analysis, ctx: Context) -> Iterator[Finding]:
    if SECONDS_CONDITIONER in a.groups.targets:
        yield _say(
            "no-runtime-module",
            f"{SECONDS_CONDITIONER} has no MLX runtime module; merge writes it into "
            f"{mlx_base_key(SECONDS_CONDITIONER)}",
        )
    kind = a.kind
    if kind is not None and kind.xs and a.source.format != "gguf":  # GGUF: gguf-xs-no-bases
        without = _xs_without_bases(a)
        if without:
            yield _say(
                "xs-no-bases",
                f"{len(without)} targets have no stored U/V; merge rebuilds them from the base",
            )
    if a.source.format == "pickle":
        yield _say("pickle-note", "legacy pickle read with torch.load(weights_only=True)")


def _xs_without_bases(a: Analysis) -> list[str]:
    return [t for t, p in a.groups.targets.items() if "U" not in p or "V" not in p]


def _check_gguf(a: Analysis, ctx: Context) -> Iterator[Finding]:
    """An sa3.cpp GGUF as sa3.cpp would load it (reference/formats.md "sa3.cpp adapter GGUF").

    Its loader aborts on a `lora.rank` that is not UINT32 or a `lora.alpha` that is not
    FLOAT32 (missing ones are config-missing), defaults a missing `lora.adapter_type` to
    lora, reads F16 tensors, and has no SVD at load: an XS adapter needs U and V stored.
    """
    if a.source.format != "gguf":
        return
    fields = a.source.fields
    for rule in SA3CPP_KV:
        found = fields.get(rule.key)
        if found is None:
            if rule.default is not None:
                yield _say(
                    "gguf-type-default",
                    f"no {rule.key}: sa3.cpp reads the adapter as {rule.default}",
                )
        elif found.type != rule.gguf_type:
            yield _say(
                "gguf-kv-type",
                f"{rule.key} is {found.type} ({found.value!r}); sa3.cpp requires "
                f"{rule.gguf_type} and aborts otherwise",
            )
    arch = fields.get(KEY_ARCHITECTURE)
    if arch is None:
        yield _say("gguf-architecture", f"no {KEY_ARCHITECTURE} (expected {ARCHITECTURE!r})")
    elif arch.value != ARCHITECTURE:
        yield _say(
            "gguf-architecture", f"{KEY_ARCHITECTURE} is {arch.value!r}, not {ARCHITECTURE!r}"
        )
    name = fields.get(KEY_NAME)
    expected = general_name(a.adapter_type) if a.adapter_type else None
    if name is None:
        yield _say(
            "gguf-name", f"no {KEY_NAME}" + (f" (expected {expected!r})" if expected else "")
        )
    elif expected is not None and name.value != expected:
        yield _say("gguf-name", f"{KEY_NAME} is {name.value!r}, not {expected!r}")
    f16 = [e.key for e in a.source.entries.values() if e.dtype == "F16"]
    if f16:
        yield _say("gguf-f16", f"{len(f16)} of {len(a.source.entries)} tensors are F16")
    kind = a.kind
    if kind is not None and kind.xs:
        without = _xs_without_bases(a)
        if without:
            yield _say(
                "gguf-xs-no-bases",
                f"{len(without)} {kind.name} targets have no stored U/V (sa3.cpp has no SVD "
                f"at load): {_first(without)}",
            )


def _values(source: AdapterSource, key: str) -> np.ndarray:
    """The tensor as stored when NumPy can compare it natively, else upcast to float32."""
    array = np.asarray(source.array(key))
    if array.dtype.kind == "f":
        return array
    return dtypes.to_float32(array)


def _check_data(a: Analysis, ctx: Context) -> Iterator[Finding]:
    """Checks that read data: magnitudes and lora_B/M_xs always (small), all with --deep.

    A URL is read by its header only (`sa3ckpt.io.remote`): the data checks are said to be
    skipped rather than silently passed.
    """
    if is_url(a.source.path):
        yield _say("header-only", "negative-magnitude and zero-effect need the tensor data")
        return
    negative, zero_effect_targets, bad = [], 0, []
    effect_params = ("lora_B", "M_xs")
    for target, params in a.groups.targets.items():
        for param, key in params.items():
            entry = a.source.entries[key]
            if not dtypes.is_floating(entry.dtype):
                continue
            if param.startswith("magnitude"):
                values = _values(a.source, key)
                if np.any(values < 0):
                    negative.append(f"{target}.{param}")
            elif param in effect_params and not np.any(_values(a.source, key)):
                zero_effect_targets += 1
            if ctx.deep:
                values = _values(a.source, key)
                count = int(values.size - np.count_nonzero(np.isfinite(values)))
                if count:
                    bad.append(f"{target}.{param} ({count})")
    if negative:
        yield _say("negative-magnitude", f"{len(negative)} tensors: {_first(negative)}")
    if a.groups.targets and zero_effect_targets == len(a.groups.targets):
        yield _say(
            "zero-effect",
            f"every target's lora_B / M_xs is all zero ({zero_effect_targets} targets)",
        )
    if bad:
        yield _say("nan-inf", f"{len(bad)} tensors with NaN/Inf: {_first(bad)}")


CHECKS: tuple[Check, ...] = (
    _check_config,
    _check_keys,
    _check_type,
    _check_tensors,
    _check_family,
    _check_coverage,
    _check_runtime,
    _check_gguf,
    _check_data,
    _check_lineage,
)


def validate_path(
    path: str, *, model: str = "auto", deep: bool = False, base: Identity | None = None
) -> FileResult:
    """Validate one adapter path; never raises for a bad adapter (it becomes findings).
    `base`: the model it is to be merged into (`lineage-mismatch`)."""
    result = FileResult(path)
    if not is_url(path) and not os.path.exists(path):  # the path itself is wrong
        result.malformed = True
        result.findings.append(_say("not-found", f"{path} does not exist"))
        return result
    if sniff_format(path) == "pickle":
        result.findings.append(_say("pickle", "legacy pickle: not read (pickles can run code)"))
        return result
    result.checkpoint = kind = identify_kind(path)
    if kind.is_codec_adapter:
        return _validate_codec(result, path, model)
    if model in CODEC_TARGET_FAMILIES and kind.is_dit_adapter:
        label = CODEC_TARGET_FAMILIES[model].label
        result.findings.append(
            _say("codec-unknown-target", f"an SA3 DiT adapter, not an adapter on the {label}")
        )
        return result
    if not kind.is_dit_adapter and kind.kind not in (UNKNOWN, PICKLE_FILE):
        # a base, DiT or conditioner weights, codec weights or a codec adapter: the adapter
        # rules would only list confusing errors; say once what the file is instead
        result.findings.append(_say("not-an-adapter", kind.not_a_dit_adapter()))
        return result
    try:
        source = open_adapter_source(path)
    except PickleRefusedError:
        result.findings.append(_say("pickle", "legacy pickle: not read (pickles can run code)"))
        return result
    except MalformedFileError as exc:
        result.malformed = True
        result.findings.append(_say("malformed", exc.cause))
        return result
    except UsageError as exc:  # a format whose optional extra is not installed
        result.findings.append(_say("unsupported-format", str(exc)))
        return result
    with source:
        try:
            analysis = analyze(source, model)
            ctx = Context(deep=deep, model=model, base=base)
            for check in CHECKS:
                result.findings.extend(check(analysis, ctx))
        except MalformedFileError as exc:  # data reads can still find a broken file
            result.malformed = True
            result.findings.append(_say("malformed", exc.cause))
            return result
    result.adapter_type = analysis.adapter_type
    result.family = analysis.family.name if analysis.family else None
    result.coverage = analysis.coverage.line() if analysis.coverage else None
    result.findings.sort(key=severity_order)
    return result


def _validate_codec(result: FileResult, path: str, model: str) -> FileResult:
    """A codec adapter: its findings against the codec target tables (ops.codec_adapter)."""
    try:
        source = open_adapter_source(path)
    except MalformedFileError as exc:
        result.malformed = True
        result.findings.append(_say("malformed", exc.cause))
        return result
    except UsageError as exc:
        result.findings.append(_say("unsupported-format", str(exc)))
        return result
    with source:
        codec = analyze_codec(source, model if model in CODEC_TARGET_FAMILIES else "auto")
    result.findings.extend(codec.findings)
    result.adapter_type = codec.adapter_type
    result.family = codec.family.name if codec.family else None
    result.coverage = codec.coverage
    result.findings.sort(key=severity_order)
    return result


@dataclass
class ValidationRun:
    files: list[FileResult]
    strict: bool

    @property
    def exit_code(self) -> int:
        if any(f.malformed for f in self.files):
            return MalformedFileError.exit_code
        if any(f.status(self.strict) == "fail" for f in self.files):
            return ValidationFailed.exit_code
        return EXIT_OK

    def totals(self) -> dict[str, int]:
        return {
            "files": len(self.files),
            "passed": sum(f.status(self.strict) == "pass" for f in self.files),
            "failed": sum(f.status(self.strict) == "fail" for f in self.files),
            "malformed": sum(f.malformed for f in self.files),
            "errors": sum(f.count("error") for f in self.files),
            "warnings": sum(f.count("warning") for f in self.files),
            "infos": sum(f.count("info") for f in self.files),
        }


def validate_paths(
    paths: Iterable[str],
    *,
    model: str = "auto",
    strict: bool = False,
    deep: bool = False,
    base: str | os.PathLike[str] | None = None,
) -> ValidationRun:
    """Validate files and folders (walked for adapter files and PEFT folders) in one process.

    `base`: the base the adapters are to be merged into; its lineage (a training base or the
    post-trained model, `sa3ckpt.lineage`) is checked against each adapter's `base_model`.
    """
    if model != "auto" and model not in FAMILIES and model not in CODEC_TARGET_FAMILIES:
        known = ", ".join([*FAMILIES, *CODEC_TARGET_FAMILIES])
        raise UsageError(f"unknown --model {model!r} (known: auto, {known})")
    into = None
    if base is not None:
        with open_base(base) as opened:  # MalformedFileError (exit 3) for a bad --base
            into = base_lineage(opened)
    expanded = walk_adapter_paths([os.fspath(p) for p in paths])
    if not expanded:
        raise UsageError("no adapter files found in the given paths")
    results = [validate_path(p, model=model, deep=deep, base=into) for p in expanded]
    return ValidationRun(results, strict)
