"""PEFT interop, proven with the real library: our PEFT folders load into `peft` and merge to the
weights `sa3ckpt merge` writes; folders `peft` saves are read, validated and converted by us.

The model is a PyTorch stand-in with the SA3 module tree of a tiny family (tests/
interop_models.py): Linear targets, and the Conv1d targets preprocess_conv / postprocess_conv
with kernel 3 (tiny-small, to exercise PEFT's (r, in, k) layout) or 1 (tiny-medium, as in the
real models). Both sides start from the same base weights (the committed fixture bases);
strength 1, fp32, relative error <= 1e-5 per target.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.adapters.xs_bases import compute_bases, save_bases
from sa3ckpt.errors import UsageError
from sa3ckpt.names import official_base_key
from sa3ckpt.ops.convert.adapters import convert_adapter
from sa3ckpt.ops.inspect.report import inspect_path
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from sa3ckpt.ops.validate import validate_path
from sa3ckpt.targets import FAMILIES, Family, Target
from tests.helpers import run_cli
from tests.reference_math import ref_adapted, ref_svd_bases

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")

from sa3ckpt.ops.merge import MergeOptions  # noqa: E402
from tests.interop_models import build_torch_tree, canonical_weights, module_names  # noqa: E402

FAMILY_NAMES = ("tiny-small", "tiny-medium")  # Conv1d kernel 3 and kernel 1
TOLERANCE = 1e-5


def _base_path(family: str) -> str:
    return str(DATA_DIR / "bases" / f"{family}.official.safetensors")


def _adapter_path(family: str, stem: str) -> str:
    return str(DATA_DIR / "adapters" / family / f"{stem}.safetensors")


@functools.cache
def _base_arrays(family: str) -> dict[str, np.ndarray]:
    return load_file(_base_path(family))


def _base_2d(family: str, target: Target) -> np.ndarray:
    """The fixture base weight of a target as float32 in canonical 2-D (what both sides use)."""
    w = _base_arrays(family)[official_base_key(target.name)]
    return w.astype(np.float32).reshape(target.shape)


def _torch_base(fam: Family) -> torch.nn.Module:
    return build_torch_tree(fam, lambda t: _base_2d(fam.name, t))


def _peft_merge(fam: Family, folder: Path) -> dict[str, np.ndarray]:
    """Load `folder` with PeftModel.from_pretrained into the stand-in and merge_and_unload."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(_torch_base(fam), str(folder))
    messages = " ".join(str(w.message) for w in caught)
    assert "missing" not in messages.lower() and "unexpected" not in messages.lower(), messages
    return canonical_weights(model.merge_and_unload(), fam)


def _sa3ckpt_merge(fam: Family, adapter: str, out: Path, bases: str | None = None) -> dict:
    merge_checkpoint(
        _base_path(fam.name),
        [AdapterArg(adapter, 1.0)],
        str(out),
        options=MergeOptions(dtype="fp32", bases_path=bases),
    )
    arrays = load_file(str(out))
    return {
        t.name: arrays[official_base_key(t.name)].astype(np.float64).reshape(t.shape)
        for t in fam.targets
    }


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _reference(fam: Family, adapter: str) -> dict[str, np.ndarray]:
    """float64 reference merge at strength 1 (XS bases: reference SVD of the fp32 base)."""
    ckpt = load_adapter(adapter)
    out = {}
    for target in fam.targets:
        w0 = _base_2d(fam.name, target).astype(np.float64)
        p = {k: np.asarray(v, np.float64) for k, v in ckpt.tensors[target.name].items()}
        if ckpt.kind.xs:
            p["U"], p["V"] = ref_svd_bases(w0.astype(np.float32), ckpt.config.rank)
        out[target.name] = ref_adapted(w0, ckpt.adapter_type, p, ckpt.config.scale, 1.0)
    return out


def _bases_file(fam: Family, path: Path) -> str:
    weights = {t.name: _base_2d(fam.name, t) for t in fam.targets}
    save_bases(compute_bases(weights, 4, f"{fam.name} fixture base"), path)
    return str(path)


