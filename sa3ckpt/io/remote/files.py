"""Remote files as byte sources: the front of a file fetched by range, kept in memory.

The header readers (`io.safetensors`, `io.gguf_header`, the sniffers) ask a byte source for
`read_at(offset, n)`; a `RemoteFile` answers from the bytes it already holds and fetches
only what is missing. The first request asks for `first_bytes` (enough for nearly every
adapter header); a read past them fetches the rest of what it needs, reading ahead by the
size already held so a parser that reads piecewise (GGUF) needs few requests. Reads that
would reach past the header limit are tensor data: they are refused, never fetched.

A process-wide session keeps recently opened files (and failures: a dead URL is not asked
again by every sniffer) so one command asking several times about one URL makes one set of
requests. Nothing is written to disk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sa3ckpt.errors import NeedsLocalFile, RemoteError
from sa3ckpt.io.remote.http import HttpSession
from sa3ckpt.io.remote.settings import RemoteSettings
from sa3ckpt.io.remote.urls import RemoteName

MAX_PREFIX = 100 * 1024 * 1024 + 64 * 1024
"""The most of a file's front ever fetched: the largest header any reader accepts, plus slack."""

CACHED_FILES = 64


class RemoteFile:
    """The front of one remote file. `name` is the user's spelling (for messages)."""

    def __init__(self, session: HttpSession, remote: RemoteName) -> None:
        self.remote = remote
        self.name = remote.name
        self._session = session
        first = session.fetch(remote, remote.url, 0, session.settings.first_bytes)
        self.size = first.size
        self.ranged = first.ranged
        self._url = first.url  # after redirects: later ranges go straight there
        self._prefix = first.data
        self._lock = threading.Lock()
        self.requests = 1

    @property
    def url_for_data(self) -> str:
        """Where the bytes come from after redirects (never shown: it may be signed)."""
        return self._url

    def read_at(self, offset: int, count: int) -> bytes:
        """Bytes [offset, offset + count), fewer at the end of the file (like a file read)."""
        end = min(offset + count, self.size)
        if end <= len(self._prefix):
            return self._prefix[offset:end]
        if end > MAX_PREFIX:
            raise NeedsLocalFile(self.name, "this step")
        with self._lock:
            held = len(self._prefix)
            if end > held:
                stop = min(max(end, 2 * held), self.size, MAX_PREFIX)
                got = self._session.fetch(self.remote, self._url, held, stop)
                self.requests += 1
                if got.size != self.size:
                    raise RemoteError(
                        self.name,
                        f"the file changed size while read ({self.size}, then {got.size})",
                    )
                self._prefix += got.data
        return self._prefix[offset:end]


class RemoteSession:
    """The HTTP session and the small cache of files (and failures) opened through it."""

    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self.http = HttpSession(settings)
        self._files: OrderedDict[str, RemoteFile | RemoteError] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, remote: RemoteName) -> RemoteFile:
        """The file at `remote` (cached); RemoteError when it cannot be fetched."""
        with self._lock:
            cached = self._files.get(remote.url)
            if cached is not None:
                self._files.move_to_end(remote.url)
        if cached is None:
            try:
                cached = RemoteFile(self.http, remote)
            except RemoteError as exc:
                cached = exc
            with self._lock:
                self._files[remote.url] = cached
                while len(self._files) > CACHED_FILES:
                    self._files.popitem(last=False)
        if isinstance(cached, RemoteError):
            raise RemoteError(remote.name, cached.cause)
        return cached

    def exists(self, remote: RemoteName) -> bool:
        """Whether the file is there: False for 404, True when it opens; other failures
        (access denied, timeouts) raise, so they are reported as what they are."""
        try:
            self.open(remote)
        except RemoteError as exc:
            if exc.cause.startswith("not found"):
                return False
            raise
        return True

    def close(self) -> None:
        self.http.close()
        with self._lock:
            self._files.clear()
