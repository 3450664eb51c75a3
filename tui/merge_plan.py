"""Turn the merge form into library arguments, refusing bad ones before any work starts.

The library refuses these too, but only once the worker runs; checking here puts the
reason next to the field at once and never starts a thread for a merge that cannot run.
Every check is the library's own (strength parser, --exclude parser, output policy), so
the form refuses exactly what `sa3ckpt merge` refuses.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.dtypes import NAMES as DTYPE_NAMES
from sa3ckpt.errors import UsageError
from sa3ckpt.io.atomic import (
    REFUSED_DIRECTORY,
    REFUSED_EXISTS,
    REFUSED_INPUT,
    REFUSED_SPECIAL,
    OutputRefused,
)
from sa3ckpt.io.base_checkpoint import base_container_of, check_base_output
from sa3ckpt.ops.merge import ONLY_ROOTS, MergeOptions, parse_exclusions, parse_strength_map
from sa3ckpt.strengths import AdapterArg, StrengthError, parse_strength

# The library's output policy decides; the form words its refusals for the form's controls.
REFUSALS = {
    REFUSED_INPUT: "output {output} is an input; choose a new file",
    REFUSED_DIRECTORY: "output {output} is a folder; name a file",
    REFUSED_EXISTS: "output {output} exists; tick 'force' to replace it, or choose a new file",
    REFUSED_SPECIAL: "output {output} is a device or pipe; name a file",
}


class PlanError(ValueError):
    """A form value that cannot be merged; the message is shown as one line."""


@dataclass(frozen=True)
class MergePlan:
    """Validated arguments for `merge_checkpoint` / `preview_merge` (equal plans: same merge)."""

    base: str
    adapters: tuple[AdapterArg, ...]
    output: str
    options: MergeOptions = field(default_factory=MergeOptions)

    @property
    def semantics(self) -> str:
        return self.options.semantics

    def merge_options(self, *, compare: bool = False) -> MergeOptions:
        """The library's options for this plan: the merge and its preview take the same."""
        return dataclasses.replace(self.options, compare=compare)


def exclude_error(spec: str, paths: Sequence[str]) -> str | None:
    """The CLI's reason for refusing `--exclude spec` with these adapters, or None."""
    try:
        parse_exclusions([spec], paths)
    except UsageError as exc:
        return str(exc)
    return None


def strength_map_error(text: str, paths: Sequence[str]) -> str | None:
    """The CLI's reason for refusing `--strength-map text` with these adapters, or None.

    Only the syntax and the adapters are known here; an entry that matches no target is
    refused by the preview (the library's check, which needs the files)."""
    try:
        parse_strength_map([text], paths)
    except UsageError as exc:
        return str(exc)
    return None


def _check_options(options: MergeOptions, paths: Sequence[str]) -> None:
    if options.semantics not in SEMANTICS:
        raise PlanError(f"unknown semantics {options.semantics!r}")
    if options.dtype is not None and options.dtype not in DTYPE_NAMES:
        raise PlanError(f"unknown output dtype {options.dtype!r}")
    if options.only is not None and options.only not in ONLY_ROOTS:
        raise PlanError(f"--only takes {' or '.join(ONLY_ROOTS)}, not {options.only!r}")
    try:  # N= may point past an adapter removed since the pattern was added
        parse_exclusions(options.exclude, paths)
    except UsageError as exc:
        raise PlanError(str(exc)) from None
    for spec in options.strength_map:
        reason = strength_map_error(spec, paths)
        if reason is not None:
            raise PlanError(reason)
    if options.bases_path is not None and not os.path.isfile(options.bases_path):
        raise PlanError(f"bases file {options.bases_path} is not a file")


def make_plan(
    base: str,
    adapters: list[tuple[str, str]],
    output: str,
    semantics: str = "runtime",
    *,
    strength_map: str | None = None,
    bases: str | None = None,
    **flags: Any,
) -> MergePlan:
    """Check the form (paths as typed, strengths as text) and build the plan.

    strength_map: the form's one `--strength-map` value (None: no map). bases: the
    `--bases FILE` field. flags: the other `MergeOptions` fields (dtype, only, exclude,
    allow_pickle, force, strict), as the form holds them.
    """
    options = MergeOptions(
        semantics,
        strength_map=(strength_map,) if strength_map else (),
        bases_path=bases,
        **flags,
    )
    base, output = base.strip(), output.strip()
    if not base:
        raise PlanError("choose a base checkpoint")
    if not os.path.exists(base):  # a diffusers transformer folder is a base too
        raise PlanError(f"base {base} is not a file or folder")
    if not adapters:
        raise PlanError("add at least one adapter")
    args = []
    for path, text in adapters:
        try:  # the CLI's own parser and words, so the form refuses what `merge` refuses
            strength = parse_strength(text, of=path)
        except StrengthError as exc:
            raise PlanError(str(exc)) from None
        args.append(AdapterArg(path, strength))
    _check_options(options, [a.path for a in args])
    if not output:
        raise PlanError("choose an output path")
    inputs = [base, *(a.path for a in args), *([options.bases_path] if options.bases_path else [])]
    try:
        check_base_output(output, base_container_of(base), inputs=inputs, overwrite=options.force)
    except OutputRefused as refused:
        raise PlanError(REFUSALS[refused.reason].format(output=output)) from None
    return MergePlan(base, tuple(args), output, options)


def suggested_output(base: str) -> str:
    """`bases/x.safetensors` -> `bases/x.merged.safetensors`; '' when there is no base."""
    if not base:
        return ""
    stem, ext = os.path.splitext(base)
    return f"{stem}.merged{ext or '.safetensors'}"
