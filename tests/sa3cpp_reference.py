"""A reference sa3.cpp model-GGUF writer for the tests, built only from the documented facts.

Independent of sa3ckpt's names, layouts and KV code: the rename table, the squeeze of the
kernel-1 pre/post convs, the KV list (names, types, values from the model config) and the
`general.*` fields are transcribed from sa3.cpp's tools/convert_dit.py,
tools/convert_conditioner.py, tools/gguf_meta.py and tools/model_artifacts.py. The config is
the family's Topology (what model_config.json would say), not the tensors' shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.targets.families import FAMILIES

gguf = __import__("gguf")

_PREF = "model.model."
_TR = "transformer."
_DIRECT = {
    "preprocess_conv.weight": "dit.pre_conv.weight",
    "postprocess_conv.weight": "dit.post_conv.weight",
    "to_cond_embed.0.weight": "dit.cond_embed.0.weight",
    "to_cond_embed.2.weight": "dit.cond_embed.2.weight",
    "to_global_embed.0.weight": "dit.global_embed.0.weight",
    "to_global_embed.2.weight": "dit.global_embed.2.weight",
    "to_timestep_embed.0.weight": "dit.time_embed.0.weight",
    "to_timestep_embed.0.bias": "dit.time_embed.0.bias",
    "to_timestep_embed.2.weight": "dit.time_embed.2.weight",
    "to_timestep_embed.2.bias": "dit.time_embed.2.bias",
    _TR + "global_cond_embedder.0.weight": "dit.gce.0.weight",
    _TR + "global_cond_embedder.0.bias": "dit.gce.0.bias",
    _TR + "global_cond_embedder.2.weight": "dit.gce.2.weight",
    _TR + "global_cond_embedder.2.bias": "dit.gce.2.bias",
    _TR + "memory_tokens": "dit.memory_tokens",
    _TR + "project_in.weight": "dit.proj_in.weight",
    _TR + "project_out.weight": "dit.proj_out.weight",
}
_BLOCK = {
    "pre_norm.gamma": "pre_norm.gamma",
    "ff_norm.gamma": "ff_norm.gamma",
    "cross_attend_norm.gamma": "cross_norm.gamma",
    "self_attn.to_qkv.weight": "self.qkv.weight",
    "self_attn.to_out.weight": "self.out.weight",
    "self_attn.q_norm.gamma": "self.q_norm.gamma",
    "self_attn.k_norm.gamma": "self.k_norm.gamma",
    "cross_attn.to_q.weight": "cross.q.weight",
    "cross_attn.to_kv.weight": "cross.kv.weight",
    "cross_attn.to_out.weight": "cross.out.weight",
    "cross_attn.q_norm.gamma": "cross.q_norm.gamma",
    "cross_attn.k_norm.gamma": "cross.k_norm.gamma",
    "ff.ff.0.proj.weight": "ff.proj.weight",
    "ff.ff.0.proj.bias": "ff.proj.bias",
    "ff.ff.2.weight": "ff.out.weight",
    "ff.ff.2.bias": "ff.out.bias",
    "to_scale_shift_gate": "ssg",
    "to_local_embed.0.weight": "local.0.weight",
    "to_local_embed.0.bias": "local.0.bias",
    "to_local_embed.2.weight": "local.2.weight",
    "to_local_embed.2.bias": "local.2.bias",
}
CONDITIONER_MAP = {
    "conditioner.conditioners.prompt.padding_embedding": "te.padding_embedding",
    "conditioner.conditioners.seconds_total.embedder.embedding.1.weight": "te.secs.weight",
    "conditioner.conditioners.seconds_total.embedder.embedding.1.bias": "te.secs.bias",
}


def rename(key: str) -> str | None:
    """sa3.cpp's DiT name for an official key (None: not written, e.g. rotary inv_freq)."""
    if not key.startswith(_PREF):
        return None
    rest = key[len(_PREF) :]
    if rest in _DIRECT:
        return _DIRECT[rest]
    if rest.startswith(_TR + "layers."):
        index, inner = rest[len(_TR + "layers.") :].split(".", 1)
        if inner in _BLOCK:
            return f"dit.{index}.{_BLOCK[inner]}"
    return None


