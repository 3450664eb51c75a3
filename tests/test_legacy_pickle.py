"""Legacy .ckpt reading: refused by default, weights-only when allowed, never a traceback.

The refusal tests deliberately do not need torch: the point of refusing is that nothing of
the file is unpickled and torch is never imported, which is checked in a fresh interpreter.
Tests that build fixtures with ``torch.save`` skip when torch is not installed.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shlex
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from sa3ckpt.errors import MalformedFileError, UsageError
from sa3ckpt.io.legacy_pickle import (
    MAX_CAUSE_CHARS,
    PICKLE_REFUSAL,
    LegacyCheckpoint,
    PickleRefusedError,
    looks_like_pickle,
    read_legacy_ckpt,
)

REPO = Path(__file__).resolve().parent.parent
CONFIG = {"rank": 4, "alpha": 8, "adapter_type": "lora", "include": ["transformer.*"]}


class MarkerPayload:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for arbitrary code.

    If the marker file ever appears, the file's pickle was executed by someone.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (builtins.open, (self.marker, "w"))


class ShellPayload:
    """Unpickling this runs ``touch marker`` through ``os.system``: the classic exploit shape."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class NotAllowedDict(OrderedDict):
    """A dict subclass from a test module: a global the weights-only unpickler must reject."""


def _raw_pickle(path: Path, obj: object) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def _zip_pickle(path: Path, obj: object) -> Path:
    """A torch-style zip archive (``archive/data.pkl``) built with the stdlib only."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        archive.writestr("archive/version", "3\n")
    return path


def _safetensors_like(path: Path) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    return path


def _assert_one_line(exc: MalformedFileError) -> None:
    assert "\n" not in str(exc)
    assert len(exc.cause) <= MAX_CAUSE_CHARS
    assert exc.exit_code == 3


# --- refusal (no torch needed) ------------------------------------------------------------


@pytest.mark.parametrize("maker", [_raw_pickle, _zip_pickle], ids=["raw", "zip"])
def test_refused_without_opt_in(tmp_path: Path, maker: Any) -> None:
    path = maker(tmp_path / "adapter.ckpt", {"state_dict": {}, "lora_config": CONFIG})
    with pytest.raises(PickleRefusedError) as info:
        read_legacy_ckpt(path)
    assert isinstance(info.value, MalformedFileError)
    assert info.value.exit_code == 3
    assert info.value.cause == PICKLE_REFUSAL
    assert info.value.path == str(path)
    assert "--allow-pickle" in info.value.one_line()


@pytest.mark.parametrize("maker", [_raw_pickle, _zip_pickle], ids=["raw", "zip"])
def test_refusal_imports_no_torch_and_unpickles_nothing(tmp_path: Path, maker: Any) -> None:
    marker = tmp_path / "pwned"
    path = maker(tmp_path / "evil.ckpt", {"state_dict": {}, "x": MarkerPayload(marker)})
    # The payload is live: plain pickle would run it (proved on a copy with its own marker).
    live_marker = tmp_path / "live"
    pickle.loads(pickle.dumps(MarkerPayload(live_marker)))
    assert live_marker.exists()

    script = (
        "import sys\n"
        "from sa3ckpt.io.legacy_pickle import (\n"
        "    PickleRefusedError, looks_like_pickle, read_legacy_ckpt)\n"
        "assert looks_like_pickle(sys.argv[1])\n"
        "try:\n"
        "    read_legacy_ckpt(sys.argv[1])\n"
        "except PickleRefusedError as exc:\n"
        "    print('refused', exc.exit_code)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["refused 3", "False"]
    assert not marker.exists()


def test_refusal_of_missing_file_says_missing(tmp_path: Path) -> None:
    with pytest.raises(MalformedFileError) as info:
        read_legacy_ckpt(tmp_path / "nope.ckpt")
    assert not isinstance(info.value, PickleRefusedError)
    assert "cannot open" in info.value.cause
    with pytest.raises(MalformedFileError, match="not a regular file"):
        read_legacy_ckpt(tmp_path, allow_pickle=True)


def test_torch_missing_is_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _raw_pickle(tmp_path / "a.ckpt", {"state_dict": {}})
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(UsageError) as info:
        read_legacy_ckpt(path, allow_pickle=True)
    assert info.value.exit_code == 2
    assert "sa3ckpt[torch]" in str(info.value)


# --- sniffing -----------------------------------------------------------------------------


def test_looks_like_pickle(tmp_path: Path) -> None:
    assert looks_like_pickle(_raw_pickle(tmp_path / "raw.ckpt", {"a": 1}))
    assert looks_like_pickle(_zip_pickle(tmp_path / "zip.ckpt", {"a": 1}))
    assert not looks_like_pickle(_safetensors_like(tmp_path / "a.safetensors"))
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert not looks_like_pickle(plain_zip)
    broken_zip = tmp_path / "broken.ckpt"
    broken_zip.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    assert not looks_like_pickle(broken_zip)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert not looks_like_pickle(empty)
    assert not looks_like_pickle(tmp_path / "missing.ckpt")
    assert not looks_like_pickle(tmp_path)


# --- opt-in loading (torch builds the fixtures) ------------------------------------------


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


def _bits(torch: Any, tensor: Any) -> np.ndarray:
    """The raw bit patterns of a tensor, computed with torch alone (the reference side)."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.itemsize]
    return tensor.detach().contiguous().view(width).numpy().copy()


