"""Codec adapters: LoRA-family adapters on a SAME codec half, read, identified and checked.

The DiT analysis (ops.analysis) knows DiT names only; a codec adapter has its own target
tables (targets/codec_families.py) and key spellings (names/codec_keys.py). This module
groups a file's keys by codec module, resolves the adapter type from the params each target
holds, picks the codec family whose shapes fit (SAME-S and SAME-L share module names, not
widths, so only shapes tell them apart), and turns what does not fit into findings for
validate, lines for inspect and refusals for convert and merge.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sa3ckpt.adapters.types import ADAPTER_TYPES, ALIASES, AdapterType
from sa3ckpt.findings import Finding
from sa3ckpt.io.sources import AdapterSource, TensorEntry
from sa3ckpt.names.codec_keys import parse_codec_key
from sa3ckpt.targets.codec_families import (
    CODEC_TARGET_FAMILIES,
    CodecFamily,
    codec_family,
    families_for_part,
)

# What the writer of the published encoder adapters measured: an fp16 round trip of the
# adapter tensors moved the encoded latent by 25-45% of the adapter's own effect.
FP32_ADVICE = (
    "encoder adapters should stay fp32: an fp16 round trip moved the latent by 25-45% of "
    "the adapter's effect in the writer's measurements"
)
HALF_DTYPES = {"F16", "BF16"}
CODEC_CONFIG_TARGETS = {"encoder": "encoder", "decoder": "decoder"}


@dataclass(frozen=True)
class ShapeMismatch:
    """One param whose shape the family does not give it."""

    module: str
    param: str
    found: tuple[int, ...]
    expected: tuple[int, ...]

    def line(self) -> str:
        return f"{self.module} {self.param} {self.found} (expected {self.expected})"


@dataclass
class CodecAdapter:
    """A codec adapter's header-level identity and what is wrong with it."""

    path: str
    format: str
    part: str | None
    dialects: list[str]
    config: dict[str, object] | None
    config_problem: str | None
    adapter_type: str | None
    rank: int | None
    alpha: float | None
    targets: dict[str, dict[str, TensorEntry]]
    unmatched: list[str]
    dtypes: dict[str, int]
    family: CodecFamily | None = None
    fits: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def scale(self) -> float | None:
        if self.rank and self.alpha is not None:
            return self.alpha / self.rank
        return None

    @property
    def coverage(self) -> str | None:
        if self.family is None:
            return None
        known = sum(1 for m in self.targets if m in self.family.by_name)
        return f"{known} of {len(self.family.targets)} {self.family.label} targets"

    @property
    def half_precision(self) -> bool:
        return any(d in HALF_DTYPES for d in self.dtypes)

    def notes(self) -> list[str]:
        """What inspect adds below the kind line."""
        out = []
        if self.part == "encoder":
            out.append(FP32_ADVICE + (" (this file is fp16/bf16)" if self.half_precision else ""))
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "family": self.family.name if self.family else None,
            "fits": self.fits,
            "part": self.part,
            "adapter_type": self.adapter_type,
            "rank": self.rank,
            "alpha": self.alpha,
            "scale": self.scale,
            "targets": len(self.targets),
            "coverage": self.coverage,
            "dialects": self.dialects,
            "unmatched_keys": self.unmatched,
            "notes": self.notes(),
            "findings": [f.to_json() for f in self.findings],
        }


def _say(rule: str, message: str) -> Finding:
    return Finding.of(rule, message)


def _config(source: AdapterSource) -> tuple[dict[str, object] | None, str | None]:
    if not source.config_text:
        return None, "no lora_config metadata"
    try:
        raw = json.loads(source.config_text)
    except (ValueError, RecursionError) as exc:
        return None, f"lora_config is not JSON ({' '.join(str(exc).split())})"
    if not isinstance(raw, dict):
        return None, "lora_config is not a JSON object"
    return raw, None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _resolve_type(params: set[str], declared: str | None) -> AdapterType | None:
    """The type whose required params are exactly what the targets hold."""
    fits = [t for t in ADAPTER_TYPES.values() if t.signature <= params <= set(t.params)]
    by_name = {t.name: t for t in fits}
    name = ALIASES.get(declared or "", declared or "")
    if name in by_name:
        return by_name[name]
    exact = [t for t in fits if t.signature == params - {"U", "V", "baked_vnorm_row"}]
    return exact[0] if len(exact) == 1 else (fits[0] if len(fits) == 1 else None)


