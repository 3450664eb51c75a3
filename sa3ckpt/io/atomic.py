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
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

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


class AtomicFile:
    """A temp file beside ``path`` that becomes ``path`` on `commit` or vanishes on `discard`.

    The temp file is created with mode 0o666 minus the umask (like a plain ``open``), not
    the 0o600 of `tempfile.mkstemp`, because it becomes the user's output file.
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
        self.file: BinaryIO
        for _ in range(_TEMP_ATTEMPTS):
            tmp = _temp_sibling(self.path)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError as exc:
                raise output_error(self.path, exc) from exc
            break
        else:
            raise OutputError(self.path, "cannot create a temp file next to it")
        self.temp_path = tmp
        try:
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._unlink_temp()
            raise
        self.done = False

    def _unlink_temp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)

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
            self._unlink_temp()


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
    out = AtomicFile(path, inputs=inputs, overwrite=overwrite)
    try:
        yield out.file
    except OSError as exc:
        out.discard()
        raise output_error(out.path, exc) from exc
    except BaseException:
        out.discard()
        raise
    out.commit()


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
        _remove(self.temp_path)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.commit()
            return
        self.discard()
        if isinstance(exc, OSError | OutputError):
            raise output_error(self.path, exc) from exc
