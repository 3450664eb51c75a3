"""combine: several adapters into one adapter.

- `cat` is exact for LoRA: ΔW = Σ w_i c_i B_i A_i is itself a LoRA of rank Σ r_i, with A
  stacked by rows and each B_i scaled by w_i c_i (output alpha = rank, so c = 1). XS inputs
  join as LoRA factors (B = U M, A = Vᵀ) when their bases are stored or a base is given.
- `svd` rebuilds Σ w_i ΔW_i per target and re-factors it to rank R, reporting the retained
  Frobenius energy per target. LoRA-only sums stay low-rank, so their SVD is exact and cheap
  (QR of the stacked factors, SVD of the small core); DoRA/BoRA inputs need `--base` (their
  ΔW = f(W0; 1) − W0 depends on the base norms) and are re-factored by a randomised SVD on
  large layers. The output is then a plain LoRA of the merged delta, and the ledger says so.
- `mean` averages every stored tensor of checkpoints of one run (a soup, `ops.soup`): the
  output keeps their type, rank and alpha; files that cannot be one run are refused (exit 4).
- Ranks are refused, never clamped (exit 2): an adapter file has one rank for every target,
  so neither method may write a rank above the narrowest target's min(fan_out, fan_in)
  (validate's `rank-exceeds-target`), and svd refuses a rank no target can use.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint, save_checkpoint
from sa3ckpt.adapters.config import LoraConfig
from sa3ckpt.adapters.finite import ALLOW_FLAG, find_nonfinite, refuse_nonfinite, summary
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.adapters.formulas import adapted_weight
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.atomic import check_output_path
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.names.modules import strip_dit_root
from sa3ckpt.ops.library.soup import check_one_run, mean_soup
from sa3ckpt.ops.merge import adapter_sha256
from sa3ckpt.strengths import AdapterArg

METHODS = ("cat", "svd", "mean")
RANK_FROM_INPUTS = ("cat", "mean")  # methods whose output rank is the inputs' (no --rank)
RANDOMIZED_ABOVE = 1024  # min(fan_out, fan_in) above which the dense path uses a randomised SVD


@dataclass
class CombineLedger:
    output: str
    method: str
    rank: int
    adapters: list[dict[str, Any]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    retained: dict[str, float] = field(default_factory=dict)  # svd: energy kept per target
    notes: list[str] = field(default_factory=list)

    adapter_type: str = "lora"

    def lines(self) -> list[str]:
        out = [
            f"{len(self.targets)} targets combined by {self.method} "
            f"into a rank-{self.rank} {self.adapter_type} -> {self.output}"
        ]
        out += self.notes
        if self.retained:
            worst = sorted(self.retained.items(), key=lambda kv: kv[1])
            mean = float(np.mean(list(self.retained.values())))
            out.append(f"retained energy: mean {mean:.4%}, worst {worst[0][1]:.4%} ({worst[0][0]})")
            out += [f"  {t}: {e:.4%}" for t, e in worst]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "method": self.method,
            "rank": self.rank,
            "adapter_type": self.adapter_type,
            "adapters": self.adapters,
            "targets": self.targets,
            "retained_energy": self.retained,
            "notes": self.notes,
        }


def _factors(
    ckpt: AdapterCheckpoint, target: str, base: BaseCheckpoint | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(B·c, A) in float64 with c folded in, for LoRA and XS; None for DoRA/BoRA types."""
    kind = ckpt.kind
    if kind.is_weight_decomposed:
        return None
    params = {
        k: dtypes.to_float32(np.asarray(v)).astype(np.float64)
        for k, v in ckpt.tensors[target].items()
    }
    c = ckpt.config.scale
    if not kind.xs:
        return params["lora_B"] * c, params["lora_A"]
    if "U" not in params:
        if base is None:
            raise UsageError(
                f"{target}: {kind.name} has no stored U/V; pass --base to rebuild them"
            )
        adapter, _ = ckpt.target_adapter(target, base_2d=_base_weight(base, target))
        params["U"], params["V"] = (
            np.array(adapter.params[n]).astype(np.float64) for n in ("U", "V")
        )
    return params["U"] @ params["M_xs"] * c, params["V"].T


