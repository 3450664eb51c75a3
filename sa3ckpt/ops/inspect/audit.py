"""The audit table: one row per adapter file or adapter folder under a folder of runs.

A folder of training outputs is judged at a glance: what each file is (type, rank, alpha,
effective scale, targets, family, base_model, dtype, size), where it sits in its run (step and
epoch, from the metadata or the name, sorted as numbers), and the checks such a folder needs.
Rows come from the same header-only analysis inspect uses (`ops.analysis`), so by default no
tensor data is read and a thousand small files take about a second. Checks that need data are
opt-in and the table says which ran (`CHECKS`):

- name-rank / name-step / name-epoch (header): a file or folder name claims a number the
  content contradicts (`run-r128/` holding rank-16 files; `step=9000` in the name, 8000 in the
  metadata). Patterns: `sa3ckpt.ops.inspect.audit_names.PATTERNS`.
- duplicate (`hash`): the same tensor data under different names (tensor-data sha256,
  `sa3ckpt.io.hashing`); "identical file" when the whole files are equal too.
- zero-effect (`deep`): every lora_B / M_xs tensor is zero, as a fresh init leaves it (for
  DoRA/BoRA types: no low-rank update; the magnitudes may still rescale the weights).

A file that cannot be read is a row with status `malformed` and its cause; it never stops the
table.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import __version__, dtypes
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.formats import (
    ADAPTER,
    FORMATS,
    identify,
    is_adapter_dir,
    open_adapter_source,
    walk_adapter_paths,
)
from sa3ckpt.io.hashing import hash_path
from sa3ckpt.io.remote import is_url
from sa3ckpt.io.sources import PEFT_CONFIG, is_peft_dir, read_json
from sa3ckpt.ops.inspect.analysis import Analysis, analyze
from sa3ckpt.ops.inspect.audit_names import CLAIMS, NameClaims, name_claims, natural_key
from sa3ckpt.ops.inspect.checkpoint_kind import identify_kind

SCHEMA_VERSION = 1

# Row statuses, in the order `--sort status` lists them (problems first).
MALFORMED, FLAGGED, OK, BASE, UNKNOWN = "malformed", "flagged", "ok", "base", "unknown"
# Formats of the registry that hold bases and never adapters (io.formats.FORMATS).
BASE_ONLY_FORMATS = frozenset(f.name for f in FORMATS if ADAPTER not in f.holds)
STATUS_ORDER = (MALFORMED, FLAGGED, OK, BASE, UNKNOWN)


@dataclass(frozen=True)
class Check:
    """One check of the table: what it needs read (header, hash or deep) and what it finds."""

    code: str
    needs: str  # "header" | "hash" | "deep"
    finds: str


CHECKS: tuple[Check, ...] = (
    Check("name-rank", "header", "a file or folder name claims a rank the tensors contradict"),
    Check("name-step", "header", "the name claims a step the metadata contradicts"),
    Check("name-epoch", "header", "the name claims an epoch the metadata contradicts"),
    Check("duplicate", "hash", "the same tensor data under different names"),
    Check("zero-effect", "deep", "every lora_B / M_xs is zero (untrained)"),
)

# Where a step or epoch is recorded in a file, first found wins: (place, key). `lora_config`
# fields are the writer's (kept verbatim in `LoraConfig.extra`); `metadata` are header
# entries (kohya's trainers write ss_steps / ss_epoch).
METADATA_NUMBERS: dict[str, tuple[tuple[str, str], ...]] = {
    "step": (
        ("lora_config", "step"),
        ("lora_config", "global_step"),
        ("metadata", "step"),
        ("metadata", "global_step"),
        ("metadata", "ss_steps"),
    ),
    "epoch": (
        ("lora_config", "epoch"),
        ("metadata", "epoch"),
        ("metadata", "ss_epoch"),
    ),
}


@dataclass(frozen=True)
class Flag:
    code: str  # a CHECKS code
    message: str


@dataclass
class AuditRow:
    """One adapter (or a file that is not one) as the table shows it; JSON keys in order."""

    name: str  # relative to the audited root
    path: str
    status: str
    error: str | None = None
    kind: str | None = None  # what a row that is no SA3 DiT adapter is (ops.checkpoint_kind)
    format: str | None = None
    adapter_type: str | None = None
    rank: int | None = None
    tensor_ranks: list[int] = field(default_factory=list)
    alpha: float | None = None  # as written (PEFT: lora_alpha)
    scale: float | None = None  # the effective factor in front of B·A
    scale_rule: str | None = None  # "alpha/rank" | "alpha/sqrt(rank)" (rsLoRA PEFT)
    targets: int | None = None
    family: str | None = None
    base_model: str | None = None
    step: int | None = None
    step_source: str | None = None
    epoch: int | None = None
    epoch_source: str | None = None
    dtype: str | None = None  # the dtypes present, most common first (`F16`, `F16+F32`)
    size_bytes: int | None = None
    tensor_sha256: str | None = None
    file_sha256: str | None = None
    flags: list[Flag] = field(default_factory=list)

    def flag(self, code: str, message: str) -> None:
        self.flags.append(Flag(code, message))
        if self.status == OK:
            self.status = FLAGGED


@dataclass
class AuditTable:
    root: str
    rows: list[AuditRow]
    hashed: bool
    deep: bool
    sort: str = "name"

    @property
    def checks_run(self) -> list[str]:
        ran = {"header", *(["hash"] if self.hashed else []), *(["deep"] if self.deep else [])}
        return [c.code for c in CHECKS if c.needs in ran]

    @property
    def malformed(self) -> int:
        return sum(r.status == MALFORMED for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {s: n for s in STATUS_ORDER if (n := sum(r.status == s for r in self.rows))}


# --- reading one row ------------------------------------------------------------------------


def _metadata_number(a: Analysis, kind: str) -> tuple[int, str] | None:
    """The step or epoch the file records, and where (`lora_config.step`, `metadata.ss_steps`)."""
    places = {
        "lora_config": a.config.extra if a.config else {},
        "metadata": a.source.metadata,
    }
    for place, key in METADATA_NUMBERS[kind]:
        value = places[place].get(key)
        number = _as_int(value)
        if number is not None:
            return number, f"{place}.{key}"
    return None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _peft_config(a: Analysis) -> dict[str, Any]:
    """A PEFT folder's adapter_config.json as written ({} for other sources)."""
    path = a.source.path
    if not is_peft_dir(path):
        return {}
    raw = read_json(os.path.join(path, PEFT_CONFIG))
    return raw if isinstance(raw, dict) else {}


