"""`load_dit` loads every base input kind strictly and to the same model, bit for bit.

One complete official base per config (`synth.official_full_tensors`) is turned into every
input kind through the real converters: the official safetensors (fp32 and fp16), MLX
runtime .safetensors and .npz (`convert_base --to mlx`, fp32, the shipped
`dit_<name>_f16.npz` spelling, and an .npz under another suffix through the `container`
option), a diffusers transformer folder (one file and sharded) and a diffusers pipeline root
(`transformer/` + `duration_embedder/`, the latter written by diffusers' own
`StableAudio3DurationEmbedder.save_pretrained`). Each must give the official values in the
MLX layout (mapped here independently from reference/formats.md, not through the code under
test), one forward output, the right family, and a ledger that accounts for every key.

The strictness tests each break one thing a lenient loader (the official runtime's
`strict=False`) would let through.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors import safe_open
from safetensors.numpy import save_file

from fixtures.generate import DATA_DIR, FIXTURE_FAMILIES, official_full_base
from sa3ckpt.errors import IncompatibleError, MalformedFileError, UsageError
from sa3ckpt.models import load_dit
from sa3ckpt.models.layers import fourier_frequencies
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.synth import official_full_tensors
from sa3ckpt.targets.families import FAMILIES, Family
from sa3ckpt.targets.topology import Topology

# The realistic config: real conditioning widths (io 256, 768-d tokens, 256 features) and
# 64-wide heads, only width and depth cut down; no family has it, so it reads "custom".
WIDE = Family(
    "load-wide",
    "load test family (not registered)",
    Topology(embed_dim=128, depth=2, differential=True),
    (),
    test_only=True,
)
CONFIGS: dict[str, Family] = {
    "tiny-medium": FAMILIES["tiny-medium"],
    "tiny-small": FAMILIES["tiny-small"],
    "wide": WIDE,
}
EXPECTED_FAMILY = {
    "tiny-medium": "tiny-medium",
    "tiny-small": "tiny-small",
    "wide": "custom (E=128, depth 2, 2 heads of 64, differential attention, io 256, cond 768)",
}
MEMORY = 4
DIT = "model.model."
PADDING = "conditioner.conditioners.prompt.padding_embedding"
SECONDS = "conditioner.conditioners.seconds_total.embedder.embedding.1."
COND_KEYS = ("cond.padding_embedding", "cond.seconds_total_weight", "cond.seconds_total_bias")

# --- the expected values: the official base in MLX names and layouts (formats.md) -------------


def _official_to_mlx(key: str) -> str | None:
    """The MLX runtime name of an official key, from the rules in reference/formats.md."""
    special = {
        PADDING: "cond.padding_embedding",
        SECONDS + "weight": "cond.seconds_total_weight",
        SECONDS + "bias": "cond.seconds_total_bias",
    }
    if key in special:
        return special[key]
    if not key.startswith(DIT):
        return None
    name = key[len(DIT) :]
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    for n in (0, 2):
        name = name.replace(f".to_local_embed.{n}.", f".to_local_embed.seq.{n}.")
    return name


def expected_mlx(official: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every official tensor under its MLX name, Conv1d weights (out, in, k) -> (out, k, in)."""
    out: dict[str, np.ndarray] = {}
    for key, value in official.items():
        name = _official_to_mlx(key)
        assert name is not None, key
        if name in ("preprocess_conv.weight", "postprocess_conv.weight"):
            value = np.ascontiguousarray(value.transpose(0, 2, 1))
        out[name] = value
    return out


def _bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.array_equal(
            np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)
        )
    )


def _np(array: mx.array) -> np.ndarray:
    return np.array(array.astype(mx.float32) if array.dtype == mx.bfloat16 else array)


def params(module: Any) -> dict[str, np.ndarray]:
    return {k: _np(v) for k, v in tree_flatten(module.parameters())}


# --- every input kind, written by the real converters -----------------------------------------


@dataclass(frozen=True)
class Case:
    path: Path
    naming: str
    container: str
    fp16: bool  # stored in float16
    conditioner: bool  # the input holds all three conditioner arrays
    keys: frozenset[str]  # every key of the input, read independently of the loader


def _safetensors_keys(path: str) -> set[str]:
    with safe_open(path, "np") as f:
        return set(f.keys())


