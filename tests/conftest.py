"""Shared by every test module: sa3ckpt is imported before any test module runs, and the
HTTP servers the remote-input tests read from (tests/remote_servers.py).

Test modules import `mlx.core` directly (and isort puts it before `sa3ckpt`), so without
this the first import of mlx would not go through `sa3ckpt.mlx_runtime` and the tests would
run MLX on the reference BLAS.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import sa3ckpt  # noqa: F401
from tests.remote_servers import NGINX, OPENSSL, FaultServer, Nginx, self_signed

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
SMALL = FIXTURES / "adapters" / "tiny-small"


def _served_tree(root: Path) -> None:
    """files/ (adapters of every kind, broken files) and hub/ORG/REPO/REV/ for hf:// paths."""
    from safetensors.numpy import load_file

    from sa3ckpt.cli import main
    from sa3ckpt.io.safetensors import read_header, write_safetensors

    files = root / "files"
    files.mkdir(parents=True)
    for name in ("lora.safetensors", "dora-rows.safetensors", "lora.bare.safetensors"):
        shutil.copy(SMALL / name, files / name)
    shutil.copytree(SMALL / "peft-lora", files / "peft-lora")
    for name in ("truncated.safetensors", "empty.safetensors", "huge_header.safetensors"):
        shutil.copy(FIXTURES / "malformed" / name, files / name)
    shutil.copy(FIXTURES / "edge" / "raw_pickle_protocol_2.ckpt", files / "raw.ckpt")
    shutil.copy(FIXTURES / "bases" / "tiny-small.official.safetensors", files / "base.safetensors")
    quiet = ["--json"]
    assert main(["convert", str(SMALL / "lora.safetensors"), "-o", str(files / "lora.gguf"),
                 "--to", "sa3cpp", "--drop-conditioner", *quiet]) == 0  # fmt: skip
    assert main(["convert", str(SMALL / "lora.layers-0.safetensors"), "-o",
                 str(files / "diffusers"), "--to", "diffusers", *quiet]) == 0  # fmt: skip
    big_header_adapter(files / "big-header.safetensors")  # the second request's case
    # 32 MB of tensor data behind a small header: a server ignoring ranges must be cut off.
    big = np.zeros((4096, 2048), np.float32)
    tensors = {**load_file(str(SMALL / "lora.safetensors")), "zz.padding": big}
    write_safetensors(
        files / "large.safetensors", tensors, read_header(SMALL / "lora.safetensors").metadata
    )
    for repo, revision, names in (
        ("org/repo", "main", ("lora.safetensors", "peft-lora", "lora.gguf")),
        ("org/repo", "v1", ("dora-rows.safetensors",)),
        ("org/cdn", "main", ("lora.safetensors",)),
    ):
        target = root / "hub" / repo / revision
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            source = files / name
            if source.is_dir():
                shutil.copytree(source, target / name)
            else:
                shutil.copy(source, target / name)


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """A real nginx serving the remote fixtures (skipped where nginx is not installed)."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run does)")
    root = tmp_path_factory.mktemp("served")
    _served_tree(root)
    tls = self_signed(tmp_path_factory.mktemp("tls")) if OPENSSL is not None else None
    server = Nginx(root, tmp_path_factory.mktemp("nginx"), tls)
    try:
        yield server
    finally:
        server.stop()


def big_header_adapter(path: Path) -> Path:
    """The tiny lora adapter with 300 KB of metadata: a header larger than the first range."""
    from safetensors.numpy import load_file

    from sa3ckpt.io.safetensors import read_header, write_safetensors

    tensors = load_file(str(SMALL / "lora.safetensors"))
    metadata = dict(read_header(SMALL / "lora.safetensors").metadata)
    metadata["padding"] = "x" * 300_000
    write_safetensors(path, tensors, metadata)
    return path


@pytest.fixture(scope="session")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    """The misbehaving server, serving an adapter whose header is larger than the first range
    (so a server that ignores ranges must be cut off mid-body)."""
    payload = big_header_adapter(tmp_path_factory.mktemp("fault") / "big.safetensors")
    server = FaultServer(payload.read_bytes())
    try:
        yield server
    finally:
        server.stop()