def _size_label(n: int) -> str:
    text = f"{n / 1e9:.1f}B" if n >= 1e8 else f"{n / 1e6:.0f}M" if n >= 1e5 else f"{n / 1e3:.0f}K"
    return text.replace(".0B", "B")


def _general(w: object, basename: str, name: str, finetune: str, n_params: int | None) -> None:
    w.add_name(name)  # type: ignore[attr-defined]
    w.add_string("general.basename", basename)  # type: ignore[attr-defined]
    w.add_string("general.version", "v1.0")  # type: ignore[attr-defined]
    w.add_string("general.license", "stabilityai-community")  # type: ignore[attr-defined]
    w.add_string("general.finetune", finetune)  # type: ignore[attr-defined]
    if n_params is not None:
        w.add_string("general.size_label", _size_label(n_params))  # type: ignore[attr-defined]


def write_reference_dit(official: Path, family: str, variant: str, out: Path) -> None:
    """What sa3.cpp's convert_dit.py writes for this official checkpoint (all F32)."""
    topo = FAMILIES[family].topology
    handle = open_safetensors(str(official))
    keys = list(handle.header.tensors)
    memory = handle.header.tensors[_PREF + _TR + "memory_tokens"].shape[0]
    w = gguf.GGUFWriter(str(out), arch="sa3-dit")
    dim = topo.embed_dim
    w.add_uint32("dit.io", topo.io_channels)
    w.add_uint32("dit.dim", dim)
    w.add_uint32("dit.depth", topo.depth)
    w.add_uint32("dit.heads", topo.heads)
    w.add_uint32("dit.head_dim", dim // topo.heads)
    w.add_uint32("dit.cond_dim", topo.cond_token_dim)
    w.add_uint32("dit.mem_tokens", memory)
    w.add_uint32("dit.rot", (dim // topo.heads) // 2)
    w.add_uint32("dit.time_dim", topo.timestep_features)
    w.add_uint32("dit.differential", 1 if topo.differential else 0)
    w.add_uint32("dit.local_dim", topo.local_cond_dim)
    w.add_float32("dit.rope_base", 10000.0)
    w.add_float32("dit.norm_eps", 1e-5)
    w.add_float32("dit.qk_eps", 1e-6)
    w.add_float32("dit.time_min_freq", 0.5)
    w.add_float32("dit.time_max_freq", 10000.0)
    n_params = 0
    for key in sorted(keys):
        name = rename(key)
        if name is None:
            continue
        t = np.ascontiguousarray(handle.read(key).astype(np.float32))
        if name in ("dit.pre_conv.weight", "dit.post_conv.weight"):
            t = np.ascontiguousarray(t[:, :, 0])
        w.add_tensor(name, t)
        n_params += t.size
    handle.close()
    _general(w, f"stable-audio-3-{variant}-dit", f"stable-audio-3-{variant} DiT", variant, n_params)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_reference_conditioner(official: Path, family: str, variant: str, out: Path) -> None:
    """What sa3.cpp's convert_conditioner.py writes (config without seconds range: defaults).

    Its `t5g.secs_dim` is a literal 256, the published models' seconds feature width; the
    family's own width stands in for it here.
    """
    handle = open_safetensors(str(official))
    w = gguf.GGUFWriter(str(out), arch="sa3-conditioner")
    w.add_float32("t5g.secs_min", 0.0)
    w.add_float32("t5g.secs_max", 384.0)
    w.add_uint32("t5g.secs_dim", FAMILIES[family].topology.seconds_features)
    for src, dst in CONDITIONER_MAP.items():
        w.add_tensor(dst, np.ascontiguousarray(handle.read(src).astype(np.float32)))
    handle.close()
    _general(
        w,
        f"stable-audio-3-{variant}-conditioner",
        f"stable-audio-3-{variant} conditioner",
        variant,
        None,
    )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fields(path: Path) -> list[tuple[str, object, str]]:
    """[(key, value, GGUF type)] in file order, as the real GGUFReader reads them."""
    reader = gguf.GGUFReader(str(path))
    return [
        (key, fld.contents(), fld.types[0].name)
        for key, fld in reader.fields.items()
        if not key.startswith("GGUF.")
    ]


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
    """{name: (ggml type, ggml ne, data as stored)} as the real GGUFReader reads them."""
    reader = gguf.GGUFReader(str(path))
    return {
        t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), np.array(t.data))
        for t in reader.tensors
    }