# --- our PEFT output in the real PEFT ---------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(
    ("type_name", "xs_bases"),
    [("lora", None), ("dora-rows", None), ("lora-xs", "base"), ("dora-rows-xs", "file")],
)
def test_our_peft_folder_merges_in_peft_like_sa3ckpt_merge(
    tmp_path: Path, family: str, type_name: str, xs_bases: str | None
) -> None:
    fam = FAMILIES[family]
    adapter = _adapter_path(family, type_name)
    folder = tmp_path / "peft"
    options: dict[str, str] = {}
    if xs_bases == "base":
        options["base_path"] = _base_path(family)
    elif xs_bases == "file":
        options["bases_path"] = _bases_file(fam, tmp_path / "bases.safetensors")
    convert_adapter(adapter, str(folder), to="peft", dtype="fp32", **options)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["use_dora"] is type_name.startswith("dora")

    merged_peft = _peft_merge(fam, folder)
    merged_ours = _sa3ckpt_merge(fam, adapter, tmp_path / "merged.safetensors")
    reference = _reference(fam, adapter)
    assert set(merged_peft) == {t.name for t in fam.targets}
    for target in fam.targets:
        want = merged_ours[target.name]
        assert _rel(merged_peft[target.name], want) <= TOLERANCE, target.name
        assert _rel(merged_peft[target.name], reference[target.name]) <= TOLERANCE, target.name
        # the adapter really changes the layer (a no-op load would also "match" a no-op merge)
        w0 = _base_2d(family, target).astype(np.float64)
        assert _rel(merged_peft[target.name], w0) > 100 * TOLERANCE, target.name


@pytest.mark.parametrize("type_name", ["dora-cols", "bora", "dora-cols-xs", "bora-xs"])
def test_column_magnitudes_are_refused_for_peft(tmp_path: Path, type_name: str) -> None:
    with pytest.raises(UsageError, match="per output row"):
        convert_adapter(_adapter_path("tiny-small", type_name), str(tmp_path / "p"), to="peft")
    assert not (tmp_path / "p").exists()


def test_xs_to_peft_needs_bases(tmp_path: Path) -> None:
    result = run_cli(
        "convert", _adapter_path("tiny-small", "lora-xs"), "-o", str(tmp_path / "p"), "--to", "peft"
    )
    assert result.returncode == 2 and "--bases FILE or --base BASE" in result.stderr
    assert not (tmp_path / "p").exists()


# --- PEFT's own folders in sa3ckpt ------------------------------------------------------------


def _peft_trained_folder(fam: Family, folder: Path, use_dora: bool, seed: int) -> dict:
    """A folder saved by PEFT itself, with random factors and magnitudes like a trained one.

    Returns PEFT's own merged weights of that adapter (merge_and_unload).
    """
    model = peft.get_peft_model(
        _torch_base(fam),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=module_names(fam), use_dora=use_dora),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name or ".lora_A." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.rand(param.shape, generator=gen))
    model.save_pretrained(str(folder))
    return canonical_weights(model.merge_and_unload(), fam)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_saved_folder_reads_validates_and_converts(
    tmp_path: Path, family: str, use_dora: bool
) -> None:
    fam = FAMILIES[family]
    folder = tmp_path / "from_peft"
    merged_peft = _peft_trained_folder(fam, folder, use_dora, seed=3 + use_dora)
    stored = load_file(str(folder / "adapter_model.safetensors"))
    conv_a = stored["base_model.model.model.preprocess_conv.lora_A.weight"]
    k = fam.by_name["model.preprocess_conv"].kernel_size
    assert conv_a.ndim == 3 and conv_a.shape[2] == k  # PEFT's own (r, in, k)

    report = inspect_path(folder, stats=True)
    assert report.adapter_type.resolved == ("dora-rows" if use_dora else "lora")
    assert report.family.name == family and report.targets.count == len(fam.targets)
    assert report.stats is not None and report.stats.update_norm_total
    result = validate_path(str(folder))
    errors = [f for f in result.findings if f.severity == "error"]
    assert errors == [] and result.family == family, errors

    sa3 = tmp_path / "converted.safetensors"
    convert_adapter(str(folder), str(sa3), to="sa3", dtype="fp32")
    merged_ours = _sa3ckpt_merge(fam, str(sa3), tmp_path / "merged.safetensors")
    for target in fam.targets:
        got, want = merged_ours[target.name], merged_peft[target.name]
        assert _rel(got, want) <= TOLERANCE, target.name

    # and back: our PEFT output of that adapter is what PEFT wrote, tensor for tensor
    again = tmp_path / "again"
    convert_adapter(str(sa3), str(again), to="peft", dtype="fp32")
    rewritten = load_file(str(again / "adapter_model.safetensors"))
    assert set(rewritten) == set(stored)
    for key, value in stored.items():
        assert rewritten[key].shape == value.shape and np.array_equal(rewritten[key], value), key


def test_cli_inspect_stats_and_validate_on_our_peft_output(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    convert_adapter(_adapter_path("tiny-small", "dora-rows"), str(folder), to="peft")
    inspected = run_cli("inspect", "--stats", str(folder))
    assert inspected.returncode == 0 and "internal error" not in inspected.stderr
    validated = run_cli("validate", str(folder))
    assert validated.returncode == 0, validated.stdout