def expected_shapes(
    kind: AdapterType, shape: tuple[int, int], rank: int, params: Iterable[str]
) -> dict[str, tuple[int, ...]]:
    """The shapes a target of (fan_out, fan_in) gives each param of `kind` at `rank`."""
    fan_out, fan_in = shape
    out: dict[str, tuple[int, ...]] = {}
    for p in params:
        if p == "baked_vnorm_row":
            out[p] = (fan_out,)
        else:
            out[p] = kind.param_shape(p, fan_out, fan_in, rank)
    return out


def mismatches(adapter: CodecAdapter, fam: CodecFamily) -> tuple[list[str], list[ShapeMismatch]]:
    """(targets the family does not have, params whose shapes it does not give)."""
    unknown: list[str] = []
    wrong: list[ShapeMismatch] = []
    kind = ADAPTER_TYPES.get(adapter.adapter_type or "")
    for module, params in adapter.targets.items():
        target = fam.target(module)
        if target is None:
            unknown.append(module)
            continue
        if kind is None or adapter.rank is None:
            continue
        want = expected_shapes(kind, target.shape, adapter.rank, params)
        for param, entry in params.items():
            if param in want and tuple(int(n) for n in entry.shape) != want[param]:
                if (
                    param == "magnitude"
                    and len(entry.shape) == 2
                    and entry.shape[0] * entry.shape[1] == want[param][0]
                ):
                    continue  # legacy 2-D magnitude of the right length
                wrong.append(ShapeMismatch(module, param, tuple(entry.shape), want[param]))
    return unknown, wrong


def _rank_from(targets: dict[str, dict[str, TensorEntry]]) -> int | None:
    """The most common leading dimension of lora_A (or M_xs): the rank (None: no such
    tensor of at least one dimension; a damaged header must not raise here)."""
    ranks = Counter(
        int(entry.shape[0])
        for p in targets.values()
        for entry in [p.get("lora_A") or p.get("M_xs")]
        if entry is not None and len(entry.shape) >= 1
    )
    return ranks.most_common(1)[0][0] if ranks else None


def analyze_codec(
    source: AdapterSource, model: str = "auto", part: str | None = None
) -> CodecAdapter:
    """Identify and check a codec adapter from its header (no tensor data is read)."""
    targets: dict[str, dict[str, TensorEntry]] = {}
    unmatched: list[str] = []
    dialects: set[str] = set()
    for key, entry in source.entries.items():
        parsed = parse_codec_key(key)
        if parsed is None:
            unmatched.append(key)
            continue
        module, param, dialect = parsed
        targets.setdefault(module, {})[param] = entry
        dialects.add(dialect)
    config, problem = _config(source)
    declared = config.get("adapter_type") if config else None
    all_params = {p for params in targets.values() for p in params}
    kind = _resolve_type(all_params, declared if isinstance(declared, str) else None)
    key_parts = {m.partition(".")[0] for m in targets}
    config_target = config.get("target") if config else None
    config_part = (
        CODEC_CONFIG_TARGETS.get(config_target.strip().lower())
        if isinstance(config_target, str)
        else None
    )
    found_part = part or config_part or (next(iter(key_parts)) if len(key_parts) == 1 else None)
    if len(key_parts) > 1:
        found_part = "autoencoder"
    rank = _rank_from(targets)
    adapter = CodecAdapter(
        path=source.path,
        format=source.format,
        part=found_part,
        dialects=sorted(dialects),
        config=config,
        config_problem=problem,
        adapter_type=kind.name if kind else None,
        rank=rank,
        alpha=_number(config.get("alpha")) if config else None,
        targets=targets,
        unmatched=unmatched,
        dtypes=dict(sorted(Counter(e.dtype for e in source.entries.values()).items())),
    )
    _check(adapter, model, declared, config_part, key_parts)
    return adapter


def _detect(adapter: CodecAdapter) -> list[CodecFamily]:
    part = adapter.part if adapter.part in ("encoder", "decoder") else None
    fits: list[CodecFamily] = []
    if adapter.rank is None or adapter.adapter_type is None:
        return fits  # no shape can be checked: no family is shown to fit
    for fam in families_for_part(part):
        unknown, wrong = mismatches(adapter, fam)
        if not unknown and not wrong and adapter.targets:
            fits.append(fam)
    return fits