def _base_weight(base: BaseCheckpoint, target: str) -> np.ndarray:
    key = base.target_key(target)
    if key is None:
        raise IncompatibleError(f"{target} is not in the base {base.path}")
    stored = np.asarray(base.read(key))
    return base.layout_of(stored.shape, key).to_canonical(dtypes.to_float32(stored))


def _dense_delta(ckpt: AdapterCheckpoint, target: str, base: BaseCheckpoint) -> np.ndarray:
    w0 = _base_weight(base, target)
    adapter, _ = ckpt.target_adapter(target, base_2d=w0)
    w0_mx = mx.array(w0)
    return np.array(adapted_weight(w0_mx, adapter, 1.0) - w0_mx).astype(np.float64)


def _lowrank_svd(b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact SVD of B @ A through QR of both factors and an SVD of the small core."""
    qb, rb = np.linalg.qr(b)
    qa, ra = np.linalg.qr(a.T)
    uc, s, vct = np.linalg.svd(rb @ ra.T)
    return qb @ uc, s, (qa @ vct.T).T


def randomized_svd(
    m: np.ndarray, rank: int, *, oversample: int = 10, iterations: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Halko-style randomised truncated SVD with power iterations (QR-stabilised)."""
    rng = np.random.default_rng(seed)
    k = min(rank + oversample, min(m.shape))
    q, _ = np.linalg.qr(m @ rng.standard_normal((m.shape[1], k)))
    for _ in range(iterations):
        q, _ = np.linalg.qr(m.T @ q)
        q, _ = np.linalg.qr(m @ q)
    u_small, s, vt = np.linalg.svd(q.T @ m, full_matrices=False)
    return (q @ u_small)[:, :rank], s[:rank], vt[:rank]


def _check_inputs(ckpts: Sequence[tuple[AdapterCheckpoint, float]]) -> None:
    fans: dict[str, tuple[int, int]] = {}
    for ckpt, _ in ckpts:
        for target, params in ckpt.tensors.items():
            fan = _fan(ckpt, params)
            if fan is None:
                continue
            if fans.setdefault(target, fan) != fan:
                raise IncompatibleError(
                    f"{target}: adapters disagree on its shape ({fans[target]} vs {fan})"
                )


def _fan(ckpt: AdapterCheckpoint, params: dict[str, np.ndarray]) -> tuple[int, int] | None:
    if "lora_B" in params:
        return params["lora_B"].shape[0], params["lora_A"].shape[1]
    if "U" in params:
        return params["U"].shape[0], params["V"].shape[0]
    return None


def _target_fan(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]], target: str, base: BaseCheckpoint | None
) -> tuple[int, int] | None:
    """(fan_out, fan_in) of a target from the adapters' shapes, else the base header (no data)."""
    for ckpt, _ in ckpts:
        if target in ckpt.tensors:
            fan = _fan(ckpt, ckpt.tensors[target])
            if fan is not None:
                return fan
    key = base.target_key(target) if base is not None else None
    if base is None or key is None:
        return None  # XS without U/V and no base: _factors refuses it with the fix
    return base.layout_of(base.tensors[key].shape).canonical_shape(base.tensors[key].shape)


SHAPE_BOUND = "min(fan_out, fan_in)"
SUM_BOUND = "the sum of the input ranks"


