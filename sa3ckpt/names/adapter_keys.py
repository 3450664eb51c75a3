"""Adapter-key dialects: translate adapter tensor keys to and from canonical names.

Every reader turns file keys into (canonical target, param, slot) through this table and
every writer turns them back; nothing else in the project spells a dialect's key format.
A new dialect is one more `AdapterDialect` row (plus its parse/format pair). Base-checkpoint
keys live in `names.base_keys`.
Parsing never guesses: a key that is not an adapter key comes back as a `Rejected` with
the precise reason, so ledgers can say why a key was skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sa3ckpt.names.modules import (
    CONDITIONER_ROOT,
    DIFFUSERS_TRANSFORMER,
    DIT_ROOT,
    diffusers_target,
    from_mlx_module,
    from_sa3cpp_stem,
    strip_dit_root,
    to_diffusers_dit_path,
    to_diffusers_path,
    to_mlx_module,
    to_sa3cpp_stem,
)

# Canonical adapter parameter names (the official `parametrizations.weight.<slot>.<param>` leaf
# names plus the extras some writers add: U/V for -xs and the baked row norms for dora-rows*).
ADAPTER_PARAMS: tuple[str, ...] = (
    "lora_A",
    "lora_B",
    "M_xs",
    "magnitude",
    "magnitude_r",
    "magnitude_c",
    "U",
    "V",
    "baked_vnorm_row",
)
_PARAM_SET = frozenset(ADAPTER_PARAMS)


@dataclass(frozen=True)
class ParsedKey:
    """A file key understood as one adapter tensor of one canonical target."""

    key: str
    target: str
    param: str
    slot: int
    dialect: str


@dataclass(frozen=True)
class Rejected:
    """A key that is not an adapter key in the given dialect, and why."""

    key: str
    dialect: str
    reason: str


ParseResult = ParsedKey | Rejected


def _rooted(module: str) -> str | None:
    """The module if it carries a canonical root, else None."""
    if module.startswith(DIT_ROOT) or module.startswith(CONDITIONER_ROOT):
        return module
    return None


# --- sa3 and bare: `<module>.parametrizations.weight.<slot>.<param>` -------------------------

_PARAMETRIZED_RE = re.compile(
    r"^(?P<module>.+)\.parametrizations\.weight\.(?P<slot>[^.]+)\.(?P<param>[^.]+)$"
)


def _parse_parametrized(key: str, dialect: str, want_root: bool) -> ParseResult:
    match = _PARAMETRIZED_RE.match(key)
    if match is None:
        return Rejected(key, dialect, "no `.parametrizations.weight.<slot>.<param>` suffix")
    module, slot_text, param = match.group("module", "slot", "param")
    if not slot_text.isdigit():
        return Rejected(key, dialect, f"slot {slot_text!r} is not a number")
    if param not in _PARAM_SET:
        return Rejected(key, dialect, f"unknown adapter parameter {param!r}")
    rooted = _rooted(module)
    if want_root:
        if rooted is None:
            return Rejected(key, dialect, "module has no `model.`/`conditioners.` root (bare key)")
        return ParsedKey(key, rooted, param, int(slot_text), dialect)
    if module.startswith(DIT_ROOT):
        return Rejected(key, dialect, "module already has the `model.` root (sa3 key)")
    target = module if module.startswith(CONDITIONER_ROOT) else DIT_ROOT + module
    return ParsedKey(key, target, param, int(slot_text), dialect)


def _format_sa3(target: str, param: str, slot: int) -> str:
    return f"{target}.parametrizations.weight.{slot}.{param}"


def _format_bare(target: str, param: str, slot: int) -> str:
    return f"{strip_dit_root(target)}.parametrizations.weight.{slot}.{param}"


# --- mlx: `<mlx module path>.<param>` ----------------------------------------------------------


def _parse_mlx(key: str) -> ParseResult:
    module, _, param = key.rpartition(".")
    if not module:
        return Rejected(key, "mlx", "no module path before the parameter name")
    if param not in _PARAM_SET:
        return Rejected(key, "mlx", f"unknown adapter parameter {param!r}")
    if module.startswith(DIT_ROOT) or ".parametrizations." in key:
        return Rejected(key, "mlx", "not an MLX runtime path (has a PyTorch root or suffix)")
    return ParsedKey(key, from_mlx_module(module), param, 0, "mlx")


def _format_mlx(target: str, param: str, slot: int) -> str:
    module = to_mlx_module(target)
    if module is None:
        raise ValueError(f"{target}: no MLX runtime name")
    return f"{module}.{param}"


# --- peft: `base_model.model.<module>.lora_A.weight` -------------------------------------------

_PEFT_PARAMS = {
    "lora_A": "lora_A.weight",
    "lora_B": "lora_B.weight",
    "magnitude": "lora_magnitude_vector",
}
_PEFT_RE = re.compile(
    r"^base_model\.model\.(?P<module>.+?)\."
    r"(?P<param>lora_A|lora_B|lora_magnitude_vector)"
    r"(?:\.(?P<adapter>(?!weight$)[A-Za-z0-9_\-]+))?(?:\.weight)?$"
)
_PEFT_BY_FILE_PARAM = {"lora_A": "lora_A", "lora_B": "lora_B", "lora_magnitude_vector": "magnitude"}


def _parse_peft(key: str) -> ParseResult:
    if not key.startswith("base_model.model."):
        return Rejected(key, "peft", "no `base_model.model.` prefix")
    match = _PEFT_RE.match(key)
    if match is None:
        return Rejected(key, "peft", "not a lora_A / lora_B / lora_magnitude_vector tensor")
    module = match.group("module")
    # PEFT may wrap the DiT wrapper (names keep `model.`) or the DiT itself (names do not).
    target = _rooted(module) or DIT_ROOT + module
    return ParsedKey(key, target, _PEFT_BY_FILE_PARAM[match.group("param")], 0, "peft")


def _format_peft(target: str, param: str, slot: int) -> str:
    if param not in _PEFT_PARAMS:
        raise ValueError(f"PEFT cannot express adapter parameter {param!r}")
    return f"base_model.model.{target}.{_PEFT_PARAMS[param]}"


# --- diffusers: `transformer.<StableAudio3DiTModel module>.lora_A.weight` -----------------------
# The file form diffusers' LoRA loaders read (component prefix, PEFT leaves); the seconds
# conditioner is `duration_embedder.linear.*` (another component). `peft-diffusers` is a PEFT
# folder saved from a `StableAudio3DiTModel`: PEFT's prefix, diffusers' module names.

_LORA_LEAF_RE = re.compile(
    r"^(?P<module>.+?)\.(?P<param>lora_A\.weight|lora_B\.weight|lora_magnitude_vector)$"
)
_PARAM_BY_LORA_LEAF = {leaf: param for param, leaf in _PEFT_PARAMS.items()}


def _parse_diffusers(key: str) -> ParseResult:
    match = _LORA_LEAF_RE.match(key)
    if match is None:
        return Rejected(key, "diffusers", "not a lora_A / lora_B / lora_magnitude_vector tensor")
    target = diffusers_target(match.group("module"))
    if target is None:
        return Rejected(
            key, "diffusers", "not a diffusers module path (transformer.… or duration_embedder.…)"
        )
    return ParsedKey(key, target, _PARAM_BY_LORA_LEAF[match.group("param")], 0, "diffusers")


def _format_diffusers(target: str, param: str, slot: int) -> str:
    if param not in _PEFT_PARAMS:
        raise ValueError(f"diffusers (PEFT layers) cannot express adapter parameter {param!r}")
    path = to_diffusers_path(target)
    if path is None:
        raise ValueError(f"{target}: no diffusers module")
    return f"{path}.{_PEFT_PARAMS[param]}"


def _parse_peft_diffusers(key: str) -> ParseResult:
    if not key.startswith("base_model.model."):
        return Rejected(key, "peft-diffusers", "no `base_model.model.` prefix")
    match = _PEFT_RE.match(key)
    if match is None:
        return Rejected(
            key, "peft-diffusers", "not a lora_A / lora_B / lora_magnitude_vector tensor"
        )
    target = diffusers_target(f"{DIFFUSERS_TRANSFORMER}.{match.group('module')}")
    if target is None:
        return Rejected(key, "peft-diffusers", "not a StableAudio3DiTModel module path")
    return ParsedKey(key, target, _PEFT_BY_FILE_PARAM[match.group("param")], 0, "peft-diffusers")


def _format_peft_diffusers(target: str, param: str, slot: int) -> str:
    if param not in _PEFT_PARAMS:
        raise ValueError(f"PEFT cannot express adapter parameter {param!r}")
    path = to_diffusers_dit_path(target)
    if path is None:
        raise ValueError(f"{target}: not a module of diffusers' StableAudio3DiTModel")
    return f"base_model.model.{path}.{_PEFT_PARAMS[param]}"


# --- sa3cpp: `<stem>.<param>` -------------------------------------------------------------------


def _parse_sa3cpp(key: str) -> ParseResult:
    stem, _, param = key.rpartition(".")
    if not stem:
        return Rejected(key, "sa3cpp", "no stem before the tensor kind")
    if param not in _PARAM_SET:
        return Rejected(key, "sa3cpp", f"unknown tensor kind {param!r}")
    target = from_sa3cpp_stem(stem)
    if target is None:
        return Rejected(key, "sa3cpp", f"unknown sa3.cpp stem {stem!r}")
    return ParsedKey(key, target, param, 0, "sa3cpp")


def _format_sa3cpp(target: str, param: str, slot: int) -> str:
    stem = to_sa3cpp_stem(target)
    if stem is None:
        raise ValueError(f"{target}: sa3.cpp has no stem for this target")
    return f"{stem}.{param}"


# How a dialect's own selection rules (PEFT-style `target_modules`) spell a target's module;
# dialects not listed select by the canonical name.
_SELECTION_SPELLING: dict[str, Callable[[str], str | None]] = {
    "diffusers": to_diffusers_path,
    "peft-diffusers": to_diffusers_dit_path,
}


def selection_name(target: str, dialect: str | None) -> str | None:
    """The module name a dialect's `target_modules` are matched against (None: no module)."""
    spell = _SELECTION_SPELLING.get(dialect or "")
    return target if spell is None else spell(target)


