"""The one sniffer: safetensors first, then a torch zip, then a raw pickle with real opcodes."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import pytest

from fixtures.generate import DATA_DIR
from fixtures.malformed import edge_corpus, malformed_corpus
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.io import formats
from sa3ckpt.io.formats import identify
from sa3ckpt.io.legacy_pickle import looks_like_pickle
from sa3ckpt.io.sniff import (
    PICKLE_PREFIX,
    RAW_PICKLE,
    SAFETENSORS,
    TORCH_ZIP,
    looks_like_raw_pickle,
    looks_like_safetensors,
    sniff_container,
)
from sa3ckpt.ops.validate import validate_path

EDGE = edge_corpus()


@pytest.mark.parametrize("name", sorted(EDGE))
def test_edge_corpus_is_what_it_is(name: str) -> None:
    data, container, kind = EDGE[name]
    path = DATA_DIR / "edge" / name
    assert path.read_bytes() == data  # the committed file is the corpus entry
    assert sniff_container(path) == container
    assert identify(path).kind == kind
    assert looks_like_pickle(path) == (container == RAW_PICKLE)
    assert (formats.sniff_format(path) == "pickle") == (container == RAW_PICKLE)


def test_safetensors_starting_80_02_is_a_valid_adapter_everywhere() -> None:
    """Was (issue 13): one valid safetensors file in 32 refused as a pickle (first byte 0x80).

    This one starts 80 02, the PROTO opcode with protocol 2, the strongest disguise.
    """
    path = DATA_DIR / "edge" / "header_length_128_mod_256.safetensors"
    head = path.read_bytes()[:9]
    assert head[:2] == b"\x80\x02" and head[8:9] == b"{"
    assert struct.unpack("<Q", head[:8])[0] % 256 == 128
    assert load_adapter(path).adapter_type == "lora"
    result = validate_path(str(path))
    assert not result.malformed
    assert "pickle" not in {f.rule for f in result.findings}


@pytest.mark.parametrize(
    "name", sorted(n for n in malformed_corpus() if n.startswith("pickle_marker"))
)
def test_damaged_file_starting_0x80_is_malformed_not_a_pickle(name: str) -> None:
    """Was: any first byte 0x80 made validate report `pickle` instead of the real defect."""
    path = DATA_DIR / "malformed" / name
    assert path.read_bytes()[0] == 0x80
    assert sniff_container(path) is None and not looks_like_pickle(path)
    result = validate_path(str(path))
    assert result.malformed and result.findings[0].rule == "malformed"
    assert malformed_corpus()[name][1] in result.findings[0].message


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_with_proto_is_a_raw_pickle(protocol: int) -> None:
    data = pickle.dumps({"state_dict": {}, "step": 3, "lora_config": "{}"}, protocol=protocol)
    assert looks_like_raw_pickle(data)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80", "no protocol byte"),
        (b"\x80\x01}.", "protocol 1 has no PROTO opcode"),
        (b"\x80\x06}.", "protocol 6 does not exist"),
        (b"\x80\x02\x00\x00\x00\x00", "0x00 is no opcode"),
        (b"\x80\x02}\xff", "0xff is no opcode"),
        (b"\x80\x02X\xff\xff\xff\x7f", "a string argument longer than the bytes read"),
        (b"\x80\x02}", "too few opcodes and no STOP"),
        (b"\x00\x02}q\x00.", "no PROTO"),
    ],
)
def test_implausible_opcode_streams_are_not_pickles(data: bytes, why: str) -> None:
    assert not looks_like_raw_pickle(data), why


def test_a_long_pickle_is_judged_on_its_prefix(tmp_path: Path) -> None:
    """Only PICKLE_PREFIX bytes are decoded: a first string longer than that still counts."""
    big = pickle.dumps(["x" * (4 * PICKLE_PREFIX), 1, 2], protocol=2)
    path = tmp_path / "big.ckpt"
    path.write_bytes(big)
    assert sniff_container(path) == RAW_PICKLE


def test_safetensors_check_needs_a_fitting_length_and_a_brace() -> None:
    assert looks_like_safetensors(struct.pack("<Q", 2) + b"{}", 10)
    assert not looks_like_safetensors(struct.pack("<Q", 3) + b"{}", 10)  # past the end
    assert not looks_like_safetensors(struct.pack("<Q", 2) + b"[]", 10)
    assert not looks_like_safetensors(b"{}", 2)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zip_is_a_pickle_only_with_data_pkl(tmp_path: Path) -> None:
    torch_zip = _zip(tmp_path / "a.ckpt", {"archive/data.pkl": pickle.dumps({}, protocol=2)})
    assert sniff_container(torch_zip) == TORCH_ZIP and looks_like_pickle(torch_zip)
    npz = _zip(tmp_path / "b.npz", {"w.npy": b"\x93NUMPY"})
    assert sniff_container(npz) is None and not looks_like_pickle(npz)


def test_unreadable_paths_are_nothing(tmp_path: Path) -> None:
    assert sniff_container(tmp_path) is None
    assert sniff_container(tmp_path / "missing") is None
    (tmp_path / "empty").write_bytes(b"")
    assert sniff_container(tmp_path / "empty") is None


def test_safetensors_fixtures_all_sniff_as_safetensors() -> None:
    files = sorted((DATA_DIR / "adapters").glob("*/*.safetensors"))
    assert files and all(sniff_container(p) == SAFETENSORS for p in files)
