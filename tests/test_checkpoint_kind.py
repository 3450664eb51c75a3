"""What kind of checkpoint a file is (ops.checkpoint_kind), on a fixture of every kind, and
what inspect and validate say of the files that are not SA3 DiT adapters (codec adapters
are checked adapters of their own kind: tests/test_codec_*.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from fixtures.generate import DATA_DIR
from sa3ckpt.ops.inspect import checkpoint_kind as ck
from sa3ckpt.ops.inspect.report import inspect_file
from sa3ckpt.ops.inspect.report_model import BaseReport, InspectReport, OtherReport
from sa3ckpt.ops.validate import validate_path, validate_paths
from tests.helpers import run_cli

KINDS = DATA_DIR / "kinds"
# fixture -> (kind, part, codec family)
EXPECTED: dict[str, tuple[str, str | None, str | None]] = {
    "adapters/tiny-small/lora.safetensors": (ck.DIT_ADAPTER, None, None),
    "adapters/tiny-small/peft-dora": (ck.DIT_ADAPTER, None, None),
    "bases/tiny-small.official-full.safetensors": (ck.FULL_BASE, None, None),
    "bases/tiny-medium.official.safetensors": (ck.FULL_BASE, None, None),
    "bases/tiny-small.mlx.safetensors": (ck.DIT_WEIGHTS, None, None),
    "kinds/dit_tiny-small_f16.npz": (ck.DIT_WEIGHTS, None, None),
    "kinds/tiny-small.official-no-conditioner.safetensors": (ck.DIT_WEIGHTS, None, None),
    "kinds/tiny-small.conditioner-only.safetensors": (ck.CONDITIONER_ONLY, None, None),
    "kinds/tiny-same-s.encoder.safetensors": (ck.CODEC_WEIGHTS, "encoder", "tiny-same-s"),
    "kinds/tiny-same-l.decoder.safetensors": (ck.CODEC_WEIGHTS, "decoder", "tiny-same-l"),
    # the MLX runtime's same_*_encoder_f32.npz: the encoder's own names, no `encoder.` root
    "kinds/tiny-same-s_encoder_f32.npz": (ck.CODEC_WEIGHTS, "encoder", "tiny-same-s"),
    "kinds/tiny-same-s.autoencoder.safetensors": (
        ck.CODEC_WEIGHTS,
        "autoencoder",
        "tiny-same-s",
    ),
    "kinds/codec-lora.decoder.safetensors": (ck.CODEC_ADAPTER, "decoder", "tiny-same-l-decoder"),
    "kinds/codec-lora.encoder-keys.safetensors": (
        ck.CODEC_ADAPTER,
        "encoder",
        "tiny-same-s-encoder",
    ),
    "codec/tiny-same-l.autoencoder.safetensors": (ck.CODEC_WEIGHTS, "autoencoder", "tiny-same-l"),
    "codec/tiny-same-s-decoder.dora-rows.safetensors": (
        ck.CODEC_ADAPTER,
        "decoder",
        "tiny-same-s-decoder",
    ),
    "codec/tiny-same-l-encoder.lora.safetensors": (
        ck.CODEC_ADAPTER,
        "encoder",
        "tiny-same-l-encoder",
    ),
    "edge/raw_pickle_protocol_2.ckpt": (ck.PICKLE_FILE, None, None),
}
NOT_DIT_ADAPTERS = [
    rel for rel, (kind, _, _) in EXPECTED.items() if kind not in (ck.DIT_ADAPTER, ck.PICKLE_FILE)
]
# files the adapter rules do not judge at all: neither DiT nor codec adapters
NOT_ADAPTERS = [rel for rel in NOT_DIT_ADAPTERS if EXPECTED[rel][0] != ck.CODEC_ADAPTER]
CODEC_ADAPTERS = [rel for rel in NOT_DIT_ADAPTERS if EXPECTED[rel][0] == ck.CODEC_ADAPTER]


@pytest.mark.parametrize("rel", list(EXPECTED))
def test_identify_kind_of_every_fixture_kind(rel: str) -> None:
    found = ck.identify_kind(DATA_DIR / rel)
    assert (found.kind, found.part, found.family) == EXPECTED[rel]
    assert found.line.startswith(found.label + ": ") and "\n" not in found.line


def test_the_kind_table_has_one_dit_adapter_row_and_a_badge_for_each() -> None:
    assert [k.name for k in ck.KINDS.values() if k.dit_adapter] == [ck.DIT_ADAPTER]
    assert [k.name for k in ck.KINDS.values() if k.codec_adapter] == [ck.CODEC_ADAPTER]
    assert all(k.badge and k.label and k.explain for k in ck.KINDS.values())
    assert {ck.FULL_BASE, ck.DIT_WEIGHTS, ck.CONDITIONER_ONLY} == {
        k.name for k in ck.KINDS.values() if k.base
    }


@pytest.mark.parametrize(("family", "width", "depth"), [("SAME-S", 768, 6), ("SAME-L", 1536, 12)])
def test_codec_family_from_real_sized_shapes(family: str, width: int, depth: int) -> None:
    shapes = {
        f"decoder.layers.1.layers.{i}.self_attn.to_qkv.weight": (5 * width, width)
        for i in range(depth)
    }
    shapes["decoder.layers.0.weight"] = (width, 256)
    found = ck.weights_kind(shapes)
    assert (found.kind, found.part, found.family) == (ck.CODEC_WEIGHTS, "decoder", family)
    assert found.label == f"{family} decoder weights"


def test_codec_weights_of_an_unknown_size_are_still_codec_weights() -> None:
    shapes = {"encoder.layers.1.layers.0.self_attn.to_qkv.weight": (5 * 40, 40)}
    found = ck.weights_kind(shapes)
    assert found.kind == ck.CODEC_WEIGHTS and found.family is None
    assert "size not recognised" in found.label


def test_names_alone_without_codec_layers_are_unknown() -> None:
    assert ck.weights_kind({"encoder.proj.weight": (4, 4)}).kind == ck.UNKNOWN


MLX_ENCODER = {
    "mapping.weight": (8, 512, 1),
    "new_tokens": (1, 1, 8),
    "blocks.0.attn.to_qkv.weight": (40, 8),
    "blocks.1.attn.to_qkv.weight": (40, 8),
    "project_out.weight": (256, 8),
    "bottleneck.running_std": (1,),
}


def test_the_mlx_runtime_encoder_layout_is_codec_weights() -> None:
    """Was: `unknown` (its keys have no `encoder.` root)."""
    found = ck.weights_kind(MLX_ENCODER)
    assert (found.kind, found.part, found.family) == (ck.CODEC_WEIGHTS, "encoder", "tiny-same-s")
    assert found.detail.startswith("MLX runtime encoder file, 6 tensors, width 8, 2 blocks")


def test_the_mlx_encoder_layout_is_closed() -> None:
    """No root tells those keys apart, so one key outside the encoder's modules (another
    network with a `blocks.N.attn.to_qkv`) is not codec weights."""
    assert ck.weights_kind({**MLX_ENCODER, "lm_head.weight": (8, 8)}).kind == ck.UNKNOWN
    assert ck.weights_kind({"blocks.0.attn.to_qkv.weight": (40, 8)}).kind == ck.CODEC_WEIGHTS
    assert ck.weights_kind({"blocks.0.attn.to_out.weight": (8, 8)}).kind == ck.UNKNOWN


def test_the_mlx_encoder_file_as_safetensors_too(tmp_path: Path) -> None:
    with np.load(KINDS / "tiny-same-s_encoder_f32.npz") as arrays:
        tensors = {k: arrays[k] for k in arrays.files}
    path = tmp_path / "same_s_encoder_f32.safetensors"
    save_file(tensors, str(path))
    found = ck.identify_kind(path)
    assert (found.kind, found.part, found.family) == (ck.CODEC_WEIGHTS, "encoder", "tiny-same-s")
    report = inspect_file(path)
    assert isinstance(report, OtherReport) and report.format == "safetensors"
    assert report.tensors == len(tensors) and report.checkpoint == found


@pytest.mark.parametrize(
    ("keys", "config", "part"),
    [
        (["ae.enc.0.self.qkv.lora_A", "ae.enc.0.self.qkv.lora_B"], None, "encoder"),  # sa3.cpp
        (["ae.dec.3.ff.out.lora_A"], None, "decoder"),
        (["model.decoder.layers.0.to_qkv.parametrizations.weight.0.lora_A"], None, "decoder"),
        (["transformer.layers.0.self_attn.to_qkv.lora_A"], {"target": "Decoder"}, "decoder"),
        (["encoder.x.lora_A", "decoder.x.lora_A"], None, "autoencoder"),
        (["base_model.model.decoder.layers.0.to_qkv.lora_A.weight"], None, "decoder"),  # PEFT
    ],
)
def test_codec_adapters_by_keys_or_config_target(
    keys: list[str], config: dict[str, str] | None, part: str
) -> None:
    found = ck.adapter_kind(keys, json.dumps(config) if config else None)
    assert (found.kind, found.part) == (ck.CODEC_ADAPTER, part)
    assert not found.is_dit_adapter and found.is_codec_adapter
    # without shapes there is no codec family yet: the label names the half
    assert found.label == f"codec adapter ({part})"


def test_a_dit_target_or_no_target_is_a_dit_adapter() -> None:
    keys = ["model.transformer.layers.0.self_attn.to_qkv.parametrizations.weight.0.lora_A"]
    for config in (None, json.dumps({"target": "dit"}), "not json", json.dumps([1])):
        assert ck.adapter_kind(keys, config).kind == ck.DIT_ADAPTER


def test_identify_kind_never_raises_on_the_malformed_corpus() -> None:
    for path in sorted((DATA_DIR / "malformed").iterdir()):
        assert ck.identify_kind(path).kind == ck.UNKNOWN, path.name
    assert ck.identify_kind(DATA_DIR / "no-such-file.safetensors").kind == ck.UNKNOWN


@pytest.mark.parametrize("rel", [r for r, e in EXPECTED.items() if e[0] != ck.PICKLE_FILE])
def test_inspect_reports_the_kind(rel: str) -> None:
    report = inspect_file(DATA_DIR / rel)
    assert report.checkpoint.kind == EXPECTED[rel][0]
    if EXPECTED[rel][0] in (ck.CODEC_WEIGHTS, ck.CODEC_ADAPTER):
        assert isinstance(report, OtherReport)
        assert (report.codec is not None) is (EXPECTED[rel][0] == ck.CODEC_ADAPTER)
    elif ck.KINDS[EXPECTED[rel][0]].base:
        assert isinstance(report, BaseReport)
    else:
        assert isinstance(report, InspectReport)


@pytest.mark.parametrize("rel", NOT_ADAPTERS)
def test_validate_says_not_a_dit_adapter_once(rel: str) -> None:
    result = validate_path(str(DATA_DIR / rel))
    assert [f.rule for f in result.findings] == ["not-an-adapter"]
    message = result.findings[0].message
    assert message.startswith("not an SA3 DiT adapter: ") and EXPECTED[rel][0] != ck.UNKNOWN
    assert result.checkpoint is not None and result.checkpoint.kind == EXPECTED[rel][0]
    assert not result.malformed and result.status(False) == "fail"
    assert validate_paths([str(DATA_DIR / rel)]).exit_code == 1


# --- the CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", [*NOT_DIT_ADAPTERS, "adapters/tiny-small/lora.safetensors"])
def test_cli_inspect_names_the_kind_in_text_and_json(rel: str) -> None:
    path = str(DATA_DIR / rel)
    kind = EXPECTED[rel][0]
    text = run_cli("inspect", path)
    assert text.returncode == 0, text.stderr
    assert "Traceback" not in text.stdout + text.stderr
    label = ck.identify_kind(path).label
    rows = [line for line in text.stdout.splitlines() if line.strip().startswith("checkpoint")]
    assert len(rows) == 1 and label in rows[0]
    doc = run_cli("inspect", "--json", path)
    assert doc.returncode == 0, doc.stderr
    entry = json.loads(doc.stdout)["files"][0]
    assert entry["checkpoint"]["kind"] == kind
    assert entry["checkpoint"]["dit_adapter"] is (kind == ck.DIT_ADAPTER)
    assert entry["checkpoint"]["line"].startswith(label)
    expected_top = {ck.CODEC_WEIGHTS: "other", ck.CODEC_ADAPTER: "codec-adapter"}.get(
        kind, "base" if ck.KINDS[kind].base else None
    )
    assert entry.get("kind") == expected_top


@pytest.mark.parametrize("rel", NOT_ADAPTERS)
def test_cli_validate_of_a_non_adapter_is_one_finding_exit_1(rel: str) -> None:
    result = run_cli("validate", "--json", str(DATA_DIR / rel))
    assert result.returncode == 1, result.stderr
    entry = json.loads(result.stdout)["files"][0]
    assert [f["rule"] for f in entry["findings"]] == ["not-an-adapter"]
    assert entry["checkpoint"]["kind"] == EXPECTED[rel][0]


@pytest.mark.parametrize("rel", CODEC_ADAPTERS)
def test_a_codec_adapter_is_a_checked_adapter_named_by_its_family(rel: str) -> None:
    found = ck.identify_kind(DATA_DIR / rel)
    assert (
        found.label
        == f"an adapter on the {found.family.replace('-' + found.part, '')} {found.part}"
    )
    result = validate_path(str(DATA_DIR / rel))
    assert "not-an-adapter" not in [f.rule for f in result.findings]
    assert result.family == EXPECTED[rel][2] and result.status(False) == "pass"
    assert result.coverage is not None and result.coverage.startswith(
        f"{len(result_targets(rel))} of "
    )


def result_targets(rel: str) -> list[str]:
    from sa3ckpt.targets.codec_families import CODEC_TARGET_FAMILIES

    return [t.name for t in CODEC_TARGET_FAMILIES[EXPECTED[rel][2] or ""].targets]


def test_fixture_folder_holds_only_what_the_table_expects() -> None:
    listed = {f"kinds/{p.name}" for p in Path(KINDS).iterdir()}
    assert listed <= set(EXPECTED)
