"""`sa3ckpt verify`: a merge checked at the DiT's output against the adapters applied live.

Bases are complete synthetic tiny-small bases written here (`synth.official_full_tensors`),
merges are made by `merge_checkpoint`, and each case asserts the verdict a user needs: a
correct merge passes (fp16, fp32, bf16, stacked, XS with a bases file, MLX output of an
official base), a merge that did nothing, one at the wrong strength, with another semantics or
other XS bases fails, and an adapter without effect is inconclusive. The CLI cases run as a
user runs it (subprocess: exit codes, stderr line, JSON).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters import inject, load_into
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.errors import IncompatibleError, MalformedFileError, UsageError
from sa3ckpt.models import DIT_ONLY_EXCLUDE, load_dit
from sa3ckpt.names import SECONDS_CONDITIONER
from sa3ckpt.ops.apply import apply_checkpoints
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.ops.library.bases import compute_bases_file
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import merge_checkpoint
from sa3ckpt.ops.verify import probe as verify_probe
from sa3ckpt.ops.verify.probe import make_probe, run_probe
from sa3ckpt.ops.verify.report import EPSILON, FAIL, INCONCLUSIVE, PASS
from sa3ckpt.ops.verify.verify import VerifyReport, verify_merge
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.synth import official_full_tensors
from sa3ckpt.targets import FAMILIES
from tests.helpers import run_cli

FAMILY = "tiny-small"
FAM = FAMILIES[FAMILY]
ADAPTERS = DATA_DIR / "adapters" / FAMILY
LORA = str(ADAPTERS / "lora.safetensors")
DORA = str(ADAPTERS / "dora-rows.safetensors")
LORA_XS = str(ADAPTERS / "lora-xs.safetensors")
ZERO = str(ADAPTERS / "lora.zero-effect.safetensors")
MEDIUM_LORA = str(DATA_DIR / "adapters" / "tiny-medium" / "lora.safetensors")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with complete fp16 bases: tiny-small (seed 0 and 1) and tiny-medium."""
    folder = tmp_path_factory.mktemp("verify")
    for name, family, seed in (
        ("base", FAMILY, 0),
        ("other", FAMILY, 1),
        ("medium", "tiny-medium", 0),
    ):
        tensors = official_full_tensors(FAMILIES[family], seed=seed, dtype="F16")
        save_file(tensors, str(folder / f"{name}.safetensors"))
    return folder


def _base(work: Path, name: str = "base") -> str:
    return str(work / f"{name}.safetensors")


def _args(*pairs: tuple[str, float]) -> list[AdapterArg]:
    return [AdapterArg(path, strength) for path, strength in pairs]


def _merge(
    work: Path, name: str, pairs: list[tuple[str, float]], base: str | None = None, **kw
) -> str:
    out = str(work / f"{name}.safetensors")
    merge_checkpoint(base or _base(work), _args(*pairs), out, MergeOptions(force=True, **kw))
    return out


def _verify(work: Path, pairs: list[tuple[str, float]], merged: str, **kw) -> VerifyReport:
    return verify_merge(_base(work), _args(*pairs), merged, **kw)


# --- a correct merge passes ------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["lora", "dora-rows"])
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_correct_merge_passes(work: Path, stem: str, dtype: str) -> None:
    adapter = str(ADAPTERS / f"{stem}.safetensors")
    merged = _merge(work, f"{stem}-{dtype}", [(adapter, 0.8)], dtype=dtype)
    report = _verify(work, [(adapter, 0.8)], merged)
    n = report.numbers
    assert report.verdict == PASS, report.lines()
    assert len(report.applied) == len(FAM.targets) and SECONDS_CONDITIONER in report.applied
    assert not (report.skipped or report.missing_from_model or report.unmatched_keys)
    assert n.effect > 0.05  # the fixture adapters change the output clearly
    if dtype == "fp16":
        assert report.floor_dtype == "F16" and n.rounding_floor > 1e-5
        # the merge's weights are the live ones rounded once: about one floor, not zero
        assert n.ratio is not None and 0.5 < n.ratio < 1.5
        assert n.threshold == pytest.approx(2 * n.rounding_floor + EPSILON)
    else:
        assert report.floor_dtype == "F32" and n.rounding_floor == 0
        assert n.difference < EPSILON / 10  # two fp32 implementations: float32 noise only
    assert n.apparent_scale == pytest.approx(1.0, abs=0.02)
    assert report.verdict_line().startswith("PASS: ")


