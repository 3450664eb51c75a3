"""Crash-safe output files: the target is either the old file or the complete new one.

Checkpoints are large and written slowly; a crash, a full disk or Ctrl-C halfway must never
leave a truncated file under the real name (a later run would load it), nor overwrite an
input that is still being read (in-place conversion through the same path or a symlink would
destroy the source). So output goes to a temp file beside the target, which is fsynced and
renamed over the target only once it is complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from sa3ckpt.errors import UsageError

PathLike = str | os.PathLike[str]

_TEMP_ATTEMPTS = 100


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: same resolved path, or same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): cannot be the same file
        return False


def check_output_path(
    path: PathLike, *, inputs: Sequence[PathLike] = (), overwrite: bool = True
) -> None:
    """Refuse an output path that is an input, a directory, or (if not overwriting) exists.

    Separate from `AtomicFile` so commands can validate their arguments before doing work.
    """
    target = os.fspath(path)
    for inp in inputs:
        if _same_file(target, os.fspath(inp)):
            raise UsageError(f"output {target} is the same file as input {os.fspath(inp)}")
    if os.path.isdir(target):
        raise UsageError(f"output {target} is a directory")
    if not overwrite and os.path.lexists(target):
        raise UsageError(f"output {target} already exists (refusing to overwrite)")


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
        base = os.path.basename(self.path)
        self.file: BinaryIO
        for _ in range(_TEMP_ATTEMPTS):
            tmp = os.path.join(self.directory, f".{base}.tmp-{secrets.token_hex(4)}")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            except OSError as exc:
                raise UsageError(f"cannot write {self.path}: {exc.strerror}") from exc
            break
        else:
            raise UsageError(f"cannot create a temp file next to {self.path}")
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
                raise UsageError(f"output {self.path} already exists (refusing to overwrite)")
            os.replace(self.temp_path, self.path)
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
    except BaseException:
        out.discard()
        raise
    out.commit()