def closest(adapter: CodecAdapter) -> tuple[CodecFamily, list[ShapeMismatch]] | None:
    """The same-part family with the fewest mismatches, for the error that names it."""
    part = adapter.part if adapter.part in ("encoder", "decoder") else None
    scored = []
    for fam in families_for_part(part):
        unknown, wrong = mismatches(adapter, fam)
        if not unknown:
            scored.append((len(wrong), fam.test_only, fam.name, fam, wrong))
    if not scored:
        return None
    scored.sort(key=lambda s: s[:3])
    return scored[0][3], scored[0][4]


def _check(
    adapter: CodecAdapter,
    model: str,
    declared: object,
    config_part: str | None,
    key_parts: set[str],
) -> None:
    say = adapter.findings.append
    if adapter.config_problem:
        say(_say("codec-config", f"{adapter.config_problem}: rank, alpha and type unknown"))
    if not adapter.targets:
        say(_say("no-targets", "no codec adapter target recognised"))
        return
    if adapter.adapter_type is None:
        params = sorted({p for ps in adapter.targets.values() for p in ps})
        say(_say("codec-type", f"params {', '.join(params)} fit no adapter type"))
    elif adapter.rank is None:
        say(_say("codec-type", "no lora_A or M_xs tensor with a rank dimension"))
    elif isinstance(declared, str) and ALIASES.get(declared, declared) != adapter.adapter_type:
        say(
            _say(
                "codec-type",
                f"lora_config adapter_type {declared!r} but the tensors are {adapter.adapter_type}",
            )
        )
    kind = ADAPTER_TYPES.get(adapter.adapter_type or "")
    incomplete = [m for m, ps in adapter.targets.items() if kind and not kind.signature <= set(ps)]
    if kind and incomplete:
        missing = sorted(kind.signature - set(adapter.targets[incomplete[0]]))
        say(
            _say(
                "codec-type",
                f"{len(incomplete)} targets lack {kind.name} params (e.g. {incomplete[0]}: "
                f"no {', '.join(missing)})",
            )
        )
    if adapter.config is not None:
        meta_rank = adapter.config.get("rank")
        if adapter.rank is not None and meta_rank != adapter.rank:
            say(
                _say(
                    "codec-rank",
                    f"lora_config rank {meta_rank!r} but the tensors have rank {adapter.rank}",
                )
            )
    if config_part and key_parts and key_parts != {config_part}:
        say(
            _say(
                "codec-shape",
                f"lora_config target {config_part!r} but the keys are on the "
                f"{'/'.join(sorted(key_parts))}",
            )
        )
    for key in adapter.unmatched[:3]:
        say(_say("unmatched-key", f"{key}: not a codec adapter key"))
    if model != "auto":
        fam = codec_family(model)
        adapter.family = fam
        adapter.fits = [f.name for f in _detect(adapter)]
        _family_findings(adapter, fam, adapter.fits)
    else:
        fits = _detect(adapter)
        adapter.fits = [f.name for f in fits]
        if fits:
            published = [f for f in fits if not f.test_only]
            adapter.family = (published or fits)[0]
        elif adapter.rank is not None and adapter.adapter_type is not None:
            near = closest(adapter)
            if near is None:
                unknown = sorted(adapter.targets)[:3]
                say(
                    _say("codec-unknown-target", f"targets no SAME table has: {'; '.join(unknown)}")
                )
            else:
                fam, wrong = near
                say(
                    _say(
                        "codec-shape",
                        f"fits no codec family; nearest {fam.label}: "
                        + "; ".join(w.line() for w in wrong[:3]),
                    )
                )
    if adapter.part == "encoder" and adapter.half_precision:
        halves = ", ".join(d for d in adapter.dtypes if d in HALF_DTYPES)
        say(_say("codec-encoder-fp32", f"encoder adapter stored as {halves}: {FP32_ADVICE}"))


def _family_findings(adapter: CodecAdapter, fam: CodecFamily, fits: list[str]) -> None:
    unknown, wrong = mismatches(adapter, fam)
    if unknown:
        adapter.findings.append(
            _say("codec-unknown-target", f"not {fam.label} targets: {'; '.join(unknown[:3])}")
        )
    if wrong:
        other = [CODEC_TARGET_FAMILIES[n].label for n in fits if n != fam.name]
        actually = (
            f"a {other[0]} adapter on the {fam.label}" if other else f"not {fam.label} shapes"
        )
        adapter.findings.append(
            _say(
                "codec-shape",
                f"{actually}: they share names, not widths; "
                + "; ".join(w.line() for w in wrong[:3]),
            )
        )
