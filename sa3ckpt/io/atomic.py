"""Crash-safe output files: the target is either the old file or the complete new one.

Checkpoints are large and written slowly; a crash, a full disk or Ctrl-C halfway must never
leave a truncated file under the real name (a later run would load it), nor overwrite an
input that is still being read (in-place conversion through the same path or a symlink would
destroy the source). So output goes to a temp file beside the target, which is fsynced and
renamed over the target only once it is complete.

This module is the one output-path policy of every command and the TUI: `check_output_path`
(never over an input, folders only by folder outputs, --force to replace), `AtomicFile` /
`atomic_output` for writers that stream into one file, and `StagedOutput` for outputs built
by other code under a temp name (PEFT folders, outputs verified before they may appear).

Temp files must not outlive an interrupt (the CLI turns SIGTERM into KeyboardInterrupt, which
can surface between any two bytecodes). So a temp name is registered *before* the file is
created (`TEMPS`), with SIGINT/SIGTERM held while it is registered and created; a writer that
fails or is interrupted before it owns the file removes what was registered since its
`TEMPS.mark()`, and whatever is still registered when the interpreter exits is removed then.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, BinaryIO

from sa3ckpt.errors import OutputError, UsageError

PathLike = str | os.PathLike[str]

_TEMP_ATTEMPTS = 100

# Why an output path is refused; callers that word refusals their own way (the TUI) key on it.
REFUSED_INPUT, REFUSED_DIRECTORY, REFUSED_EXISTS = "input", "directory", "exists"
REFUSED_SPECIAL = "special"  # a device, FIFO or socket: renaming over it would destroy it


class OutputRefused(UsageError):
    """An output path the policy will not write; `reason` is one of the REFUSED_* codes."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: same resolved path, or same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): cannot be the same file
        return False


def _inside(path: str, folder: str) -> bool:
    """Whether `path` lies below the directory `folder` (symlinks resolved)."""
    if not os.path.isdir(folder):
        return False
    real_path, real_folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real_path, real_folder]) == real_folder and real_path != real_folder


def output_error(path: PathLike, exc: BaseException) -> OutputError:
    """A failure while writing `path` worded for the user: their path, never a temp name.

    An OutputError raised deeper (a file written inside a staged folder) is re-aimed at
    `path`, so a PEFT folder's error names the folder the user asked for.
    """
    if isinstance(exc, OutputError):
        return OutputError(path, exc.cause)
    if isinstance(exc, OSError):
        return OutputError.from_os_error(path, exc)
    raise TypeError(f"not an output failure: {exc!r}")


