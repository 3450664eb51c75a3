"""A merge's ledger: what a merge did, target by target, and the provenance digests.

Its own module because the DiT merge, the codec merge and the preview all speak it, and none of
them should import another to get it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from sa3ckpt.adapters.xs_uniqueness import summary_lines
from sa3ckpt.io.sources import PEFT_WEIGHTS
from sa3ckpt.ops.inspect import StackReport
from sa3ckpt.ops.merge.compare_semantics import SemanticsComparison
from sa3ckpt.ops.merge.exclusions import Excluded
from sa3ckpt.ops.merge.strength_map import TargetStrength

PROVENANCE_KEY = "sa3ckpt_merge"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def adapter_sha256(path: str) -> str | None:
    """sha256 of an adapter's data for provenance: the file itself, or a PEFT folder's
    weights file (its config is a few lines of JSON); None when there is neither."""
    if os.path.isfile(path):
        return file_sha256(path)
    weights = os.path.join(path, PEFT_WEIGHTS)
    return file_sha256(weights) if os.path.isfile(weights) else None


@dataclass
class MergeLedger:
    """What a merge did, target by target, and where the output came from."""

    base: str
    output: str
    semantics: str
    naming: str
    container: str
    adapters: list[dict[str, Any]] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing_from_base: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    unmatched_keys: list[str] = field(default_factory=list)
    bases_sources: dict[str, int] = field(default_factory=dict)
    excluded: list[Excluded] = field(default_factory=list)
    unused_exclusions: list[str] = field(default_factory=list)
    strength_map: list[str] = field(default_factory=list)  # --strength-map values as typed
    target_strengths: list[TargetStrength] = field(default_factory=list)  # with a map only
    stack: StackReport | None = None
    comparison: SemanticsComparison | None = None
    written: bool = True
    bases_file: str | None = None  # "PATH (origin)" of --bases
    bases_by_target: dict[str, str] = field(
        default_factory=dict
    )  # XS target -> where U/V came from
    bases_other_w0: list[str] = field(default_factory=list)  # file's digest differs from this W0
    xs_not_unique: list[dict[str, Any]] = field(default_factory=list)  # flagged targets
    xs_uniqueness_unknown: int = 0  # XS targets whose bases came without singular values
    copied: int = 0
    cast: int = 0
    seconds: float = 0.0
    # `lineage-mismatch`: an adapter trained on a training base going into the post-trained
    # model or the reverse (`sa3ckpt.lineage`), one line per adapter
    lineage: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """The stack report's warnings and the lineage warnings, one line each (the CLI also
        prints them on stderr; --strict refuses on any)."""
        stack = [w.message for w in self.stack.warnings] if self.stack else []
        return stack + self.lineage

    def lines(self) -> list[str]:
        out = self.comparison.lines() if self.comparison else []
        if not self.written:
            out.append(f"nothing written ({self.semantics} semantics chosen; add -o OUT to merge)")
        else:
            total = len(self.merged) + len(self.missing_from_base) + len(self.shape_mismatches)
            out += [
                f"{len(self.merged)}/{total} adapter targets merged into {self.base} "
                f"({self.naming} {self.container}, {self.semantics} semantics) -> {self.output}",
                f"{self.copied} other tensors copied bit-exactly"
                + (f", {self.cast} other tensors cast to the requested dtype" if self.cast else ""),
            ]
        return out + self.detail_lines() + self._bases_lines()

    def detail_lines(self) -> list[str]:
        """Exclusions, the stack report and what did not merge: known before anything is
        written, so a merge preview shows these under its own head."""
        out = [
            f"excluded {e.target} from adapter {e.adapter} ({e.path}): --exclude {e.spec}"
            for e in self.excluded
        ]
        out += [f"--exclude {spec} matched no target" for spec in self.unused_exclusions]
        if self.strength_map:
            given = " ".join(f"'{m}'" for m in self.strength_map)
            out.append(f"--strength-map {given} (matching entries multiply)")
            out += [t.line() for t in self.target_strengths]
        out += self.stack.lines() if self.stack else []
        out += [f"skipped {t}: {why}" for t, why in self.skipped]
        out += [f"missing from base: {t}" for t in self.missing_from_base]
        out += [f"shape mismatch: {m}" for m in self.shape_mismatches]
        out += [f"unmatched adapter key: {k}" for k in self.unmatched_keys]
        return out

    def _bases_lines(self) -> list[str]:
        """Where XS bases came from, where they were rebuilt although a file was given, W0
        mismatches, non-unique bases (learnt while merging)."""
        out = [f"XS bases from {src}: {n} targets" for src, n in sorted(self.bases_sources.items())]
        if self.bases_file is not None:
            rebuilt = [t for t, where in self.bases_by_target.items() if "rebuilt" in where]
            loaded = sum("loaded from" in where for where in self.bases_by_target.values())
            out.append(f"XS bases loaded from {self.bases_file}: {loaded} targets")
            out += [f"XS bases rebuilt from the base (not in the bases file): {t}" for t in rebuilt]
        out += [
            f"XS bases for {t} were made from another W0 (its digest differs from this base's)"
            for t in self.bases_other_w0
        ]
        xs_targets = len(self.bases_by_target) or len(self.merged)
        out += summary_lines(self.xs_not_unique, xs_targets, "XS bases: ")
        if self.xs_uniqueness_unknown:
            out.append(
                f"XS bases uniqueness unknown for {self.xs_uniqueness_unknown} targets "
                "(the bases file records no singular values)"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "output": self.output,
            "semantics": self.semantics,
            "naming": self.naming,
            "container": self.container,
            "adapters": self.adapters,
            "merged": self.merged,
            "skipped": [{"target": t, "reason": r} for t, r in self.skipped],
            "missing_from_base": self.missing_from_base,
            "shape_mismatches": self.shape_mismatches,
            "unmatched_keys": self.unmatched_keys,
            "bases_sources": self.bases_sources,
            "excluded": [e.to_json() for e in self.excluded],
            "unused_exclusions": self.unused_exclusions,
            "strength_map": self.strength_map,
            "target_strengths": [t.to_json() for t in self.target_strengths],
            "stack_report": self.stack.to_json() if self.stack else None,
            "semantics_comparison": self.comparison.to_json() if self.comparison else None,
            "written": self.written,
            "bases_file": self.bases_file,
            "bases_by_target": self.bases_by_target,
            "bases_other_w0": self.bases_other_w0,
            "xs_not_unique": self.xs_not_unique,
            "xs_uniqueness_unknown": self.xs_uniqueness_unknown,
            "copied": self.copied,
            "cast": self.cast,
            "seconds": round(self.seconds, 3),
            "lineage": self.lineage,
        }
