"""Typed errors that carry their CLI exit code.

Every failure a user can cause (bad file, bad arguments, incompatible inputs) is raised as
one of these so the CLI can print a single line and exit with the documented code instead
of a traceback. The codes are part of the CLI contract in DESIGN.md.
"""

from __future__ import annotations

import os

from sa3ckpt.textsafe import escape_control

EXIT_OK = 0  # the one exit code no error class carries
INTERNAL_KIND = "internal"  # the --json error kind of a bug (any other exception, exit 1)


class Sa3ckptError(Exception):
    """Base class: a user-facing failure with a one-line message and an exit code.

    `kind` is the failure's stable machine name in the CLI's `--json` error document (as
    `exit_code`, inherited by subclasses that do not name their own); `path` is the file the
    failure concerns, when there is one.
    """

    exit_code: int = 1
    kind: str = "error"
    path: str | None = None

    def one_line(self) -> str:
        """The message folded to a single line, safe to print on stderr.

        Messages quote file names and keys from strangers: control characters are escaped
        so a name with an ESC cannot rewrite the terminal or a CI log.
        """
        return escape_control(" ".join(str(self).split()))


class ValidationFailed(Sa3ckptError):
    """Inputs were read but break rules: error findings, or warnings with --strict (exit 1).

    validate reports findings rather than raising; the class is the home of their exit code.
    """

    exit_code = 1
    kind = "findings"


class UsageError(Sa3ckptError):
    """Arguments that cannot be acted on (exit 2)."""

    exit_code = 2
    kind = "usage"


class MalformedFileError(Sa3ckptError):
    """A file that cannot be read or violates its format (exit 3).

    Carries the file and the cause separately so callers can report either.
    """

    exit_code = 3
    kind = "malformed"
    path: str

    def __init__(self, path: str | os.PathLike[str], cause: str) -> None:
        self.path = os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class UnreadableFileError(MalformedFileError):
    """An input that is missing or cannot be opened or read (exit 3, like a malformed one).

    Its own kind so a CI job can tell a wrong path or a permission problem from a damaged
    file; everything that handles malformed files handles it too.
    """

    kind = "unreadable"


class IncompatibleError(Sa3ckptError):
    """Inputs that are each valid but do not fit together (exit 4)."""

    exit_code = 4
    kind = "incompatible"


class VerificationError(IncompatibleError):
    """A written output did not read back equal to its input (exit 4; nothing was written).

    A subclass so a caller (the TUI) can report "verification failed" apart from other
    incompatibilities; `worst` / `target` / `tolerance` carry the numbers when one error
    measure exceeded its bound (None for a structural loss such as a missing target).
    """

    kind = "verification-failed"

    def __init__(
        self,
        message: str,
        *,
        worst: float | None = None,
        target: str | None = None,
        tolerance: float | None = None,
    ) -> None:
        self.worst = worst
        self.target = target
        self.tolerance = tolerance
        super().__init__(message)


class OutputError(Sa3ckptError):
    """The output cannot be written: permissions, a full disk, a missing folder (exit 5).

    Always names the user's output path (never the temp name it was being written under)
    and promises what the atomic writers guarantee: nothing was written.
    """

    exit_code = 5
    kind = "unwritable"
    path: str

    def __init__(self, path: str | os.PathLike[str], cause: str) -> None:
        self.path = os.fspath(path)
        self.cause = cause
        super().__init__(f"cannot write {self.path}: {cause} (nothing was written)")

    @classmethod
    def from_os_error(cls, path: str | os.PathLike[str], exc: OSError) -> OutputError:
        """The OSError of writing `path` (or its temp file), worded without the temp name."""
        return cls(path, exc.strerror or type(exc).__name__)


class Interrupted(Sa3ckptError):
    """The user interrupted a long operation (exit 130)."""

    exit_code = 130
    kind = "interrupted"


class RemoteError(UnreadableFileError):
    """A URL that could not be fetched (HTTP status, timeout, refused connection, a server
    breaking the range protocol): unreadable input, exit 3 and kind `unreadable` like any
    file that cannot be read.

    `path` is the URL as the user wrote it (credentials removed), never a redirect target
    (signed CDN URLs carry secrets of their own) and never a header.
    """


class NeedsLocalFile(UsageError):
    """A route that reads tensor data was given a URL (exit 2): only headers are fetched."""

    def __init__(self, url: str, what: str = "this operation") -> None:
        self.url = url
        super().__init__(
            f"{url}: {what} needs the tensor data, and URLs are read header-only (inspect, "
            "validate, hash): download the file first"
        )