def test_stacked_adapters_with_strengths_pass_in_their_semantics(work: Path) -> None:
    stack = [(DORA, 0.7), (LORA, 1.3)]
    for semantics in ("runtime", "delta"):
        merged = _merge(work, f"stack-{semantics}", stack, semantics=semantics)
        report = _verify(work, stack, merged, semantics=semantics)
        assert report.verdict == PASS, report.lines()
        assert [a["strength"] for a in report.adapters] == [0.7, 1.3]
    wrong = _verify(work, stack, merged, semantics="runtime")  # merged with delta
    assert wrong.verdict == FAIL
    assert any("delta semantics" in note for note in wrong.provenance_notes)


def test_bf16_merge_passes_against_the_bf16_floor(work: Path) -> None:
    fp16 = _verify(work, [(LORA, 1.0)], _merge(work, "lora-fp16", [(LORA, 1.0)]))
    bf16 = _verify(work, [(LORA, 1.0)], _merge(work, "lora-bf16", [(LORA, 1.0)], dtype="bf16"))
    assert bf16.verdict == PASS and bf16.floor_dtype == "BF16"
    assert bf16.numbers.rounding_floor > 3 * fp16.numbers.rounding_floor  # 8 vs 11 bits


def test_mlx_merged_checked_against_an_official_base(work: Path) -> None:
    mlx_base = str(work / "base.mlx.safetensors")
    convert_base(_base(work), mlx_base, to="mlx", force=True)
    merged = _merge(work, "dora-mlx", [(DORA, 0.6)], base=mlx_base)
    report = _verify(work, [(DORA, 0.6)], merged)
    assert report.merged.naming == "mlx" and report.base.naming == "official"
    assert report.verdict == PASS, report.lines()


def test_diffusers_folders_either_side(work: Path) -> None:
    """A transformer folder has no seconds conditioner: both runs get random conditioning and
    the seconds target is skipped, whichever side the folder is on."""
    folder = str(work / "diffusers-base")
    convert_base(_base(work), folder, to="diffusers", force=True)
    merged_folder = str(work / "diffusers-merged")
    merge_checkpoint(folder, _args((LORA, 1.0)), merged_folder, options=MergeOptions(force=True))
    merged_official = _merge(work, "lora-official", [(LORA, 1.0)])
    for base, merged in ((_base(work), merged_folder), (folder, merged_official)):
        report = verify_merge(base, _args((LORA, 1.0)), merged)
        assert report.verdict == PASS, report.lines()
        assert "diffusers" in (report.base.naming, report.merged.naming)
        assert report.conditioning.startswith("random")
        assert [t for t, _ in report.skipped] == [SECONDS_CONDITIONER]


def test_xs_with_a_bases_file(work: Path) -> None:
    bases = str(work / "bases.safetensors")
    compute_bases_file(_base(work), bases, rank=4, force=True)
    merged = _merge(work, "xs", [(LORA_XS, 1.0)], bases_path=bases)
    with_file = _verify(work, [(LORA_XS, 1.0)], merged, bases_path=bases)
    assert with_file.verdict == PASS, with_file.lines()
    assert set(with_file.bases_sources.values()) == {"bases file"}
    # the same bases as an SVD of this base computes them
    assert _verify(work, [(LORA_XS, 1.0)], merged).verdict == PASS
    # bases of another base give another adapter: verify catches it
    other = str(work / "other-bases.safetensors")
    compute_bases_file(_base(work, "other"), other, rank=4, force=True)
    foreign = _merge(work, "xs-foreign", [(LORA_XS, 1.0)], bases_path=other)
    report = _verify(work, [(LORA_XS, 1.0)], foreign)
    assert report.verdict == FAIL and report.hints


def test_only_and_exclude_mirror_merge(work: Path) -> None:
    dit_only = _merge(work, "dit-only", [(LORA, 1.0)], only="dit")
    assert _verify(work, [(LORA, 1.0)], dit_only).verdict == FAIL  # the seconds adapter is missing
    report = _verify(work, [(LORA, 1.0)], dit_only, only="dit")
    assert report.verdict == PASS
    assert report.skipped == [(SECONDS_CONDITIONER, "--only dit")]
    excluded = _merge(work, "excl", [(DORA, 1.0), (LORA, 1.0)], exclude=["2=layers.0."])
    assert _verify(work, [(DORA, 1.0), (LORA, 1.0)], excluded).verdict == FAIL
    report = _verify(work, [(DORA, 1.0), (LORA, 1.0)], excluded, exclude=["2=layers.0."])
    assert report.verdict == PASS and report.excluded


# --- a wrong merge fails -----------------------------------------------------------------------


def test_merged_equal_to_base_fails(work: Path) -> None:
    report = _verify(work, [(LORA, 1.0)], _base(work))
    assert report.verdict == FAIL
    assert report.numbers.merged_change == 0 and report.numbers.effect > 0.05
    assert "the adapters are not in it" in report.hints[0]