@dataclass(frozen=True)
class RankBounds:
    """Per-target ceilings on a combined rank, read from shapes only (nothing allocated).

    `shape` is min(fan_out, fan_in): a layer has no more directions, and validate's
    `rank-exceeds-target` rejects a file whose rank passes it at any target. An sa3 adapter
    file has ONE rank for every target, so the narrowest target bounds the whole output.
    `useful` is how many singular values the combined update can have at a target: the shape
    bound, and for low-rank inputs (every one lora or lora-xs) also the sum of the input ranks
    present there (DoRA/BoRA deltas renormalise the base and are full-rank in general).
    """

    shape: dict[str, int]
    useful: dict[str, tuple[int, str]]

    def narrowest(self) -> tuple[str, int] | None:
        """The target with the smallest min(fan_out, fan_in), and that bound."""
        if not self.shape:
            return None
        target = min(self.shape, key=self.shape.__getitem__)
        return target, self.shape[target]

    def widest_useful(self) -> tuple[str, int, str] | None:
        """The target whose update can hold the most singular values, its bound and why."""
        if not self.useful:
            return None
        target = max(self.useful, key=lambda t: self.useful[t][0])
        return target, *self.useful[target]

    def largest_svd_rank(self) -> int | None:
        """The largest R `--method svd` accepts: fits every target and is useful at one."""
        narrow, wide = self.narrowest(), self.widest_useful()
        if narrow is None or wide is None:
            return None
        return min(narrow[1], wide[1])


def rank_bounds(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    targets: list[str],
    base: BaseCheckpoint | None,
) -> RankBounds:
    """The shape and useful rank bounds of every target whose shape is known."""
    low_rank = not any(c.kind.is_weight_decomposed for c, _ in ckpts)
    shape: dict[str, int] = {}
    useful: dict[str, tuple[int, str]] = {}
    for target in targets:
        fan = _target_fan(ckpts, target, base)
        if fan is None:
            continue  # XS without U/V and no base: _factors refuses it with the fix
        shape[target] = min(fan)
        limit = (min(fan), SHAPE_BOUND)
        if low_rank:
            summed = sum(c.config.rank for c, _ in ckpts if target in c.tensors)
            limit = min(limit, (summed, SUM_BOUND))
        useful[target] = limit
    return RankBounds(shape, useful)


def check_svd_rank(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    targets: list[str],
    base: BaseCheckpoint | None,
    rank: int,
) -> list[str]:
    """Refuse an svd rank the output cannot hold or no target can use; name the padded.

    Refused (exit 2), before anything is allocated, naming the largest R allowed:
    - R above the narrowest target's min(fan_out, fan_in): the one-rank file would fail
      validate (`rank-exceeds-target`) there. Refused, not clamped: a clamped R is not what
      was asked for, and the user picks the trade-off.
    - R above every target's useful bound: every column past it would be zeros everywhere,
      a bigger file (or an out-of-memory kill), never a better fit.
    When both apply, the smaller bound is the one named, so the message gives the true
    largest R. Accepted R can still pass some targets' useful bound (their input ranks sum
    to less): those get zero factor columns past it, stay valid, and are returned for the
    ledger.
    """
    bounds = rank_bounds(ckpts, targets, base)
    narrow, wide = bounds.narrowest(), bounds.widest_useful()
    if narrow is None or wide is None:
        return []
    refusals = [  # (bound, message); on a tie the useful one is named
        (
            wide[1],
            f"--rank {rank} is more than any target can use: at most {wide[1]} ({wide[2]} at "
            f"{wide[0]}); past it every factor column would be zero",
        ),
        (
            narrow[1],
            f"--rank {rank} does not fit {narrow[0]}: at most {narrow[1]} ({SHAPE_BOUND} "
            "there); the output has one rank for every target, and validate rejects a rank "
            "above any target's",
        ),
    ]
    broken = [(bound, message) for bound, message in refusals if rank > bound]
    if broken:
        raise UsageError(min(broken, key=lambda b: b[0])[1])
    return [
        f"{t} (rank {bounds.useful[t][0]}: {bounds.useful[t][1]})"
        for t in targets
        if t in bounds.useful and bounds.useful[t][0] < rank
    ]