def _assert_bit_exact(torch: Any, array: np.ndarray, tensor: Any) -> None:
    assert array.shape == tuple(tensor.shape)
    assert array.dtype.itemsize == tensor.itemsize
    width = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}[array.dtype.itemsize]
    np.testing.assert_array_equal(np.ascontiguousarray(array).view(width), _bits(torch, tensor))


def _fixture_tensors(torch: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 16, generator=gen)
    b = torch.randn(32, 4, generator=gen)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, 3.0e38])
    return {
        "transformer.layers.0.self_attn.to_q.lora_A.weight": a,
        "transformer.layers.0.self_attn.to_q.lora_B.weight": b,
        "transformer.layers.0.self_attn.to_k.lora_A.weight": a.to(torch.bfloat16),
        "transformer.layers.0.self_attn.to_k.lora_B.weight": b.to(torch.bfloat16),
        "special.bf16": special.to(torch.bfloat16),
        "special.fp32": special,
        "fp16": a.to(torch.float16),
        "f8": a.to(torch.float8_e4m3fn),
        "transposed": b.t(),  # non-contiguous
        "param": torch.nn.Parameter(a.clone()),  # requires_grad
        "scalar": torch.tensor(2.5),
    }


@pytest.mark.parametrize("config_as_json", [False, True], ids=["dict", "json"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_state_dict_and_config(
    torch: Any, tmp_path: Path, config_as_json: bool, zip_format: bool
) -> None:
    tensors = _fixture_tensors(torch)
    if not zip_format:
        del tensors["f8"]  # torch's legacy format cannot save float8 storages at all
    path = tmp_path / "adapter.ckpt"
    torch.save(
        {
            "state_dict": OrderedDict(tensors),
            "lora_config": json.dumps(CONFIG) if config_as_json else dict(CONFIG),
            "step": 1200,
            "epoch": 3,
            "lr": 1e-4,
            "ema": True,
            "trainer": "sa3-train",
            "global_step": torch.tensor(1200),
            "optimizer_states": [{"lr": 1e-4}],  # not a scalar: left out of extra
        },
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    assert looks_like_pickle(path)

    ckpt = read_legacy_ckpt(path, allow_pickle=True)
    assert isinstance(ckpt, LegacyCheckpoint)
    assert ckpt.path == str(path)
    assert ckpt.lora_config == CONFIG
    assert ckpt.extra == {
        "step": "1200",
        "epoch": "3",
        "lr": "0.0001",
        "ema": "True",
        "trainer": "sa3-train",
        "global_step": "1200",
    }
    assert list(ckpt.tensors) == list(tensors)
    for name, tensor in tensors.items():
        _assert_bit_exact(torch, ckpt.tensors[name], tensor)
    assert ckpt.tensors["transformer.layers.0.self_attn.to_q.lora_A.weight"].dtype == np.float32
    assert ckpt.tensors["special.bf16"].dtype == ml_dtypes.bfloat16
    if zip_format:
        assert ckpt.tensors["f8"].dtype == ml_dtypes.float8_e4m3fn
    assert ckpt.tensors["fp16"].dtype == np.float16
    # bf16 values, not just bits: widening to fp32 agrees with torch's own widening.
    np.testing.assert_array_equal(
        ckpt.tensors["special.bf16"].astype(np.float32),
        tensors["special.bf16"].float().numpy(),
    )
    for array in ckpt.tensors.values():
        assert array.flags.writeable and array.flags.c_contiguous


def test_arrays_are_independent_of_shared_storage(torch: Any, tmp_path: Path) -> None:
    base = torch.arange(8, dtype=torch.float32)
    path = tmp_path / "tied.pt"
    torch.save({"state_dict": {"a": base, "b": base, "c": base[2:4]}}, path)
    ckpt = read_legacy_ckpt(path, allow_pickle=True)
    ckpt.tensors["a"][:] = -1
    np.testing.assert_array_equal(ckpt.tensors["b"], np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(ckpt.tensors["c"], [2.0, 3.0])


def test_bare_state_dict(torch: Any, tmp_path: Path) -> None:
    tensors = {"x.lora_A.weight": torch.randn(2, 8), "x.lora_B.weight": torch.randn(8, 2)}
    path = tmp_path / "bare.pth"
    torch.save(tensors, path)
    ckpt = read_legacy_ckpt(path, allow_pickle=True)
    assert ckpt.lora_config is None
    assert ckpt.extra == {}
    assert set(ckpt.tensors) == set(tensors)
    for name, tensor in tensors.items():
        _assert_bit_exact(torch, ckpt.tensors[name], tensor)


def test_bare_state_dict_with_config(torch: Any, tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save({"w": torch.ones(2), "lora_config": CONFIG}, path)
    ckpt = read_legacy_ckpt(path, allow_pickle=True)
    assert ckpt.lora_config == CONFIG
    assert list(ckpt.tensors) == ["w"]


def test_empty_bare_dict_loads(torch: Any, tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    torch.save({}, path)
    ckpt = read_legacy_ckpt(path, allow_pickle=True)
    assert ckpt.tensors == {} and ckpt.lora_config is None


def test_config_dict_is_json_normalised(torch: Any, tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {}, "lora_config": {**CONFIG, "include": ("a", "b")}}, path)
    ckpt = read_legacy_ckpt(path, allow_pickle=True)
    assert ckpt.lora_config == {**CONFIG, "include": ["a", "b"]}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ([1, 2], "not a dict or a JSON string"),
        (7, "not a dict or a JSON string"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ({"rank": {(1, 2): 3}}, "cannot be represented as JSON"),
    ],
)
def test_bad_config_is_malformed(torch: Any, tmp_path: Path, config: Any, expected: str) -> None:
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "lora_config": config}, path)
    with pytest.raises(MalformedFileError, match="lora_config") as info:
        read_legacy_ckpt(path, allow_pickle=True)
    assert expected in info.value.cause
    _assert_one_line(info.value)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"state_dict": {"w": [1.0, 2.0]}}, "'w' is a list, not a tensor"),
        ({"state_dict": {"nested": {"w": 1}}}, "'nested' is a dict, not a tensor"),
        ({"state_dict": {3: "x"}}, "key 3 is not a string"),
        ({"state_dict": [1, 2]}, "'state_dict' is a list"),
        ({"w": 1, "step": 5}, "'w' is a int, not a tensor"),
        ([1, 2, 3], "expected a dict at the top level"),
        ({1: 2}, "top-level key 1 is not a string"),
    ],
)
def test_bad_layout_is_malformed(torch: Any, tmp_path: Path, payload: Any, expected: str) -> None:
    path = tmp_path / "a.ckpt"
    torch.save(payload, path)
    with pytest.raises(MalformedFileError) as info:
        read_legacy_ckpt(path, allow_pickle=True)
    assert expected in info.value.cause
    _assert_one_line(info.value)


