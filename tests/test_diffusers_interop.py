"""`convert --to diffusers` checked with the real diffusers and peft packages.

A small `StableAudio3DiTModel` (and `StableAudio3DurationEmbedder`) gets random weights; the
same numbers, renamed and with medium's `to_qkv` rows put back in the official order, are an
official base. An sa3 adapter is converted to diffusers and loaded into the diffusers model by
diffusers' own `load_lora_adapter` (the `PeftAdapterMixin` every diffusers transformer with
LoRA support mixes in; SA3's model does not, which is the gap sa3ckpt bridges), fused with
`fuse_lora`, and every fused weight is compared with `sa3ckpt merge` of the sa3 adapter into
the official base, mapped to diffusers names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sa3ckpt.adapters.types import adapter_type
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.layout import rows_from_naming, rows_to_naming
from sa3ckpt.names.adapter_keys import format_adapter_key
from sa3ckpt.names.base_keys import official_base_key, parse_official_base_key
from sa3ckpt.names.modules import SECONDS_CONDITIONER, from_diffusers_path, to_diffusers_dit_path
from tests.helpers import run_cli

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from diffusers.loaders.peft import PeftAdapterMixin  # noqa: E402
from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import (  # noqa: E402
    StableAudio3DurationEmbedder,
)

RANK = 4
ALPHA = 6.0
TOLERANCE = 1e-5
SHAPES = {  # the two cases: small (no permutation) and medium-shaped (permutation)
    "small": {"embed_dim": 32, "use_differential_attention": False},  # no sa3ckpt family
    "medium": {"embed_dim": 16, "use_differential_attention": True},  # the tiny-medium family
}
COMMON = {
    "io_channels": 8,
    "depth": 2,
    "num_heads": 2,
    "cond_token_dim": 12,
    "global_cond_dim": 12,
    "local_add_cond_dim": 9,
    "timestep_features_dim": 8,
    "num_memory_tokens": 2,
}
SECONDS_FEATURES = 8


class LoraStableAudio3DiTModel(diffusers.StableAudio3DiTModel, PeftAdapterMixin):  # type: ignore[misc]
    """SA3's DiT with the LoRA mixin diffusers gives its other transformers."""


def _random_model(shape: str, seed: int) -> Any:
    torch.manual_seed(seed)
    model = LoraStableAudio3DiTModel(**COMMON, **SHAPES[shape]).eval()
    with torch.no_grad():
        for param in model.parameters():  # zero-initialised convs and local embeds too
            param.copy_(torch.randn_like(param) * 0.3)
    return model


def _random_duration_embedder(seed: int) -> Any:
    torch.manual_seed(seed + 1)
    embedder = StableAudio3DurationEmbedder(
        output_dim=COMMON["global_cond_dim"], fourier_dim=SECONDS_FEATURES
    ).eval()
    with torch.no_grad():
        for param in embedder.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    return embedder


def _layers(model: Any, embedder: Any) -> dict[str, Any]:
    """Canonical target -> the diffusers Linear / Conv1d holding it."""
    modules = {f"transformer.{n}": m for n, m in model.named_modules()}
    modules.update({f"duration_embedder.{n}": m for n, m in embedder.named_modules()})
    layers = {}
    for path, module in modules.items():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv1d):
            canonical = from_diffusers_path(path)
            assert canonical is not None, path
            layers[canonical] = module
    return layers


def _official_base(model: Any, embedder: Any) -> dict[str, np.ndarray]:
    """The diffusers weights as an official full checkpoint (names mapped, rows un-permuted)."""
    state = {f"transformer.{k}": v for k, v in model.state_dict().items()}
    state.update({f"duration_embedder.{k}": v for k, v in embedder.state_dict().items()})
    out = {}
    for path, value in state.items():
        if path.endswith(".freqs"):  # the duration embedder's fixed Fourier basis
            continue
        canonical = from_diffusers_path(path)
        assert canonical is not None, path
        module, _, leaf = canonical.rpartition(".")
        array = value.detach().numpy().astype(np.float32)
        if leaf == "weight":
            array = rows_from_naming("diffusers", module, _fan_shape(array), array)
        out[official_base_key(module, leaf)] = np.ascontiguousarray(array)
    return out


def _fan_shape(weight: np.ndarray) -> tuple[int, int]:
    return int(weight.shape[0]), int(np.prod(weight.shape[1:]))


