"""The route matrix's expected outcomes: one cell per (input kind, route), refined by adapter
type or family where the outcome depends on them.

TABLE[route][kind] is an `Outcome`, or a dict keyed by every adapter type (`by_type`) or
every family the kind is generated for (`by_family`) whose values are outcomes (or further
dicts). Nothing falls back to a default: a new route, kind, type or family has no cell until
someone writes it here, and the matrix test fails until then (docs/development/route-matrix.md).

An `Outcome` is the exit code and, for a refusal, a substring of the one line it prints (on
stderr; validate's findings on stdout). A success is also read back by the route's own check
(tests/route_matrix_routes.py); `readback` names a documented deviation that check reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.ops.convert.adapters import PEFT_TYPES
from tests.route_matrix_inputs import ADAPTER_KINDS, CODEC_INPUTS, FAMILY_NAMES, PEFT_EXTRAS


@dataclass(frozen=True)
class Outcome:
    code: int
    message: str = ""  # a substring of the refusal's line (empty for a success)
    readback: str | None = None  # a documented read-back deviation (substring), else None
    why: str = ""  # for a refusal or deviation: the documented reason, for the docs


Cell: TypeAlias = "Outcome | Mapping[str, Cell]"
OK = Outcome(0)


def refuse(code: int, message: str, why: str = "") -> Outcome:
    return Outcome(code, message, why=why)


def by_type(rule: Callable[[str], Cell]) -> dict[str, Cell]:
    """A cell for every adapter type, from a rule over the type's row."""
    return {name: rule(name) for name in ADAPTER_TYPES}


def by_family(**cells: Cell) -> dict[str, Cell]:
    """A cell per test family, named by its family (tiny_small=..., tiny_medium=...)."""
    out = {name.replace("_", "-"): cell for name, cell in cells.items()}
    assert set(out) == set(FAMILY_NAMES), sorted(out)
    return out


def peft_or(refusal: Outcome, ok: Cell = OK) -> dict[str, Cell]:
    """`ok` for the types PEFT layers hold (lora, dora-rows and their -xs), else `refusal`."""
    return by_type(lambda t: ok if t in PEFT_TYPES else refusal)


# --- the kinds, grouped by what they hold ----------------------------------------------------

# Adapter kinds whose -xs files carry no U/V (the official saver, and synth's bare, mlx and
# legacy files, which are what early writers stored): routes that need the bases refuse them.
NO_UV = ("official", "bare", "mlx", "ckpt")
# Kinds in PEFT layers: an -xs adapter is held as the plain type (B = U·M, A = Vᵀ).
PEFT_LAYERS = ("peft", "peft-diffusers", "diffusers", *PEFT_EXTRAS)
FOREIGN = ("bare", "mlx", "peft", "peft-diffusers", "diffusers", *PEFT_EXTRAS)
# Kinds written without the targets diffusers' DiT has no slot for (the conditioner, wide
# Conv1d kernels): they convert to diffusers in both families.
DIFFUSERS_NAMED = ("peft-diffusers", "diffusers")
BASES = (
    "base-official",
    "base-official-full",
    "base-mlx-safetensors",
    "base-mlx-npz",
    "base-diffusers",
    "base-sa3cpp",
)
# Bases holding every DiT tensor (verify runs the DiT; a diffusers folder needs them all).
COMPLETE_BASES = ("base-official-full", "base-mlx-npz", "base-diffusers", "base-sa3cpp")
ALL_ADAPTERS = (*ADAPTER_KINDS, *PEFT_EXTRAS)

PEFT_CANNOT = refuse(2, "PEFT cannot express", "PEFT's DoRA magnitude is per output row")
DIFFUSERS_CANNOT = refuse(2, "diffusers cannot express", "diffusers' LoRA layers are PEFT's")
WIDE_KERNEL = refuse(
    2, "has a kernel wider than 1", "tiny-small's Conv1d k=3; diffusers' convs are 1-wide"
)
NOT_FOR_ADAPTERS = refuse(2, "--to official is for base checkpoints")
BASE_TO_ADAPTER = refuse(2, "is a base checkpoint: convert it --to official")
NOT_AN_ADAPTER = refuse(1, "not-an-adapter", "validate judges adapters; bases go to merge")
PICKLE_NOT_READ = refuse(1, "pickle", "validate never unpickles (no --allow-pickle)")
CAT_NOT_EXACT = refuse(2, "is exact only for lora/lora-xs", "DoRA/BoRA need --method svd")


def _adapters(cell: Cell | Callable[[str], Cell]) -> dict[str, Cell]:
    """The same cell (or a rule over the kind) for every adapter kind."""
    return {kind: cell(kind) if callable(cell) else cell for kind in ALL_ADAPTERS}


def _strict(kind: str) -> Cell:
    if kind == "ckpt":
        return PICKLE_NOT_READ
    if kind == "bare":
        return refuse(1, "bare-keys", "the official loader loads nothing from bare keys")
    if kind in FOREIGN:
        return refuse(1, "foreign-dialect", "the official loader expects sa3 keys")
    return OK


def _to_diffusers(kind: str) -> Cell:
    ok: Cell = OK if kind in DIFFUSERS_NAMED else by_family(tiny_small=WIDE_KERNEL, tiny_medium=OK)
    return peft_or(DIFFUSERS_CANNOT, ok)


def _combine(kind: str) -> Cell:
    no_uv = refuse(2, "shapes unknown without U/V; pass --base", "-xs without U/V")
    lora_xs = no_uv if kind in NO_UV else OK
    return by_type(lambda t: OK if t == "lora" else lora_xs if t == "lora-xs" else CAT_NOT_EXACT)


