"""Training an adapter on the real DiT topology, end to end.

A complete official base of a tiny family (every tensor of the official layout, tiny depth and
width, the real per-block structure) is written to a file and loaded with `load_dit`, as a
user loads a real base. An adapter is injected, trained for a few AdamW steps on random
latents with the rectified-flow objective exactly as a training loop runs it (sampled and
shifted timesteps, the training local conditioning, the conditioner's cross/global
conditioning from prompt embeddings + mask + seconds, CFG dropout), saved, reloaded through
`load_checkpoint`, validated by the CLI and merged into the base file with the real merge
path. The merged base, loaded again with `load_dit`, must give the live adapted model's
output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file

from sa3ckpt.adapters.checkpoint import load_checkpoint, save_checkpoint
from sa3ckpt.adapters.injection import adapter_modules, inject, trainable_parameters
from sa3ckpt.adapters.module_io import load_into, to_checkpoint
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.models import DIT_ONLY_EXCLUDE, Conditioner, DiT, load_dit, training_local_cond
from sa3ckpt.names.base_keys import official_base_key
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import merge_checkpoint
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.synth import official_full_tensors
from sa3ckpt.targets.families import FAMILIES
from sa3ckpt.train import (
    cfg_dropout,
    rectified_flow_loss,
    rectified_flow_pair,
    sample_timesteps,
    shift_timesteps,
)
from tests.helpers import run_cli

B, T, PROMPT = 2, 8, 5  # batch, latent frames, prompt tokens before padding
RANK, ALPHA = 2, 4
STEPS = 30
# Merged vs live, fp32: the merge bakes W0 + ΔW once (NumPy) and rounds it to fp32, the live
# wrappers recompute it in MLX fp32 on every call; the two weights differ by a few fp32 ulps
# (~1e-7 relative) and the network carries that to ~1e-6 relative at the output. 1e-5 leaves
# headroom for summation order and stays far below what the adapter changes (checked) and
# below the fp16 rounding of the saved adapter (~5e-4).
MERGE_TOLERANCE = 1e-5
CASES = [
    ("tiny-medium", "dora-rows"),
    ("tiny-medium", "lora"),
    ("tiny-small", "dora-rows"),
    ("tiny-small", "lora"),
]
# every kind of adapter parameter must have moved in training (none is dead or frozen)
TRAINED = {"dora-rows": {"lora_A", "lora_B", "magnitude"}, "lora": {"lora_A", "lora_B"}}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def _write_base(family: str, path: Path) -> Path:
    """A complete official full base of `family` (fp32), as `load_dit` reads real ones."""
    write_safetensors(path, official_full_tensors(FAMILIES[family], seed=3))
    return path


@dataclass
class Batch:
    """One fixed training batch: clean latents, frame mask, and the DiT's conditioning."""

    latents: mx.array  # (B, io, T), channels-first like the DiT
    mask: mx.array  # (B, T): sample 1 is a shorter clip padded to T
    cross: mx.array  # (B, 256 + 1, D): padded prompt tokens, then the seconds token
    glob: mx.array  # (B, D): the seconds embedding
    local: mx.array  # (B, io + 1, T): all-ones inpaint mask, zero context


def _batch(dit: DiT, cond: Conditioner, seed: int = 11) -> Batch:
    top = dit.topology
    k = mx.random.split(mx.random.key(seed), 2)
    prompt = mx.random.normal((B, PROMPT, top.cond_token_dim), key=k[0])
    prompt_mask = mx.array([[True] * PROMPT, [True] * 3 + [False] * (PROMPT - 3)])
    cross, glob = cond(prompt, mx.array([12.0, 7.5]), prompt_mask)
    return Batch(
        latents=mx.random.normal((B, top.io_channels, T), key=k[1]),
        mask=mx.array([[True] * T, [True] * 5 + [False] * (T - 5)]),
        cross=cross,
        glob=glob,
        local=training_local_cond(B, T, top.io_channels),
    )


def _train(dit: DiT, batch: Batch, steps: int, seed: int = 0) -> list[float]:
    """AdamW as the official trainer sets it, fresh t / noise / CFG draws every step."""
    lengths = mx.sum(batch.mask, axis=1)  # each sample's own latent length for the shift

    def loss_fn(m: DiT, x_t: mx.array, t: mx.array, v: mx.array, cross: mx.array) -> mx.array:
        return rectified_flow_loss(m(x_t, t, cross, batch.glob, batch.local), v, batch.mask)

    step = nn.value_and_grad(dit, loss_fn)
    opt = optim.AdamW(learning_rate=3e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0)
    losses = []
    for i in range(steps):
        k_t, k_n, k_cfg = mx.random.split(mx.random.key(seed * 1000 + i), 3)
        t = shift_timesteps("logsnr", sample_timesteps("logit_normal", k_t, B), lengths)
        x_t, v, _ = rectified_flow_pair(batch.latents, t, k_n)
        loss, grads = step(dit, x_t, t, v, cfg_dropout(batch.cross, k_cfg))
        opt.update(dit, grads)
        mx.eval(dit.parameters(), opt.state)
        losses.append(loss.item())
    return losses


