"""atomic_output: all-or-nothing replacement, no temp litter, and refusal to clobber inputs."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from sa3ckpt.errors import OutputError, UsageError
from sa3ckpt.io import atomic
from sa3ckpt.io.atomic import AtomicFile, atomic_output, check_output_path, deferred_interrupts


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


# --------------------------------------------------------------- interrupts at creation time


class _SignalAfterCreate(AtomicFile):
    """An AtomicFile whose constructor is 'interrupted' right after the temp file exists.

    Stands for a SIGTERM (raised as KeyboardInterrupt by the CLI) landing after the temp file
    was created but before the writer holding it entered its cleanup `try`.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt


def _write_safetensors(path: Path) -> None:
    from sa3ckpt.io.safetensors import write_safetensors

    write_safetensors(path, {"a": np.zeros(3, np.float32)})


def _write_npz(path: Path) -> None:
    from sa3ckpt.io.base_checkpoint import NpzStreamWriter

    with NpzStreamWriter(path) as writer:
        writer.write("a", np.zeros(3, np.float32))


def _write_gguf(path: Path) -> None:
    pytest.importorskip("gguf")
    from sa3ckpt.io.gguf_adapter import write_gguf_adapter

    tensors = {"dit.proj_in.lora_A": np.zeros((2, 3), np.float32)}
    write_gguf_adapter(path, tensors, adapter_type="lora", rank=2, alpha=2.0, n_targets=1)


def _write_atomic_output(path: Path) -> None:
    with atomic_output(path) as f:
        f.write(b"x")


# (module whose AtomicFile the writer uses, writer)
CREATION_WRITERS = {
    "safetensors-enter": ("sa3ckpt.io.safetensors", _write_safetensors),
    "npz-enter": ("sa3ckpt.io.base_checkpoint", _write_npz),
    "gguf": ("sa3ckpt.io.gguf_adapter", _write_gguf),
    "atomic_output": ("sa3ckpt.io.atomic", _write_atomic_output),
}


@pytest.mark.parametrize("name", sorted(CREATION_WRITERS))
def test_interrupt_right_after_temp_creation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Was: the writers' __enter__ (and atomic_output, the GGUF writer) created the temp file
    before their try, so an interrupt in between left it behind."""
    module, write = CREATION_WRITERS[name]
    monkeypatch.setattr(f"{module}.AtomicFile", _SignalAfterCreate)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "out.bin")
    assert _listing(tmp_path) == []
    assert not any(p.startswith(str(tmp_path)) for p in atomic.TEMPS.paths())


def test_exception_in_stream_writer_enter_leaves_nothing(tmp_path: Path) -> None:
    """An exception inside SafetensorsStreamWriter.__enter__ after the temp file exists
    (here: the header write fails) removes it: __exit__ never runs when __enter__ fails."""
    from sa3ckpt.io.safetensors import SafetensorsStreamWriter

    writer = SafetensorsStreamWriter(tmp_path / "a.safetensors", [("a", "F32", (2,))])
    writer._prefix = None  # type: ignore[assignment]  # file.write(None) raises TypeError
    with pytest.raises(TypeError):
        writer.__enter__()
    assert _listing(tmp_path) == []


def test_interrupt_between_create_and_handle_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: os.open created the file and a signal before the `try` (or inside os.fdopen,
    after which the descriptor was closed twice) left the temp file behind."""
    real = atomic._open_exclusive

    def created_then_interrupted(path: str) -> atomic.BinaryIO:
        real(path).close()
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_open_exclusive", created_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        AtomicFile(tmp_path / "out.bin")
    assert _listing(tmp_path) == []


def test_temp_is_registered_before_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bool, bool]] = []
    real = atomic._open_exclusive

    def spy(path: str) -> atomic.BinaryIO:
        seen.append((path in atomic.TEMPS, os.path.exists(path)))
        return real(path)

    monkeypatch.setattr(atomic, "_open_exclusive", spy)
    out = AtomicFile(tmp_path / "out.bin")
    assert seen == [(True, False)] and out.temp_path in atomic.TEMPS
    out.commit()
    assert out.temp_path not in atomic.TEMPS and _listing(tmp_path) == ["out.bin"]


def test_remove_all_cleans_abandoned_temps(tmp_path: Path) -> None:
    """What runs at interpreter exit: temps of writers that never finished are removed."""
    abandoned = AtomicFile(tmp_path / "a.bin")
    staged = atomic.StagedOutput(tmp_path / "b.bin")
    Path(staged.temp_path).write_bytes(b"half")
    registry = atomic.TempRegistry()
    registry.add(abandoned.temp_path)
    registry.attach(abandoned.temp_path, abandoned.file)
    registry.add(staged.temp_path)
    registry.remove_all()
    assert abandoned.file.closed and _listing(tmp_path) == []
    atomic.TEMPS.release(abandoned.temp_path)
    atomic.TEMPS.release(staged.temp_path)


def test_remove_since_is_per_thread_and_after_the_mark(tmp_path: Path) -> None:
    registry = atomic.TempRegistry()
    before, mine, theirs = (str(tmp_path / n) for n in ("before", "mine", "theirs"))
    registry.add(before)
    mark = registry.mark()
    registry.add(mine)
    thread = threading.Thread(target=registry.add, args=(theirs,))
    thread.start()
    thread.join()
    for path in (before, mine, theirs):
        Path(path).write_bytes(b"")
    registry.remove_since(mark)
    assert _listing(tmp_path) == ["before", "theirs"]
    assert before in registry and theirs in registry and mine not in registry


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def test_deferred_interrupts_deliver_the_signal_after_the_block() -> None:
    """A SIGTERM inside the block does not raise there (a third-party writer might swallow it);
    it raises KeyboardInterrupt once the block is over, and the handlers are back."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        finished = []
        with pytest.raises(KeyboardInterrupt), deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs at the latest on a loop's jump back
                pass
            finished.append(True)
        assert finished == [True]
        assert signal.getsignal(signal.SIGTERM) is _raise_interrupt
        with deferred_interrupts():  # no signal: nothing raised
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_deferred_interrupts_win_over_the_blocks_own_error() -> None:
    """numpy's tofile turned the interrupt into a TypeError: the interrupt is what comes out."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt) as caught, deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):
                pass
            raise TypeError("expected str, bytes or os.PathLike object")
        assert isinstance(caught.value.__context__, TypeError)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_deferred_interrupts_leave_ignored_signals_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):
                pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_deferred_interrupts_outside_the_main_thread_just_run_the_block() -> None:
    """Only the main thread runs Python signal handlers (and may set them)."""
    errors: list[BaseException] = []
    ran: list[bool] = []

    def job() -> None:
        try:
            with deferred_interrupts():
                ran.append(True)
        except BaseException as exc:  # signal.signal from a thread raises ValueError
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert ran == [True] and errors == []