def _folder_keys(folder: Path, prefix: str = "") -> set[str]:
    return {
        prefix + k for f in glob.glob(str(folder / "*.safetensors")) for k in _safetensors_keys(f)
    }


def _duration_embedder(
    folder: Path, official: dict[str, np.ndarray], top: Topology, **config: Any
) -> bool:
    """diffusers' own duration embedder with the official seconds Linear, saved by diffusers."""
    try:
        import torch
        import transformers  # noqa: F401  (the pipeline module needs it)
        from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import (
            StableAudio3DurationEmbedder,
        )
    except ImportError:
        return False
    embedder = StableAudio3DurationEmbedder(
        output_dim=top.cond_token_dim, fourier_dim=top.seconds_features, **config
    )
    with torch.no_grad():
        embedder.linear.weight.copy_(
            torch.from_numpy(official[SECONDS + "weight"].astype(np.float32))
        )
        embedder.linear.bias.copy_(torch.from_numpy(official[SECONDS + "bias"].astype(np.float32)))
    embedder.save_pretrained(str(folder))
    return True


def write_cases(
    root: Path, fam: Family, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Case]]:
    official = official_full_tensors(fam, seed=seed, memory_tokens=MEMORY)
    off = root / "official.safetensors"
    save_file(official, str(off))
    off16 = root / "official-f16.safetensors"
    # float16 as `convert_base --dtype fp16` rounds it: once, from the float32 values
    save_file({k: v.astype(np.float16) for k, v in official.items()}, str(off16))
    cases = {
        "official": Case(off, "official", "safetensors", False, True, frozenset(official)),
        "official-f16": Case(off16, "official", "safetensors", True, True, frozenset(official)),
    }
    mlx_outputs = {
        "mlx-safetensors": ("dit.safetensors", {}, "safetensors", False),
        "mlx-npz": ("dit.npz", {}, "npz", False),
        "mlx-npz-f16": (f"dit_{fam.name}_f16.npz", {"dtype": "fp16"}, "npz", True),
        "mlx-npz-container": ("dit.weights", {"container": "npz"}, "npz", False),
    }
    for name, (file, options, container, fp16) in mlx_outputs.items():
        path = root / file
        convert_base(off, path, to="mlx", **options)
        keys = set(np.load(path).files) if container == "npz" else _safetensors_keys(str(path))
        cases[name] = Case(path, "mlx", container, fp16, True, frozenset(keys))
    for name, shard in (("diffusers-folder", None), ("diffusers-sharded", 4096)):
        folder = root / name
        convert_base(
            off, folder, to="diffusers", **({} if shard is None else {"max_shard_size": shard})
        )
        cases[name] = Case(
            folder, "diffusers", "diffusers-folder", False, False, frozenset(_folder_keys(folder))
        )
    pipeline = root / "pipeline"
    pipeline.mkdir()
    convert_base(off, pipeline / "transformer", to="diffusers")
    if _duration_embedder(pipeline / "duration_embedder", official, fam.topology):
        keys = _folder_keys(pipeline / "transformer") | _folder_keys(
            pipeline / "duration_embedder", "duration_embedder."
        )
        cases["diffusers-pipeline"] = Case(
            pipeline, "diffusers", "diffusers-folder", False, True, frozenset(keys)
        )
    return official, cases


FORMATS = (
    "official",
    "official-f16",
    "mlx-safetensors",
    "mlx-npz",
    "mlx-npz-f16",
    "mlx-npz-container",
    "diffusers-folder",
    "diffusers-sharded",
    "diffusers-pipeline",
)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = request.param
    official, cases = write_cases(
        tmp_path_factory.mktemp(f"load-{config}"), CONFIGS[config], seed=5
    )
    return config, official, cases


