"""Stack report, --exclude and --compare-semantics against constructed adapters and the reference.

Adapters are built from the tiny-small fixtures with chosen magnitudes (and, where a
prediction must be exact, lora_B = 0 so that V' = W0): then every DoRA row's direction is the
base row's and the sign each semantics leaves on it follows from the magnitudes alone, which
the float64 reference merge confirms.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint, load_checkpoint, save_checkpoint
from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.adapters.kernels import PENDING
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.safetensors import read_header
from sa3ckpt.names.modules import SECONDS_CONDITIONER
from sa3ckpt.names.select import select
from sa3ckpt.ops.inspect.report import inspect_path
from sa3ckpt.ops.inspect.stack_report import PREDICTORS
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import PROVENANCE_KEY, merge_checkpoint
from sa3ckpt.semantics import SEMANTICS_TABLE, help_text, markdown_table
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.targets import FAMILIES
from tests.helpers import BASE_FAMILY, BASE_OFFICIAL, base_2d, run_cli
from tests.reference_math import REFERENCES, ref_svd_bases

FAM = FAMILIES[BASE_FAMILY]
REFERENCE = REFERENCES
Params = dict[str, np.ndarray]


def _fixture(stem: str) -> str:
    return str(DATA_DIR / "adapters" / BASE_FAMILY / f"{stem}.safetensors")


def _row_norms(name: str) -> np.ndarray:
    return np.linalg.norm(base_2d(FAM.by_name[name]), axis=1)


def _constructed(
    tmp_path: Path, stem: str, name: str, change: Callable[[str, Params], None]
) -> str:
    """A fixture adapter with each target's params changed in place, saved as fp32."""
    ckpt = load_checkpoint(_fixture(stem))
    tensors = {}
    for target, params in ckpt.tensors.items():
        fresh = {p: np.asarray(v, np.float32).copy() for p, v in params.items()}
        change(target, fresh)
        tensors[target] = fresh
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(
        AdapterCheckpoint(ckpt.config, ckpt.adapter_type, tensors, dict(ckpt.metadata)),
        path,
        dtype="F32",
    )
    return str(path)


def _shrunk_rows(factors: Callable[[int], np.ndarray]) -> Callable[[str, Params], None]:
    """dora-rows with no direction change and magnitude = factor x the base row norms."""

    def change(target: str, p: Params) -> None:
        p["lora_B"][:] = 0
        norms = _row_norms(target)
        p["magnitude"] = (factors(norms.size) * norms).astype(np.float32)

    return change


def _reference_merge(paths: list[tuple[str, float]], semantics: str, target: str) -> np.ndarray:
    w0 = base_2d(FAM.by_name[target])
    items = []
    for path, strength in paths:
        ckpt = load_checkpoint(path)
        if target not in ckpt.tensors:
            continue
        p = {k: np.asarray(v, np.float64) for k, v in ckpt.tensors[target].items()}
        if ckpt.kind.xs:
            p["U"], p["V"] = ref_svd_bases(w0.astype(np.float32), ckpt.config.rank)
        items.append((ckpt.adapter_type, p, ckpt.config.scale, strength))
    return REFERENCE[semantics](w0, items)


def _flipped_rows(w: np.ndarray, target: str) -> int:
    return int(np.sum(np.einsum("ij,ij->i", w, base_2d(FAM.by_name[target])) < 0))


def _report(stack: list[tuple[str, float]], semantics: str, **kw):
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(p, s) for p, s in stack],
        None,
        MergeOptions(semantics=semantics, compare=True, **kw),
    )
    assert not ledger.written and ledger.stack is not None
    return ledger


# --------------------------------------------------------------------------- predictions


