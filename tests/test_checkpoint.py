"""SA3 checkpoint load/save: dialects, legacy repairs, config round trips, XS bases sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import checkpoint_from_raw, load_checkpoint, save_checkpoint
from sa3ckpt.adapters.config import ConfigError, LoraConfig
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.adapters.xs_bases import compute_bases, svd_bases
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.safetensors import open_safetensors, read_header, write_safetensors
from sa3ckpt.synth import synth_adapter, synth_base
from sa3ckpt.targets import FAMILIES

TINY = FAMILIES["tiny-small"]


def _fixture(family: str, stem: str) -> Path:
    return DATA_DIR / "adapters" / family / f"{stem}.safetensors"


@pytest.mark.parametrize("family", ["tiny-medium", "tiny-small"])
@pytest.mark.parametrize("type_name", list(ADAPTER_TYPES))
def test_loads_every_fixture_type(family: str, type_name: str) -> None:
    ckpt = load_checkpoint(_fixture(family, type_name))
    assert ckpt.adapter_type == type_name
    assert ckpt.config.rank == 4 and ckpt.config.alpha == 8 and ckpt.config.scale == 2.0
    assert set(ckpt.targets()) == {t.name for t in FAMILIES[family].targets}
    assert ckpt.ledger.parsed == ckpt.ledger.keys and not ckpt.ledger.rejected
    assert not [f for f in ckpt.detection.findings if f.severity == "error"]


def test_round_trip_keeps_unknown_config_fields_and_dtypes(tmp_path: Path) -> None:
    adapter = synth_adapter(
        TINY, "dora-rows", extra_config={"step": 1200, "epoch": 3, "target": "dit"}
    )
    src = tmp_path / "in.safetensors"
    write_safetensors(src, adapter.file_tensors(), {**adapter.metadata(), "note": "kept"})
    ckpt = load_checkpoint(src)
    target = TINY.targets[0].name
    ckpt.tensors[target]["baked_vnorm_row"] = np.ones(TINY.targets[0].shape[0], np.float32)
    out = save_checkpoint(ckpt, tmp_path / "out.safetensors", inputs=(src,))
    header = read_header(out)
    config = json.loads(header.metadata["lora_config"])
    assert config["step"] == 1200 and config["epoch"] == 3 and config["target"] == "dit"
    assert config["base_model"] == "tiny-small" and config["alpha"] == 4
    assert header.metadata["note"] == "kept"
    dtypes = {name.rsplit(".", 1)[1]: info.dtype for name, info in header.tensors.items()}
    assert dtypes == {
        "lora_A": "F16",
        "lora_B": "F16",
        "magnitude": "F16",
        "baked_vnorm_row": "F32",
    }
    again = load_checkpoint(out)
    for t, params in ckpt.tensors.items():
        for p, value in params.items():
            assert np.array_equal(
                np.asarray(again.tensors[t][p]), np.asarray(value).astype(again.tensors[t][p].dtype)
            )


def test_dtype_choice(tmp_path: Path) -> None:
    ckpt = load_checkpoint(_fixture("tiny-small", "lora"))
    out = save_checkpoint(ckpt, tmp_path / "fp32.safetensors", dtype="F32")
    assert {i.dtype for i in read_header(out).tensors.values()} == {"F32"}
    out = save_checkpoint(ckpt, tmp_path / "bf16.safetensors", dtype="BF16")
    assert {i.dtype for i in read_header(out).tensors.values()} == {"BF16"}


def test_save_refuses_to_overwrite_its_input() -> None:
    path = _fixture("tiny-small", "lora")
    ckpt = load_checkpoint(path)
    with pytest.raises(Exception, match="input"):
        save_checkpoint(ckpt, path, inputs=(path,))


def test_bare_keys_are_rooted_with_a_ledger_line() -> None:
    ckpt = load_checkpoint(_fixture("tiny-medium", "lora.bare"))
    assert ckpt.ledger.dialect == "bare"
    assert all(t.startswith(("model.", "conditioners.")) for t in ckpt.targets())
    assert any("bare targets given their `model.` root" in line for line in ckpt.ledger.repairs)


def _raw(type_name: str = "lora", **kwargs) -> tuple[dict[str, np.ndarray], str]:
    adapter = synth_adapter(TINY, type_name, **kwargs)
    return adapter.file_tensors(), adapter.metadata()["lora_config"]


def test_nonzero_slot_is_renumbered() -> None:
    raw, config = _raw()
    moved = {k.replace(".weight.0.", ".weight.2."): v for k, v in raw.items()}
    ckpt = checkpoint_from_raw(moved, config, {})
    assert len(ckpt.targets()) == len(TINY.targets)
    assert any("slot 2 renumbered to 0" in line for line in ckpt.ledger.repairs)


def test_two_slots_on_one_target_is_malformed() -> None:
    raw, config = _raw()
    first = next(k for k in raw if k.endswith("lora_A"))
    raw[first.replace(".weight.0.", ".weight.1.")] = raw[first]
    with pytest.raises(MalformedFileError, match="slots"):
        checkpoint_from_raw(raw, config, {})


def test_unmatched_keys_are_recorded_not_dropped() -> None:
    raw, config = _raw()
    raw["model.transformer.layers.0.ff.ff.2.parametrizations.weight.0.lora_Z"] = np.zeros(2)
    raw["something.else"] = np.zeros(2)
    ckpt = checkpoint_from_raw(raw, config, {})
    reasons = dict(ckpt.ledger.rejected)
    assert (
        "unknown adapter parameter 'lora_Z'"
        in reasons["model.transformer.layers.0.ff.ff.2.parametrizations.weight.0.lora_Z"]
    )
    assert "something.else" in reasons


def test_legacy_two_d_magnitudes_are_squeezed() -> None:
    raw, config = _raw("dora-cols")
    legacy = {k: (v.reshape(1, -1) if k.endswith("magnitude") else v) for k, v in raw.items()}
    ckpt = checkpoint_from_raw(legacy, config, {})
    assert ckpt.adapter_type == "dora-cols"
    assert all(p["magnitude"].ndim == 1 for p in ckpt.tensors.values())
    assert any("squeezed to 1-D" in line for line in ckpt.ledger.repairs)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "no lora_config"),
        ("{not json", "not valid JSON"),
        ('{"alpha": 4, "adapter_type": "lora"}', "no rank"),
        ('{"rank": 0, "alpha": 4, "adapter_type": "lora"}', "positive integer"),
        ('{"rank": 4, "adapter_type": "lora"}', "no alpha"),
        ('{"rank": 4, "alpha": 4}', "no adapter_type"),
        ('{"rank": 4, "alpha": 4, "adapter_type": "lora", "include": [1]}', "include"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_config_is_malformed(config: str | None, message: str) -> None:
    raw, _ = _raw()
    with pytest.raises(MalformedFileError, match=message):
        checkpoint_from_raw(raw, config, {}, "adapter.safetensors")


def test_config_accepts_a_lone_pattern_string() -> None:
    config = LoraConfig.from_json(
        '{"rank": 2, "alpha": 2, "adapter_type": "lora", "include": "ff"}'
    )
    assert config.include == ["ff"] and config.exclude == []
    with pytest.raises(ConfigError):
        LoraConfig.from_json('{"rank": true, "alpha": 2, "adapter_type": "lora"}')


def test_peft_keys_need_convert() -> None:
    adapter = synth_adapter(TINY, "lora")
    with pytest.raises(MalformedFileError, match="convert"):
        checkpoint_from_raw(adapter.file_tensors("peft"), adapter.metadata()["lora_config"], {})


def test_no_adapter_tensors() -> None:
    with pytest.raises(MalformedFileError, match="no adapter tensors"):
        checkpoint_from_raw({"encoder.x.weight": np.zeros(2)}, "{}", {})


@pytest.mark.parametrize("naming", ["official", "mlx"])
def test_a_base_given_as_an_adapter_is_named_a_base(naming: str) -> None:
    """combine/resize/merge's adapter argument given a base file: say it is a base (as an
    .npz or a diffusers folder is told), not 'no key parses as an adapter key' (route matrix)."""
    base = synth_base(TINY, seed=1)
    tensors = base.official_tensors() if naming == "official" else base.mlx_tensors()
    with pytest.raises(MalformedFileError, match=f"a base checkpoint \\({naming} naming\\)"):
        checkpoint_from_raw(tensors, "{}", {})


def test_malformed_file_is_typed() -> None:
    with pytest.raises(MalformedFileError):
        load_checkpoint(DATA_DIR / "malformed" / "truncated.safetensors")


def test_xs_bases_sources_in_order(tmp_path: Path) -> None:
    ckpt = load_checkpoint(_fixture("tiny-small", "dora-cols-xs"))
    base = synth_base(TINY, seed=1)
    target = TINY.by_name["model.transformer.layers.0.ff.ff.2"]
    w = base.weight_2d(target).astype(np.float32)
    with pytest.raises(ValueError, match="needs XS bases"):
        ckpt.target_adapter(target.name)
    adapter, source = ckpt.target_adapter(target.name, base_2d=w)
    assert source == "base SVD"
    u, v = svd_bases(w, 4)
    assert np.array_equal(np.array(adapter.params["U"]), u)
    bases = compute_bases({target.name: w * 2}, 4, "other base")
    adapter, source = ckpt.target_adapter(target.name, base_2d=w, bases=bases)
    assert source == "bases file"
    assert np.allclose(np.array(adapter.params["U"]), svd_bases(w * 2, 4)[0])
    ckpt.tensors[target.name]["U"], ckpt.tensors[target.name]["V"] = u * 0 + 1, v * 0 + 1
    adapter, source = ckpt.target_adapter(target.name, base_2d=w, bases=bases)
    assert source == "stored" and float(np.array(adapter.params["U"]).min()) == 1.0


def test_legacy_ckpt_is_refused_without_opt_in(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "old.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "lora_config": {}}))
    with pytest.raises(MalformedFileError, match="allow-pickle"):
        load_checkpoint(path)


def test_loaded_arrays_outlive_the_file(tmp_path: Path) -> None:
    src = tmp_path / "a.safetensors"
    raw, config = _raw()
    write_safetensors(src, raw, {"lora_config": config})
    ckpt = load_checkpoint(src)
    src.unlink()
    with open_safetensors(_fixture("tiny-small", "lora")):
        pass
    assert all(
        np.isfinite(np.asarray(p["lora_A"], np.float32)).all() for p in ckpt.tensors.values()
    )


def test_pickle_with_safetensors_suffix_is_still_refused(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "disguised.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    with pytest.raises(MalformedFileError, match="allow-pickle"):
        load_checkpoint(path)


def test_legacy_ckpt_loads_with_opt_in(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    raw, config = _raw("dora-rows")
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in raw.items()}
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": state, "lora_config": json.loads(config), "step": 10}, path)
    ckpt = load_checkpoint(path, allow_pickle=True)
    assert ckpt.adapter_type == "dora-rows" and ckpt.metadata["step"] == "10"
    key = next(iter(raw))
    target = key.split(".parametrizations.")[0]
    param = key.rsplit(".", 1)[1]
    assert np.array_equal(ckpt.tensors[target][param], raw[key].astype(np.float32))
