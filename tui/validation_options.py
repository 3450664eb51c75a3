"""The validation tab's options: `--strict` and `--model`, as `sa3ckpt validate` takes them.

One small value object, so the tab, the workers and the verdict agree on what a result was
computed with. The model choices come from the library's family table (the same list the
CLI's `--model` accepts), never from a copy here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sa3ckpt.ops.validate import FileResult, validate_paths
from sa3ckpt.targets.codec_families import CODEC_TARGET_FAMILIES
from sa3ckpt.targets.families import FAMILIES

AUTO = "auto"


def model_choices() -> tuple[str, ...]:
    """`auto` and every family `sa3ckpt validate --model` accepts, in the table's order
    (the DiT families, then the SAME codec halves)."""
    return (AUTO, *FAMILIES, *CODEC_TARGET_FAMILIES)


@dataclass(frozen=True)
class ValidationOptions:
    """What a verdict is computed with; the defaults are the CLI's."""

    strict: bool = False
    model: str = AUTO

    def __post_init__(self) -> None:
        if self.model not in model_choices():
            raise ValueError(f"unknown model {self.model!r} (known: {', '.join(model_choices())})")

    def cli_args(self) -> str:
        """The same options as `sa3ckpt validate` flags (empty for the defaults)."""
        parts = [f"--model {self.model}"] if self.model != AUTO else []
        if self.strict:
            parts.append("--strict")
        return " ".join(parts)

    def describe(self) -> str:
        """'--model auto' or '--model small --strict': the options in full, for the tab."""
        return f"--model {self.model}" + (" --strict" if self.strict else "")

    def validate(self, path: str) -> FileResult:
        """The library call `sa3ckpt validate PATH` makes, with these options (one file or
        adapter folder in, one result out)."""
        run = validate_paths([path], model=self.model, strict=self.strict)
        return run.files[0]

    def status(self, result: FileResult) -> str:
        """The verdict as the CLI decides it: with --strict, warnings fail too."""
        return result.status(self.strict)