def test_magnitudes_that_flip_only_when_summed(tmp_path) -> None:
    """m = 0.2 n0 on even rows: one adapter at 1 never flips; two summed by delta flip those
    rows, and so does blend's extrapolation at 1.7 (n + 1.7 (0.2 n − n) < 0), even alone."""
    shrink = _constructed(
        tmp_path,
        "dora-rows",
        "shrink",
        _shrunk_rows(lambda n: np.where(np.arange(n) % 2, 0.9, 0.2)),
    )
    targets = list(load_checkpoint(shrink).tensors)
    for semantics, stack, flips in [
        ("delta", [(shrink, 1.0)], False),
        ("delta", [(shrink, 1.0), (shrink, 1.0)], True),
        ("runtime", [(shrink, 1.0), (shrink, 1.0)], False),
        ("blend", [(shrink, 1.0), (shrink, 1.0)], False),
        ("blend", [(shrink, 1.7)], True),
        ("runtime", [(shrink, 1.7)], False),
        ("delta", [(shrink, 1.7)], True),
    ]:
        ledger = _report(stack, semantics)
        for target in targets:
            predicted = ledger.stack.targets[target].flipped["rows"]
            actual = _flipped_rows(_reference_merge(stack, semantics, target), target)
            assert predicted.count == actual, (semantics, len(stack), target)
            assert predicted.count == ((predicted.of + 1) // 2 if flips else 0)
        rules = {w.rule for w in ledger.stack.warnings}
        assert ("sign-flip" in rules) == flips, (semantics, len(stack))


def test_negative_magnitudes_are_counted_and_flip_under_runtime(tmp_path) -> None:
    def change(target: str, p: Params) -> None:
        _shrunk_rows(lambda n: np.ones(n))(target, p)
        p["magnitude"][:3] *= -1

    negative = _constructed(tmp_path, "dora-rows", "negative", change)
    ledger = _report([(negative, 1.0)], "runtime")
    for target, report in ledger.stack.targets.items():
        (neg,) = report.negative
        assert (neg.adapter, neg.param, neg.negative.count) == (1, "magnitude", 3)
        actual = _flipped_rows(_reference_merge([(negative, 1.0)], "runtime", target), target)
        assert report.flipped["rows"].count == actual == 3
    assert {w.rule for w in ledger.stack.warnings} == {"negative-magnitude", "sign-flip"}


def _baked(shrink_rows: int, factor: float) -> Callable[[str, Params], None]:
    """dora-rows with baked norms (row norms of W0 + c dW) and m = factor x baked on some rows."""

    def change(target: str, p: Params) -> None:
        w0 = base_2d(FAM.by_name[target])
        scale = 8 / 4  # the fixtures' alpha / rank
        v = w0 + scale * p["lora_B"].astype(np.float64) @ p["lora_A"].astype(np.float64)
        baked = np.linalg.norm(v, axis=1)
        m = 0.98 * baked
        m[:shrink_rows] = factor * baked[:shrink_rows]
        p["baked_vnorm_row"] = baked.astype(np.float32)
        p["magnitude"] = m.astype(np.float32)

    return change


def test_drift_below_half_warns_in_merge_and_inspect(tmp_path) -> None:
    assert load_checkpoint(_fixture("dora-rows")).config.scale == 2.0
    drifted = _constructed(tmp_path, "dora-rows", "drifted", _baked(9, 0.3))
    healthy = _constructed(tmp_path, "dora-rows", "healthy", _baked(1, 0.3))
    for path, warns in [(drifted, True), (healthy, False)]:
        ledger = _report([(path, 0.5)], "runtime")
        for target, report in ledger.stack.targets.items():
            (drift,) = report.drift
            rows = _row_norms(target).size
            assert drift.below_half.count == min(9 if warns else 1, rows)
            assert drift.negative.count == 0
            m = load_checkpoint(path).tensors[target]
            want = np.median(m["magnitude"] / m["baked_vnorm_row"])
            assert drift.median == pytest.approx(want, rel=1e-6)
        drifting = {w.target for w in ledger.stack.warnings if w.rule == "drift"}
        assert drifting == {t for t in ledger.stack.targets if warns and _row_norms(t).size < 18}
        stats = inspect_path(path, stats=True).stats
        assert stats is not None and stats.stack_report is not None
        assert stats.stack_report.semantics is None  # one adapter: no stack prediction
        assert {w.target for w in stats.stack_report.warnings if w.rule == "drift"} == drifting
    doc = json.loads(run_cli("inspect", "--stats", "--json", drifted).stdout)
    stack = doc["files"][0]["stats"]["stack_report"]
    assert stack["warnings"] and stack["targets"][SECONDS_CONDITIONER]["drift"][0]["adapter"] == 1


def test_seconds_conditioner_stack_warns_and_exclude_silences_it() -> None:
    rows, cols = _fixture("dora-rows"), _fixture("dora-cols")
    seconds = [w for w in _report([(rows, 0.7), (cols, 0.7)], "runtime").stack.warnings]
    assert [w.target for w in seconds if w.rule == "seconds-stack"] == [SECONDS_CONDITIONER]
    for kw in [
        {"exclude": ["seconds_total"]},
        {"exclude": ["2=seconds_total"]},
        {"exclude": [f"{rows}=conditioners."]},
    ]:
        ledger = _report([(rows, 0.7), (cols, 0.7)], "runtime", **kw)
        assert not [w for w in ledger.stack.warnings if w.rule == "seconds-stack"], kw
    single = _report([(rows, 0.7), (_fixture("lora"), 1.0)], "runtime")
    assert not [w for w in single.stack.warnings if w.rule == "seconds-stack"]


def test_strict_refuses_a_warned_stack_with_exit_4_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "out.safetensors"
    args = ["merge", str(BASE_OFFICIAL), _fixture("dora-rows"), _fixture("bora"), "-o", str(out)]
    refused = run_cli(*args, "--strict")
    assert refused.returncode == 4, refused.stderr
    assert "seconds conditioner" in refused.stderr and "nothing was written" in refused.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(IncompatibleError):
        merge_checkpoint(
            str(BASE_OFFICIAL),
            [AdapterArg(_fixture("dora-rows"), 1.0), AdapterArg(_fixture("bora"), 1.0)],
            str(out),
            options=MergeOptions(strict=True),
        )
    warned = run_cli(*args, "--json")
    assert warned.returncode == 0 and out.exists()
    assert "sa3ckpt: warning: " + SECONDS_CONDITIONER in warned.stderr
    doc = json.loads(warned.stdout)
    rules = [w["rule"] for w in doc["stack_report"]["warnings"]]
    assert "seconds-stack" in rules and doc["written"] is True
    fine = run_cli(*args[:-1], str(tmp_path / "b.safetensors"), "--strict", "--exclude", "seconds")
    assert fine.returncode == 0, fine.stderr


# --------------------------------------------------------------------------- --exclude


def test_exclude_in_all_adapters_copies_exactly_those_targets(tmp_path) -> None:
    out = tmp_path / "out.safetensors"
    pattern = "layers.[0-1].cross_attn"
    stack = [(_fixture("lora"), 0.5), (_fixture("dora-rows"), 1.0)]
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(p, s) for p, s in stack],
        str(out),
        options=MergeOptions(dtype="fp32", exclude=[pattern]),
    )
    names = [t.name for t in FAM.targets]
    hit = set(names) - set(select(names, None, [pattern]))
    assert hit and all(".cross_attn." in t and ".layers.2." not in t for t in hit)
    assert {(e.target, e.adapter) for e in ledger.excluded} == {(t, i) for t in hit for i in (1, 2)}
    assert set(ledger.merged) == set(names) - hit
    merged, before = load_file(str(out)), load_file(str(BASE_OFFICIAL))
    for target in FAM.targets:
        key = f"model.model.{target.name[len('model.') :]}.weight"
        if target.name.startswith("conditioners."):
            continue
        got = merged[key].astype(np.float64).reshape(target.shape)
        if target.name in hit:
            assert np.array_equal(got, before[key].astype(np.float64).reshape(target.shape))
        else:
            want = _reference_merge(stack, "runtime", target.name)
            assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    assert any(
        line.startswith(f"excluded {sorted(hit)[0]} from adapter 1") for line in ledger.lines()
    )
    prov = json.loads(read_header(out).metadata[PROVENANCE_KEY])
    assert len(prov["excluded"]) == 2 * len(hit)


