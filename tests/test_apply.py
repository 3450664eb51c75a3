"""Fixed-strength application to live MLX models, and the base-preserving session."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.errors import IncompatibleError
from sa3ckpt.names import mlx_base_key
from sa3ckpt.ops.apply import AdapterSession, apply_checkpoints
from sa3ckpt.synth import synth_base
from sa3ckpt.targets import FAMILIES
from tests.mlx_tree import model_from_arrays
from tests.reference_math import REFERENCES, ref_svd_bases

FAMILY = "tiny-small"  # Conv1d kernel 3: exercises the MLX (out, k, in) layout
FAM = FAMILIES[FAMILY]


def _adapter(stem: str, family: str = FAMILY):
    return load_checkpoint(DATA_DIR / "adapters" / family / f"{stem}.safetensors")


def _model(dtype: str = "F32", family: str = FAMILY):
    base = synth_base(FAMILIES[family], seed=11)
    return base, model_from_arrays(base.mlx_tensors(dtype))


def _flat(model) -> dict[str, np.ndarray]:
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}


def _ref_params(ckpt, target: str, w0: np.ndarray) -> dict[str, np.ndarray]:
    p = {k: np.asarray(v, np.float64) for k, v in ckpt.tensors[target].items()}
    if ckpt.kind.xs and "U" not in p:
        p["U"], p["V"] = ref_svd_bases(w0.astype(np.float32), ckpt.config.rank)
    return p


def _expected(base, stack, semantics, target) -> np.ndarray:
    t = FAM.by_name[target]
    w0 = base.weight_2d(t).astype(np.float32).astype(np.float64)
    ref = REFERENCES[semantics]
    items = [
        (c.adapter_type, _ref_params(c, target, w0), c.config.scale, s)
        for c, s in stack
        if target in c.tensors
    ]
    return ref(w0, items)


def _stored_2d(flat, target: str) -> np.ndarray:
    w = flat[mlx_base_key(target)]
    t = FAM.by_name[target]
    return w.transpose(0, 2, 1).reshape(t.shape) if t.layer_kind == "conv1d" else w


@pytest.mark.parametrize("semantics", list(REFERENCES))
@pytest.mark.parametrize(
    "stems",
    [("lora",), ("dora-rows",), ("bora-xs",), ("dora-cols", "lora-xs"), ("bora", "dora-rows-xs")],
)
def test_apply_matches_reference_for_every_target(stems, semantics) -> None:
    base, model = _model()
    stack = [(_adapter(stem), s) for stem, s in zip(stems, (0.7, 1.3), strict=False)]
    before = _flat(model)
    ledger = apply_checkpoints(model, stack, semantics)
    after = _flat(model)
    assert len(ledger.applied) == len(FAM.targets) and ledger.ok
    for target in FAM.targets:
        want = _expected(base, stack, semantics, target.name)
        got = _stored_2d(after, target.name)
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want)), target.name
    untouched = [k for k in before if k.endswith(("pre_norm.weight", "bias"))]
    assert untouched and all(np.array_equal(before[k], after[k]) for k in untouched)
    if any(c.kind.xs for c, _ in stack):
        assert set(ledger.bases_sources.values()) == {"base SVD"}


def test_conditioner_is_applied_through_its_plain_array() -> None:
    _, model = _model()
    before = _flat(model)["cond.seconds_total_weight"]
    ledger = apply_checkpoints(model, [(_adapter("lora"), 1.0)])
    assert "conditioners.seconds_total.embedder.embedding.1" in ledger.applied
    assert not np.array_equal(before, _flat(model)["cond.seconds_total_weight"])


def test_fp16_model_stays_fp16() -> None:
    _, model = _model("F16")
    apply_checkpoints(model, [(_adapter("dora-rows"), 0.5)])
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float16}


def test_zero_matched_targets_is_an_error() -> None:
    _, model = _model(family="tiny-medium")
    with pytest.raises(IncompatibleError, match="0 of"):
        apply_checkpoints(model, [(_adapter("lora", "tiny-small"), 1.0)])


def test_missing_targets_are_in_the_ledger() -> None:
    base = synth_base(FAM, seed=11)
    flat = base.mlx_tensors("F32")
    del flat["transformer.layers.2.ff.ff.2.weight"]
    model = model_from_arrays(flat)
    ledger = apply_checkpoints(model, [(_adapter("lora"), 1.0)])
    assert ledger.missing_targets == ["model.transformer.layers.2.ff.ff.2"]
    assert not ledger.ok and len(ledger.applied) == len(FAM.targets) - 1
    assert any("missing from model" in line for line in ledger.lines())


def test_shape_mismatch_is_in_the_ledger() -> None:
    base = synth_base(FAM, seed=11)
    flat = base.mlx_tensors("F32")
    flat["transformer.layers.0.ff.ff.2.weight"] = np.zeros((12, 40), np.float32)
    model = model_from_arrays(flat)
    ledger = apply_checkpoints(model, [(_adapter("lora"), 1.0)])
    assert ledger.shape_mismatches and ledger.shape_mismatches[0].startswith(
        "model.transformer.layers.0.ff.ff.2: lora_A"
    )


def test_session_changes_strength_without_compounding() -> None:
    _, model = _model()
    original = _flat(model)
    stack = [_adapter("dora-rows"), _adapter("bora-xs")]
    session = AdapterSession(model, stack, [1.0, 1.0])
    session.materialize()
    session.set_strengths([0.5, 1.7])
    session.materialize()
    session.set_strengths([0.5, 1.7])
    session.materialize()
    via_session = _flat(model)

    _, fresh = _model()
    apply_checkpoints(fresh, list(zip(stack, [0.5, 1.7], strict=True)))
    fresh_flat = _flat(fresh)
    assert all(np.array_equal(via_session[k], fresh_flat[k]) for k in fresh_flat)

    session.set_strengths([0.0, 0.0])
    session.materialize()
    assert all(np.array_equal(original[k], v) for k, v in _flat(model).items())
    session.set_strengths([1.0, 1.0])
    session.materialize()
    session.restore()
    assert all(np.array_equal(original[k], v) for k, v in _flat(model).items())


@pytest.mark.parametrize("strengths", [(1e-5, 0.5), (1.7, 1e-5)])
def test_blend_session_matches_reference_and_its_ends(strengths) -> None:
    base, model = _model()
    original = _flat(model)
    ckpts = [_adapter("bora"), _adapter("dora-cols-xs")]
    session = AdapterSession(model, ckpts, list(strengths), "blend")
    assert session.materialize().semantics == "blend"
    got = _flat(model)
    stack = list(zip(ckpts, strengths, strict=True))
    for target in FAM.targets:
        want = _expected(base, stack, "blend", target.name)
        assert np.max(np.abs(_stored_2d(got, target.name) - want)) <= 1e-5 * np.max(np.abs(want))
    session.set_strengths([0.0, 0.0])
    session.materialize()
    assert all(np.array_equal(original[k], v) for k, v in _flat(model).items())
    session.set_strengths([1.0, 1.0])
    session.materialize()
    via_blend = _flat(model)
    _, fresh = _model()
    apply_checkpoints(fresh, [(c, 1.0) for c in ckpts], "runtime")
    assert all(np.array_equal(via_blend[k], v) for k, v in _flat(fresh).items())


def test_blend_apply_differs_from_runtime_for_dora() -> None:
    _, a = _model()
    _, b = _model()
    apply_checkpoints(a, [(_adapter("dora-rows"), 0.5)], "runtime")
    apply_checkpoints(b, [(_adapter("dora-rows"), 0.5)], "blend")
    key = mlx_base_key("model.transformer.layers.1.ff.ff.0.proj")
    runtime, blend = _flat(a)[key], _flat(b)[key]
    assert np.max(np.abs(blend - runtime)) > 1e-3 * np.max(np.abs(runtime))


def test_session_validates_lengths() -> None:
    _, model = _model()
    with pytest.raises(ValueError, match="strengths"):
        AdapterSession(model, [_adapter("lora")], [1.0, 2.0])
