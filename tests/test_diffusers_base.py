"""Bases in diffusers form: naming, folders, sharding, convert both ways and merge, checked
against the real `diffusers.StableAudio3DiTModel` (tests that need it skip without diffusers).

The families here are tiny but shaped as diffusers accepts them: E a multiple of the official
head width 64, Conv1d kernel 1. The medium-shaped one has differential attention, so its
`to_qkv` rows are reordered; the small-shaped one needs no reorder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sa3ckpt.errors import UsageError
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.diffusers_folder import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    FolderStreamWriter,
    plan_shards,
    shard_name,
    transformer_config,
)
from sa3ckpt.io.formats import identify
from sa3ckpt.names import SECONDS_CONDITIONER, official_base_key, translate_base_key
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.ops.merge.driver import merge_checkpoint
from sa3ckpt.sizes import parse_size
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.synth import official_full_shapes, official_full_tensors, synth_adapter
from sa3ckpt.targets.families import FAMILIES, Family
from sa3ckpt.targets.topology import Topology
from tests.helpers import run_cli


def _family(name: str, differential: bool) -> Family:
    topology = Topology(
        embed_dim=64,
        depth=2,
        differential=differential,
        io_channels=8,
        cond_token_dim=12,
        timestep_features=8,
        seconds_features=8,
    )
    return Family(name, "diffusers-shaped test family", topology, (name,), test_only=True)


SHAPED = {"small": _family("tiny-small-64", False), "medium": _family("tiny-medium-64", True)}
SECONDS_KEYS = {official_base_key(SECONDS_CONDITIONER, p) for p in ("weight", "bias")}
QKV = "self_attn.to_qkv.weight"


def _official(tmp_path: Path, shape: str, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    tensors = official_full_tensors(SHAPED[shape], seed=seed)
    path = tmp_path / f"{shape}.official.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def _diffusers_expected(official: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the diffusers state dict must hold, written out independently of sa3ckpt's
    layout code: renamed keys, and differential to_qkv rows [q|k|v|q2|k2] -> [q|q2|k|k2|v]."""
    out = {}
    for key, value in official.items():
        if key in SECONDS_KEYS:
            continue
        name = translate_base_key(key, value.shape, "official", "diffusers")
        assert name is not None
        if name.endswith(QKV) and value.shape[0] == 5 * value.shape[1]:
            q, k, v, q2, k2 = np.split(value, 5)
            value = np.concatenate([q, q2, k, k2, v])
        out[name] = value
    return out


def _load_diffusers(folder: Path) -> tuple[Any, dict[str, list[str]]]:
    diffusers = pytest.importorskip("diffusers")
    model, info = diffusers.StableAudio3DiTModel.from_pretrained(
        str(folder), output_loading_info=True, low_cpu_mem_usage=False
    )
    return model, info


def _assert_state_equals(model: Any, expected: dict[str, np.ndarray]) -> None:
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and np.array_equal(state[key], value), key