def _scale(a: Analysis, peft: dict[str, Any]) -> tuple[float | None, float | None, str | None]:
    """(alpha as written, effective scale, the rule) — rsLoRA PEFT scales by alpha/√rank.

    The PEFT reader turns rsLoRA's lora_alpha into the plain alpha with the same scale
    (lora_alpha·√r); the table shows the lora_alpha the user wrote and the rule.
    """
    config = a.config
    if config is None:
        return None, None, None
    lora_alpha = peft.get("lora_alpha")
    if peft.get("use_rslora") and isinstance(lora_alpha, int | float):
        return float(lora_alpha), config.scale, "alpha/sqrt(rank)"
    return float(config.alpha), config.scale, "alpha/rank"


def _dtype_label(a: Analysis) -> str | None:
    return "+".join(code for code, _ in a.dtypes.most_common()) or None


def _zero_effect(a: Analysis) -> bool | None:
    """Whether every lora_B / M_xs is zero (reads those tensors); None without any."""
    effect = [
        keys[param]
        for keys in a.groups.targets.values()
        for param in ("lora_B", "M_xs")
        if param in keys
    ]
    if not effect:
        return None
    with np.errstate(all="ignore"):
        return not any(np.any(dtypes.to_float32(np.asarray(a.source.array(k)))) for k in effect)