def test_wrong_strength_fails_and_says_so(work: Path) -> None:
    merged = _merge(work, "lora-half", [(LORA, 0.5)])
    report = _verify(work, [(LORA, 1.0)], merged)
    assert report.verdict == FAIL
    assert report.numbers.apparent_scale == pytest.approx(0.5, abs=0.1)
    assert report.provenance_notes == ["MERGED records strengths 0.5; given here 1"]
    assert "other strengths" in report.hints[0]
    # a strength error of 2% is well above the resolution of the check
    slightly = _merge(work, "lora-098", [(LORA, 0.98)])
    assert _verify(work, [(LORA, 1.0)], slightly).verdict == FAIL


def test_zero_effect_adapter_is_inconclusive(work: Path) -> None:
    merged = _merge(work, "zero", [(ZERO, 1.0)])
    report = _verify(work, [(ZERO, 1.0)], merged)
    assert report.verdict == INCONCLUSIVE
    assert report.numbers.base_difference <= report.numbers.threshold
    # and it cannot tell BASE from that merge either: the same verdict
    assert _verify(work, [(ZERO, 1.0)], _base(work)).verdict == INCONCLUSIVE


def test_non_finite_merged_weights_fail(work: Path) -> None:
    merged = _merge(work, "lora-nan", [(LORA, 1.0)])
    tensors = load_file(merged)
    key = next(k for k in tensors if k.endswith("project_in.weight"))
    tensors[key] = np.full_like(tensors[key], np.nan)
    broken = str(work / "broken.safetensors")
    save_file(tensors, broken)
    report = _verify(work, [(LORA, 1.0)], broken)
    assert report.verdict == FAIL and not report.numbers.merged_finite
    assert "NaN/Inf" in report.verdict_line()


# --- what is compared --------------------------------------------------------------------------


def test_merged_without_conditioner_skips_the_seconds_target(work: Path) -> None:
    merged = _merge(work, "lora-full", [(LORA, 1.0)])
    tensors = {k: v for k, v in load_file(merged).items() if not k.startswith("conditioner.")}
    no_cond = str(work / "no-cond.safetensors")
    save_file(tensors, no_cond)
    report = _verify(work, [(LORA, 1.0)], no_cond)
    assert report.verdict == PASS and not report.merged.conditioner
    assert report.conditioning.startswith("random")
    assert report.skipped == [(SECONDS_CONDITIONER, report.skipped[0][1])]
    assert "MERGED has no conditioner arrays" in report.skipped[0][1]
    with pytest.raises(IncompatibleError, match="--strict"):
        _verify(work, [(LORA, 1.0)], no_cond, strict=True)