def _eval_loss(dit: DiT, batch: Batch) -> float:
    """The loss on one fixed draw (t, noise, no CFG dropout): comparable before and after."""
    t = mx.array([0.3, 0.6])
    x_t, v, _ = rectified_flow_pair(batch.latents, t, 99)
    pred = dit(x_t, t, batch.cross, batch.glob, batch.local)
    return rectified_flow_loss(pred, v, batch.mask).item()


def _fixed_forward(dit: DiT, batch: Batch) -> np.ndarray:
    """Outputs at three timesteps, with and without local conditioning, on fixed inputs."""
    x = mx.random.normal(batch.latents.shape, key=mx.random.key(123))
    outs = []
    for t in (0.05, 0.5, 0.95):
        tt = mx.full((B,), t)
        outs.append(dit(x, tt, batch.cross, batch.glob, batch.local))
        outs.append(dit(x, tt, batch.cross, batch.glob, None))
    return np.stack([np.array(o) for o in outs])


@pytest.mark.parametrize("family,adapter_type", CASES)
def test_train_save_reload_validate_merge(family: str, adapter_type: str, tmp_path: Path) -> None:
    base_path = _write_base(family, tmp_path / "base.safetensors")
    loaded = load_dit(base_path)
    dit, cond = loaded.dit, loaded.conditioner
    assert cond is not None and loaded.ledger.family == family
    batch = _batch(dit, cond)
    base_out = _fixed_forward(dit, batch)

    exclude = list(DIT_ONLY_EXCLUDE)
    names = inject(dit, adapter_type, rank=RANK, alpha=ALPHA, exclude=exclude)
    assert len(names) == len(FAMILIES[family].dit_targets)
    trainable = set(trainable_parameters(dit))
    frozen_before = {
        k: np.array(v) for k, v in tree_flatten(dit.parameters()) if k not in trainable
    }
    adapters_before = {k: np.array(v) for k, v in trainable_parameters(dit).items()}
    dit.train()
    before = _eval_loss(dit, batch)
    losses = _train(dit, batch, STEPS)
    dit.eval()
    after = _eval_loss(dit, batch)
    assert all(math.isfinite(x) for x in losses)
    assert after < 0.8 * before, (before, after, losses)

    params = dict(tree_flatten(dit.parameters()))
    for key, value in frozen_before.items():  # base weights bit-identical
        assert np.array_equal(np.array(params[key]), value), key
    now = trainable_parameters(dit)
    changed = {k.rsplit(".", 1)[1] for k in now if not np.array_equal(now[k], adapters_before[k])}
    assert changed == TRAINED[adapter_type]

    ckpt = to_checkpoint(
        dit,
        adapter_type,
        RANK,
        ALPHA,
        exclude=exclude,
        extra={"step": STEPS, "epoch": 0, "base_model": family},
    )
    adapter_path = save_checkpoint(ckpt, tmp_path / "adapter.safetensors")  # fp16, sa3 keys
    assert set(ckpt.tensors) == set(adapter_modules(dit))
    reloaded = load_checkpoint(adapter_path)
    assert reloaded.adapter_type == adapter_type
    assert set(reloaded.tensors) == set(ckpt.tensors)
    for target, module in adapter_modules(dit).items():
        for name, value in module.adapter_params().items():
            want = np.array(value).astype(np.float16).astype(np.float32)
            got = reloaded.tensors[target][name].astype(np.float32).reshape(want.shape)
            assert np.array_equal(got, want), (target, name)

    result = run_cli("validate", "--strict", "--model", family, str(adapter_path))
    assert result.returncode == 0, result.stdout + result.stderr

    # The live model carries exactly the saved adapter (fp16 values) from here on.
    load_into(dit, reloaded)
    live = _fixed_forward(dit, batch)
    merged_path = tmp_path / "merged.safetensors"
    merge_checkpoint(
        str(base_path),
        [AdapterArg(str(adapter_path), 1.0)],
        str(merged_path),
        options=MergeOptions(dtype="fp32"),
    )
    merged = load_dit(merged_path)
    assert merged.ledger.family == family
    merged_out = _fixed_forward(merged.dit, batch)
    err = _relative(merged_out, live)
    assert err <= MERGE_TOLERANCE, err
    assert _relative(base_out, live) > 1e3 * MERGE_TOLERANCE  # the adapter changed the output
    # Only the adapted weights moved; everything else (gammas, gates, biases, memory tokens,
    # the excluded seconds conditioner) is the base's, bit for bit.
    base_file, merged_file = load_file(str(base_path)), load_file(str(merged_path))
    assert set(merged_file) == set(base_file)
    targets = {official_base_key(t.name) for t in FAMILIES[family].dit_targets}
    kept = [k for k in base_file if k not in targets]
    assert any(k.startswith("conditioner.") for k in kept)
    for key in kept:
        assert np.array_equal(base_file[key], merged_file[key]), key
    moved = [k for k in targets if not np.array_equal(base_file[k], merged_file[k])]
    assert len(moved) == len(targets)