@dataclass(frozen=True)
class AdapterDialect:
    """One way of spelling adapter tensor keys in a file.

    `detect_order` breaks ties when several dialects explain the same number of keys: the
    lower number (the more specific spelling) wins, so sa3 beats bare, peft beats mlx, and
    peft-diffusers (which accepts only diffusers paths) beats peft (which accepts any path).
    """

    name: str
    description: str
    example: str
    parse: Callable[[str], ParseResult]
    format: Callable[[str, str, int], str]
    has_slots: bool
    detect_order: int


ADAPTER_DIALECTS: dict[str, AdapterDialect] = {
    d.name: d
    for d in (
        AdapterDialect(
            "sa3",
            "official SA3 trainer: rooted module + parametrizations.weight.<slot>.<param>",
            "model.transformer.layers.0.self_attn.to_qkv.parametrizations.weight.0.lora_A",
            lambda key: _parse_parametrized(key, "sa3", want_root=True),
            _format_sa3,
            True,
            0,
        ),
        AdapterDialect(
            "bare",
            "early MLX writers: sa3 keys without the `model.` root (official loader loads nothing)",
            "transformer.layers.0.self_attn.to_qkv.parametrizations.weight.0.lora_A",
            lambda key: _parse_parametrized(key, "bare", want_root=False),
            _format_bare,
            True,
            5,
        ),
        AdapterDialect(
            "mlx",
            "MLX runtime module paths (to_local_embed.seq.N, cond.seconds_total) + .<param>",
            "transformer.layers.0.to_local_embed.seq.0.lora_A",
            _parse_mlx,
            _format_mlx,
            False,
            6,
        ),
        AdapterDialect(
            "peft",
            "Hugging Face PEFT: base_model.model.<module>.lora_A.weight, lora_magnitude_vector",
            "base_model.model.model.transformer.layers.0.self_attn.to_qkv.lora_A.weight",
            _parse_peft,
            _format_peft,
            False,
            3,
        ),
        AdapterDialect(
            "sa3cpp",
            "sa3.cpp GGUF tensor names: <stem>.<param>",
            "dit.0.self.qkv.lora_A",
            _parse_sa3cpp,
            _format_sa3cpp,
            False,
            4,
        ),
        AdapterDialect(
            "diffusers",
            "diffusers LoRA file: transformer.<StableAudio3DiTModel module>.lora_A.weight "
            "(the seconds conditioner as duration_embedder.linear.*)",
            "transformer.transformer_blocks.0.self_attn.to_qkv.lora_A.weight",
            _parse_diffusers,
            _format_diffusers,
            False,
            1,
        ),
        AdapterDialect(
            "peft-diffusers",
            "PEFT saved from diffusers' StableAudio3DiTModel: base_model.model.<diffusers module>",
            "base_model.model.transformer_blocks.0.self_attn.to_qkv.lora_A.weight",
            _parse_peft_diffusers,
            _format_peft_diffusers,
            False,
            2,
        ),
    )
}