def test_live_application_equals_the_trainable_modules(work: Path) -> None:
    """verify's live model (ops.apply) computes what injected adapter modules compute."""
    ckpt = load_adapter(LORA)
    ckpt.tensors.pop(SECONDS_CONDITIONER)  # no module: the conditioner is plain arrays
    strength = 0.7
    applied = load_dit(_base(work))
    probe = make_probe(applied.dit.topology, seed=3, frames=5)
    apply_checkpoints(applied.dit, [(ckpt, strength)])
    modules = load_dit(_base(work))
    inject(modules.dit, "lora", ckpt.config.rank, ckpt.config.alpha, exclude=list(DIT_ONLY_EXCLUDE))
    load_into(modules.dit, ckpt)
    for _, module in modules.dit.named_modules():
        if hasattr(module, "merged_weight"):
            module.strength = strength
    want = np.concatenate(run_probe(modules.dit, modules.conditioner, probe))
    got = np.concatenate(run_probe(applied.dit, applied.conditioner, probe))
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_cases_on_parallel_streams_equal_one_after_the_other(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_dit(_base(work))
    probe = make_probe(loaded.dit.topology, seed=2)
    monkeypatch.setattr(verify_probe, "cores", lambda: 2)
    parallel = run_probe(loaded.dit, loaded.conditioner, probe)
    monkeypatch.setattr(verify_probe, "cores", lambda: 1)
    serial = run_probe(loaded.dit, loaded.conditioner, probe)
    assert all(np.array_equal(a, b) for a, b in zip(parallel, serial, strict=True))


def test_streams_and_chunks_change_no_number(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live application, the rounding and the loads spread over one stream per core, a
    chunk of targets each: the same report, bit for bit, as one stream and one chunk."""
    from sa3ckpt import mlx_streams
    from sa3ckpt.ops.verify import verify as verify_module

    merged = _merge(work, "dora-streams", [(DORA, 0.8), (LORA, 0.5)])
    pairs = _args((DORA, 0.8), (LORA, 0.5))
    reports = []
    for cores, chunk in ((1, 1000), (2, 2), (3, 1)):
        for module in (mlx_streams, verify_probe):
            monkeypatch.setattr(module, "cores", lambda cores=cores: cores)
        monkeypatch.setattr(verify_module, "CHUNK", chunk)
        reports.append(verify_merge(_base(work), pairs, merged).to_json())
    for doc in reports:
        doc.pop("timings"), doc.pop("seconds")
    assert reports[0]["verdict"] == PASS and len(reports[0]["applied"]) > 2
    assert reports[1] == reports[0] and reports[2] == reports[0]


def test_inputs_are_seeded_and_cover_both_local_conds(work: Path) -> None:
    a, b = make_probe(FAM.topology, seed=1, frames=6), make_probe(FAM.topology, seed=1, frames=6)
    assert [c.local for c in a.cases] == ["training", "inpainting"]
    assert all(
        np.array_equal(np.array(x.x), np.array(y.x)) for x, y in zip(a.cases, b.cases, strict=True)
    )
    report = _verify(work, [(LORA, 1.0)], _merge(work, "lora-1", [(LORA, 1.0)]), seed=5, frames=3)
    assert report.probe.frames == 3 and report.probe.seed == 5
    assert len(report.numbers.cases) == 2 and all(
        math.isfinite(c["difference"]) for c in report.numbers.cases
    )


# --- refusals ----------------------------------------------------------------------------------


def test_refusals(work: Path) -> None:
    merged = _merge(work, "lora-r", [(LORA, 1.0)])
    with pytest.raises(UsageError, match="first argument is an adapter"):
        verify_merge(LORA, _args((LORA, 1.0)), merged)
    with pytest.raises(UsageError, match="last argument is an adapter"):
        _verify(work, [(LORA, 1.0)], LORA)
    with pytest.raises(MalformedFileError, match="no such file"):
        _verify(work, [(LORA, 1.0)], str(work / "missing.safetensors"))
    with pytest.raises(IncompatibleError, match=r"BASE .*shape mismatches"):
        _verify(work, [(MEDIUM_LORA, 1.0)], merged)
    with pytest.raises(IncompatibleError, match="not the same DiT"):
        _verify(work, [(LORA, 1.0)], _base(work, "medium"))
    no_cond = _merge(work, "lora-nc", [(LORA, 1.0)])
    tensors = {k: v for k, v in load_file(no_cond).items() if not k.startswith("conditioner.")}
    save_file(tensors, no_cond)
    with pytest.raises(IncompatibleError, match="no adapter target is left to check"):
        _verify(work, [(LORA, 1.0)], no_cond, only="conditioner")
    with pytest.raises(UsageError, match="semantics"):
        _verify(work, [(LORA, 1.0)], merged, semantics="average")


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_pass_and_fail(work: Path) -> None:
    merged = _merge(work, "cli", [(DORA, 0.7), (LORA, 1.3)])
    ok = run_cli("verify", _base(work), f"{DORA}:0.7", f"{LORA}:1.3", merged)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1].startswith("PASS: ") and not ok.stderr
    bad = run_cli("verify", "--json", _base(work), f"{DORA}:0.7", f"{LORA}:1.0", merged)
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["schema"] == 1 and doc["command"] == "verify" and doc["verdict"] == "fail"
    numbers = (
        "difference", "rounding_floor", "ratio_to_floor", "threshold", "effect",
        "base_difference", "merged_vs_base", "merged_change", "apparent_scale",
        "off_direction", "strength_resolution", "tolerance", "epsilon",
    )  # fmt: skip
    assert all(isinstance(doc[k], float) for k in numbers)
    assert doc["difference"] > doc["threshold"] and len(doc["cases"]) == 2
    assert doc["inputs"]["batch"] == 1 and doc["inputs"]["frames"] == 8
    assert len(doc["applied"]) == len(FAM.targets) and doc["floor_dtype"] == "F16"
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sa3ckpt: error: FAIL: MERGED differs")


@pytest.mark.parametrize(
    ("case", "code"),
    [("zero", 0), ("zero-strict", 1), ("bad-strength", 2), ("missing", 3), ("misfit", 4)],
)
def test_cli_exit_codes(work: Path, case: str, code: int) -> None:
    merged = _merge(work, "cli-zero", [(ZERO, 1.0)])
    base = _base(work)
    arguments = {
        "zero": [base, ZERO, merged],
        "zero-strict": [base, ZERO, merged, "--strict"],
        "bad-strength": [base, f"{ZERO}:abc", merged],
        "missing": [base, ZERO, str(work / "nope.safetensors")],
        "misfit": [base, MEDIUM_LORA, merged],
    }[case]
    result = run_cli("verify", *arguments)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if case == "zero":
        assert result.stderr.startswith("sa3ckpt: warning: INCONCLUSIVE")
    elif code:
        assert len(result.stderr.strip().splitlines()) == 1