def test_top_level_tensor_is_malformed(torch: Any, tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    torch.save(torch.ones(3), path)
    with pytest.raises(MalformedFileError, match="got Tensor"):
        read_legacy_ckpt(path, allow_pickle=True)


def test_unsupported_tensor_dtype_is_malformed(torch: Any, tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"z": torch.ones(2, dtype=torch.complex64)}}, path)
    with pytest.raises(MalformedFileError, match="'z'") as info:
        read_legacy_ckpt(path, allow_pickle=True)
    _assert_one_line(info.value)


def test_sparse_tensor_is_malformed(torch: Any, tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"s": torch.eye(3).to_sparse()}}, path)
    with pytest.raises(MalformedFileError, match="not a dense tensor"):
        read_legacy_ckpt(path, allow_pickle=True)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_code_execution_payload_is_rejected_not_run(
    torch: Any, tmp_path: Path, zip_format: bool
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.ones(2)}, "lora_config": MarkerPayload(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)

    with pytest.raises(MalformedFileError) as info:
        read_legacy_ckpt(path, allow_pickle=True)
    assert not isinstance(info.value, PickleRefusedError)
    assert "weights_only=True" in info.value.cause
    assert "open" in info.value.cause  # names the rejected global
    _assert_one_line(info.value)
    assert not marker.exists()

    # The payload was live: an unrestricted load does execute it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_os_system_payload_is_rejected_not_run(
    torch: Any, tmp_path: Path, zip_format: bool
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.ones(2)}, "step": ShellPayload(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(MalformedFileError) as info:
        read_legacy_ckpt(path, allow_pickle=True)
    assert "system" in info.value.cause
    assert "weights_only` set to `False`" not in info.value.cause  # torch's advice is dropped
    _assert_one_line(info.value)
    assert not marker.exists()


def test_forcing_env_var_cannot_disable_weights_only(
    torch: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"x": MarkerPayload(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(MalformedFileError):
        read_legacy_ckpt(path, allow_pickle=True)
    assert not marker.exists()


def test_disallowed_class_is_rejected(torch: Any, tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": NotAllowedDict(w=torch.ones(2))}, path)
    with pytest.raises(MalformedFileError, match="NotAllowedDict") as info:
        read_legacy_ckpt(path, allow_pickle=True)
    _assert_one_line(info.value)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.1])
def test_truncated_file_is_malformed(
    torch: Any, tmp_path: Path, zip_format: bool, keep: float
) -> None:
    path = tmp_path / "a.ckpt"
    torch.save(
        {"state_dict": {"w": torch.randn(64, 64)}, "lora_config": CONFIG},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(MalformedFileError) as info:
        read_legacy_ckpt(path, allow_pickle=True)
    _assert_one_line(info.value)
    if zip_format:
        assert info.value.cause.startswith("truncated or corrupt zip archive; ")


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 100, b"PK\x03\x04" + b"\xff" * 200, b"\x80\x02" + b"\x00" * 50],
    ids=["empty", "garbage", "bad-zip", "bad-pickle"],
)
def test_corrupt_file_is_malformed(torch: Any, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "a.ckpt"
    path.write_bytes(content)
    with pytest.raises(MalformedFileError) as info:
        read_legacy_ckpt(path, allow_pickle=True)
    assert "torch.load" in info.value.cause
    _assert_one_line(info.value)
    if not content:
        assert info.value.cause.startswith("file is empty; ")


def test_safetensors_renamed_to_ckpt_is_malformed(torch: Any, tmp_path: Path) -> None:
    path = _safetensors_like(tmp_path / "a.ckpt")
    assert not looks_like_pickle(path)
    with pytest.raises(MalformedFileError):
        read_legacy_ckpt(path, allow_pickle=True)