def adapter_dialect(name: str) -> AdapterDialect:
    """Look up a dialect by name with a clear error listing the known ones."""
    try:
        return ADAPTER_DIALECTS[name]
    except KeyError:
        known = ", ".join(ADAPTER_DIALECTS)
        raise ValueError(f"unknown dialect {name!r} (known: {known})") from None


def parse_adapter_key(key: str, dialect: str) -> ParseResult:
    """Parse one file key in a dialect into (target, param, slot) or a rejection reason."""
    return adapter_dialect(dialect).parse(key)


def format_adapter_key(target: str, param: str, dialect: str, slot: int = 0) -> str:
    """Spell the file key of an adapter tensor in a dialect (ValueError if inexpressible)."""
    if param not in _PARAM_SET:
        raise ValueError(f"unknown adapter parameter {param!r}")
    return adapter_dialect(dialect).format(target, param, slot)


@dataclass(frozen=True)
class DialectGuess:
    """The dialect that explains the most keys, with the counts that justify it."""

    dialect: str | None
    parsed: int
    total: int
    evidence: str


def _detection_order() -> tuple[str, ...]:
    return tuple(sorted(ADAPTER_DIALECTS, key=lambda name: ADAPTER_DIALECTS[name].detect_order))


@dataclass
class KeyGroups:
    """File keys grouped by canonical target: target -> param -> key, plus what did not fit."""

    dialect: str
    targets: dict[str, dict[str, str]]
    slots: dict[str, set[int]]
    rejected: list[Rejected]

    @property
    def parsed(self) -> int:
        return sum(len(params) for params in self.targets.values())

    def multi_slot_targets(self) -> list[str]:
        return [t for t, used in self.slots.items() if len(used) > 1]

    def nonzero_slots(self) -> dict[str, int]:
        return {t: min(used) for t, used in self.slots.items() if len(used) == 1 and 0 not in used}