def _fill(row: AuditRow, a: Analysis, claims: NameClaims, deep: bool) -> None:
    """Everything the header says, the name checks, and (deep) the zero-effect check."""
    config = a.config
    row.format = a.source.format
    row.adapter_type = a.adapter_type
    row.rank = a.rank
    row.tensor_ranks = sorted(a.ranks)
    peft = _peft_config(a)
    row.alpha, row.scale, row.scale_rule = _scale(a, peft)
    row.targets = len(a.groups.targets)
    row.family = a.family.name if a.family else None
    base_model = peft.get("base_model_name_or_path")
    row.base_model = (config.base_model if config else None) or (
        base_model if isinstance(base_model, str) and base_model else None
    )
    row.dtype = _dtype_label(a)
    row.size_bytes = a.source.size
    for kind in ("step", "epoch"):
        recorded = _metadata_number(a, kind)
        named = claims.value(kind)
        if recorded is not None:
            setattr(row, kind, recorded[0])
            setattr(row, f"{kind}_source", recorded[1])
        elif named is not None:
            setattr(row, kind, named.value)
            setattr(row, f"{kind}_source", f"name {named.source!r}")
        if recorded is not None:
            for claim in claims.all(kind):
                if claim.value != recorded[0]:
                    row.flag(
                        f"name-{kind}",
                        f"name {claim.source!r} claims {kind} {claim.value}, "
                        f"{recorded[1]} is {recorded[0]}",
                    )
    if row.rank is not None:
        for claim in claims.all("rank"):
            if claim.value != row.rank:
                row.flag(
                    "name-rank",
                    f"name {claim.source!r} claims rank {claim.value}, the adapter is rank "
                    f"{row.rank}",
                )
    if deep and _zero_effect(a):
        decomposed = a.kind is not None and a.kind.is_weight_decomposed
        row.flag(
            "zero-effect",
            "every lora_B / M_xs is zero: no low-rank update"
            + (" (the magnitudes may still rescale the weights)" if decomposed else " (untrained)"),
        )


def audit_row(
    path: str, root: str, *, deep: bool = False, allow_pickle: bool = False, model: str = "auto"
) -> AuditRow:
    """One row, header-only unless `deep`; an unreadable file is a `malformed` row."""
    relative = os.path.relpath(path, root) if root and os.path.isdir(root) else path
    row = AuditRow(name=relative, path=path, status=OK)
    claims = name_claims(relative)
    identity = identify(path)
    if identity.is_base and identity.format in BASE_ONLY_FORMATS:
        # A container that holds no adapters (an sa3.cpp model GGUF shares the .gguf suffix
        # the walk lists): a base row like a safetensors base's, not an unreadable adapter.
        what = identify_kind(path)
        row.status, row.kind, row.format = BASE, what.label, identity.format
        row.size_bytes = os.path.getsize(path)
        return row
    try:
        with open_adapter_source(path, allow_pickle=allow_pickle) as source:
            a = analyze(source, model)
            if not a.groups.targets:
                identity = identify(path)
                what = identify_kind(path)  # header only, never raises
                row.status = BASE if identity.is_base else UNKNOWN
                row.kind = what.label
                row.format = source.format
                row.size_bytes = source.size
                row.error = None if identity.is_base else what.not_a_dit_adapter()
                row.dtype = _dtype_label(a)
                return row
            _fill(row, a, claims, deep)
    except MalformedFileError as exc:
        row.status = MALFORMED
        row.error = " ".join(exc.cause.split())
        for kind in CLAIMS[1:]:  # the name still places it in its run
            named = claims.value(kind)
            if named is not None:
                setattr(row, kind, named.value)
                setattr(row, f"{kind}_source", f"name {named.source!r}")
    return row


# --- the table ------------------------------------------------------------------------------


def _mark_duplicates(rows: Sequence[AuditRow]) -> None:
    groups: dict[str, list[AuditRow]] = defaultdict(list)
    for row in rows:
        if row.tensor_sha256 is not None and row.status != MALFORMED:
            groups[row.tensor_sha256].append(row)
    for members in groups.values():
        if len(members) < 2:
            continue
        for row in members:
            for other in members:
                if other is row:
                    continue
                same_file = other.file_sha256 == row.file_sha256
                row.flag(
                    "duplicate",
                    f"{'identical file' if same_file else 'same tensor data'} as {other.name}",
                )