def _folder_tensors(folder: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update(load_file(str(folder / name)))
    return out


# --- naming and config against the real model -------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPED))
def test_every_official_name_and_shape_is_the_real_models(shape: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    fam = SHAPED[shape]
    shapes = official_full_shapes(fam, memory_tokens=4)
    expected = {
        translate_base_key(k, s, "official", "diffusers"): s
        for k, s in shapes.items()
        if k not in SECONDS_KEYS
    }
    config = transformer_config(expected)  # type: ignore[arg-type]
    model = diffusers.StableAudio3DiTModel(**{k: v for k, v in config.items() if k[0] != "_"})
    real = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert real == expected
    for key, s in shapes.items():  # and every name comes back
        name = translate_base_key(key, s, "official", "diffusers")
        assert name is not None and translate_base_key(name, s, "diffusers", "official") == key
    seconds = official_base_key(SECONDS_CONDITIONER)
    assert translate_base_key(seconds, (12, 8), "official", "diffusers") == (
        "duration_embedder.linear.weight"
    )


@pytest.mark.parametrize(
    ("family", "want"),
    [
        ("medium", {"embed_dim": 1536, "depth": 24, "num_heads": 24, "diff": True}),
        ("small", {"embed_dim": 1024, "depth": 20, "num_heads": 16, "diff": False}),
    ],
)
def test_config_of_the_published_families(family: str, want: dict[str, Any]) -> None:
    shapes = official_full_shapes(FAMILIES[family])
    named = {translate_base_key(k, s, "official", "diffusers"): s for k, s in shapes.items()}
    config = transformer_config(named)  # type: ignore[arg-type]
    assert config["embed_dim"] == want["embed_dim"] and config["depth"] == want["depth"]
    assert config["num_heads"] == want["num_heads"]
    assert config["use_differential_attention"] is want["diff"]
    assert (config["io_channels"], config["cond_token_dim"], config["global_cond_dim"]) == (
        256,
        768,
        768,
    )
    assert config["local_add_cond_dim"] == 257 and config["timestep_features_dim"] == 256
    assert config["num_memory_tokens"] == 64 and config["ff_mult"] == 4.0
    assert config["patch_size"] == 1 and config["_class_name"] == "StableAudio3DiTModel"


# --- convert ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPED))
def test_converted_folder_loads_strictly_with_equal_weights(tmp_path: Path, shape: str) -> None:
    src, official = _official(tmp_path, shape)
    out = tmp_path / "transformer"
    ledger = convert_base(src, out, to="diffusers")
    assert sorted(os.listdir(out)) == [CONFIG_NAME, WEIGHTS_NAME]
    assert sorted(ledger.no_home) == sorted(SECONDS_KEYS)  # named, not silently lost
    assert ledger.reordered == (2 if shape == "medium" else 0) and ledger.transposed == 0
    assert any("StableAudio3DurationEmbedder" in line for line in ledger.lines())
    model, info = _load_diffusers(out)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _assert_state_equals(model, _diffusers_expected(official))
    found = identify(out)
    assert found.is_base and found.naming == "diffusers" and found.format == "diffusers-folder"


@pytest.mark.parametrize("shape", sorted(SHAPED))
def test_round_trip_is_bit_exact_for_every_kept_tensor(tmp_path: Path, shape: str) -> None:
    src, official = _official(tmp_path, shape)
    convert_base(src, tmp_path / "t", to="diffusers")
    ledger = convert_base(tmp_path / "t", tmp_path / "back.safetensors", to="official")
    assert ledger.from_naming == "diffusers" and ledger.worst_rel_error == 0.0
    back = load_file(str(tmp_path / "back.safetensors"))
    kept = {k: v for k, v in official.items() if k not in SECONDS_KEYS}
    assert sorted(back) == sorted(kept)
    for key, value in kept.items():
        assert back[key].tobytes() == value.tobytes(), key


def test_sharded_folder_round_trip_and_load(tmp_path: Path) -> None:
    src, official = _official(tmp_path, "medium")
    out = tmp_path / "sharded"
    convert_base(src, out, to="diffusers", max_shard_size=200_000)
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    assert len(shards) > 2 and shards[0] == shard_name(1, len(shards))
    assert sorted(set(index["weight_map"].values())) == shards
    held = _folder_tensors(out)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in held.values())
    for name in shards:
        assert os.path.getsize(out / name) < 200_000 + 64 * 1024  # cut at the limit
    model, info = _load_diffusers(out)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _assert_state_equals(model, _diffusers_expected(official))
    convert_base(out, tmp_path / "back.safetensors", to="official")
    back = load_file(str(tmp_path / "back.safetensors"))
    for key, value in official.items():
        if key not in SECONDS_KEYS:
            assert back[key].tobytes() == value.tobytes(), key


def test_single_file_in_diffusers_naming_keeps_everything(tmp_path: Path) -> None:
    """A flat .safetensors output has room for the duration embedder's Linear (under its
    pipeline path), so nothing is dropped and the way back is complete."""
    src, official = _official(tmp_path, "medium")
    ledger = convert_base(src, tmp_path / "flat.safetensors", to="diffusers")
    assert ledger.container == "safetensors" and ledger.no_home == []
    with open_base(tmp_path / "flat.safetensors") as base:
        assert base.naming == "diffusers" and base.folder is None
    flat = load_file(str(tmp_path / "flat.safetensors"))
    expected = _diffusers_expected(official)
    assert sorted(flat) == sorted(
        [*expected, "duration_embedder.linear.bias", "duration_embedder.linear.weight"]
    )
    convert_base(tmp_path / "flat.safetensors", tmp_path / "back.safetensors", to="official")
    back = load_file(str(tmp_path / "back.safetensors"))
    assert {k: v.tobytes() for k, v in back.items()} == {
        k: v.tobytes() for k, v in official.items()
    }


def test_folder_output_policy(tmp_path: Path) -> None:
    src, _ = _official(tmp_path, "small")
    out = tmp_path / "t"
    convert_base(src, out, to="diffusers")
    with pytest.raises(UsageError, match="exists"):
        convert_base(src, out, to="diffusers")
    convert_base(src, out, to="diffusers", force=True)  # a diffusers folder may be replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="another kind"):
        convert_base(src, other, to="diffusers", force=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(UsageError, match="input"):  # a file inside the input folder
        convert_base(out, out / "x.safetensors", to="official")
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def _folder_writer(path: Path, tensors: dict[str, np.ndarray]) -> FolderStreamWriter:
    from sa3ckpt import dtypes

    specs = [(k, dtypes.code_for(v.dtype), v.shape) for k, v in tensors.items()]
    return FolderStreamWriter(path, specs, {}, {"_class_name": "x"}, max_shard_size=50)


FOLDER_TENSORS = {
    f"transformer_blocks.{i}.ff.proj_out.weight": np.full((3, 4), i, np.float32) for i in range(4)
}


def test_folder_writer_positional_writes_equal_sequential_ones(tmp_path: Path) -> None:
    """Every shard is open at once: tensors written in parts, shards and tensors in reverse
    order, give the files a sequential write gives."""
    with _folder_writer(tmp_path / "seq", FOLDER_TENSORS) as writer:
        for key, value in FOLDER_TENSORS.items():
            writer.write(key, value)
    with _folder_writer(tmp_path / "pos", FOLDER_TENSORS) as writer:
        for key, value in reversed(FOLDER_TENSORS.items()):
            raw = value.tobytes()
            writer.write_at(key, 24, raw[24:])
            writer.write_at(key, 0, raw[:24])
    names = sorted(os.listdir(tmp_path / "seq"))
    assert len(names) == 4 + 2  # four shards, config, index
    assert names == sorted(os.listdir(tmp_path / "pos"))
    for name in names:
        assert (tmp_path / "seq" / name).read_bytes() == (tmp_path / "pos" / name).read_bytes()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, RuntimeError])
