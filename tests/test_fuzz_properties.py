"""Property-based fuzz (hypothesis) of every reader: only the typed error, or a valid result.

Complements the time-bounded mutation fuzzer in fuzz/: hypothesis explores structured inputs
(header dicts, JSON documents, metadata) and shrinks any failure to a minimal example.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.config import ConfigError, LoraConfig
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.adapters.xs_bases import load_bases
from sa3ckpt.errors import MalformedFileError, Sa3ckptError
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.ops.validate import validate_path

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=12)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F16", "F32", "BF16", "I8", "BOOL", "F64", "X", ""])
        | JSON_SCALARS,
        "shape": st.lists(st.integers(-2, 6), max_size=3) | JSON,
        "data_offsets": st.lists(st.integers(-4, 64), min_size=0, max_size=3) | JSON,
    },
)


def _write(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / name
    path.write_bytes(data)
    return str(path)


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@SETTINGS
@given(st.binary(max_size=256))
def test_random_bytes(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "x.safetensors", blob)
        try:
            with open_safetensors(path) as f:
                for key in f:
                    f.array(key)
        except MalformedFileError:
            pass
        validate_path(path, deep=True)  # never raises


@SETTINGS
@given(
    st.dictionaries(st.text(min_size=0, max_size=40), ENTRY, max_size=4),
    st.binary(max_size=64),
    st.one_of(st.none(), JSON),
)
def test_structured_headers(entries: dict, data: bytes, metadata) -> None:
    header: dict = dict(entries)
    if metadata is not None:
        header["__metadata__"] = metadata
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "x.safetensors", _safetensors_bytes(header, data))
        try:
            with open_safetensors(path) as f:
                for key in f:
                    array = f.array(key)
                    assert array.nbytes == f.info(key).nbytes  # never past the tensor's range
        except MalformedFileError:
            pass
        validate_path(path, deep=True)


@SETTINGS
@given(JSON)
def test_lora_config_documents(doc) -> None:
    with contextlib.suppress(ConfigError):
        LoraConfig.from_json(json.dumps(doc))


ADAPTER = DATA_DIR / "adapters" / "tiny-small" / "dora-rows.safetensors"


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["lora_config", "step", "\x1b]0;x"]),
        st.text(max_size=60) | JSON.map(json.dumps),
    )
)
def test_adapter_metadata(metadata: dict) -> None:
    with open_safetensors(ADAPTER) as f:
        tensors = {k: np.array(f.array(k)) for k in f}
    from sa3ckpt.io.safetensors import write_safetensors

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.safetensors"
        write_safetensors(path, tensors, metadata)
        with contextlib.suppress(Sa3ckptError):
            load_adapter(path)
        validate_path(str(path), deep=True)


PEFT = DATA_DIR / "adapters" / "tiny-small" / "peft-dora"


@SETTINGS
@given(JSON)
def test_peft_configs(doc) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "peft"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps(doc))
        (folder / "adapter_model.safetensors").write_bytes(
            (PEFT / "adapter_model.safetensors").read_bytes()
        )
        with contextlib.suppress(Sa3ckptError):
            load_adapter(folder)
        validate_path(str(folder))


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            ["format", "format_version", "rank", "source_base", "base_sha256", "base_dtype"]
        ),
        st.text(max_size=30) | JSON.map(json.dumps),
    )
)
def test_bases_metadata(metadata: dict) -> None:
    from sa3ckpt.io.safetensors import write_safetensors

    tensors = {"model.x.U": np.zeros((4, 2), np.float32), "model.x.V": np.zeros((3, 2), np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.safetensors"
        write_safetensors(path, tensors, metadata)
        with contextlib.suppress(MalformedFileError):
            load_bases(path)


@SETTINGS
@given(st.data())
def test_gguf_mutations(data) -> None:
    pytest.importorskip("gguf")
    from sa3ckpt.ops.convert.adapters import convert_adapter

    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed.gguf"
        convert_adapter(
            str(DATA_DIR / "adapters/tiny-small/lora.safetensors"),
            str(seed),
            to="sa3cpp",
            drop_conditioner=True,
        )
        blob = bytearray(seed.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(blob)))
        path = _write(
            Path(tmp), "m.gguf", bytes(blob[:cut]) if data.draw(st.booleans()) else bytes(blob)
        )
        with contextlib.suppress(Sa3ckptError):
            load_adapter(path)
        validate_path(path, deep=True)