def _hash_row(row: AuditRow) -> None:
    try:
        hashes = hash_path(row.path)
    except MalformedFileError as exc:
        row.status = MALFORMED
        row.error = " ".join(exc.cause.split())
        return
    row.tensor_sha256, row.file_sha256 = hashes.tensor_sha256, hashes.file_sha256


def _none_last(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


SORT_KEYS: dict[str, Callable[[AuditRow], Any]] = {
    "name": lambda r: natural_key(r.name),
    "step": lambda r: (_none_last(r.step), _none_last(r.epoch), natural_key(r.name)),
    "epoch": lambda r: (_none_last(r.epoch), _none_last(r.step), natural_key(r.name)),
    "rank": lambda r: (_none_last(r.rank), natural_key(r.name)),
    "type": lambda r: (_none_last(r.adapter_type), natural_key(r.name)),
    "status": lambda r: (STATUS_ORDER.index(r.status), natural_key(r.name)),
}
SORTS = tuple(SORT_KEYS)


def sort_rows(rows: Sequence[AuditRow], by: str) -> list[AuditRow]:
    """Rows by a SORT_KEYS key; numbers compare as numbers, missing values go last."""
    return sorted(rows, key=SORT_KEYS[by])


def audit_paths(
    paths: Sequence[str],
    *,
    hashes: bool = False,
    deep: bool = False,
    sort: str = "name",
    allow_pickle: bool = False,
    model: str = "auto",
    on_row: Callable[[int, int], None] | None = None,
    jobs: int = 1,
) -> AuditTable:
    """The audit table of every adapter under `paths` (folders walked recursively).

    Names are relative to the folder given (to the current folder for files given directly).
    `hashes` reads every byte (tensor and file sha256, the duplicate check); `deep` reads
    the lora_B / M_xs tensors (the zero-effect check). `on_row(done, total)` reports progress.
    URLs (`sa3ckpt.io.remote`) are fetched by up to `jobs` threads at a time: their rows wait
    on the network, not the CPU; local files are read in order, as before.
    """
    work: list[tuple[str, str]] = []
    for given in paths:
        root = given if os.path.isdir(given) and not is_adapter_dir(given) else ""
        root = root or os.path.dirname(given) or "."
        work.extend((item, root) for item in walk_adapter_paths([given]))

    def one(item: str, root: str) -> AuditRow:
        row = audit_row(item, root, deep=deep, allow_pickle=allow_pickle, model=model)
        if hashes and row.status != MALFORMED:
            _hash_row(row)
        return row

    rows: list[AuditRow] = []
    remote = [i for i, (item, _) in enumerate(work) if is_url(item)]
    fetched: dict[int, Future[AuditRow]] = {}
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        if jobs > 1:
            fetched = {i: pool.submit(one, *work[i]) for i in remote}
        for index, (item, root) in enumerate(work):
            rows.append(fetched[index].result() if index in fetched else one(item, root))
            if on_row is not None:
                on_row(len(rows), len(work))
    if hashes:
        _mark_duplicates(rows)
    root = paths[0] if len(paths) == 1 else "."
    return AuditTable(root, sort_rows(rows, sort), hashes, deep, sort)


# --- JSON -----------------------------------------------------------------------------------


def table_json(table: AuditTable) -> dict[str, Any]:
    """The `inspect --table --json` document (schema 1)."""
    return {
        "schema": SCHEMA_VERSION,
        "tool": f"sa3ckpt {__version__}",
        "root": table.root,
        "sort": table.sort,
        "hashed": table.hashed,
        "deep": table.deep,
        "checks_run": table.checks_run,
        "checks_not_run": [
            {"code": c.code, "needs": f"--{c.needs}"}
            for c in CHECKS
            if c.code not in table.checks_run
        ],
        "counts": table.counts(),
        "rows": [asdict(r) for r in table.rows],
    }


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, allow_nan=False)