def check_cat_rank(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    targets: list[str],
    base: BaseCheckpoint | None,
) -> None:
    """Refuse a cat whose rank Σ r_i passes the narrowest target's min(fan_out, fan_in).

    cat is exact only at rank Σ r_i, and the one-rank output would fail validate
    (`rank-exceeds-target`) at that target, so it is refused (exit 2) rather than clamped
    (a clamped cat is an svd). The fix named is svd at a rank every target holds.
    """
    if any(c.kind.is_weight_decomposed for c, _ in ckpts):
        return  # _cat refuses them with its own reason
    out_rank = sum(c.config.rank for c, _ in ckpts)
    bounds = rank_bounds(ckpts, targets, base)
    narrow = bounds.narrowest()
    if narrow is None or out_rank <= narrow[1]:
        return
    raise UsageError(
        f"--method cat would write rank {out_rank} (the sum of the input ranks) but "
        f"{narrow[0]} holds at most {narrow[1]} ({SHAPE_BOUND}), and the output has one "
        f"rank for every target; use --method svd --rank R with R <= "
        f"{bounds.largest_svd_rank()} (exact when R is at least the rank of the sum)"
    )


def _shared(values: list[Any]) -> Any:
    return values[0] if all(v == values[0] for v in values) else None


def _output_config(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    targets: list[str],
    rank: int,
    method: str,
    ledger: CombineLedger,
) -> LoraConfig:
    includes = _shared([ckpt.config.include for ckpt, _ in ckpts])
    excludes = _shared([ckpt.config.exclude for ckpt, _ in ckpts])
    if includes is None or excludes is None:
        # Different selections: name exactly the combined targets (root-less, so the
        # official substring rule matches them with or without the `model.` root).
        includes = [strip_dit_root(t) for t in targets]
        excludes = []
    extra: dict[str, Any] = {"combined_from": ledger.adapters, "combine_method": method}
    base_model = _shared([ckpt.config.base_model for ckpt, _ in ckpts])
    if base_model:
        extra["base_model"] = base_model
    return LoraConfig(
        rank=rank, alpha=rank, adapter_type="lora", include=includes, exclude=excludes, extra=extra
    )