def detect_and_group(keys: Iterable[str]) -> tuple[DialectGuess, KeyGroups]:
    """Pick the dialect under which most keys parse, and the keys grouped under it.

    A dialect that explains every key ends the search, so the common case parses once.
    """
    key_list = list(keys)
    best: KeyGroups | None = None
    for name in _detection_order():
        groups = group_adapter_keys(key_list, name)
        if groups.parsed and (best is None or groups.parsed > best.parsed):
            best = groups
        if not groups.rejected:
            break
    total = len(key_list)
    if best is None:
        guess = DialectGuess(None, 0, total, "no key parses as an adapter key in any dialect")
        reason = "not an adapter key in any dialect"
        return guess, KeyGroups("-", {}, {}, [Rejected(k, "-", reason) for k in key_list])
    guess = DialectGuess(
        best.dialect, best.parsed, total, f"{best.parsed}/{total} keys parse as {best.dialect}"
    )
    return guess, best


def detect_adapter_dialect(keys: Iterable[str]) -> DialectGuess:
    """The dialect under which most keys parse, with the counts that justify it."""
    return detect_and_group(keys)[0]


def group_adapter_keys(keys: Iterable[str], dialect: str) -> KeyGroups:
    """Parse every key in a dialect; the one place readers turn keys into targets."""
    parse = adapter_dialect(dialect).parse
    groups = KeyGroups(dialect, {}, {}, [])
    for key in keys:
        result = parse(key)
        if isinstance(result, Rejected):
            groups.rejected.append(result)
            continue
        groups.slots.setdefault(result.target, set()).add(result.slot)
        groups.targets.setdefault(result.target, {})[result.param] = key
    return groups


# --- XS bases files: `<canonical target>.<basis param>` ----------------------------------------
# Which basis params exist (U, V) is the adapter types' business (`adapters.types.BASIS_PARAMS`);
# this is only how a bases file spells one.


def format_xs_bases_key(target: str, basis_param: str) -> str:
    """Key of one precomputed XS basis in a bases file (`sa3ckpt bases`)."""
    return f"{target}.{basis_param}"


def parse_xs_bases_key(key: str) -> tuple[str, str] | None:
    """(canonical target, basis param) of a bases-file key, None without both parts."""
    target, _, basis_param = key.rpartition(".")
    if not target or not basis_param:
        return None
    return target, basis_param
