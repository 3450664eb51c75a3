"""The official <-> diffusers module-name mapping, checked against the real diffusers models."""

from __future__ import annotations

from typing import Any

import pytest

from sa3ckpt.names.modules import (
    SECONDS_CONDITIONER,
    diffusers_component,
    from_diffusers_dit_path,
    from_diffusers_path,
    to_diffusers_dit_path,
    to_diffusers_path,
)
from sa3ckpt.targets.families import FAMILIES, Family

# Official module / tensor paths and their diffusers spelling, from formats.md.
BLOCKS = {  # official suffix after `transformer.layers.N.` -> after `transformer_blocks.N.`
    "self_attn.to_qkv": "self_attn.to_qkv",
    "cross_attn.to_kv": "cross_attn.to_kv",
    "ff.ff.0.proj.bias": "ff.proj_in.bias",
    "ff.ff.2": "ff.proj_out",
    "to_local_embed.2": "to_local_embed.2",
    "pre_norm.gamma": "pre_norm.gamma",
}
KNOWN = {
    **{
        f"model.transformer.layers.{n}.{old}": f"transformer.transformer_blocks.{n}.{new}"
        for n, (old, new) in enumerate(BLOCKS.items())
    },
    "model.transformer.project_in": "transformer.proj_in",
    "model.transformer.project_out.weight": "transformer.proj_out.weight",
    "model.transformer.global_cond_embedder.2": "transformer.global_cond_embedder.2",
    "model.transformer.memory_tokens": "transformer.memory_tokens",
    "model.transformer.rotary_pos_emb.inv_freq": "transformer.rotary_pos_emb.inv_freq",
    "model.to_timestep_embed.0": "transformer.to_timestep_embed.0",
    "model.to_cond_embed.2.weight": "transformer.to_cond_embed.2.weight",
    "model.preprocess_conv": "transformer.preprocess_conv",
    SECONDS_CONDITIONER: "duration_embedder.linear",
    SECONDS_CONDITIONER + ".bias": "duration_embedder.linear.bias",
    "conditioners.prompt.padding_embedding": "transformer.prompt_padding_embedding",
}


@pytest.mark.parametrize(("official", "diffusers"), sorted(KNOWN.items()))
def test_known_names_both_ways(official: str, diffusers: str) -> None:
    assert to_diffusers_path(official) == diffusers
    assert from_diffusers_path(diffusers) == official


def test_components_and_unknowns() -> None:
    assert diffusers_component("model.transformer.layers.0.ff.ff.2") == "transformer"
    assert diffusers_component(SECONDS_CONDITIONER) == "duration_embedder"
    assert to_diffusers_path("conditioners.prompt.proj") is None
    assert from_diffusers_path("vae.decoder.conv_in") is None
    # `proj_in` inside a block is the feed-forward's, not the DiT's `project_in`.
    assert from_diffusers_dit_path("transformer_blocks.0.ff.proj_in") == (
        "model.transformer.layers.0.ff.ff.0.proj"
    )
    assert from_diffusers_dit_path("proj_in") == "model.transformer.project_in"


def _tiny_model(fam: Family) -> Any:
    diffusers = pytest.importorskip("diffusers")
    t = fam.topology
    return diffusers.StableAudio3DiTModel(
        io_channels=t.io_channels,
        embed_dim=t.embed_dim,
        depth=t.depth,
        num_heads=2,
        cond_token_dim=t.cond_token_dim,
        global_cond_dim=t.cond_token_dim,
        local_add_cond_dim=t.local_cond_dim,
        timestep_features_dim=t.timestep_features,
        ff_mult=float(t.ff_mult),
        num_memory_tokens=2,
        use_differential_attention=t.differential,
    )


@pytest.mark.parametrize("name", ["tiny-medium", "tiny-small"])
def test_every_target_is_a_diffusers_module_of_its_shape(name: str) -> None:
    torch = pytest.importorskip("torch")
    fam = FAMILIES[name]
    model = _tiny_model(fam)
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import (
        StableAudio3DurationEmbedder,
    )

    t = fam.topology
    duration = StableAudio3DurationEmbedder(
        output_dim=t.cond_token_dim, fourier_dim=t.seconds_features
    )
    modules = {f"transformer.{n}": m for n, m in model.named_modules()}
    modules.update({f"duration_embedder.{n}": m for n, m in duration.named_modules()})
    layers = {n for n, m in modules.items() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))}
    mapped = set()
    for target in fam.targets:
        path = target.diffusers_name
        assert path is not None and path in modules, (target.name, path)
        weight = modules[path].weight
        assert weight.shape[0] == target.shape[0], target.name
        if target.kernel_size == 1:  # diffusers' convs are k=1; tiny-small's are k=3
            assert weight.reshape(weight.shape[0], -1).shape == target.shape, target.name
        assert from_diffusers_path(path) == target.name
        mapped.add(path)
    assert mapped == layers  # every diffusers Linear/Conv is an SA3 target, and only those


@pytest.mark.parametrize("name", ["tiny-medium", "tiny-small"])
def test_every_diffusers_tensor_round_trips(name: str) -> None:
    model = _tiny_model(FAMILIES[name])
    for key in model.state_dict():
        canonical = from_diffusers_dit_path(key)
        assert canonical.startswith(("model.", "conditioners.prompt."))
        assert to_diffusers_dit_path(canonical) == key