def combine(
    adapters: Sequence[AdapterArg],
    output: str,
    *,
    method: str = "cat",
    rank: int | None = None,
    base_path: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    force: bool = False,
) -> CombineLedger:
    """Combine weighted adapters into one checkpoint written atomically to `output`.

    cat and svd write a LoRA, in fp16 unless `dtype`; mean writes the inputs' type, in their
    dtype unless `dtype`. NaN/Inf in an input, or in the output once cast to `dtype`, is
    refused (exit 4, nothing written) unless `allow_nonfinite` (cat and mean: an SVD cannot
    factor them).
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    if len(adapters) < 1:
        raise UsageError("combine needs at least one adapter")
    if rank is not None and rank < 1:
        raise UsageError("--rank must be a positive integer")
    if method == "svd" and rank is None:
        raise UsageError("--method svd needs --rank R")
    if method == "cat" and rank is not None:
        raise UsageError(
            "--rank is for --method svd; --method cat is exact and its rank is the sum of the "
            "input ranks"
        )
    if method == "mean" and rank is not None:
        raise UsageError(
            "--rank is for --method svd; --method mean keeps the rank of its inputs (one run)"
        )
    if method == "mean" and base_path is not None:
        raise UsageError("--base is for cat and svd; --method mean reads only the adapters")
    inputs = [a.path for a in adapters] + ([base_path] if base_path else [])
    check_output_path(output, inputs=inputs, overwrite=force)  # before any work
    code = dtypes.code_from_name(dtype) if dtype else None
    # Any adapter container inspect reads, as merge and convert load it.
    ckpts = [(load_adapter(a.path, allow_pickle=allow_pickle), a.strength) for a in adapters]
    if method == "mean":  # its own reasons first: the shape check below names no run
        check_one_run([c for c, _ in ckpts], [a.path for a in adapters])
    _check_inputs(ckpts)
    kept = _check_finite(adapters, ckpts, method, allow_nonfinite)
    base = open_base(base_path) if base_path else None
    try:
        targets = list(dict.fromkeys(t for ckpt, _ in ckpts for t in ckpt.targets()))
        padded = check_svd_rank(ckpts, targets, base, rank) if rank is not None else []
        if method == "cat":
            check_cat_rank(ckpts, targets, base)
        ledger = CombineLedger(output, method, 0)
        if kept:
            ledger.notes.append(f"kept NaN/Inf ({ALLOW_FLAG}): {kept}")
        for (ckpt, weight), arg in zip(ckpts, adapters, strict=True):
            ledger.adapters.append(
                {
                    "path": arg.path,
                    "sha256": adapter_sha256(arg.path),
                    "weight": weight,
                    "adapter_type": ckpt.adapter_type,
                    "rank": ckpt.config.rank,
                }
            )
        out_type, metadata, mean_config = "lora", None, None
        if method == "mean":
            soup = mean_soup(
                [c for c, _ in ckpts],
                [w for _, w in ckpts],
                [a.path for a in adapters],
                ledger.adapters,
                code,
            )
            tensors, out_rank, code = soup.tensors, soup.config.rank, soup.dtype
            out_type, metadata, mean_config = soup.config.adapter_type, soup.metadata, soup.config
            ledger.notes += soup.notes
        elif method == "cat":
            tensors, out_rank = _cat(ckpts, targets, base)
            ledger.notes.append(
                "exact: ranks add up, each adapter's scale and weight folded into lora_B"
            )
        else:
            assert rank is not None
            tensors, out_rank = _svd(ckpts, targets, base, rank, ledger)
            if padded:
                ledger.notes.append(
                    f"{len(padded)} targets hold less than rank {rank}, so their factors are "
                    f"zero past it: {padded[0]}"
                    + (f" and {len(padded) - 1} more" if len(padded) > 1 else "")
                )
        code = code or "F16"  # cat and svd: fp16 unless --dtype
        _check_output_finite(output, tensors, code, allow_nonfinite, ledger)
        ledger.rank = out_rank
        ledger.targets = targets
        ledger.adapter_type = out_type
        config = mean_config or _output_config(ckpts, targets, out_rank, method, ledger)
        save_checkpoint(
            AdapterCheckpoint(config, out_type, tensors, metadata or {}),
            output,
            dtype=code,
            inputs=tuple(inputs),
            overwrite=force,
        )
    finally:
        if base is not None:
            base.close()
    return ledger


def _check_finite(
    adapters: Sequence[AdapterArg],
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    method: str,
    allow: bool,
) -> str | None:
    """Refuse NaN/Inf inputs unless allowed (and never for svd); what was kept, for the ledger."""
    kept = []
    for arg, (ckpt, _) in zip(adapters, ckpts, strict=True):
        found = find_nonfinite(ckpt.tensors)
        if not allow:
            refuse_nonfinite(arg.path, found, "combine")
        if found and method == "svd":
            raise IncompatibleError(
                f"{arg.path}: tensor {summary(found)} is not finite and --method svd cannot "
                "factor NaN/Inf; nothing was written (--method cat carries them over)"
            )
        if found:
            kept.append(f"{arg.path}: {summary(found)}")
    return "; ".join(kept) or None


def _check_output_finite(
    output: str,
    tensors: dict[str, dict[str, np.ndarray]],
    code: str,
    allowed: bool,
    ledger: CombineLedger,
) -> None:
    """Finite inputs can still overflow the output dtype (fp16 ends at 65504)."""
    cast = {t: {p: dtypes.cast(v, code) for p, v in ps.items()} for t, ps in tensors.items()}
    found = find_nonfinite(cast)
    if found and allowed:
        ledger.notes.append(f"output holds NaN/Inf in {code} ({ALLOW_FLAG}): {summary(found)}")
    elif found:
        raise IncompatibleError(
            f"{output}: combined tensor {summary(found)} is not finite in {code} (values "
            "beyond its range); nothing was written (try --dtype fp32)"
        )


def _cat(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    targets: list[str],
    base: BaseCheckpoint | None,
) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    refused = [c.adapter_type for c, _ in ckpts if c.kind.is_weight_decomposed]
    if refused:
        raise UsageError(
            f"--method cat is exact only for lora/lora-xs, not {', '.join(sorted(set(refused)))}; "
            "use --method svd --rank R --base BASE (the result is a lora of the merged delta)"
        )
    out_rank = sum(c.config.rank for c, _ in ckpts)
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for target in targets:
        fan = next(_fan_of(c, target, base) for c, _ in ckpts if target in c.tensors)
        a_blocks, b_blocks = [], []
        for ckpt, weight in ckpts:
            r = ckpt.config.rank
            factors = _factors(ckpt, target, base) if target in ckpt.tensors else None
            if factors is None:
                b_blocks.append(np.zeros((fan[0], r)))
                a_blocks.append(np.zeros((r, fan[1])))
            else:
                b_blocks.append(factors[0] * weight)
                a_blocks.append(factors[1])
        tensors[target] = {"lora_A": np.vstack(a_blocks), "lora_B": np.hstack(b_blocks)}
    return tensors, out_rank


def _fan_of(ckpt: AdapterCheckpoint, target: str, base: BaseCheckpoint | None) -> tuple[int, int]:
    fan = _fan(ckpt, ckpt.tensors[target])
    if fan is None:
        if base is None:
            raise UsageError(f"{target}: shapes unknown without U/V; pass --base")
        return _base_weight(base, target).shape
    return fan


def _svd(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    targets: list[str],
    base: BaseCheckpoint | None,
    rank: int,
    ledger: CombineLedger,
) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    decomposed = sorted({c.adapter_type for c, _ in ckpts if c.kind.is_weight_decomposed})
    if decomposed and base is None:
        raise UsageError(
            f"{', '.join(decomposed)} deltas depend on the base weights: pass --base BASE"
        )
    if decomposed:
        ledger.notes.append(
            f"{', '.join(decomposed)} inputs: ΔW = f(W0; 1) − W0 rebuilt from the base and "
            "re-factored; the output is a lora of that merged delta (no magnitudes)"
        )
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for target in targets:
        present = [(c, w) for c, w in ckpts if target in c.tensors]
        factors = [(_factors(c, target, base), w) for c, w in present]
        if all(f is not None for f, _ in factors):
            b = np.hstack([f[0] * w for f, w in factors])  # type: ignore[index]
            a = np.vstack([f[1] for f, _ in factors])  # type: ignore[index]
            u, s, vt = _lowrank_svd(b, a)
            total = float(np.sum(s**2))
        else:
            assert base is not None
            terms = (
                w * (_dense_delta(c, target, base) if f is None else f[0] @ f[1])
                for (f, w), (c, _) in zip(factors, present, strict=True)
            )
            dense: np.ndarray = functools.reduce(operator.add, terms)
            total = float(np.sum(dense**2))
            if min(dense.shape) > RANDOMIZED_ABOVE:
                u, s, vt = randomized_svd(dense, rank)
            else:
                u, s, vt = np.linalg.svd(dense, full_matrices=False)
        r = min(rank, len(s))
        kept = float(np.sum(s[:r] ** 2))
        ledger.retained[target] = kept / total if total > 0 else 1.0
        b_out = np.zeros((u.shape[0], rank))
        a_out = np.zeros((rank, vt.shape[1]))
        root = np.sqrt(s[:r])
        b_out[:, :r] = u[:, :r] * root
        a_out[:r] = root[:, None] * vt[:r]
        tensors[target] = {"lora_A": a_out, "lora_B": b_out}
    return tensors, rank
