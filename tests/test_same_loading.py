"""`load_same_encoder`: every accepted spelling gives the same parameters; strict refusals.

One set of random official weights is written as the official autoencoder file, inside a
full SA3 checkpoint (`pretransform.model.`), as the MLX runtime's encoder file (.npz and
.safetensors), and as a diffusers `AutoencoderSAME` folder; each must load to bit-identical
parameters. The ledger accounts for every input key exactly once (loaded or not used, with
the reason). Broken files (a missing key, a wrong shape, an unknown encoder key, a foreign
RoPE table, a diffusers config of another network) are one IncompatibleError (exit 4) that
lists every problem.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import save_file

from sa3ckpt.errors import IncompatibleError, MalformedFileError, UsageError
from sa3ckpt.models import codec_sha256, load_same_encoder
from sa3ckpt.models.same import SAME_L, SAME_S, SameEncoder
from sa3ckpt.models.same.loading import _Input, _resolve_config
from sa3ckpt.models.same.names import Spelling
from tests.same_weights import diffusers_kwargs, official_tensors, to_diffusers, to_mlx

CONFIG = SAME_L.scaled(96, 2, head_dim=32)


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return official_tensors(CONFIG, seed=31)


@pytest.fixture(scope="module")
def official(tensors: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("official") / "autoencoder.safetensors"
    save_file(tensors, str(path))
    return path


def _params(encoder: SameEncoder) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(encoder.parameters())}


def _same_params(a: SameEncoder, b: SameEncoder) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert pa[key].dtype == pb[key].dtype and np.array_equal(pa[key], pb[key]), key


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def _diffusers_folder(folder: Path, tensors: dict[str, np.ndarray], **config: object) -> Path:
    folder.mkdir(parents=True)
    settings = {"_class_name": "AutoencoderSAME", **diffusers_kwargs(CONFIG), **config}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    (folder / "config.json").write_text(json.dumps(settings))
    save_file(to_diffusers(tensors), str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


# --- every spelling, the same numbers --------------------------------------------------------


def test_official_file_loads_and_accounts_for_every_key(
    official: Path, tensors: dict[str, np.ndarray]
) -> None:
    encoder, ledger = load_same_encoder(official, CONFIG)
    assert ledger.naming == "official" and ledger.family == CONFIG.name
    assert set(ledger.loaded).isdisjoint(ledger.ignored)
    assert set(ledger.loaded) | set(ledger.ignored) == set(tensors)
    assert set(ledger.loaded.values()) == set(_params(encoder))
    decoder = {k for k in tensors if k.startswith("decoder.")}
    assert {k for k, why in ledger.ignored.items() if "decoder" in why} == decoder
    tables = {k for k in tensors if k.startswith("encoder.") and k.endswith("rope.inv_freq")}
    assert {k for k, why in ledger.ignored.items() if "RoPE" in why} == tables
    noise = "bottleneck.noise_scaling_factor"  # the official module registers it, empty
    assert tensors[noise].shape == (1, 0, 1) and noise not in ledger.loaded
    assert "noise-augmentation" in ledger.ignored[noise] and "never" in ledger.ignored[noise]
    assert ledger.loaded["encoder.layers.0.mapping.weight_g"] == "mapping.weight"
    assert ledger.loaded["encoder.layers.0.mapping.weight_v"] == "mapping.weight"
    assert any("SAME encoder parameters loaded" in line for line in ledger.lines())


def test_weight_norm_is_folded_over_all_but_dim_0(
    official: Path, tensors: dict[str, np.ndarray]
) -> None:
    encoder, _ = load_same_encoder(official, CONFIG)
    g = tensors["encoder.layers.0.mapping.weight_g"].astype(np.float64)
    v = tensors["encoder.layers.0.mapping.weight_v"].astype(np.float64)
    want = g[:, 0] * v[:, :, 0] / np.linalg.norm(v[:, :, 0], axis=1, keepdims=True)
    np.testing.assert_allclose(np.array(encoder.mapping.weight), want, rtol=1e-6)


def test_full_sa3_checkpoint_loads_its_pretransform(
    tmp_path: Path, official: Path, tensors: dict[str, np.ndarray]
) -> None:
    full = {f"pretransform.model.{k}": v for k, v in tensors.items()}
    full["model.model.transformer.layers.0.self_attn.to_qkv.weight"] = np.zeros((8, 4), np.float32)
    full["conditioner.conditioners.prompt.padding_embedding"] = np.zeros(8, np.float32)
    path = tmp_path / "sa3.safetensors"
    save_file(full, str(path))
    encoder, ledger = load_same_encoder(path, CONFIG)
    _same_params(encoder, load_same_encoder(official, CONFIG)[0])
    assert "full SA3 checkpoint" in ledger.naming
    assert set(ledger.loaded) | set(ledger.ignored) == set(full)
    assert (
        "outside the SAME codec"
        in ledger.ignored["model.model.transformer.layers.0.self_attn.to_qkv.weight"]
    )


def test_diffusers_folder_gives_bit_identical_parameters(
    tmp_path: Path, official: Path, tensors: dict[str, np.ndarray]
) -> None:
    folder = _diffusers_folder(tmp_path / "vae", tensors)
    encoder, ledger = load_same_encoder(folder, CONFIG)
    assert (ledger.naming, ledger.container) == ("diffusers", "diffusers-folder")
    _same_params(encoder, load_same_encoder(official, CONFIG)[0])
    keys = set(to_diffusers(tensors))
    assert set(ledger.loaded) | set(ledger.ignored) == keys
    audio = mx.array(np.random.default_rng(0).standard_normal((1, 3 * 4096, 2)), mx.float32)
    reference = load_same_encoder(official, CONFIG)[0]
    assert np.array_equal(np.array(encoder(audio)), np.array(reference(audio)))


@pytest.mark.parametrize("container", ["npz", "safetensors"])
def test_mlx_runtime_file_gives_bit_identical_parameters(
    tmp_path: Path, official: Path, tensors: dict[str, np.ndarray], container: str
) -> None:
    arrays = to_mlx(tensors, CONFIG)
    path = tmp_path / f"same_l_encoder_f32.{container}"
    if container == "npz":
        _write_npz(path, arrays)
    else:
        save_file(arrays, str(path))
    encoder, ledger = load_same_encoder(path, CONFIG)
    assert ledger.naming == "mlx" and ledger.container == container
    assert set(ledger.loaded) == set(arrays) and not ledger.ignored
    _same_params(encoder, load_same_encoder(official, CONFIG)[0])


def test_run_dtype_casts_and_counts(official: Path) -> None:
    encoder, ledger = load_same_encoder(official, CONFIG, dtype=mx.float16)
    assert all(v.dtype == mx.float16 for _, v in tree_flatten(encoder.parameters()))
    assert ledger.cast["float32->float16"] == len(tree_flatten(encoder.parameters()))
    assert encoder(mx.zeros((1, 4096, 2))).dtype == mx.float16
    with pytest.raises(UsageError):
        load_same_encoder(official, CONFIG, dtype=mx.int32)


# --- the codec -------------------------------------------------------------------------------


def _header_only(shapes: dict[str, tuple[int, ...]]) -> _Input:
    tensors = {k: ("F32", s) for k, s in shapes.items()}

    def unread(key: str) -> np.ndarray:
        raise AssertionError("the codec is decided from the header")

    return _Input("x.safetensors", "safetensors", tensors, unread, lambda: None, [])


@pytest.mark.parametrize("codec", [SAME_S, SAME_L])
def test_codec_is_detected_from_the_shapes(codec) -> None:  # type: ignore[no-untyped-def]
    d = codec.width
    shapes = {
        f"encoder.layers.0.transformers.{i}.self_attn.to_qkv.weight": (5 * d, d)
        for i in range(codec.blocks)
    }
    found, notes = _resolve_config(None, Spelling("official"), _header_only(shapes))
    assert found == codec and codec.name in notes[0]


def test_unknown_sizes_need_the_codec(official: Path) -> None:
    with pytest.raises(IncompatibleError, match="width 96, 2 blocks is neither same-s"):
        load_same_encoder(official)
    with pytest.raises(UsageError, match="unknown codec"):
        load_same_encoder(official, "same-m")


def test_the_wrong_codec_lists_the_shapes(official: Path) -> None:
    with pytest.raises(IncompatibleError) as err:
        load_same_encoder(official, "same-s")
    text = str(err.value)
    assert err.value.exit_code == 4
    assert "not a complete same-s encoder" in text and "encoder parameters missing" in text
    assert "tensors of the wrong shape" in text and "(expected (1, 1, 768))" in text


# --- strict refusals -------------------------------------------------------------------------


def _broken(tmp_path: Path, tensors: dict[str, np.ndarray], **changes: object) -> Path:
    out = dict(tensors)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del out[key]
        else:
            out[key] = value  # type: ignore[assignment]
    path = tmp_path / "broken.safetensors"
    save_file(out, str(path))
    return path


def test_every_problem_is_listed_at_once(tmp_path: Path, tensors: dict[str, np.ndarray]) -> None:
    d = CONFIG.width
    path = _broken(
        tmp_path,
        tensors,
        encoder__layers__0__transformers__1__ff_norm__beta=None,
        encoder__layers__2__weight=np.zeros((256, d + 1), np.float32),
        encoder__layers__0__transformers__7__pre_norm__alpha=np.ones(1, np.float32),
        encoder__layers__0__transformers__0__self_attn__lambda_q=np.ones(4, np.float32),
    )
    with pytest.raises(IncompatibleError) as err:
        load_same_encoder(path, CONFIG)
    text = str(err.value)
    assert err.value.exit_code == 4
    assert "1 encoder parameters missing: encoder.layers.0.transformers.1.ff_norm.beta" in text
    assert f"encoder.layers.2.weight (256, {d + 1}) (expected (256, {d}))" in text
    assert "2 keys that are no parameter of this encoder" in text
    assert "transformers.7.pre_norm.alpha" in text and "self_attn.lambda_q" in text


def test_the_bottlenecks_noise_scale_is_accepted_at_any_noise_augment_dim(
    tmp_path: Path, official: Path, tensors: dict[str, np.ndarray]
) -> None:
    """Was: "1 keys that are no parameter of this encoder: bottleneck.noise_scaling_factor"
    (exit 4), so encode refused every state-dict export of the official autoencoder."""
    reference = load_same_encoder(official, CONFIG)[0]
    for shape in ((1, 0, 1), (1, 4, 1)):  # noise_augment_dim 0 (released) and 4
        path = _broken(
            tmp_path, tensors, bottleneck__noise_scaling_factor=np.ones(shape, np.float32)
        )
        encoder, ledger = load_same_encoder(path, CONFIG)
        _same_params(encoder, reference)
        assert "encoding never" in ledger.ignored["bottleneck.noise_scaling_factor"]
    path = _broken(tmp_path, tensors, bottleneck__noise_scaling_factor=np.ones(4, np.float32))
    with pytest.raises(
        IncompatibleError,
        match=r"bottleneck\.noise_scaling_factor \(4,\) \(expected \(1, noise_augment_dim, 1\)\)",
    ):
        load_same_encoder(path, CONFIG)
    without = _broken(tmp_path, tensors, bottleneck__noise_scaling_factor=None)
    _same_params(load_same_encoder(without, CONFIG)[0], reference)  # not required either


def test_integer_tensors_are_refused(tmp_path: Path, tensors: dict[str, np.ndarray]) -> None:
    path = _broken(tmp_path, tensors, bottleneck__running_std=np.array([1], np.int32))
    with pytest.raises(IncompatibleError, match=r"not floating point: bottleneck\.running_std"):
        load_same_encoder(path, CONFIG)


def test_a_foreign_rope_table_is_refused(tmp_path: Path, tensors: dict[str, np.ndarray]) -> None:
    key = "encoder__layers__0__transformers__0__rope__inv_freq"
    wrong = 2 * tensors[key.replace("__", ".")]
    with pytest.raises(IncompatibleError, match="is not the RoPE table"):
        load_same_encoder(_broken(tmp_path, tensors, **{key: wrong}), CONFIG)


def test_mlx_file_with_an_unknown_key(tmp_path: Path, tensors: dict[str, np.ndarray]) -> None:
    arrays = {**to_mlx(tensors, CONFIG), "blocks.0.attn.lambda": np.ones(2, np.float32)}
    path = tmp_path / "enc.safetensors"
    save_file(arrays, str(path))
    with pytest.raises(IncompatibleError, match=r"another network\?\): blocks.0.attn.lambda"):
        load_same_encoder(path, CONFIG)


def test_diffusers_config_of_another_network(
    tmp_path: Path, tensors: dict[str, np.ndarray]
) -> None:
    folder = _diffusers_folder(tmp_path / "vae", tensors, ff_mult=4, encoder_sinusoidal_blocks=[2])
    with pytest.raises(IncompatibleError, match="ff_mult = 4") as err:
        load_same_encoder(folder, CONFIG)
    assert "encoder_sinusoidal_blocks = [2]" in str(err.value)


def test_not_a_codec_file(tmp_path: Path) -> None:
    path = tmp_path / "dit.safetensors"
    save_file(
        {"model.model.transformer.layers.0.self_attn.to_qkv.weight": np.zeros((4, 4))}, str(path)
    )
    with pytest.raises(MalformedFileError, match="no SAME encoder keys"):
        load_same_encoder(path, CONFIG)
    with pytest.raises(MalformedFileError):
        load_same_encoder(tmp_path / "missing.safetensors", CONFIG)


# --- the codec hash --------------------------------------------------------------------------


def test_codec_sha256_of_a_file_and_a_folder(
    tmp_path: Path, official: Path, tensors: dict[str, np.ndarray]
) -> None:
    assert codec_sha256(official) == hashlib.sha256(official.read_bytes()).hexdigest()
    folder = _diffusers_folder(tmp_path / "vae", tensors)
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert codec_sha256(folder) == hashlib.sha256(weights.read_bytes()).hexdigest()
