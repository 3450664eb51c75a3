"""Remote inputs: adapters read by URL (http, https, hf://), byte ranges only.

The face the rest of `sa3ckpt.io` uses: `is_url` (a string check, no HTTP), `open_file`
(a `RemoteFile` byte source), `exists`, `stream_into` (a whole body, for hashes), and
`configure` for the CLI's flags. httpx is imported only when a URL is actually fetched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sa3ckpt.errors import NeedsLocalFile, RemoteError
from sa3ckpt.io.remote.settings import RemoteSettings
from sa3ckpt.io.remote.urls import (
    BadUrl,
    RemoteName,
    is_url,
    resolve,
    unsupported_scheme,
    url_scheme,
)

if TYPE_CHECKING:  # without importing httpx at start-up
    from sa3ckpt.io.remote.files import RemoteFile, RemoteSession

__all__ = [
    "NeedsLocalFile",
    "RemoteError",
    "RemoteSettings",
    "configure",
    "exists",
    "is_folder",
    "is_url",
    "name_of",
    "open_file",
    "stream_into",
    "unsupported_scheme",
    "url_scheme",
]

_settings = RemoteSettings()
_session: RemoteSession | None = None
_lock = threading.Lock()


def configure(settings: RemoteSettings) -> None:
    """Use `settings` from now on (a new session: connections and cache start empty)."""
    global _settings, _session
    with _lock:
        if _session is not None:
            _session.close()
        _settings, _session = settings, None


def settings() -> RemoteSettings:
    return _settings


def session() -> RemoteSession:
    global _session
    with _lock:
        if _session is None:
            from sa3ckpt.io.remote.files import RemoteSession

            _session = RemoteSession(_settings)
        return _session


def name_of(url: str) -> RemoteName:
    """The resolved name of a URL; RemoteError (exit 3) when it cannot be resolved."""
    try:
        return resolve(url)
    except BadUrl as exc:
        raise RemoteError(url, str(exc)) from None


def is_folder(url: str) -> bool:
    """Whether the URL names a folder (PEFT / diffusers LoRA), by its spelling."""
    try:
        return resolve(url).is_folder
    except BadUrl:
        return False


def open_file(url: str) -> RemoteFile:
    """The remote file at `url` as a byte source (cached); RemoteError when unreadable."""
    remote = name_of(url)
    if remote.is_folder:
        raise RemoteError(remote.name, "a folder URL, not a file")
    return session().open(remote)


def exists(url: str) -> bool:
    """Whether the file at `url` is there (404 is False; other failures raise)."""
    return session().exists(name_of(url))


def stream_into(url: str, sink: Callable[[], Any]) -> Any:
    """Stream the body of `url` once through `sink()`'s update(); see HttpSession.stream."""
    remote = name_of(url)
    opened = session().open(remote)  # errors (404, 401) once, from the cache
    return session().http.stream(remote, opened.url_for_data, sink)