def test_folder_writer_interrupted_or_incomplete_leaves_nothing(
    tmp_path: Path, exc_type: type
) -> None:
    first = next(iter(FOLDER_TENSORS))
    with pytest.raises(exc_type), _folder_writer(tmp_path / "t", FOLDER_TENSORS) as writer:
        writer.write_at(first, 0, FOLDER_TENSORS[first].tobytes()[:8])
        raise exc_type
    assert os.listdir(tmp_path) == []
    with (
        pytest.raises(ValueError, match="not written"),
        _folder_writer(tmp_path / "t", FOLDER_TENSORS) as writer,
    ):
        writer.write(first, FOLDER_TENSORS[first])
    assert os.listdir(tmp_path) == []


def test_incomplete_base_cannot_become_a_folder(tmp_path: Path) -> None:
    official = official_full_tensors(SHAPED["small"])
    del official[official_base_key("model.transformer.layers.0.self_attn.q_norm", "gamma")]
    save_file(official, str(tmp_path / "partial.safetensors"))
    with pytest.raises(Exception, match="not a complete SA3 DiT"):
        convert_base(tmp_path / "partial.safetensors", tmp_path / "t", to="diffusers")
    assert not (tmp_path / "t").exists()


def test_plan_shards_and_sizes() -> None:
    specs = [("a", "F32", (10,)), ("b", "F32", (30,)), ("c", "F16", (4,)), ("d", "F32", (1,))]
    assert plan_shards(specs, 10**9) == ((WEIGHTS_NAME, ("a", "b", "c", "d")),)
    cut = plan_shards(specs, 100)
    assert [keys for _, keys in cut] == [("a",), ("b",), ("c", "d")]  # b alone exceeds it
    assert cut[0][0] == "diffusion_pytorch_model-00001-of-00003.safetensors"
    assert parse_size("5GB") == 5 * 10**9 and parse_size("1GiB") == 2**30
    with pytest.raises(ValueError):
        parse_size("five")


