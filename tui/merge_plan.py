"""Turn the merge form into library arguments, refusing bad ones before any work starts.

The library refuses these too, but only once the worker runs; checking here puts the
reason next to the field at once and never starts a thread for a merge that cannot run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.io.atomic import (
    REFUSED_DIRECTORY,
    REFUSED_EXISTS,
    REFUSED_INPUT,
    REFUSED_SPECIAL,
    OutputRefused,
    check_output_path,
)
from sa3ckpt.ops.merge import AdapterArg
from sa3ckpt.strengths import StrengthError, parse_strength

# The library's output policy decides; the form only words its refusals for a person who
# cannot pass --force (the TUI never replaces a file).
REFUSALS = {
    REFUSED_INPUT: "output {output} is an input; choose a new file",
    REFUSED_DIRECTORY: "output {output} is a folder; name a file",
    REFUSED_EXISTS: "output {output} exists; choose a new file (nothing is replaced)",
    REFUSED_SPECIAL: "output {output} is a device or pipe; name a file",
}


class PlanError(ValueError):
    """A form value that cannot be merged; the message is shown as one line."""


@dataclass(frozen=True)
class MergePlan:
    """Validated arguments for `merge_checkpoint`."""

    base: str
    adapters: tuple[AdapterArg, ...]
    output: str
    semantics: str


def make_plan(base: str, adapters: list[tuple[str, str]], output: str, semantics: str) -> MergePlan:
    """Check the form (paths as typed, strengths as text) and build the plan."""
    base, output = base.strip(), output.strip()
    if not base:
        raise PlanError("choose a base checkpoint")
    if not os.path.isfile(base):
        raise PlanError(f"base {base} is not a file")
    if not adapters:
        raise PlanError("add at least one adapter")
    args = []
    for path, text in adapters:
        try:  # the CLI's own parser and words, so the form refuses what `merge` refuses
            strength = parse_strength(text, of=path)
        except StrengthError as exc:
            raise PlanError(str(exc)) from None
        args.append(AdapterArg(path, strength))
    if semantics not in SEMANTICS:
        raise PlanError(f"unknown semantics {semantics!r}")
    if not output:
        raise PlanError("choose an output path")
    try:
        check_output_path(output, inputs=[base, *(a.path for a in args)], overwrite=False)
    except OutputRefused as refused:
        raise PlanError(REFUSALS[refused.reason].format(output=output)) from None
    return MergePlan(base, tuple(args), output, semantics)


def suggested_output(base: str) -> str:
    """`bases/x.safetensors` -> `bases/x.merged.safetensors`; '' when there is no base."""
    if not base:
        return ""
    stem, ext = os.path.splitext(base)
    return f"{stem}.merged{ext or '.safetensors'}"
