"""The checkpoint-kind table names real SAME files by the official and diffusers key names.

The kind table (ops/checkpoint_kind.py) sizes a codec from its `to_qkv` weights; the official
autoencoder numbers them `encoder.layers.0.transformers.N.self_attn`, diffusers
`encoder.blocks.0.transformers.N.attn`. Both spellings of both real sizes are recognised from
the shapes alone (the random weights of tests/same_weights at toy width, shapes re-sized).
"""

from __future__ import annotations

import pytest

from sa3ckpt.models.same import SAME_L, SAME_S, SameConfig
from sa3ckpt.ops.inspect import checkpoint_kind as ck
from tests.same_weights import official_tensors, to_diffusers


def _shapes(config: SameConfig, diffusers: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a real-size autoencoder file (names from a toy one of equal depth)."""
    toy = official_tensors(config.scaled(12, config.blocks, head_dim=4), seed=0)
    names = to_diffusers(toy) if diffusers else toy
    d = config.width
    return {
        k: (5 * d, d) if k.endswith("to_qkv.weight") else tuple(v.shape) for k, v in names.items()
    }


@pytest.mark.parametrize("diffusers", [False, True])
@pytest.mark.parametrize(("config", "family"), [(SAME_S, "SAME-S"), (SAME_L, "SAME-L")])
def test_real_autoencoder_names_are_codec_weights(
    config: SameConfig, family: str, diffusers: bool
) -> None:
    found = ck.weights_kind(_shapes(config, diffusers))
    assert (found.kind, found.part, found.family) == (ck.CODEC_WEIGHTS, "autoencoder", family)
    assert f"{config.blocks} blocks" in found.detail