@pytest.mark.parametrize("which", ["2", "path"])
def test_exclude_in_one_adapter_leaves_the_others(tmp_path, which) -> None:
    out = tmp_path / "out.safetensors"
    stack = [(_fixture("lora"), 0.5), (_fixture("dora-rows"), 1.7)]
    prefix = "2" if which == "2" else stack[1][0]
    ledger = merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(p, s) for p, s in stack],
        str(out),
        options=MergeOptions(dtype="fp32", exclude=[f"{prefix}=ff.ff.", "1=no-such-module"]),
    )
    names = [t.name for t in FAM.targets]
    hit = set(names) - set(select(names, None, ["ff.ff."]))
    assert {(e.target, e.adapter) for e in ledger.excluded} == {(t, 2) for t in hit}
    assert set(ledger.merged) == set(names) and ledger.unused_exclusions == ["1=no-such-module"]
    merged = load_file(str(out))
    for name in hit:
        target = FAM.by_name[name]
        got = merged[f"model.model.{name[len('model.') :]}.weight"].astype(np.float64)
        want = _reference_merge(stack[:1], "runtime", name)
        assert np.max(np.abs(got.reshape(target.shape) - want)) <= 1e-5 * np.max(np.abs(want))


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("3=ff", "adapter 3 does not exist"),
        ("x.safetensors=ff", "neither"),
        ("1=", "no pattern"),
        ("layers.[3-1].", "backwards"),
    ],
)
def test_bad_exclude_is_a_usage_error(tmp_path, spec, needle) -> None:
    with pytest.raises(UsageError, match=needle):
        merge_checkpoint(
            str(BASE_OFFICIAL),
            [AdapterArg(_fixture("lora"), 1.0), AdapterArg(_fixture("bora"), 1.0)],
            str(tmp_path / "o.safetensors"),
            options=MergeOptions(exclude=[spec]),
        )
    assert not (tmp_path / "o.safetensors").exists()


