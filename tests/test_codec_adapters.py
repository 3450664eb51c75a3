"""Codec adapters end to end on the fixtures: inspect, validate, convert and merge (against an
independent float64 NumPy reference), and the CLI's exit codes and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.safetensors import open_safetensors, write_safetensors
from sa3ckpt.names.codec_keys import codec_key
from sa3ckpt.ops.codec.convert import convert_codec
from sa3ckpt.ops.inspect.report import inspect_file
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.codec import PROVENANCE_KEY
from sa3ckpt.ops.merge.driver import merge_checkpoint
from sa3ckpt.ops.validate import validate_path
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.targets.codec_families import CODEC_TARGET_FAMILIES
from tests.helpers import run_cli

CODEC = DATA_DIR / "codec"
ADAPTERS = sorted(p.name for p in CODEC.glob("tiny-same-*-*.safetensors"))
AE = {
    "s": CODEC / "tiny-same-s.autoencoder.safetensors",
    "l": CODEC / "tiny-same-l.autoencoder.safetensors",
}
EPS = 1e-12


def _family(name: str) -> str:
    return name.split(".")[0]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with open_safetensors(path) as f:
        return {k: np.array(f.array(k)) for k in f}


def _config(path: Path) -> dict[str, object]:
    with open_safetensors(path) as f:
        return json.loads(f.metadata["lora_config"])


def test_the_fixture_set_covers_both_sizes_halves_and_types() -> None:
    assert len(ADAPTERS) == 9  # 2 sizes x 2 halves x {lora, dora-rows} + the fp16 encoder
    for size in ("s", "l"):
        for part in ("encoder", "decoder"):
            for kind in ("lora", "dora-rows"):
                assert f"tiny-same-{size}-{part}.{kind}.safetensors" in ADAPTERS


# --- validate / inspect -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_validate_identifies_the_family_and_checks_every_target(name: str) -> None:
    result = validate_path(str(CODEC / name))
    fam = CODEC_TARGET_FAMILIES[_family(name)]
    assert result.family == fam.name
    assert result.adapter_type == _config(CODEC / name)["adapter_type"]
    assert result.coverage == f"{len(fam.targets)} of {len(fam.targets)} {fam.label} targets"
    assert not [f for f in result.findings if f.severity == "error"]


def test_fp16_encoder_adapter_warns_to_stay_fp32() -> None:
    result = validate_path(str(CODEC / "tiny-same-s-encoder.lora-f16.safetensors"))
    rules = [f.rule for f in result.findings]
    assert rules == ["codec-encoder-fp32"] and result.status(True) == "fail"
    assert "25-45%" in result.findings[0].message
    assert not validate_path(str(CODEC / "tiny-same-s-encoder.lora.safetensors")).findings


def test_fp16_decoder_adapter_has_no_fp32_warning(tmp_path: Path) -> None:
    out = tmp_path / "dec16.safetensors"
    convert_codec(
        str(CODEC / "tiny-same-l-decoder.lora.safetensors"), str(out), to="sa3", dtype="fp16"
    )
    assert not validate_path(str(out)).findings


def test_s_adapter_checked_as_l_names_both_and_fails() -> None:
    result = validate_path(
        str(CODEC / "tiny-same-s-decoder.lora.safetensors"), model="tiny-same-l-decoder"
    )
    errors = [f for f in result.findings if f.severity == "error"]
    assert [f.rule for f in errors] == ["codec-shape"]
    message = errors[0].message
    assert "tiny-same-s decoder adapter on the tiny-same-l decoder" in message
    assert "share names, not widths" in message


def test_wrong_shape_without_model_fits_no_family(tmp_path: Path) -> None:
    tensors = _arrays(CODEC / "tiny-same-l-decoder.lora.safetensors")
    key = codec_key("decoder.layers.1", "lora_B", "sa3")
    tensors[key] = np.zeros((17, 4), np.float32)
    out = tmp_path / "bad.safetensors"
    cfg = json.dumps(_config(CODEC / "tiny-same-l-decoder.lora.safetensors"))
    write_safetensors(out, tensors, {"lora_config": cfg})
    result = validate_path(str(out))
    assert [f.rule for f in result.findings] == ["codec-shape"]
    assert "fits no codec family; nearest tiny-same-l decoder" in result.findings[0].message


def test_rank_and_type_disagreeing_with_config(tmp_path: Path) -> None:
    src = CODEC / "tiny-same-l-decoder.lora.safetensors"
    cfg = {**_config(src), "rank": 8, "adapter_type": "dora-rows"}
    out = tmp_path / "cfg.safetensors"
    write_safetensors(out, _arrays(src), {"lora_config": json.dumps(cfg)})
    rules = sorted(f.rule for f in validate_path(str(out)).findings)
    assert rules == ["codec-rank", "codec-type"]


def test_a_target_missing_a_param_and_a_rankless_file(tmp_path: Path) -> None:
    src = CODEC / "tiny-same-l-decoder.lora.safetensors"
    tensors = _arrays(src)
    del tensors[codec_key("decoder.layers.1", "lora_B", "sa3")]
    out = tmp_path / "missing.safetensors"
    write_safetensors(out, tensors, {"lora_config": json.dumps(_config(src))})
    findings = validate_path(str(out)).findings
    assert [f.rule for f in findings] == ["codec-type"]
    assert "decoder.layers.1: no lora_B" in findings[0].message
    scalar = tmp_path / "scalar.safetensors"
    write_safetensors(
        scalar,
        {
            codec_key("decoder.layers.1", "lora_A", "sa3"): np.zeros((), np.float32),
            codec_key("decoder.layers.1", "lora_B", "sa3"): np.zeros((3,), np.float32),
        },
        {"lora_config": json.dumps(_config(src))},
    )
    result = validate_path(str(scalar))
    assert [f.rule for f in result.findings] == ["codec-type"] and result.family is None


def test_unknown_codec_target(tmp_path: Path) -> None:
    src = CODEC / "tiny-same-l-decoder.lora.safetensors"
    tensors = _arrays(src)
    norm = "decoder.layers.3.transformers.0.self_attn.q_norm"
    tensors[codec_key(norm, "lora_A", "sa3")] = np.zeros((4, 16), np.float32)
    tensors[codec_key(norm, "lora_B", "sa3")] = np.zeros((16, 4), np.float32)
    out = tmp_path / "unknown.safetensors"
    write_safetensors(out, tensors, {"lora_config": json.dumps(_config(src))})
    rules = [f.rule for f in validate_path(str(out)).findings]
    assert rules == ["codec-unknown-target"]


def test_inspect_reports_family_type_coverage_and_the_encoder_note() -> None:
    report = inspect_file(CODEC / "tiny-same-s-encoder.dora-rows.safetensors")
    assert report.kind == "codec-adapter" and report.codec is not None
    codec = report.codec
    assert codec["family"] == "tiny-same-s-encoder" and codec["adapter_type"] == "dora-rows"
    assert (codec["rank"], codec["alpha"], codec["scale"]) == (4, 8.0, 2.0)
    assert codec["coverage"] == "9 of 9 tiny-same-s encoder targets"
    assert any("should stay fp32" in n for n in codec["notes"])
    assert report.checkpoint.label == "an adapter on the tiny-same-s encoder"
    decoder = inspect_file(CODEC / "tiny-same-l-decoder.lora.safetensors")
    assert decoder.codec is not None and decoder.codec["notes"] == []


# --- convert ----------------------------------------------------------------------------------


@pytest.mark.parametrize("to", ["sa3", "peft", "sa3cpp"])
@pytest.mark.parametrize(
    "name", ["tiny-same-l-decoder.dora-rows.safetensors", "tiny-same-s-encoder.lora.safetensors"]
)
def test_convert_round_trips_values_and_family(tmp_path: Path, to: str, name: str) -> None:
    if to == "sa3cpp":
        pytest.importorskip("gguf")
    out = tmp_path / (
        "out" if to == "peft" else f"out.{'gguf' if to == 'sa3cpp' else 'safetensors'}"
    )
    ledger = convert_codec(str(CODEC / name), str(out), to=to)
    assert ledger.worst_error == 0.0 and ledger.targets == len(
        CODEC_TARGET_FAMILIES[_family(name)].targets
    )
    again = validate_path(str(out))
    assert again.family == _family(name) and again.adapter_type == ledger.adapter_type
    assert not again.findings
    if to == "sa3":  # back in sa3 keys: the same tensors, the same lora_config target
        assert _arrays(out).keys() == _arrays(CODEC / name).keys()
        for key, value in _arrays(CODEC / name).items():
            np.testing.assert_array_equal(_arrays(out)[key], value)
        assert _config(out)["target"] == _config(CODEC / name)["target"]


@pytest.mark.parametrize("to", ["diffusers", "mlx", "bare"])
def test_convert_refuses_dit_only_formats_with_a_reason(tmp_path: Path, to: str) -> None:
    with pytest.raises(UsageError, match=r"codec adapter: --to .* makes no sense"):
        convert_codec(
            str(CODEC / "tiny-same-l-decoder.lora.safetensors"), str(tmp_path / "x"), to=to
        )
    assert not (tmp_path / "x").exists()


def test_convert_fp16_encoder_warns(tmp_path: Path) -> None:
    ledger = convert_codec(
        str(CODEC / "tiny-same-s-encoder.lora.safetensors"),
        str(tmp_path / "e.safetensors"),
        to="sa3",
        dtype="fp16",
    )
    assert len(ledger.warnings) == 1 and "should stay fp32" in ledger.warnings[0]
    assert not convert_codec(
        str(CODEC / "tiny-same-s-encoder.lora.safetensors"),
        str(tmp_path / "e32.safetensors"),
        to="sa3",
    ).warnings


# --- merge vs an independent float64 reference ------------------------------------------------


def _reference(
    w0: np.ndarray, params: dict[str, np.ndarray], kind: str, c: float, s: float, semantics: str
) -> np.ndarray:
    w0 = w0.astype(np.float64)
    delta = params["lora_B"].astype(np.float64) @ params["lora_A"].astype(np.float64)

    def adapted(strength: float, mag: np.ndarray | None) -> np.ndarray:
        v = w0 + c * strength * delta
        if kind == "lora":
            return v
        norms = np.sqrt((v * v).sum(axis=1, keepdims=True))
        return mag[:, None] * v / (norms + EPS)

    if kind == "lora" or s == 1.0:
        return adapted(s, params.get("magnitude", np.zeros(0)).astype(np.float64))
    m = params["magnitude"].astype(np.float64)
    if semantics == "runtime":
        return adapted(s, m)
    if semantics == "delta":
        return w0 + s * (adapted(1.0, m) - w0)
    n = np.sqrt((w0 * w0).sum(axis=1))  # blend: magnitude toward the incoming row norms
    return adapted(s, n + s * (m - n))


@pytest.mark.parametrize("size", ["s", "l"])
@pytest.mark.parametrize("part", ["encoder", "decoder"])
@pytest.mark.parametrize("kind", ["lora", "dora-rows"])
@pytest.mark.parametrize(
    ("semantics", "strength"), [("runtime", 0.6), ("delta", 0.6), ("blend", 1.7)]
)
def test_merge_matches_the_float64_reference(
    tmp_path: Path, size: str, part: str, kind: str, semantics: str, strength: float
) -> None:
    name = f"tiny-same-{size}-{part}.{kind}.safetensors"
    out = tmp_path / "merged.safetensors"
    ledger = merge_checkpoint(
        str(AE[size]),
        [AdapterArg(str(CODEC / name), strength)],
        str(out),
        options=MergeOptions(semantics=semantics),
    )
    fam = CODEC_TARGET_FAMILIES[f"tiny-same-{size}-{part}"]
    assert sorted(ledger.merged) == sorted(t.name for t in fam.targets)
    base, merged, adapter = _arrays(AE[size]), _arrays(out), _arrays(CODEC / name)
    cfg = _config(CODEC / name)
    c = float(cfg["alpha"]) / float(cfg["rank"])  # type: ignore[arg-type]
    for t in fam.targets:
        params = {
            p: adapter[codec_key(t.name, p, "sa3")]
            for p in ("lora_A", "lora_B", "magnitude")
            if codec_key(t.name, p, "sa3") in adapter
        }
        want = _reference(base[f"{t.name}.weight"], params, kind, c, strength, semantics)
        got = merged[f"{t.name}.weight"]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(np.abs(want).max()))
    untouched = set(base) - {f"{t.name}.weight" for t in fam.targets}
    for key in untouched:
        np.testing.assert_array_equal(merged[key], base[key])
    with open_safetensors(out) as f:
        provenance = json.loads(f.metadata[PROVENANCE_KEY])
    assert (
        provenance["semantics"] == semantics and provenance["adapters"][0]["strength"] == strength
    )


def test_merge_chains_two_adapters_in_order(tmp_path: Path) -> None:
    out = tmp_path / "two.safetensors"
    lora, dora = (
        CODEC / "tiny-same-l-decoder.lora.safetensors",
        CODEC / "tiny-same-l-decoder.dora-rows.safetensors",
    )
    merge_checkpoint(
        str(AE["l"]), [AdapterArg(str(lora), 0.5), AdapterArg(str(dora), 0.8)], str(out)
    )
    base, merged = _arrays(AE["l"]), _arrays(out)
    a, b = _arrays(lora), _arrays(dora)
    t = "decoder.layers.3.transformers.1.ff.ff.0.proj"
    p1 = {p: a[codec_key(t, p, "sa3")] for p in ("lora_A", "lora_B")}
    p2 = {p: b[codec_key(t, p, "sa3")] for p in ("lora_A", "lora_B", "magnitude")}
    w1 = _reference(base[f"{t}.weight"], p1, "lora", 2.0, 0.5, "runtime")
    want = _reference(w1, p2, "dora-rows", 2.0, 0.8, "runtime")
    np.testing.assert_allclose(merged[f"{t}.weight"], want, rtol=2e-5, atol=1e-5)


def test_merge_into_a_pretransform_copy_keeps_its_keys(tmp_path: Path) -> None:
    base = {f"pretransform.model.{k}": v for k, v in _arrays(AE["s"]).items()}
    src = tmp_path / "full.safetensors"
    write_safetensors(src, base)
    out = tmp_path / "merged.safetensors"
    ledger = merge_checkpoint(
        str(src), [AdapterArg(str(CODEC / "tiny-same-s-decoder.lora.safetensors"), 1.0)], str(out)
    )
    assert len(ledger.merged) == 9 and set(_arrays(out)) == set(base)


def test_merge_s_adapter_into_l_codec_is_refused_naming_both(tmp_path: Path) -> None:
    out = tmp_path / "no.safetensors"
    with pytest.raises(
        IncompatibleError, match="tiny-same-s decoder adapter on a tiny-same-l decoder codec"
    ):
        merge_checkpoint(
            str(AE["l"]),
            [AdapterArg(str(CODEC / "tiny-same-s-decoder.lora.safetensors"), 1.0)],
            str(out),
        )
    assert not out.exists()


def test_merge_refuses_codec_and_dit_mixes(tmp_path: Path) -> None:
    dit_base = DATA_DIR / "bases" / "tiny-small.official-full.safetensors"
    dit_adapter = DATA_DIR / "adapters" / "tiny-small" / "lora.safetensors"
    with pytest.raises(IncompatibleError, match="merge it into the SAME codec weights"):
        merge_checkpoint(
            str(dit_base),
            [AdapterArg(str(CODEC / "tiny-same-s-decoder.lora.safetensors"), 1.0)],
            str(tmp_path / "a"),
        )
    with pytest.raises(IncompatibleError, match="not a codec adapter"):
        merge_checkpoint(str(AE["s"]), [AdapterArg(str(dit_adapter), 1.0)], str(tmp_path / "b"))


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_validate_json_and_exit_codes() -> None:
    good = run_cli("validate", "--json", str(CODEC / "tiny-same-l-decoder.lora.safetensors"))
    assert good.returncode == 0, good.stderr
    entry = json.loads(good.stdout)["files"][0]
    assert entry["family"] == "tiny-same-l-decoder" and entry["status"] == "pass"
    assert (
        entry["checkpoint"]["codec_adapter"] is True
        and entry["checkpoint"]["kind"] == "codec-adapter"
    )
    bad = run_cli(
        "validate",
        "--json",
        "--model",
        "tiny-same-l-decoder",
        str(CODEC / "tiny-same-s-decoder.lora.safetensors"),
    )
    assert bad.returncode == 1
    assert [f["rule"] for f in json.loads(bad.stdout)["files"][0]["findings"]] == ["codec-shape"]
    warn = run_cli("validate", "--strict", str(CODEC / "tiny-same-s-encoder.lora-f16.safetensors"))
    assert warn.returncode == 1 and "codec-encoder-fp32" in warn.stdout
    assert (
        run_cli("validate", str(CODEC / "tiny-same-s-encoder.lora-f16.safetensors")).returncode == 0
    )


def test_cli_inspect_json() -> None:
    result = run_cli("inspect", "--json", str(CODEC / "tiny-same-l-encoder.dora-rows.safetensors"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    entry = doc["files"][0]
    assert doc["schema"] and entry["kind"] == "codec-adapter"
    assert entry["codec"]["family"] == "tiny-same-l-encoder" and entry["codec"]["targets"] == 13
    text = run_cli("inspect", str(CODEC / "tiny-same-l-encoder.dora-rows.safetensors"))
    assert (
        "an adapter on the tiny-same-l encoder" in text.stdout and "should stay fp32" in text.stdout
    )


def test_cli_merge_ledger_json_and_refusal(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = run_cli(
        "merge",
        str(AE["l"]),
        f"{CODEC / 'tiny-same-l-decoder.dora-rows.safetensors'}:0.5",
        "-o",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (
        doc["command"] == "merge"
        and len(doc["merged"]) == 13
        and doc["adapters"][0]["strength"] == 0.5
    )
    refused = run_cli(
        "merge",
        str(AE["l"]),
        str(CODEC / "tiny-same-s-decoder.lora.safetensors"),
        "-o",
        str(tmp_path / "n.safetensors"),
    )
    assert refused.returncode == 4 and not (tmp_path / "n.safetensors").exists()
    assert refused.stderr.count("\n") == 1 and "share module names, not widths" in refused.stderr
    again = run_cli(
        "merge", str(AE["l"]), str(CODEC / "tiny-same-l-decoder.lora.safetensors"), "-o", str(out)
    )
    assert again.returncode != 0  # exists, no --force


def test_cli_convert_exit_codes_and_fp16_warning(tmp_path: Path) -> None:
    src = str(CODEC / "tiny-same-s-encoder.lora.safetensors")
    ok = run_cli(
        "convert",
        src,
        "-o",
        str(tmp_path / "a.safetensors"),
        "--to",
        "sa3",
        "--dtype",
        "fp16",
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    assert "should stay fp32" in ok.stderr and json.loads(ok.stdout)["warnings"]
    refused = run_cli("convert", src, "-o", str(tmp_path / "b"), "--to", "diffusers")
    assert refused.returncode == 2 and "makes no sense" in refused.stderr
