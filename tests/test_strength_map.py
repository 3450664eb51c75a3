"""--strength-map: per-target strengths against the float64 reference, in every semantics and
both kernels; parsing and refusals; the ledger, the preview and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.errors import UsageError
from sa3ckpt.names import official_base_key
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint, preview_merge
from sa3ckpt.ops.merge.strength_map import parse_strength_map, split_entries
from sa3ckpt.targets import FAMILIES
from tests.helpers import TOLERANCE, base_2d, run_cli
from tests.reference_kernel import use_reference_kernel
from tests.reference_math import REFERENCES

MAP = (
    "to_timestep_embed=0,preprocess_conv=0.5,postprocess_conv=1.7,layers.[0-1].=0.5,cross_attn=1.7"
)


def expected_factor(target: str) -> float:
    """MAP by hand: the product of every entry whose substring is in the name."""
    factor = 1.0
    if "to_timestep_embed" in target:
        factor *= 0.0
    if "preprocess_conv" in target:
        factor *= 0.5
    if "postprocess_conv" in target:
        factor *= 1.7
    if "layers.0." in target or "layers.1." in target:
        factor *= 0.5
    if "cross_attn" in target:
        factor *= 1.7
    return factor


def _base(family: str) -> str:
    return str(DATA_DIR / "bases" / f"{family}.official.safetensors")


def _adapter(family: str, stem: str) -> str:
    return str(DATA_DIR / "adapters" / family / f"{stem}.safetensors")


def _params(path: str, target: str) -> dict[str, np.ndarray]:
    ckpt = load_checkpoint(path)
    return {k: np.asarray(v, np.float64) for k, v in ckpt.tensors[target].items()}


STACKS = {
    "lora": [("lora", 1.0)],
    "dora-rows": [("dora-rows", 1.0)],
    "bora": [("bora", 0.8)],
    "dora-rows+lora": [("dora-rows", 1.0), ("lora", 0.7)],
    "bora+dora-cols": [("bora", 1.0), ("dora-cols", 1.3)],
}


@pytest.mark.parametrize("family", ["tiny-small", "tiny-medium"])  # conv1d k=3 / k=1
@pytest.mark.parametrize("semantics", ["runtime", "blend", "delta"])
@pytest.mark.parametrize("stack", list(STACKS))
def test_per_target_strengths_match_the_float64_reference(
    tmp_path: Path, family: str, semantics: str, stack: str
) -> None:
    members = [(_adapter(family, stem), s) for stem, s in STACKS[stack]]
    extra = ["2=layers.0.=0"] if len(members) > 1 else []  # one adapter off in one block
    out = tmp_path / "merged.safetensors"
    ledger = merge_checkpoint(
        _base(family),
        [AdapterArg(p, s) for p, s in members],
        str(out),
        options=MergeOptions(semantics=semantics, dtype="fp32", strength_map=[MAP, *extra]),
    )
    merged = load_file(str(out))
    fam = FAMILIES[family]
    kinds = [load_checkpoint(p) for p, _ in members]
    seen = set()
    for target in fam.targets:
        ref_stack = []
        for index, ((path, strength), ckpt) in enumerate(zip(members, kinds, strict=True), 1):
            if target.name not in ckpt.tensors:
                continue
            s = strength * expected_factor(target.name)
            if index == 2 and extra and "layers.0." in target.name:
                s = 0.0
            ref_stack.append((ckpt.adapter_type, _params(path, target.name), ckpt.config.scale, s))
            seen.add(s / strength if strength else s)
        if not ref_stack:
            continue
        w0 = base_2d(target, family)
        want = REFERENCES[semantics](w0, ref_stack)
        got = merged[official_base_key(target.name)].astype(np.float64).reshape(target.shape)
        scale = max(1.0, float(np.max(np.abs(want))))
        assert np.max(np.abs(got - want)) <= TOLERANCE * scale, target.name
    assert {0.0, 0.5, 1.0, 1.7} <= {round(v, 6) for v in seen}
    by_target = {t.target: t.strengths for t in ledger.target_strengths}
    assert len(by_target) == len(ledger.merged)
    first = STACKS[stack][0][1]
    assert by_target["model.postprocess_conv"][0] == pytest.approx(first * 1.7)


@pytest.mark.parametrize("semantics", ["runtime", "blend", "delta"])
@pytest.mark.parametrize("stem", ["lora", "dora-rows", "bora"])
def test_strength_zero_leaves_the_base_bit_identical(
    tmp_path: Path, semantics: str, stem: str
) -> None:
    out = tmp_path / "merged.safetensors"
    merge_checkpoint(
        _base("tiny-small"),
        [
            AdapterArg(_adapter("tiny-small", stem), 1.0),
            AdapterArg(_adapter("tiny-small", "lora"), 0.6),
        ],
        str(out),
        options=MergeOptions(semantics=semantics, strength_map=["layers.1.=0,postprocess_conv=0"]),
    )
    merged, base = load_file(str(out)), load_file(_base("tiny-small"))
    zeroed = [t.name for t in FAMILIES["tiny-small"].targets if "layers.1." in t.name]
    zeroed.append("model.postprocess_conv")
    for name in zeroed:
        key = official_base_key(name)
        assert merged[key].dtype == base[key].dtype
        assert merged[key].tobytes() == base[key].tobytes(), name
    other = official_base_key("model.transformer.layers.0.self_attn.to_qkv")
    assert merged[other].tobytes() != base[other].tobytes()


@pytest.mark.parametrize("dtype", [None, "fp32", "bf16"])
@pytest.mark.parametrize(
    ("stem", "semantics"),
    [("lora", "delta"), ("dora-rows", "runtime"), ("dora-rows", "blend"), ("bora", "blend")],
)
def test_tiled_and_whole_tensor_kernels_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str | None, stem: str, semantics: str
) -> None:
    """Per-target strengths through the tiled kernel: the whole-tensor reference's bytes."""
    args = [AdapterArg(_adapter("tiny-medium", stem), 1.0)]
    fast = tmp_path / "fast.safetensors"
    merge_checkpoint(
        _base("tiny-medium"),
        args,
        str(fast),
        options=MergeOptions(semantics=semantics, dtype=dtype, strength_map=[MAP]),
    )
    calls = use_reference_kernel(monkeypatch)
    whole = tmp_path / "whole.safetensors"
    merge_checkpoint(
        _base("tiny-medium"),
        args,
        str(whole),
        options=MergeOptions(semantics=semantics, dtype=dtype, strength_map=[MAP]),
    )
    assert calls
    assert fast.read_bytes() == whole.read_bytes()


