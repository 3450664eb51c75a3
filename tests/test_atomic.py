"""atomic_output: all-or-nothing replacement, no temp litter, and refusal to clobber inputs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sa3ckpt.errors import OutputError, UsageError
from sa3ckpt.io.atomic import AtomicFile, atomic_output, check_output_path


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"
    with atomic_output(str(target)) as f:
        f.write(b"second")
    assert target.read_bytes() == b"second"
    assert _listing(tmp_path) == ["out.bin"]


def test_temp_file_is_hidden_beside_target(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as f:
        f.write(b"data")
        f.flush()
        names = _listing(tmp_path)
        assert len(names) == 1
        assert names[0].startswith(".out.bin.tmp-")
        assert (tmp_path / names[0]).read_bytes() == b"data"
        assert not target.exists()  # nothing under the real name until commit
    assert _listing(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_exception_leaves_old_file_and_no_temp(tmp_path: Path, exc_type: type) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(exc_type), atomic_output(target) as f:
        f.write(b"partial")
        raise exc_type("boom")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.bin"]


def test_exception_without_existing_target_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_output(tmp_path / "out.bin") as f:
        f.write(b"x")
        raise ValueError
    assert _listing(tmp_path) == []


def test_mode_follows_umask_not_mkstemp(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "out.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.bin").st_mode) == 0o644


def test_refuses_same_path_as_input(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"source")
    with pytest.raises(UsageError, match="same file as input"), atomic_output(src, inputs=[src]):
        pytest.fail("must not get here")
    assert src.read_bytes() == b"source"
    assert _listing(tmp_path) == ["in.bin"]


def test_refuses_input_through_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"source")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError), atomic_output("./sub/../in.bin", inputs=[str(src)]):
        pass


def test_refuses_input_through_symlink(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"source")
    link = tmp_path / "link.bin"
    link.symlink_to(src)
    with pytest.raises(UsageError, match="same file as input"), atomic_output(link, inputs=[src]):
        pass
    with pytest.raises(UsageError), atomic_output(src, inputs=[link]):
        pass
    assert src.read_bytes() == b"source"


def test_refuses_input_through_hard_link(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"source")
    hard = tmp_path / "hard.bin"
    os.link(src, hard)
    with pytest.raises(UsageError), atomic_output(hard, inputs=[src]):
        pass


def test_unrelated_inputs_are_fine(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"source")
    with atomic_output(tmp_path / "out.bin", inputs=[src, tmp_path / "missing.bin"]) as f:
        f.write(b"ok")
    assert (tmp_path / "out.bin").read_bytes() == b"ok"


def test_overwrite_false(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target, overwrite=False) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(UsageError, match="already exists"), atomic_output(target, overwrite=False):
        pass
    assert target.read_bytes() == b"new"
    assert _listing(tmp_path) == ["out.bin"]


def test_overwrite_false_rechecks_at_commit(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(UsageError), atomic_output(target, overwrite=False) as f:
        f.write(b"mine")
        target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's"
    assert _listing(tmp_path) == ["out.bin"]


def test_refuses_directory_and_missing_parent(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"), atomic_output(tmp_path):
        pass
    # a missing folder is an output that cannot be written (exit 5), not a usage error
    with pytest.raises(OutputError, match="cannot write"), atomic_output(tmp_path / "no" / "x"):
        pass
    with pytest.raises(UsageError):
        check_output_path(tmp_path)


def test_atomic_file_commit_and_discard(tmp_path: Path) -> None:
    out = AtomicFile(tmp_path / "a.bin")
    out.file.write(b"a")
    out.commit()
    out.discard()  # no-op after commit
    assert (tmp_path / "a.bin").read_bytes() == b"a"
    with pytest.raises(ValueError):
        out.commit()

    other = AtomicFile(tmp_path / "b.bin")
    other.file.write(b"b")
    other.discard()
    other.discard()
    assert _listing(tmp_path) == ["a.bin"]