def _case(written: Any, fmt: str) -> tuple[str, dict[str, np.ndarray], Case]:
    config, official, cases = written
    if fmt not in cases:
        pytest.skip("diffusers + transformers are needed to write a duration embedder")
    return config, official, cases[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_input_kind_loads_the_official_values(written: Any, fmt: str) -> None:
    config, official, case = _case(written, fmt)
    loaded = load_dit(case.path)
    ledger = loaded.ledger
    assert (ledger.naming, ledger.container, ledger.family) == (
        case.naming,
        case.container,
        EXPECTED_FAMILY[config],
    )
    expected = expected_mlx(official)
    if case.fp16:  # the file holds the float16 rounding of the same numbers
        expected = {k: v.astype(np.float16).astype(np.float32) for k, v in expected.items()}
    got = params(loaded.dit)
    assert set(got) == {k for k in expected if not k.startswith("cond.")}
    wrong = [k for k, v in got.items() if not _bit_equal(v, expected[k])]
    assert not wrong, f"{fmt}: parameters differ from the official values: {wrong}"
    assert set(ledger.loaded.values()) == set(got) and len(ledger.loaded) == len(got)
    if case.conditioner:
        assert loaded.conditioner is not None
        cond = {"cond." + k: v for k, v in params(loaded.conditioner).items()}
        assert sorted(cond) == sorted(COND_KEYS)
        assert all(_bit_equal(v, expected[k]) for k, v in cond.items())
        assert sorted(ledger.conditioner.values()) == sorted(COND_KEYS)
        assert not ledger.conditioner_missing
    else:
        assert loaded.conditioner is None and not ledger.conditioner
        assert ledger.conditioner_missing == {
            "cond.seconds_total_weight": "duration_embedder.linear.weight",
            "cond.seconds_total_bias": "duration_embedder.linear.bias",
        }
        assert "conditioner incomplete" in ledger.ignored["prompt_padding_embedding"]
    # Every key of the input is accounted for exactly once.
    groups = [set(ledger.loaded), set(ledger.conditioner), set(ledger.ignored)]
    assert sum(map(len, groups)) == len(case.keys) and set().union(*groups) == case.keys
    if fmt == "diffusers-pipeline":
        assert ledger.ignored == {
            "duration_embedder.freqs": ledger.ignored["duration_embedder.freqs"]
        }
        assert "frequency table" in ledger.ignored["duration_embedder.freqs"]
        assert len(ledger.sources) == 2
    elif case.conditioner:
        assert not ledger.ignored
    used = len(got) + (3 if case.conditioner else 0)
    assert dict(ledger.stored) == {("F16" if case.fp16 else "F32"): used}
    assert dict(ledger.cast) == ({"float16->float32": used} if case.fp16 else {})


def _inputs(top: Topology, seed: int) -> list[mx.array]:
    rng = np.random.default_rng(seed)
    frames = 6
    local = rng.standard_normal((2, top.local_cond_dim, frames)).astype(np.float32)
    local[:, 0] = rng.integers(0, 2, (2, frames))
    return [
        mx.array(rng.standard_normal((2, top.io_channels, frames)).astype(np.float32)),
        mx.array(np.array([0.2, 0.9], dtype=np.float32)),
        mx.array(rng.standard_normal((2, 5, top.cond_token_dim)).astype(np.float32)),
        mx.array(rng.standard_normal((2, top.cond_token_dim)).astype(np.float32)),
        mx.array(local),
    ]


def test_forward_is_identical_across_input_kinds(written: Any) -> None:
    config, _, cases = written
    top = CONFIGS[config].topology
    args = _inputs(top, seed=1)
    prompt = mx.array(
        np.random.default_rng(2).standard_normal((2, 3, top.cond_token_dim)).astype(np.float32)
    )
    mask = mx.array([[True, True, False], [True, False, False]])
    seconds = mx.array([12.5, 400.0])
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for fmt, case in cases.items():
        loaded = load_dit(case.path)
        out = {"dit": np.array(loaded.dit(*args)), "no-local": np.array(loaded.dit(*args[:4]))}
        if loaded.conditioner is not None:
            cross, glob_cond = loaded.conditioner(prompt, seconds, mask, length=4)
            out["cross"], out["global"] = np.array(cross), np.array(glob_cond)
        outputs[fmt] = out
    for fmt, case in cases.items():
        reference = outputs["official-f16" if case.fp16 else "official"]
        assert set(outputs[fmt]) == set(reference) - (
            set() if case.conditioner else {"cross", "global"}
        )
        for name, value in outputs[fmt].items():
            assert _bit_equal(value, reference[name]), f"{config} {fmt} {name} differs"
    ref = outputs["official"]
    assert np.isfinite(ref["dit"]).all() and np.abs(ref["dit"]).max() > 0
    assert not np.array_equal(ref["dit"], ref["no-local"])  # local_add_cond is used
    # float16 storage moves the output by about its rounding, no more
    half = outputs["official-f16"]["dit"]
    assert np.linalg.norm(half - ref["dit"]) / np.linalg.norm(ref["dit"]) < 1e-2


@pytest.mark.parametrize("fmt", ["official-f16", "mlx-safetensors", "diffusers-sharded"])
def test_mlx_reads_the_plain_tensors_bit_for_bit(
    written: Any, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tensors stored plainly in a local safetensors file or shard are read by MLX
    (`mx.load`, on the loading streams), the others through NumPy: the same parameters as
    the NumPy path alone, bit for bit, and MLX did read (no silent fallback)."""
    from sa3ckpt.models import loading

    _, _, case = _case(written, fmt)
    taken: list[bool] = []
    take = loading._MlxReads.take

    def counted(self: Any, plan: Any, stream: Any) -> Any:
        array = take(self, plan, stream)
        taken.append(array is not None)
        return array

    monkeypatch.setattr(loading._MlxReads, "take", counted)
    by_mlx = load_dit(case.path)
    monkeypatch.setattr(loading._MlxReads, "usable", lambda self, plan: False)
    by_numpy = load_dit(case.path)
    assert len(taken) > len(params(by_mlx.dit)) // 2 and all(taken)
    mine, theirs = params(by_mlx.dit), params(by_numpy.dit)
    assert mine.keys() == theirs.keys()
    assert all(_bit_equal(mine[k], theirs[k]) for k in mine)
    assert by_mlx.ledger.stored == by_numpy.ledger.stored


@pytest.mark.parametrize(
    ("source", "dtype", "casts"),
    [
        ("official", mx.float16, {"float32->float16": "all-but-rope"}),
        ("official", mx.bfloat16, {"float32->bfloat16": "all-but-rope"}),
        ("official-f16", mx.float16, {"float16->float32": 1}),
        ("official-f16", mx.float32, {"float16->float32": "all"}),
    ],
)
def test_run_dtype_casts_are_recorded(
    written: Any, source: str, dtype: mx.Dtype, casts: dict[str, Any]
) -> None:
    _, official, cases = written
    loaded = load_dit(cases[source].path, dtype=dtype)
    used = len(loaded.ledger.loaded) + 3
    counts = {"all": used, "all-but-rope": used - 1}
    assert dict(loaded.ledger.cast) == {pair: counts.get(n, n) for pair, n in casts.items()}
    flat = dict(tree_flatten(loaded.dit.parameters()))
    rope = "transformer.rotary_pos_emb.inv_freq"
    assert flat[rope].dtype == mx.float32  # a fixed table, never rounded to the run dtype
    assert {v.dtype for k, v in flat.items() if k != rope} == {dtype}
    assert loaded.conditioner is not None and loaded.conditioner.seconds_total_weight.dtype == dtype
    stored = np.float16 if cases[source].fp16 else np.float32
    for key, value in expected_mlx(official).items():
        if key in flat:
            want = value.astype(stored).astype(np.float32)
            if key != rope:
                want = _np(mx.array(want).astype(dtype))
            assert np.array_equal(_np(flat[key]), want), key


def test_a_non_float_run_dtype_is_refused(written: Any) -> None:
    with pytest.raises(UsageError, match="run dtype"):
        load_dit(written[2]["official"].path, dtype=mx.int32)


# --- strictness: each case fails (or is named) where a lenient loader would not ---------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path_factory.mktemp("strict"), official_full_tensors(
        FAMILIES["tiny-medium"], seed=3, memory_tokens=MEMORY
    )


def _write(
    tiny: tuple[Path, dict[str, np.ndarray]], name: str, tensors: dict[str, np.ndarray]
) -> Path:
    path = tiny[0] / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "key",
    [
        DIT + "transformer.layers.1.pre_norm.gamma",
        DIT + "transformer.layers.0.cross_attn.k_norm.gamma",
        DIT + "transformer.layers.1.to_scale_shift_gate",
        DIT + "transformer.layers.0.ff.ff.0.proj.bias",
        DIT + "transformer.layers.1.self_attn.to_qkv.weight",
        DIT + "transformer.memory_tokens",
        DIT + "transformer.rotary_pos_emb.inv_freq",
        DIT + "to_timestep_embed.2.bias",
    ],
)
def test_a_missing_dit_tensor_is_named(tiny: Any, key: str) -> None:
    tensors = {k: v for k, v in tiny[1].items() if k != key}
    with pytest.raises(IncompatibleError) as err:
        load_dit(_write(tiny, "missing", tensors))
    assert "missing" in str(err.value) and key in str(err.value)


def test_a_missing_tensor_is_named_in_the_inputs_naming(tiny: Any) -> None:
    path = tiny[0] / "full.npz"
    convert_base(_write(tiny, "full", tiny[1]), path, to="mlx")
    arrays = dict(np.load(path))
    del arrays["transformer.layers.0.to_local_embed.seq.2.bias"]
    np.savez(tiny[0] / "missing.npz", **arrays)
    with pytest.raises(
        IncompatibleError, match=r"missing: transformer\.layers\.0\.to_local_embed\.seq\.2\.bias"
    ):
        load_dit(tiny[0] / "missing.npz")
    folder = tiny[0] / "diffusers"
    convert_base(tiny[0] / "full.safetensors", folder, to="diffusers")
    shard = folder / "diffusion_pytorch_model.safetensors"
    with safe_open(str(shard), "np") as f:
        names = f.keys()
        kept = {k: f.get_tensor(k) for k in names if k != "transformer_blocks.1.ff_norm.gamma"}
    save_file(kept, str(shard))
    with pytest.raises(
        IncompatibleError,
        match=r"transformer_blocks\.1\.ff_norm\.gamma \(transformer\.layers\.1\.ff_norm\.weight\)",
    ):
        load_dit(folder)


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        (DIT + "transformer.layers.1.ff.ff.2.weight", (16, 65)),
        (DIT + "transformer.layers.0.to_scale_shift_gate", (95,)),
        (DIT + "transformer.layers.1.self_attn.q_norm.gamma", (4,)),
        (PADDING, (13,)),
        (SECONDS + "weight", (13, 8)),
    ],
)
def test_a_wrong_shape_is_refused(tiny: Any, key: str, shape: tuple[int, ...]) -> None:
    tensors = dict(tiny[1])
    tensors[key] = np.zeros(shape, np.float32)
    with pytest.raises(IncompatibleError) as err:
        load_dit(_write(tiny, "shape", tensors))
    assert "wrong shape" in str(err.value) and key in str(err.value)


@pytest.mark.parametrize(
    "key",
    [
        DIT + "transformer.layers.0.self_attn.lambda_q1",  # another attention's parameters
        DIT + "to_cond_embed.0.bias",  # a bias the official model does not have
        DIT + "transformer.final_norm.gamma",
        DIT + "transformer.layers.1.self_attn.sub_norm.gamma",
    ],
)
def test_a_dit_looking_key_the_model_lacks_is_refused(tiny: Any, key: str) -> None:
    tensors = dict(tiny[1])
    tensors[key] = np.ones((8,), np.float32)
    with pytest.raises(IncompatibleError) as err:
        load_dit(_write(tiny, "foreign", tensors))
    assert "does not have" in str(err.value) and key in str(err.value)


def test_a_stray_block_beyond_the_depth_is_refused(tiny: Any) -> None:
    """One tensor of a third block: the model is read as 3 blocks deep, and block 2 misses
    everything else (a truncated file reads the same way: its last block is incomplete)."""
    tensors = {**tiny[1], DIT + "transformer.layers.2.pre_norm.gamma": np.ones((16,), np.float32)}
    with pytest.raises(IncompatibleError) as err:
        load_dit(_write(tiny, "stray", tensors))
    message = str(err.value)
    assert "depth 3" in message and "missing: model.model.transformer.layers.2." in message


def test_a_dit_looking_key_is_refused_in_mlx_naming_too(tiny: Any) -> None:
    path = tiny[0] / "plain.npz"
    convert_base(_write(tiny, "plain", tiny[1]), path, to="mlx")
    arrays = dict(np.load(path))
    arrays["transformer.layers.0.self_attn.lambda_k1"] = np.ones((8,), np.float32)
    np.savez(tiny[0] / "foreign.npz", **arrays)
    with pytest.raises(IncompatibleError, match="lambda_k1"):
        load_dit(tiny[0] / "foreign.npz")


def test_keys_outside_the_dit_are_named_with_a_reason(tiny: Any) -> None:
    tensors = dict(tiny[1])
    outside = {
        "pretransform.model.encoder.layers.0.weight": "outside the DiT",
        "conditioner.conditioners.prompt.model.shared.weight": "another conditioner",
        "conditioner.conditioners.seconds_total.embedder.embedding.0.weight": "another conditioner",
    }
    for key in outside:
        tensors[key] = np.ones((3, 2), np.float32)
    loaded = load_dit(_write(tiny, "outside", tensors))
    assert set(loaded.ledger.ignored) == set(outside)
    for key, why in outside.items():
        assert why in loaded.ledger.ignored[key]
    reference = load_dit(_write(tiny, "plain", tiny[1]))
    assert all(_bit_equal(v, params(reference.dit)[k]) for k, v in params(loaded.dit).items())
    assert loaded.ledger.keys == set(tensors)
    # an MLX file's unknown conditioner array
    path = tiny[0] / "plain.npz"
    convert_base(tiny[0] / "plain.safetensors", path, to="mlx", force=True)
    arrays = dict(np.load(path))
    arrays["cond.negative_embedding"] = np.zeros((12,), np.float32)
    np.savez(tiny[0] / "extra-cond.npz", **arrays)
    extra = load_dit(tiny[0] / "extra-cond.npz").ledger
    assert extra.ignored == {
        "cond.negative_embedding": "a conditioner array this model does not use"
    }


def test_a_stored_frequency_table_is_checked_then_named(tiny: Any) -> None:
    key = DIT + "timestep_features.freqs"
    table = fourier_frequencies(FAMILIES["tiny-medium"].topology.timestep_features)
    nudged = (table.view(np.int32) + np.array([0, 3, -5, 20], np.int32)).view(
        np.float32
    )  # torch-like
    loaded = load_dit(_write(tiny, "table", {**tiny[1], key: nudged}))
    assert "frequency table" in loaded.ledger.ignored[key]
    with pytest.raises(IncompatibleError, match="frequency table"):
        load_dit(_write(tiny, "table-wrong", {**tiny[1], key: table * 2}))


def test_a_non_float_dit_tensor_is_refused(tiny: Any) -> None:
    key = DIT + "transformer.layers.0.pre_norm.gamma"
    tensors = {**tiny[1], key: np.ones((16,), np.int32)}
    with pytest.raises(IncompatibleError, match=r"not floating point: .*pre_norm\.gamma \(I32\)"):
        load_dit(_write(tiny, "int", tensors))


@pytest.mark.parametrize("family", FIXTURE_FAMILIES)
@pytest.mark.parametrize(
    "adapter",
    [
        "lora.safetensors",
        "lora.mlx.safetensors",
        "lora.bare.safetensors",
        "peft-lora",
        "dora-rows.safetensors",
    ],
)
def test_an_adapter_is_not_a_base(family: str, adapter: str) -> None:
    with pytest.raises(MalformedFileError) as err:
        load_dit(DATA_DIR / "adapters" / family / adapter)
    message = err.value.one_line()
    assert message == str(err.value) and "an adapter" in message and "not a base" in message


@pytest.mark.parametrize(
    ("path", "cause"),
    [
        (DATA_DIR / "edge" / "raw_pickle_protocol_2.ckpt", "a pickle"),
        (DATA_DIR / "malformed" / "gap.safetensors", "not an SA3 base checkpoint (gap"),
        (DATA_DIR / "no-such-base.safetensors", "no such file"),
    ],
)
def test_other_non_bases_are_malformed(path: Path, cause: str) -> None:
    with pytest.raises(MalformedFileError, match=cause.replace("(", r"\(")):
        load_dit(path)


@pytest.mark.parametrize("family", FIXTURE_FAMILIES)
@pytest.mark.parametrize("naming", ["official", "mlx"])
def test_an_old_target_only_base_lists_what_is_missing(family: str, naming: str) -> None:
    """`synth.synth_base` files hold the adapter targets (and two biases the official DiT
    does not have) but no norms, gates, memory tokens or RoPE table: a lenient loader would
    run them with random init in all of those."""
    with pytest.raises(IncompatibleError) as err:
        load_dit(DATA_DIR / "bases" / f"{family}.{naming}.safetensors")
    message = str(err.value)
    assert f"not a complete {family} DiT" in message
    assert "DiT parameters missing" in message and "transformer.memory_tokens" in message
    assert "to_cond_embed.0.bias" in message  # the extra biases are named too


def test_an_unknown_topology_loads_as_custom(tiny: Any) -> None:
    fam = Family(
        "odd",
        "",
        Topology(
            embed_dim=24,
            depth=3,
            differential=False,
            io_channels=5,
            cond_token_dim=7,
            timestep_features=4,
            seconds_features=6,
            head_dim=8,
            conv_kernel=3,
        ),
        (),
    )
    tensors = official_full_tensors(fam, seed=9, memory_tokens=2)
    loaded = load_dit(_write(tiny, "odd", tensors))
    assert (
        loaded.ledger.family
        == "custom (E=24, depth 3, 3 heads of 8, standard attention, io 5, cond 7)"
    )
    assert loaded.dit.topology == fam.topology and loaded.dit.config.memory_tokens == 2
    assert loaded.conditioner is not None and loaded.ledger.keys == set(tensors)


# --- diffusers pipelines ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("pipeline")
    official = official_full_tensors(FAMILIES["tiny-small"], seed=4, memory_tokens=MEMORY)
    save_file(official, str(root / "official.safetensors"))
    return root, official


def _pipeline(pipeline: Any, name: str, **config: Any) -> Path:
    root, official = pipeline
    folder = root / name
    folder.mkdir()
    convert_base(root / "official.safetensors", folder / "transformer", to="diffusers")
    assert _duration_embedder(
        folder / "duration_embedder", official, FAMILIES["tiny-small"].topology, **config
    )
    return folder


def test_a_pipelines_transformer_folder_finds_its_duration_embedder(pipeline: Any) -> None:
    folder = _pipeline(pipeline, "nested")
    from_root, from_inner = load_dit(folder), load_dit(folder / "transformer")
    assert from_inner.conditioner is not None
    assert from_inner.ledger.loaded == from_root.ledger.loaded
    assert from_inner.ledger.conditioner == from_root.ledger.conditioner


def test_the_duration_embedders_seconds_range_is_used(pipeline: Any) -> None:
    loaded = load_dit(_pipeline(pipeline, "range", max_val=200.0))
    assert loaded.conditioner is not None and loaded.conditioner.max_seconds == 200.0
    with pytest.raises(IncompatibleError, match=r"min_val = 1\.0"):
        load_dit(_pipeline(pipeline, "floor", min_val=1.0))


def test_a_pipeline_without_duration_embedder_has_no_conditioner(pipeline: Any) -> None:
    root, _ = pipeline
    folder = root / "bare-pipeline"
    folder.mkdir()
    convert_base(root / "official.safetensors", folder / "transformer", to="diffusers")
    loaded = load_dit(folder)
    assert loaded.conditioner is None
    assert set(loaded.ledger.conditioner_missing) == {
        "cond.seconds_total_weight",
        "cond.seconds_total_bias",
    }
    assert any("seconds Linear" in note for note in loaded.ledger.notes)
    assert loaded.ledger.family == "tiny-small"  # told from the DiT's own shapes


# --- the committed complete bases -------------------------------------------------------------


@pytest.mark.parametrize("family", FIXTURE_FAMILIES)
def test_committed_complete_bases_load(family: str) -> None:
    path = official_full_base(family)
    assert path == DATA_DIR / "bases" / f"{family}.official-full.safetensors"
    assert os.path.getsize(path) < 64 * 1024  # keeps the repo light
    loaded = load_dit(path)
    ledger = loaded.ledger
    assert ledger.family == family and loaded.conditioner is not None
    assert ledger.keys == _safetensors_keys(str(path)) and not ledger.ignored
    assert dict(ledger.stored) == {"F16": len(ledger.loaded) + 3}
    top = FAMILIES[family].topology
    out = loaded.dit(*_inputs(top, seed=0))
    assert out.shape == (2, top.io_channels, 6) and bool(mx.all(mx.isfinite(out)))


def test_the_docs_example_runs_and_prints_its_ledger(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The load_dit block of the models page, run as written from the repository root: its
    printed ledger is the one in its comments."""
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "library" / "models.md").read_text(encoding="utf-8")
    section = page[page.index("## Loading a DiT") :]
    block = section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]
    monkeypatch.chdir(root)
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/library/models.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    documented = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    assert printed == documented
    assert namespace["v"].shape == namespace["x"].shape