def _resize(kind: str) -> Cell:
    no_uv = refuse(2, "stores no U/V; pass --base BASE or --bases FILE", "-xs without U/V")
    return by_type(lambda t: no_uv if ADAPTER_TYPES[t].xs and kind in NO_UV else OK)


def _codec(cell: Cell) -> dict[str, Cell]:
    return {type_name: cell for _family, type_name in CODEC_INPUTS}


CODEC_NONSENSE = refuse(2, "is a codec adapter: --to", "codec targets have no such dialect")


def _bases(cell: Cell | Callable[[str], Cell]) -> dict[str, Cell]:
    return {kind: cell(kind) if callable(cell) else cell for kind in BASES}


def _base_to_sa3cpp(kind: str) -> Cell:
    if kind in COMPLETE_BASES and kind != "base-diffusers":
        return OK
    return refuse(
        4,
        "is not a complete SA3 DiT for sa3.cpp",
        "sa3.cpp's KVs come from every DiT tensor and the seconds conditioner",
    )


def _audit_base(kind: str) -> Cell:
    if kind == "base-mlx-npz":
        return Outcome(0, readback="0 rows", why="the table lists files of adapter suffixes")
    if kind == "base-sa3cpp":
        return Outcome(0, readback="2 rows", why="the DiT GGUF and its conditioner sidecar")
    return OK


def _not_adapter_file(kind: str) -> Cell:
    if kind == "base-sa3cpp":
        return refuse(3, "a gguf-model file holds base checkpoints, not adapters")
    if kind == "base-mlx-npz":
        return refuse(3, "a npz file holds base checkpoints, not adapters")
    if kind == "base-diffusers":
        return refuse(3, "a diffusers-folder file holds base checkpoints, not adapters")
    return refuse(3, "naming), not an adapter", "a base is what adapters merge into")


ROUTE_CELLS: dict[str, dict[str, Cell]] = {
    "inspect": {**_adapters(OK), "codec": OK, **_bases(OK)},
    "validate": {
        **_adapters(lambda k: PICKLE_NOT_READ if k == "ckpt" else OK),
        "codec": OK,
        **_bases(NOT_AN_ADAPTER),
    },
    "validate-strict": {**_adapters(_strict), "codec": OK, **_bases(NOT_AN_ADAPTER)},
    "convert-sa3": {**_adapters(OK), "codec": OK, **_bases(BASE_TO_ADAPTER)},
    "convert-bare": {
        **_adapters(OK),
        "codec": _codec(CODEC_NONSENSE),
        **_bases(BASE_TO_ADAPTER),
    },
    "convert-mlx": {**_adapters(OK), "codec": _codec(CODEC_NONSENSE), **_bases(OK)},
    "convert-peft": {
        **_adapters(lambda k: peft_or(PEFT_CANNOT)),
        "codec": OK,
        **_bases(BASE_TO_ADAPTER),
    },
    "convert-sa3cpp": {**_adapters(OK), "codec": OK, **_bases(_base_to_sa3cpp)},
    "convert-diffusers": {
        **_adapters(_to_diffusers),
        "codec": _codec(CODEC_NONSENSE),
        **_bases(
            lambda k: (
                OK
                if k in COMPLETE_BASES
                else refuse(4, "is not a complete SA3 DiT for a diffusers folder")
            )
        ),
    },
    "convert-official": {
        **_adapters(NOT_FOR_ADAPTERS),
        "codec": _codec(refuse(2, "--to official is not a codec adapter format")),
        **_bases(OK),
    },
    "merge": {**_adapters(OK), "codec": OK, **_bases(OK)},
    "merge-stack": {**_adapters(OK), "codec": OK, **_bases(OK)},
    "verify": {
        **_adapters(OK),
        "codec": _codec(
            refuse(3, "not an SA3 base checkpoint", "verify runs the DiT; codec merges are not")
        ),
        **_bases(
            lambda k: (
                OK
                if k in COMPLETE_BASES
                else refuse(4, "not a complete", "the DiT forward needs every tensor")
            )
        ),
    },
    "combine": {
        **_adapters(_combine),
        "codec": {"lora": OK, "dora-rows": CAT_NOT_EXACT},
        **_bases(_not_adapter_file),
    },
    "resize": {**_adapters(_resize), "codec": OK, **_bases(_not_adapter_file)},
    "hash": {
        **_adapters(OK),
        "codec": OK,
        **_bases(
            lambda k: (
                refuse(3, "a folder, but not an adapter folder") if k == "base-diffusers" else OK
            )
        ),
    },
    "audit": {
        **_adapters(OK),
        "codec": OK,
        **_bases(_audit_base),
    },
    "tui-open": {
        **_adapters(
            lambda k: (
                refuse(3, "refusing to load it", "the TUI opens no pickle") if k == "ckpt" else OK
            )
        ),
        "codec": OK,
        **_bases(OK),
    },
    "tui-convert": {**_adapters(OK), "codec": OK, **_bases(OK)},
    "tui-merge": {**_adapters(OK), "codec": OK, **_bases(OK)},
}
ROUTE_CELLS["tui-combine"] = ROUTE_CELLS["combine"]  # the form refuses what the CLI refuses

# An sa3 adapter by URL (docs/guides/remote.md): the header-only routes read it by byte
# ranges; every route that reads tensor data refuses it with exit 2 before fetching anything.
NEEDS_DATA = refuse(2, "needs the tensor data", "URLs are read header-only: download it first")
HEADER_ROUTES = ("inspect", "validate", "validate-strict", "hash", "audit", "tui-open")
for _route, _cells in ROUTE_CELLS.items():
    _cells["url"] = OK if _route in HEADER_ROUTES else NEEDS_DATA