# --------------------------------------------------------------------------- compare


COMPARED = [
    [("dora-rows", 0.5)],
    [("bora-xs", 1.7), ("dora-cols", 0.5)],
    [("lora", 0.5), ("lora-xs", 1.7)],
]


@pytest.mark.parametrize("stack", COMPARED, ids=lambda s: "+".join(f"{t}@{w}" for t, w in s))
def test_compare_matches_the_reference(stack) -> None:
    paths = [(_fixture(t), w) for t, w in stack]
    ledger = _report(paths, "runtime")
    comparison = ledger.comparison
    assert comparison is not None and comparison.semantics == list(SEMANTICS)
    plain = all(t.startswith("lora") for t, _ in stack)
    for target in FAM.targets:
        w0 = base_2d(target)
        merged = {n: _reference_merge(paths, n, target.name) for n in REFERENCE}
        assert set(comparison.targets[target.name]) == {
            "runtime-delta",
            "runtime-blend",
            "delta-blend",
        }
        for pair, got in comparison.targets[target.name].items():
            a, b = pair.split("-")
            diff = np.linalg.norm(merged[a] - merged[b])
            effect = max(np.linalg.norm(merged[n] - w0) for n in (a, b))
            assert got.relative == pytest.approx(diff / np.linalg.norm(w0), rel=1e-3, abs=1e-6)
            if not plain:
                assert got.of_effect == pytest.approx(diff / effect, rel=1e-3, abs=1e-6)
            else:
                assert got.relative < 1e-6
    doc = ledger.to_json()["semantics_comparison"]
    top = doc["pairs"]["runtime-delta"]
    assert top["max_relative"] == max(
        d["runtime-delta"]["relative"] for d in doc["targets"].values()
    )
    assert [r["relative"] for r in top["top"]] == sorted(
        (r["relative"] for r in top["top"]), reverse=True
    )


def test_compare_writes_nothing_without_output_and_merges_with_it(tmp_path) -> None:
    args = ["merge", str(BASE_OFFICIAL), _fixture("dora-rows") + ":0.5", "--compare-semantics"]
    only = run_cli(*args)
    assert only.returncode == 0, only.stderr
    assert "runtime-delta: max" in only.stdout and "nothing written" in only.stdout
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "m.safetensors"
    both = run_cli(*args, "-o", str(out), "--semantics", "delta", "--json")
    assert both.returncode == 0, both.stderr and out.exists()
    doc = json.loads(both.stdout)
    assert doc["written"] and doc["semantics_comparison"]["pairs"]["runtime-delta"]["top"]
    missing = run_cli("merge", str(BASE_OFFICIAL), _fixture("lora"))
    assert missing.returncode == 2 and "-o OUT" in missing.stderr


# --------------------------------------------------------------------------- the table


def test_every_semantics_is_described_predicted_and_named_in_help_readme_provenance(
    tmp_path,
) -> None:
    assert set(SEMANTICS) == set(PENDING) == set(SEMANTICS_TABLE) == set(PREDICTORS)
    assert set(SEMANTICS) == {"runtime", "blend", "delta"}
    assert SEMANTICS_TABLE["runtime"].runtimes[0] == "sa3.cpp"
    assert "official PyTorch with PR #102" in SEMANTICS_TABLE["blend"].runtimes
    guide = Path(__file__).parents[1] / "docs" / "guides" / "stacking.md"
    assert markdown_table(SEMANTICS) in guide.read_text(encoding="utf-8")
    text = help_text(SEMANTICS)
    usage = " ".join(run_cli("merge", "--help").stdout.split())
    for name in SEMANTICS:
        for runtime in SEMANTICS_TABLE[name].runtimes:
            assert runtime in text and runtime.split()[0] in usage
    out = tmp_path / "m.safetensors"
    merge_checkpoint(
        str(BASE_OFFICIAL),
        [AdapterArg(_fixture("lora"), 1.0)],
        str(out),
        options=MergeOptions(semantics="delta"),
    )
    prov = json.loads(read_header(out).metadata[PROVENANCE_KEY])
    assert prov["semantics_runtimes"] == list(SEMANTICS_TABLE["delta"].runtimes)