def test_parse_splits_outside_ranges_and_multiplies() -> None:
    assert split_entries("layers.[0,2-3].=0.5, cross_attn=0.8") == [
        "layers.[0,2-3].=0.5",
        "cross_attn=0.8",
    ]
    smap = parse_strength_map(["layers.[0,2-3].=0.5,cross_attn=0.8", "2=to_q=-1"], ["a", "b"])
    assert smap.factor(1, "model.transformer.layers.2.cross_attn.to_q") == (
        pytest.approx(0.4),
        ("layers.[0,2-3].=0.5", "cross_attn=0.8"),
    )
    assert smap.factor(2, "model.transformer.layers.2.cross_attn.to_q")[0] == pytest.approx(-0.4)
    assert smap.factor(1, "model.transformer.layers.1.self_attn.to_qkv") == (1.0, ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cross_attn", "is not \\[ADAPTER=\\]PATTERN=FACTOR"),
        ("cross_attn=abc", "is not a number"),
        ("cross_attn=nan", "is not a number"),
        ("=0.5", "is not \\[ADAPTER=\\]PATTERN=FACTOR"),
        ("3=cross_attn=0.5", "adapter 3 does not exist"),
        ("layers.[3-1].=0.5", "runs backwards"),
        ("cross_attn=0.5,cross_attn=2", "select the same targets"),
        ("cross_attn=0.5,,to_q=1", "empty entry"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_strength_map([text], ["a", "b"])


def test_an_entry_matching_nothing_is_an_error(tmp_path: Path) -> None:
    args = [AdapterArg(_adapter("tiny-small", "lora.layers-0"), 1.0)]
    with pytest.raises(UsageError, match=r"'layers\.1\.=0\.5' matches no target"):
        merge_checkpoint(
            _base("tiny-small"),
            args,
            str(tmp_path / "o"),
            options=MergeOptions(strength_map=["layers.1.=0.5"]),
        )
    with pytest.raises(UsageError, match="matches no target"):  # excluded first
        merge_checkpoint(
            _base("tiny-small"),
            args,
            str(tmp_path / "o"),
            options=MergeOptions(exclude=["cross_attn"], strength_map=["cross_attn=0.5"]),
        )
    assert not (tmp_path / "o").exists()


def test_preview_lists_the_strengths(tmp_path: Path) -> None:
    args = [AdapterArg(_adapter("tiny-small", "dora-rows"), 0.5)]
    preview = preview_merge(
        _base("tiny-small"), args, str(tmp_path / "o"), options=MergeOptions(strength_map=[MAP])
    )
    lines = preview.lines()
    assert any(line.startswith("--strength-map ") for line in lines)
    assert "strength at model.postprocess_conv: adapter 1 0.85 (postprocess_conv=1.7)" in lines
    doc = preview.to_json()["ledger"]
    assert doc["strength_map"] == [MAP]
    row = next(t for t in doc["target_strengths"] if t["target"] == "model.to_timestep_embed.0")
    assert row == {
        "target": "model.to_timestep_embed.0",
        "strengths": [0.0],
        "entries": [["to_timestep_embed=0"]],
    }


def test_cli_ledger_and_refusal(tmp_path: Path) -> None:
    out = tmp_path / "merged.safetensors"
    base, lora = _base("tiny-small"), _adapter("tiny-small", "lora")
    proc = run_cli("merge", base, lora + ":0.5", "-o", str(out), "--strength-map", MAP, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    strengths = {t["target"]: t["strengths"][0] for t in doc["target_strengths"]}
    assert strengths["model.transformer.layers.0.cross_attn.to_q"] == pytest.approx(0.5 * 0.85)
    assert strengths["model.transformer.layers.2.ff.ff.2"] == 0.5
    with safe_open(str(out), "np") as f:
        provenance = json.loads((f.metadata() or {})["sa3ckpt_merge"])
    assert provenance["strength_map"] == [MAP]
    text = run_cli("merge", base, lora, "-o", str(out), "--force", "--strength-map", "ff.ff.2=2")
    assert text.returncode == 0
    assert "strength at model.transformer.layers.0.ff.ff.2: adapter 1 2 (ff.ff.2=2)" in text.stdout
    bad = run_cli("merge", base, lora, "-o", str(tmp_path / "x"), "--strength-map", "nothere=2")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == (
        "sa3ckpt: error: --strength-map entry 'nothere=2' matches no target that would be "
        "merged (check the pattern, its adapter, --exclude and --only)"
    )


def test_verify_accepts_the_same_map(tmp_path: Path) -> None:
    """A merge made with a map verifies with it, and fails (naming the map) without it."""
    from safetensors.numpy import save_file

    from sa3ckpt.ops.verify.report import FAIL, PASS
    from sa3ckpt.ops.verify.verify import verify_merge
    from sa3ckpt.synth import official_full_tensors

    base = str(tmp_path / "base.safetensors")
    save_file(official_full_tensors(FAMILIES["tiny-small"], seed=0, dtype="F16"), base)
    dora, lora = _adapter("tiny-small", "dora-rows"), _adapter("tiny-small", "lora")
    args = [AdapterArg(dora, 1.0), AdapterArg(lora, 0.8)]
    out = str(tmp_path / "merged.safetensors")
    mapping = ["layers.[0-1].=0.3,cross_attn=1.7", "2=ff=0"]
    merge_checkpoint(base, args, out, options=MergeOptions(semantics="blend", strength_map=mapping))
    report = verify_merge(base, args, out, semantics="blend", strength_map=mapping)
    assert report.verdict == PASS and not report.provenance_notes
    plain = verify_merge(base, args, out, semantics="blend")
    assert plain.verdict == FAIL
    assert any("--strength-map" in n for n in plain.provenance_notes)
    proc = run_cli(
        "verify",
        base,
        dora,
        lora + ":0.8",
        out,
        "--semantics",
        "blend",
        "--strength-map",
        mapping[0],
        "--strength-map",
        mapping[1],
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == PASS
