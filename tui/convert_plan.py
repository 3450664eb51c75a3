"""The convert form's logic: what the input is, which targets it may take, and the run.

The screen only lays out widgets; everything that decides something lives here so it can
be tested without a terminal. The run calls the same library functions as `sa3ckpt
convert` (`ops.convert.convert_adapter` for adapters, `ops.convert_base.convert_base` for
bases, routed by the same `is_base_checkpoint` rule), never the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sa3ckpt.errors import Sa3ckptError, VerificationError
from sa3ckpt.io.atomic import REFUSED_EXISTS, OutputRefused
from sa3ckpt.io.diffusers_folder import DEFAULT_MAX_SHARD_SIZE
from sa3ckpt.io.formats import ADAPTER, BASE, CHECKPOINT_SUFFIXES, PICKLE, identify
from sa3ckpt.ops.convert import (
    BaseConvertLedger,
    ConvertLedger,
    ConvertTarget,
    convert_adapter,
    convert_base,
    refused_for,
    targets_for,
)
from sa3ckpt.ops.inspect import inspect_path
from sa3ckpt.progress import ProgressCallback
from sa3ckpt.sizes import parse_size

DORA_VARIANTS = ("auto", "rows", "cols")  # auto: what the tensors say (--dora-variant unset)
DEFAULT_DTYPE = "default"  # no --dtype: fp16 for adapters, each tensor's own for bases
# The form's options by the input kind they apply to (the CLI ignores or refuses the rest).
OPTION_KINDS: dict[str, frozenset[str]] = {
    "dtype": frozenset({ADAPTER, BASE}),
    "base": frozenset({ADAPTER}),
    "bases": frozenset({ADAPTER}),
    "dora-variant": frozenset({ADAPTER}),
    "drop-conditioner": frozenset({ADAPTER}),
    "include-conditioner": frozenset({ADAPTER}),
    "allow-pickle": frozenset({ADAPTER}),
    "allow-nonfinite": frozenset({ADAPTER}),
    "drop-unmapped": frozenset({BASE}),
    "max-shard-size": frozenset({BASE}),
    "force": frozenset({ADAPTER, BASE}),
}
DEFAULT_SHARD_TEXT = "10GB"  # DEFAULT_MAX_SHARD_SIZE as the CLI help writes it (a test checks)


class PlanError(ValueError):
    """A form value convert cannot run with; the message is shown as one line."""


@dataclass(frozen=True)
class InputInfo:
    """What the input path is, as convert will treat it."""

    path: str
    kind: str | None  # ADAPTER or BASE; None when convert cannot read it
    description: str  # one line: what it is, or why it cannot be converted
    adapter_type: str | None = None
    refused: tuple[str, ...] = ()  # adapter targets convert would refuse for this type
    refusal: str = ""

    def targets(self) -> list[ConvertTarget]:
        return [] if self.kind is None else targets_for(self.kind, self.adapter_type)


def describe_input(path: str) -> InputInfo:
    """Identify `path` from headers (run in a worker: a base header may be large)."""
    path = path.strip()
    if not path:
        return InputInfo(path, None, "choose a file to convert")
    found = identify(path)
    if found.kind == BASE:
        return InputInfo(path, BASE, f"base checkpoint, {found.naming} naming ({found.format})")
    if found.kind == PICKLE:
        return InputInfo(path, ADAPTER, "legacy pickle: tick allow-pickle to read it")
    if found.kind != ADAPTER:
        return InputInfo(path, None, f"cannot convert {path}: {found.reason}")
    try:
        report = inspect_path(path)
    except Sa3ckptError as exc:
        return InputInfo(path, None, f"cannot convert {path}: {exc.one_line()}")
    adapter_type = report.adapter_type.resolved
    shown = adapter_type or "adapter of unknown type"
    text = f"{shown} adapter, {found.naming} keys ({found.format})"
    if adapter_type is None:
        return InputInfo(path, ADAPTER, text)
    refused, reason = refused_for(adapter_type)
    return InputInfo(path, ADAPTER, text, adapter_type, tuple(refused), reason)


def _stem(path: str) -> str:
    """The path without its checkpoint suffix (a folder keeps its name)."""
    trimmed = path.rstrip("/\\") or path
    root, ext = os.path.splitext(trimmed)
    return root if ext.lower() in CHECKPOINT_SUFFIXES else trimmed


def suggested_output(path: str, target: ConvertTarget) -> str:
    """`x.safetensors` --to sa3cpp -> `x.sa3cpp.gguf`; folders (peft, diffusers) get no suffix."""
    if not path.strip():
        return ""
    return f"{_stem(path.strip())}.{target.name}{target.main_suffix}"


@dataclass(frozen=True)
class ConvertRequest:
    """Validated arguments for one library convert call."""

    input: str
    output: str
    kind: str
    to: str
    dtype: str | None = None
    base: str | None = None
    bases: str | None = None
    dora_variant: str | None = None
    drop_conditioner: bool = False
    include_conditioner: bool = False
    drop_unmapped: bool = False
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
    allow_pickle: bool = False
    allow_nonfinite: bool = False
    force: bool = False


def make_request(
    info: InputInfo,
    to: str | None,
    output: str,
    *,
    dtype: str = DEFAULT_DTYPE,
    base: str = "",
    bases: str = "",
    dora_variant: str = "auto",
    drop_conditioner: bool = False,
    include_conditioner: bool = False,
    drop_unmapped: bool = False,
    max_shard_size: str = DEFAULT_SHARD_TEXT,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    force: bool = False,
) -> ConvertRequest:
    """Check the form and build the request; PlanError names the first problem."""
    if info.kind is None:
        raise PlanError(info.description)
    offered = [t.name for t in info.targets()]
    if to not in offered:
        raise PlanError(f"choose a target: {', '.join(offered)}")
    output = output.strip()
    if not output:
        raise PlanError("choose an output path")
    try:
        shard = parse_size(max_shard_size) if info.kind == BASE else DEFAULT_MAX_SHARD_SIZE
    except ValueError as exc:
        raise PlanError(f"max shard size: {exc}") from None
    adapter = info.kind == ADAPTER
    return ConvertRequest(
        input=info.path,
        output=output,
        kind=info.kind,
        to=to,
        dtype=None if dtype == DEFAULT_DTYPE else dtype,
        base=(base.strip() or None) if adapter else None,
        bases=(bases.strip() or None) if adapter else None,
        dora_variant=None if not adapter or dora_variant == "auto" else dora_variant,
        drop_conditioner=drop_conditioner and adapter,
        include_conditioner=include_conditioner and adapter,
        drop_unmapped=drop_unmapped and not adapter,
        max_shard_size=shard,
        allow_pickle=allow_pickle and adapter,
        allow_nonfinite=allow_nonfinite and adapter,
        force=force,
    )


Ledger = ConvertLedger | BaseConvertLedger


def run_convert(request: ConvertRequest, progress: ProgressCallback | None = None) -> Ledger:
    """The library call `sa3ckpt convert` makes for these arguments (bases report progress)."""
    if request.kind == BASE:
        return convert_base(
            request.input,
            request.output,
            to=request.to,
            dtype=request.dtype,
            drop_unmapped=request.drop_unmapped,
            force=request.force,
            max_shard_size=request.max_shard_size,
            progress=progress,
        )
    return convert_adapter(
        request.input,
        request.output,
        to=request.to,
        dtype=request.dtype,
        base_path=request.base,
        bases_path=request.bases,
        dora_variant=request.dora_variant,
        drop_conditioner=request.drop_conditioner,
        include_conditioner=request.include_conditioner,
        allow_pickle=request.allow_pickle,
        allow_nonfinite=request.allow_nonfinite,
        force=request.force,
    )


def verification_passed(ledger: Ledger) -> str:
    """The read-back verification of a written output, as one line with its numbers."""
    if isinstance(ledger, BaseConvertLedger):
        if ledger.worst_rel_error == 0.0:
            exact = "bit-exact"
        else:
            exact = f"within one rounding (worst relative error {ledger.worst_rel_error:.3g})"
        return f"verification PASSED: {ledger.tensors} tensors checked against the input, {exact}"
    where = f" ({ledger.worst_target})" if ledger.worst_target else ""
    return (
        f"verification PASSED: {ledger.targets} targets read back, worst relative error "
        f"{ledger.worst_error:.3g}{where} <= {ledger.tolerance:g} allowed for {ledger.code}"
    )


def verification_failed(error: VerificationError) -> str:
    """A failed verification as one line: the numbers when one measure exceeded its bound."""
    if error.worst is None:
        return f"verification FAILED: {error.one_line()}"
    where = f" ({error.target})" if error.target else ""
    bound = (
        f" > {error.tolerance:g} allowed"
        if error.tolerance is not None
        else " (more than one rounding)"
    )
    return (
        f"verification FAILED: worst relative error {error.worst:.3g}{where}{bound}; "
        "nothing was written"
    )


def refusal_text(error: OutputRefused, output: str) -> str:
    """The output policy's refusal in the form's words (force is a tick box here)."""
    if error.reason == REFUSED_EXISTS:
        return f"output {output} already exists: tick force to replace it"
    return error.one_line()
