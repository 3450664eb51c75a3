"""How far the strength semantics' merges are apart for one stack: does the choice matter?

For every target, the stack is merged under each semantics the library implements
(`adapters.formulas.SEMANTICS`, computed with the same NumPy kernel `merge` writes with),
and for each pair (a, b) two relative Frobenius differences are reported:

- relative:  ‖W_a − W_b‖ / ‖W0‖, the difference against the weight itself;
- of_effect: ‖W_a − W_b‖ / max(‖W_a − W0‖, ‖W_b − W0‖), against what the adapters do
  (0 when neither changes the weight): 1 means the choice is as large as the adapter.

Plain lora / lora-xs stacks and one adapter at strength 1 agree under every semantics (up to
float32 rounding); DoRA/BoRA at other strengths or stacked do not.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.adapters.kernels import NumpyAdapter, merge_f32

TOP = 5  # targets listed per pair, largest difference first


@dataclass(frozen=True)
class PairDifference:
    """The difference of two semantics' merged weights on one target."""

    relative: float
    of_effect: float


def _pair_key(a: str, b: str) -> str:
    return f"{a}-{b}"


def pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of semantics, in table order."""
    return list(itertools.combinations(names, 2))


def target_differences(
    w0: np.ndarray,
    stack: Sequence[tuple[NumpyAdapter, float]],
    names: Sequence[str] | None = None,
) -> dict[str, PairDifference]:
    """Pair key `a-b` -> the differences on one target (canonical 2-D base weight)."""
    names = list(SEMANTICS) if names is None else list(names)
    base = np.asarray(w0, np.float64)
    with np.errstate(all="ignore"):
        merged = {n: merge_f32(w0, stack, n).astype(np.float64) for n in names}
    base_norm = float(np.linalg.norm(base))
    effect = {n: float(np.linalg.norm(m - base)) for n, m in merged.items()}
    out: dict[str, PairDifference] = {}
    for a, b in pairs(names):
        diff = float(np.linalg.norm(merged[a] - merged[b]))
        scale = max(effect[a], effect[b])
        out[_pair_key(a, b)] = PairDifference(
            relative=diff / base_norm if base_norm else 0.0,
            of_effect=diff / scale if scale else 0.0,
        )
    return out


@dataclass
class SemanticsComparison:
    """Per-target pairwise differences, with the maximum and the top targets per pair."""

    semantics: list[str]
    targets: dict[str, dict[str, PairDifference]] = field(default_factory=dict)

    def add(self, target: str, differences: Mapping[str, PairDifference]) -> None:
        self.targets[target] = dict(differences)

    def ranked(self, pair: str) -> list[tuple[str, PairDifference]]:
        """Targets by decreasing relative difference for one pair."""
        rows = [(t, d[pair]) for t, d in self.targets.items() if pair in d]
        return sorted(rows, key=lambda row: -row[1].relative)

    def pair_keys(self) -> list[str]:
        return [_pair_key(a, b) for a, b in pairs(self.semantics)]

    def lines(self, top: int = TOP) -> list[str]:
        out = [f"semantics compared on {len(self.targets)} targets ({', '.join(self.semantics)})"]
        for pair in self.pair_keys():
            ranked = self.ranked(pair)
            if not ranked:
                continue
            worst_target, worst = ranked[0]
            out.append(
                f"{pair}: max ‖ΔW‖/‖W0‖ {worst.relative:.3%} ({worst_target}), "
                f"max of the adapters' effect {max(d.of_effect for _, d in ranked):.1%}"
            )
            out += [
                f"  {d.relative:.3%} of ‖W0‖, {d.of_effect:.1%} of the effect: {t}"
                for t, d in ranked[:top]
            ]
        return out

    def to_json(self, top: int = TOP) -> dict[str, Any]:
        summary = {}
        for pair in self.pair_keys():
            ranked = self.ranked(pair)
            summary[pair] = {
                "max_relative": ranked[0][1].relative if ranked else 0.0,
                "max_of_effect": max((d.of_effect for _, d in ranked), default=0.0),
                "top": [
                    {"target": t, "relative": d.relative, "of_effect": d.of_effect}
                    for t, d in ranked[:top]
                ],
            }
        return {
            "semantics": self.semantics,
            "pairs": summary,
            "targets": {
                t: {p: {"relative": d.relative, "of_effect": d.of_effect} for p, d in diffs.items()}
                for t, diffs in self.targets.items()
            },
        }