def _sa3_adapter(
    layers: dict[str, Any], type_name: str, seed: int, conditioner: bool
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    kind = adapter_type(type_name)
    rng = np.random.default_rng(seed)
    tensors = {}
    for target, module in layers.items():
        if target == SECONDS_CONDITIONER and not conditioner:
            continue
        fan_out, fan_in = _fan_shape(module.weight.detach().numpy())
        for param, shape in kind.shapes(fan_out, fan_in, RANK).items():
            if param.startswith("magnitude"):
                value = 0.5 + rng.random(shape)
            else:
                value = rng.standard_normal(shape) * (0.3 if param != "lora_A" else 1 / fan_in)
            tensors[format_adapter_key(target, param, "sa3")] = value.astype(np.float32)
    config = {
        "rank": RANK,
        "alpha": ALPHA,
        "adapter_type": type_name,
        "include": [],
        "exclude": [],
    }
    return tensors, {"lora_config": json.dumps(config)}


def _ok(*args: str) -> str:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _fused(model: Any, folder: Path) -> dict[str, np.ndarray]:
    model.load_lora_adapter(
        str(folder), prefix="transformer", adapter_name="sa3", use_safetensors=True
    )
    model.fuse_lora(adapter_names=["sa3"])
    model.unload_lora()
    return {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}


def _merged_in_diffusers_names(merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An official checkpoint's transformer tensors under diffusers names, rows permuted."""
    out = {}
    for key, value in merged.items():
        parsed = parse_official_base_key(key)
        assert parsed is not None, key
        module, leaf = parsed
        path = to_diffusers_dit_path(f"{module}.{leaf}")
        if path is None:  # the seconds conditioner: the duration embedder's
            continue
        array = value.astype(np.float64)
        if leaf == "weight":
            array = rows_to_naming("diffusers", module, _fan_shape(array), array)
        out[path] = array
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("type_name", ["lora", "dora-rows", "lora-xs", "dora-rows-xs"])
@pytest.mark.parametrize("shape", ["small", "medium"])
def test_converted_adapter_fused_by_diffusers_equals_sa3ckpt_merge(
    tmp_path: Path, shape: str, type_name: str
) -> None:
    from safetensors.numpy import load_file

    model = _random_model(shape, seed=3)
    embedder = _random_duration_embedder(seed=3)
    layers = _layers(model, embedder)
    base = tmp_path / "base.safetensors"
    write_safetensors(base, _official_base(model, embedder))
    tensors, metadata = _sa3_adapter(layers, type_name, seed=5, conditioner=True)
    adapter = tmp_path / "adapter.safetensors"
    write_safetensors(adapter, tensors, metadata)

    out = tmp_path / "diffusers-lora"
    xs = ["--base", str(base)] if type_name.endswith("-xs") else []  # U, V from the base's SVD
    _ok("convert", str(adapter), "-o", str(out), "--to", "diffusers", "--dtype", "fp32",
        "--include-conditioner", *xs)  # fmt: skip
    merged_path = tmp_path / "merged.safetensors"
    _ok("merge", str(base), str(adapter), "-o", str(merged_path), "--dtype", "fp32")
    merged = load_file(str(merged_path))

    fused = _fused(model, out)
    expected = _merged_in_diffusers_names(merged)
    before = _merged_in_diffusers_names(load_file(str(base)))
    assert set(fused) == set(expected)
    changed = 0
    for key, value in fused.items():
        assert _rel(value, expected[key]) <= TOLERANCE, key
        changed += not np.array_equal(value, before[key])
    assert changed == sum(1 for t in layers if t != SECONDS_CONDITIONER)

    # The seconds conditioner: the sidecar loaded with PEFT into the duration embedder.
    fused_linear = _sidecar_fused(embedder, out)
    want = merged["conditioner.conditioners.seconds_total.embedder.embedding.1.weight"]
    assert _rel(fused_linear, want.astype(np.float64)) <= TOLERANCE


def _sidecar_fused(embedder: Any, folder: Path) -> np.ndarray:
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / "duration_embedder_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        packed = json.loads(f.metadata()["lora_adapter_metadata"])
    prefix = "duration_embedder."
    config = LoraConfig(**{k.removeprefix(prefix): v for k, v in packed.items()})
    inject_adapter_in_model(config, embedder, adapter_name="sa3")
    state = {k.removeprefix(prefix): v for k, v in load_file(str(path)).items()}
    result = set_peft_model_state_dict(embedder, state, adapter_name="sa3")
    assert not result.unexpected_keys
    embedder.linear.merge()
    return embedder.linear.get_base_layer().weight.detach().numpy().astype(np.float64)


def test_peft_folder_saved_from_the_diffusers_model_reads_and_merges(tmp_path: Path) -> None:
    """A PEFT folder saved by peft from a StableAudio3DiTModel (diffusers module names, its
    row order) is read by inspect/validate/convert, and `sa3ckpt merge` of its sa3 form
    equals PEFT's own merge_and_unload."""
    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load_file

    model = _random_model("medium", seed=7)
    embedder = _random_duration_embedder(seed=7)
    base = tmp_path / "base.safetensors"
    write_safetensors(base, _official_base(model, embedder))
    before = _merged_in_diffusers_names(load_file(str(base)))
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        use_dora=True,
        target_modules=["to_qkv", "to_kv", "ff.proj_in", "preprocess_conv"],
    )
    peft_model = get_peft_model(model, config)
    torch.manual_seed(11)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(param + torch.randn_like(param) * 0.1)
    folder = tmp_path / "peft-diffusers"
    peft_model.save_pretrained(str(folder))
    fused = {
        k: v.detach().numpy().astype(np.float64)
        for k, v in peft_model.merge_and_unload().state_dict().items()
    }

    info = json.loads(_ok("inspect", str(folder), "--json"))
    assert "peft-diffusers" in json.dumps(info)
    _ok("validate", str(folder), "--model", "auto")
    sa3 = tmp_path / "sa3.safetensors"
    _ok("convert", str(folder), "-o", str(sa3), "--to", "sa3", "--dtype", "fp32")
    merged_path = tmp_path / "merged.safetensors"
    _ok("merge", str(base), str(sa3), "-o", str(merged_path), "--dtype", "fp32")
    expected = _merged_in_diffusers_names(load_file(str(merged_path)))
    changed = [k for k in fused if not np.array_equal(expected[k], before[k])]
    assert len(changed) == 2 * 3 + 1  # to_qkv, to_kv, ff.proj_in per block + preprocess_conv
    for key, value in fused.items():
        assert _rel(value, expected[key]) <= TOLERANCE, key