def test_cli_convert_to_diffusers_and_back(tmp_path: Path) -> None:
    src, _ = _official(tmp_path, "medium")
    done = run_cli(
        "convert", str(src), "-o", str(tmp_path / "t"), "--to", "diffusers",
        "--max-shard-size", "150KB", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["to"] == "diffusers" and sorted(report["no_home"]) == sorted(SECONDS_KEYS)
    assert (tmp_path / "t" / INDEX_NAME).is_file()
    back = run_cli(
        "convert", str(tmp_path / "t"), "-o", str(tmp_path / "b.npz"), "--to", "official"
    )
    assert back.returncode == 0, back.stderr
    bad = run_cli("convert", str(src), "-o", str(tmp_path / "x"), "--to", "diffusers",
                  "--max-shard-size", "lots")  # fmt: skip
    assert bad.returncode == 2 and "not a size" in bad.stderr


# --- merge -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPED))
@pytest.mark.parametrize("adapter_type", ["lora", "dora-rows"])
def test_merge_into_folder_equals_merge_into_official(
    tmp_path: Path, shape: str, adapter_type: str
) -> None:
    src, _ = _official(tmp_path, shape)
    fam = SHAPED[shape]
    adapter = synth_adapter(fam, adapter_type, rank=4, seed=3)
    adapter_path = tmp_path / "adapter.safetensors"
    save_file(adapter.file_tensors("sa3", "F32"), str(adapter_path), adapter.metadata())
    folder = tmp_path / "t"
    convert_base(src, folder, to="diffusers", max_shard_size=300_000)
    args = [AdapterArg(str(adapter_path), 0.7)]
    merge_checkpoint(str(src), args, str(tmp_path / "merged.safetensors"))
    ledger = merge_checkpoint(str(folder), args, str(tmp_path / "merged-t"))
    assert ledger.missing_from_base == [SECONDS_CONDITIONER]  # no home in the transformer
    assert ledger.container == "diffusers-folder" and ledger.naming == "diffusers"
    # same shards with the same keys, and the same config
    with open_base(folder) as before, open_base(tmp_path / "merged-t") as after:
        assert before.folder is not None and after.folder is not None
        assert after.folder.shards == before.folder.shards
        assert after.folder.config == before.folder.config
    convert_base(tmp_path / "merged-t", tmp_path / "back.safetensors", to="official")
    via_folder = load_file(str(tmp_path / "back.safetensors"))
    direct = load_file(str(tmp_path / "merged.safetensors"))
    assert sorted(via_folder) == sorted(k for k in direct if k not in SECONDS_KEYS)
    changed = 0
    original = load_file(str(src))
    for key, value in via_folder.items():
        assert value.tobytes() == direct[key].tobytes(), key
        changed += value.tobytes() != original[key].tobytes()
    assert changed == len(fam.dit_targets)
    model, info = _load_diffusers(tmp_path / "merged-t")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    _assert_state_equals(model, _diffusers_expected(direct))


def test_cli_merge_into_a_folder(tmp_path: Path) -> None:
    src, _ = _official(tmp_path, "small")
    adapter = synth_adapter(SHAPED["small"], "lora", seed=5)
    adapter_path = tmp_path / "adapter.safetensors"
    save_file(adapter.file_tensors("sa3", "F32"), str(adapter_path), adapter.metadata())
    convert_base(src, tmp_path / "t", to="diffusers")
    done = run_cli("merge", str(tmp_path / "t"), f"{adapter_path}:0.5", "-o", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "m")) == [CONFIG_NAME, WEIGHTS_NAME]
    refused = run_cli("merge", str(tmp_path / "t"), str(adapter_path), "-o", str(tmp_path / "m"))
    assert refused.returncode != 0 and "exists" in refused.stderr


def test_qkv_row_order_and_per_module_layout() -> None:
    from sa3ckpt.layout import (
        DIFFUSERS_DIFF_QKV_ORDER,
        inverse_order,
        reorder_row_blocks,
        stored_layout,
    )

    rows = np.arange(10)[:, None] * np.ones((1, 2))
    moved = reorder_row_blocks(rows, DIFFUSERS_DIFF_QKV_ORDER)
    assert moved[:, 0].tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5]  # q q2 k k2 v
    assert np.array_equal(reorder_row_blocks(moved, inverse_order(DIFFUSERS_DIFF_QKV_ORDER)), rows)
    qkv = "model.transformer.layers.3.self_attn.to_qkv"
    assert stored_layout("diffusers", (10, 2), qkv).name == "diffusers-diff-qkv"
    assert stored_layout("diffusers", (6, 2), qkv).name == "linear"  # small: no reorder
    assert stored_layout("official", (10, 2), qkv).name == "linear"
    assert stored_layout(
        "diffusers", (10, 2), "model.transformer.layers.3.cross_attn.to_kv"
    ).name == ("linear")
    with pytest.raises(ValueError, match="equal blocks"):
        reorder_row_blocks(np.zeros((7, 2)), DIFFUSERS_DIFF_QKV_ORDER)


def test_damaged_folders_are_refused_clearly(tmp_path: Path) -> None:
    from sa3ckpt.errors import MalformedFileError

    src, _ = _official(tmp_path, "small")
    out = tmp_path / "t"
    convert_base(src, out, to="diffusers", max_shard_size=100_000)
    index = json.loads((out / INDEX_NAME).read_text())
    files = sorted(set(index["weight_map"].values()))
    first = files[0]
    wrong = next(f for f in files if f != index["weight_map"]["proj_in.weight"])
    moved = dict(index, weight_map={**index["weight_map"], "proj_in.weight": wrong})
    cases = {
        "does not match": moved,
        "not a file in the folder": dict(index, weight_map={"a": "../evil.safetensors"}),
        "no weight_map": {"metadata": {}},
    }
    for message, damaged in cases.items():
        (out / INDEX_NAME).write_text(json.dumps(damaged))
        with pytest.raises(MalformedFileError, match=message):
            open_base(out)
    (out / INDEX_NAME).write_text(json.dumps(index))
    os.unlink(out / first)
    with pytest.raises(MalformedFileError, match="missing"):
        open_base(out)
    assert not identify(out).is_base