def _is_special(path: str) -> bool:
    """A device, FIFO or socket at `path` itself (a symlink is replaced as a link: fine)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def _exists(target: str) -> OutputRefused:
    return OutputRefused(
        REFUSED_EXISTS, f"output {target} already exists (pass --force to replace it)"
    )


def check_output_path(
    path: PathLike,
    *,
    inputs: Sequence[PathLike] = (),
    overwrite: bool = True,
    directory: bool = False,
    replaceable: Callable[[str], bool] | None = None,
) -> None:
    """The output-path policy, checked before any work; raises `OutputRefused`.

    In this order: never over an input (the same file by any path, symlink or hard link;
    a file inside an input folder; a folder output containing an input); an existing
    directory is replaced only by a folder output (`directory`) and only when
    `replaceable` accepts it (a PEFT folder, not the user's home); an existing output
    needs `overwrite` (the CLI's --force).
    """
    target = os.fspath(path)
    if not target.strip():
        # '' would resolve to the current folder and write beside it, in its parent.
        raise UsageError("the output path is empty")
    for inp in (os.fspath(p) for p in inputs):
        if same_file(target, inp) or _inside(target, inp):
            raise OutputRefused(
                REFUSED_INPUT, f"output {target} is an input (the same file as input {inp})"
            )
        if directory and _inside(inp, target):
            raise OutputRefused(REFUSED_INPUT, f"output {target} is a folder holding input {inp}")
    if os.path.isdir(target):
        if not directory:
            raise OutputRefused(REFUSED_DIRECTORY, f"output {target} is a directory")
        if replaceable is None or not replaceable(target):
            raise OutputRefused(
                REFUSED_DIRECTORY,
                f"output {target} is a directory of another kind (refusing to replace it)",
            )
    if _is_special(target):
        raise OutputRefused(
            REFUSED_SPECIAL, f"output {target} is not a regular file (refusing to replace it)"
        )
    if not overwrite and os.path.lexists(target):
        raise _exists(target)


def _temp_sibling(path: str) -> str:
    """A hidden name beside `path` for its temp file or folder (not created)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp-{secrets.token_hex(4)}")


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{8}$")


def user_path(path: PathLike) -> str:
    """The output a temp name stands for (`d/.out.tmp-1a2b3c4d/x` -> `d/out`), else `path`.

    For messages only: a failure inside a temp file or folder must name what the user
    asked for, not a hidden name that is already deleted.
    """
    parts = os.fspath(path).split(os.sep)
    for i, part in enumerate(parts):
        match = _TEMP_NAME.match(part)
        if match:
            return os.sep.join([*parts[:i], match["name"]])
    return os.fspath(path)


def _fsync_dir(directory: str) -> None:
    """Make the rename durable; best effort since some platforms cannot open directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _remove(path: str) -> None:
    """Delete a file, symlink or folder tree; missing is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@dataclass
class _Temp:
    thread: int  # the thread that registered it: a failing writer cleans only its own
    sequence: int
    file: BinaryIO | None = None  # closed before removal (Windows cannot unlink open files)


class TempRegistry:
    """Temp paths this process registered and has not yet renamed into place or removed.

    Registering comes first and creating second, so there is no moment at which a temp file
    exists that nobody will remove: a writer interrupted anywhere calls `remove_since` with
    the mark it took before starting, and `remove_all` runs at interpreter exit.

    No lock: an interrupt raised just after a lock is acquired would leave it held for good.
    Each method does single dict operations, which are atomic under the GIL.
    """

    def __init__(self) -> None:
        self._temps: dict[str, _Temp] = {}
        self._sequence = itertools.count(1)

    def mark(self) -> int:
        """A point to clean up back to: `remove_since(mark)` removes what came after it."""
        return next(self._sequence)

    def add(self, path: str) -> None:
        """Register `path` before it is created."""
        self._temps[path] = _Temp(threading.get_ident(), next(self._sequence))

    def attach(self, path: str, file: BinaryIO) -> None:
        """Remember the open handle of a registered temp file, to close it before removal."""
        temp = self._temps.get(path)
        if temp is not None:
            temp.file = file

    def release(self, path: str) -> None:
        """Forget `path` without touching it: renamed into place, or never created by us."""
        self._temps.pop(path, None)

    def remove(self, path: str) -> None:
        """Close and delete a temp (file or folder) and forget it."""
        temp = self._temps.pop(path, None)
        if temp is not None and temp.file is not None:
            with contextlib.suppress(Exception):
                temp.file.close()
        _remove(path)

    def remove_since(self, mark: int) -> None:
        """Remove every temp this thread registered after `mark` (a writer's failure path)."""
        thread = threading.get_ident()
        for path, temp in list(self._temps.items()):
            if temp.thread == thread and temp.sequence > mark:
                self.remove(path)

    def remove_all(self) -> None:
        """Remove every temp still registered (at exit: an interrupted write left it)."""
        for path in list(self._temps):
            with contextlib.suppress(OSError):
                self.remove(path)

    def paths(self) -> list[str]:
        return list(self._temps)

    def __contains__(self, path: object) -> bool:
        return path in self._temps


TEMPS = TempRegistry()
atexit.register(TEMPS.remove_all)

_HELD_SIGNALS = frozenset(
    s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s
)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for this thread while a temp is registered and created.

    Only narrows the window (a signal already pending, or delivered to another thread, can
    still raise inside): the writers' `remove_since` is what guarantees cleanup. Where
    pthread_sigmask does not exist (Windows) this does nothing.
    """
    if not hasattr(signal, "pthread_sigmask") or not _HELD_SIGNALS:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run a block whose code must not see a signal's exception; deliver it right after.

    For third-party writers that swallow exceptions: numpy's `tofile` (inside the gguf
    package's write step) calls the file's Python `flush`/`tell`, and an interrupt raised
    there comes out as a TypeError ("expected str, bytes or os.PathLike object"), which the
    CLI would report as an internal error (exit 1) instead of an interruption (exit 130).
    So the Python-level SIGINT/SIGTERM handlers are replaced, for the block, by one that only
    records the signal; on leaving the block (normally or not) the handlers are restored and
    the first recorded signal is handed to its own handler, which raises KeyboardInterrupt
    (the CLI's SIGTERM handler and Python's default SIGINT handler both do) in our code,
    where the writers' cleanup runs. A signal is delayed by the block's duration at most.

    Only the main thread runs Python signal handlers, so elsewhere (the TUI's job threads)
    there is nothing to defer and the block just runs. Dispositions that are not Python
    callables (SIG_IGN, SIG_DFL) are left as they are: an ignored SIGINT stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []

    def record(signum: int, frame: FrameType | None) -> None:
        caught.append((signum, frame))

    previous: dict[int, Callable[[int, FrameType | None], Any]] = {}
    try:
        for signum in sorted(_HELD_SIGNALS):
            handler = signal.getsignal(signum)
            if callable(handler):
                previous[signum] = handler
                signal.signal(signum, record)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signum, frame = caught[0]
            previous[signum](signum, frame)


def _open_exclusive(path: str) -> BinaryIO:
    """Create `path` (it must not exist) with mode 0o666 minus the umask, opened for writing.

    Not the 0o600 of `tempfile.mkstemp`: the file becomes the user's output. The descriptor
    is never closed here on failure: an interrupt inside os.fdopen can come after the file
    object took it over (and closes it when collected), and closing a number twice could
    close another file's. The file itself is registered, so it is removed either way.
    """
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")


def _create_temp(path: str) -> tuple[BinaryIO, str]:
    """A new temp file beside `path`, registered in TEMPS before it exists."""
    for _ in range(_TEMP_ATTEMPTS):
        tmp = _temp_sibling(path)
        with _signals_held():
            TEMPS.add(tmp)
            try:
                file = _open_exclusive(tmp)
            except FileExistsError:
                TEMPS.release(tmp)  # another process's file: never ours to delete
                continue
            except OSError as exc:
                TEMPS.release(tmp)
                raise output_error(path, exc) from exc
            TEMPS.attach(tmp, file)
        return file, tmp
    raise OutputError(path, "cannot create a temp file next to it")


class AtomicFile:
    """A temp file beside ``path`` that becomes ``path`` on `commit` or vanishes on `discard`.

    The temp file is created with mode 0o666 minus the umask (like a plain ``open``), not
    the 0o600 of `tempfile.mkstemp`, because it becomes the user's output file
    (`_open_exclusive`).
    Prefer `atomic_output`; this class exists for writers whose lifetime spans several calls
    (such as the streaming safetensors writer).
    """

    def __init__(
        self, path: PathLike, *, inputs: Sequence[PathLike] = (), overwrite: bool = True
    ) -> None:
        self.path = os.fspath(path)
        self.overwrite = overwrite
        check_output_path(self.path, inputs=inputs, overwrite=overwrite)
        self.directory = os.path.dirname(os.path.abspath(self.path))
        self.done = False
        mark = TEMPS.mark()
        try:
            self.file, self.temp_path = _create_temp(self.path)
        except BaseException:  # interrupted after the temp was created, before it was ours
            TEMPS.remove_since(mark)
            raise

    def commit(self) -> None:
        """Flush, fsync and rename onto the target; on failure the temp file is removed."""
        if self.done:
            raise ValueError("atomic output already finished")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if not self.overwrite and os.path.lexists(self.path):  # appeared while writing
                raise _exists(self.path)
            os.replace(self.temp_path, self.path)
            TEMPS.release(self.temp_path)
        except OSError as exc:
            self.discard()
            raise output_error(self.path, exc) from exc
        except BaseException:
            self.discard()
            raise
        self.done = True
        _fsync_dir(self.directory)

    def discard(self) -> None:
        """Close and delete the temp file; safe to call more than once."""
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        finally:
            TEMPS.remove(self.temp_path)


@contextlib.contextmanager
def atomic_output(
    path: PathLike, *, inputs: Sequence[PathLike] = (), overwrite: bool = True
) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` only if the block succeeds.

    On any exception (KeyboardInterrupt included) the temp file is closed, deleted and the
    exception re-raised, leaving ``path`` untouched. Raises UsageError up front when
    ``path`` is (or links to) one of ``inputs``, is a directory, or exists while
    ``overwrite`` is False. Replacing a symlink at ``path`` replaces the link itself.
    """
    mark = TEMPS.mark()
    out: AtomicFile | None = None
    try:
        out = AtomicFile(path, inputs=inputs, overwrite=overwrite)
        yield out.file
        out.commit()
    except OSError as exc:  # the block's write failed: name the user's path
        discard_or_remove_since(out, mark)
        raise output_error(os.fspath(path), exc) from exc
    except BaseException:
        discard_or_remove_since(out, mark)
        raise


def discard_or_remove_since(out: AtomicFile | None, mark: int) -> None:
    """A writer's failure path: discard its AtomicFile, or, when the failure came before the
    writer held it (a signal right after it was created), every temp registered since `mark`.
    """
    if out is None:
        TEMPS.remove_since(mark)
    else:
        out.discard()


class StagedOutput:
    """An output (file or folder) built under a temp name by any writer, then committed.

    For commands that write with their own code (a folder of files, a third-party writer)
    or check the result before it may appear (convert reads its output back): the writer
    creates `temp_path`; `commit` fsyncs everything under it and renames it onto the
    target, swapping when a folder replaces an old output (new beside, old renamed aside,
    new renamed in, old removed; the old is renamed back if the swap fails); `discard`
    deletes it. Used as a context manager it commits on success and discards on any
    exception; write failures (OSError, or an OutputError naming a file inside the temp
    folder) come out as an OutputError naming `path`.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        inputs: Sequence[PathLike] = (),
        overwrite: bool = True,
        directory: bool = False,
        replaceable: Callable[[str], bool] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.inputs = tuple(os.fspath(p) for p in inputs)
        self.overwrite = overwrite
        self.directory = directory
        self.replaceable = replaceable
        self._check()
        self.temp_path = _temp_sibling(self.path)
        TEMPS.add(self.temp_path)  # the writer creates it: removed at exit if never finished
        self.done = False

    def _check(self) -> None:
        check_output_path(
            self.path,
            inputs=self.inputs,
            overwrite=self.overwrite,
            directory=self.directory,
            replaceable=self.replaceable,
        )

    def _fsync_temp(self) -> None:
        if not os.path.isdir(self.temp_path):
            _fsync_file(self.temp_path)
            return
        for root, _dirs, files in os.walk(self.temp_path):
            for name in files:
                _fsync_file(os.path.join(root, name))
            _fsync_dir(root)

    def commit(self) -> None:
        """Make the temp output the real one; on failure nothing of it is left behind."""
        if self.done:
            raise ValueError("staged output already finished")
        try:
            if not os.path.lexists(self.temp_path):
                raise ValueError(f"the writer did not create {self.temp_path}")
            self._fsync_temp()
            self._check()  # the target may have changed while the output was written
            if os.path.isdir(self.temp_path) and os.path.lexists(self.path):
                self._swap_in()
            else:
                os.replace(self.temp_path, self.path)
            TEMPS.release(self.temp_path)
        except OSError as exc:
            self.discard()
            raise output_error(self.path, exc) from exc
        except BaseException:
            self.discard()
            raise
        self.done = True
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def _swap_in(self) -> None:
        """Replace the old output by the new folder; the old one survives any failure.

        Two renames cannot be one atomic step, so the old output is renamed aside (not
        deleted) first and only removed once the new folder is in place.
        """
        old = _temp_sibling(self.path)
        os.replace(self.path, old)
        try:
            os.replace(self.temp_path, self.path)
        except BaseException:
            os.replace(old, self.path)
            raise
        _remove(old)

    def discard(self) -> None:
        """Delete whatever the writer left under the temp name; safe to call again."""
        if self.done:
            return
        self.done = True
        TEMPS.remove(self.temp_path)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:  # an interrupt before commit's own try must not leave the temp output
            if exc is None:
                self.commit()
                return
        except BaseException:
            self.discard()
            raise
        self.discard()
        if isinstance(exc, OSError | OutputError):
            raise output_error(self.path, exc) from exc
