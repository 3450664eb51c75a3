"""HTTP for remote inputs: byte ranges, whole-body streams, redirects, retries, credentials.

httpx does the protocol (connection pools, split connect/read timeouts, streaming bodies);
this module owns the policy, which no client library decides for us:

- Ranges: a 206 must carry a Content-Range that starts where we asked and ends where the
  file or our range ends; anything else is a server fault, not data. A 200 (the server
  ignores Range) is read only as far as needed and then the connection is dropped.
- Redirects are followed here, not by httpx, so each hop's credential is decided by us: a
  token belongs to one origin (scheme, host, port) and is sent to it only; a redirect to
  another origin (the hub's CDN) goes without it. At most `max_redirects` hops.
- Transient failures (connect errors, timeouts, dropped connections, 408/429/502/503/504)
  are retried `retries` times, sleeping `backoff`·2^n or the server's Retry-After (capped);
  everything else fails at once with one line.
- Nothing is written to disk and no header, token or redirect target appears in a message.
"""

from __future__ import annotations

import os
import re
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

from sa3ckpt import __version__
from sa3ckpt.errors import RemoteError
from sa3ckpt.io.remote.settings import HF_TOKEN_ENV, RemoteSettings
from sa3ckpt.io.remote.urls import HTTP_SCHEMES, RemoteName, hub_endpoint, origin, url_scheme

if TYPE_CHECKING:
    import httpx

MAX_BACKOFF = 10.0
CHUNK = 1 << 16
TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_INCOMPLETE = re.compile(r"received (\d+) bytes, expected (\d+)")
_UNSATISFIED = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)

Origin = tuple[str, str, "int | None"]
T = TypeVar("T")


class _Transient(Exception):
    """Internal: a failure worth retrying, with its one-line cause and the server's
    Retry-After in seconds, if it sent one."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    """A Retry-After given in seconds (an HTTP date is ignored: the backoff applies)."""
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


@dataclass(frozen=True)
class Fetched:
    """Bytes [start, start + len(data)) of a file of `size` bytes; `ranged` is False when the
    server ignored the Range header; `url` is where the bytes came from after redirects."""

    data: bytes
    start: int
    size: int
    ranged: bool
    url: str


def _status_cause(response: httpx.Response, sent_token: bool) -> str:
    code = response.status_code
    phrase = f"HTTP {code}" + (f" {response.reason_phrase}" if response.reason_phrase else "")
    if code in (401, 403):
        hint = (
            "the token was refused"
            if sent_token
            else f"a token may be needed ({HF_TOKEN_ENV} for hf:// hubs, or --token-env NAME)"
        )
        return f"access denied ({phrase}): {hint}"
    if code == 404:
        return f"not found ({phrase})"
    return phrase


def _tls_failure(exc: BaseException) -> str | None:
    """The TLS verification cause hidden in a connect error's chain, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return "TLS certificate verification failed (a private hub's roots: --ca-bundle FILE)"
        seen = seen.__cause__ or seen.__context__
    return None


class HttpSession:
    """One connection pool with the settings' policy; thread-safe (httpx.Client is)."""

    def __init__(self, settings: RemoteSettings) -> None:
        import httpx

        self.settings = settings
        self._httpx = httpx
        verify: ssl.SSLContext | bool = True
        if settings.ca_bundle is not None:
            verify = ssl.create_default_context(cafile=settings.ca_bundle)
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            verify=verify,
            follow_redirects=False,
            headers={"User-Agent": f"sa3ckpt/{__version__}", "Accept-Encoding": "identity"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def close(self) -> None:
        self._client.close()

    # -- credentials

    def credential(self, name: RemoteName) -> tuple[Origin, str] | None:
        """(the origin a token is for, the token) for requests starting at `name`.

        `--token-env NAME`: that variable's token, for the origin of the URL given. Else
        HF_TOKEN, for the hub endpoint's origin only (as the hub's tools send it).
        """
        if self.settings.token_env is not None:
            token = os.environ.get(self.settings.token_env, "")
            return (origin(name.url), token) if token else None
        token = os.environ.get(HF_TOKEN_ENV, "")
        if token and origin(name.url) == origin(hub_endpoint()):
            return origin(hub_endpoint()), token
        return None

    # -- one request, redirects followed by hand

    @contextmanager
    def _get(
        self, name: RemoteName, url: str, headers: dict[str, str]
    ) -> Iterator[tuple[httpx.Response, str, bool]]:
        """The final response (streaming) after redirects, its URL, whether a token went."""
        httpx = self._httpx
        credential = self.credential(name)
        current = url
        for _ in range(self.settings.max_redirects + 1):
            sent = dict(headers)
            token_sent = credential is not None and origin(current) == credential[0]
            if credential is not None and token_sent:
                sent["Authorization"] = f"Bearer {credential[1]}"
            try:
                request = self._client.build_request("GET", current, headers=sent)
                response = self._client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise _Transient(self._timeout_cause(exc)) from None
            except httpx.ConnectError as exc:
                tls = _tls_failure(exc)
                if tls is not None:
                    raise RemoteError(name.name, tls) from None
                raise _Transient(f"cannot connect ({' '.join(str(exc).split())[:120]})") from None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                raise _Transient(
                    f"connection failed ({' '.join(str(exc).split())[:120]})"
                ) from None
            except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError):
                raise RemoteError(name.name, "not a URL this client can request") from None
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUS and location:
                    current = urljoin(current, location)
                    if url_scheme(current) not in HTTP_SCHEMES:
                        raise RemoteError(name.name, "redirected to a URL that is not http(s)")
                    continue
                yield response, current, token_sent
                return
            finally:
                response.close()
        raise RemoteError(
            name.name, f"too many redirects (more than {self.settings.max_redirects})"
        )

    def _timeout_cause(self, exc: Exception) -> str:
        if isinstance(exc, self._httpx.ConnectTimeout):
            return f"timed out connecting (after {self.settings.connect_timeout:g} s)"
        if isinstance(exc, self._httpx.ReadTimeout):
            return f"timed out waiting for data (after {self.settings.read_timeout:g} s)"
        return "timed out"

    def _retrying(self, name: RemoteName, attempt: Callable[[], T]) -> T:
        tries = self.settings.retries + 1
        cause = ""
        for number in range(tries):
            wait = self.settings.backoff * 2**number
            try:
                return attempt()
            except _Transient as exc:
                cause = str(exc)
                if exc.retry_after is not None:  # the server said when; within our cap
                    wait = max(wait, exc.retry_after)
            except self._httpx.TimeoutException as exc:  # raised while reading a body
                cause = self._timeout_cause(exc)
            except self._httpx.RemoteProtocolError as exc:  # a body cut off by the peer
                counts = _INCOMPLETE.search(str(exc))
                cause = (
                    f"the body ended after {counts.group(1)} of {counts.group(2)} bytes (truncated)"
                    if counts
                    else "the connection closed before the body ended (truncated)"
                )
            except self._httpx.TransportError as exc:
                cause = f"connection failed ({' '.join(str(exc).split())[:120]})"
            if number + 1 < tries:
                time.sleep(min(wait, MAX_BACKOFF))
        suffix = f" (after {tries} attempts)" if tries > 1 else ""
        raise RemoteError(name.name, cause + suffix)

    def _check_status(self, name: RemoteName, response: httpx.Response, token_sent: bool) -> None:
        code = response.status_code
        if code in TRANSIENT_STATUS:
            raise _Transient(_status_cause(response, token_sent), _retry_after(response))
        if code not in (200, 206):
            raise RemoteError(name.name, _status_cause(response, token_sent))
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise RemoteError(
                name.name, f"the server sent an encoded body (Content-Encoding: {encoding})"
            )

    # -- byte ranges

    def fetch(self, name: RemoteName, url: str, start: int, stop: int) -> Fetched:
        """Bytes [start, stop) of the file (fewer at its end), retried when transient."""
        return self._retrying(name, lambda: self._fetch_once(name, url, start, stop))

    def _fetch_once(self, name: RemoteName, url: str, start: int, stop: int) -> Fetched:
        headers = {"Range": f"bytes={start}-{stop - 1}"}
        with self._get(name, url, headers) as (response, final, token_sent):
            if response.status_code == 416:
                match = _UNSATISFIED.match(response.headers.get("content-range", ""))
                if match is None:
                    raise RemoteError(name.name, _status_cause(response, token_sent))
                size = int(match.group(1))
                if start < size:
                    raise RemoteError(
                        name.name, f"HTTP 416 for bytes {start}-{stop - 1} of a {size}-byte file"
                    )
                return Fetched(b"", start, size, True, final)
            self._check_status(name, response, token_sent)
            if response.status_code == 206:
                return self._ranged_body(name, response, start, stop, final)
            return self._whole_body(name, response, start, stop, final)

    def _ranged_body(
        self, name: RemoteName, response: httpx.Response, start: int, stop: int, final: str
    ) -> Fetched:
        header = response.headers.get("content-range", "")
        match = _CONTENT_RANGE.match(header)
        if match is None or match.group(3) == "*":
            raise RemoteError(name.name, f"bad Content-Range {header[:60]!r} in a 206 answer")
        first, last, size = int(match.group(1)), int(match.group(2)), int(match.group(3))
        if first != start or last < first or last != min(stop, size) - 1:
            raise RemoteError(
                name.name,
                f"the server sent bytes {first}-{last}/{size} for a request of "
                f"bytes {start}-{stop - 1} (wrong Content-Range)",
            )
        want = last - first + 1
        data = self._read(response, 0, want)
        if len(data) < want:
            raise _Transient(f"the body ended after {len(data)} of {want} bytes (truncated)")
        return Fetched(data, start, size, True, final)

    def _whole_body(
        self, name: RemoteName, response: httpx.Response, start: int, stop: int, final: str
    ) -> Fetched:
        """A 200 to a range request: read up to `stop`, then drop the connection."""
        length = response.headers.get("content-length")
        size = int(length) if length is not None and length.strip().isdigit() else None
        want = stop if size is None else min(stop, size)
        data = self._read(response, start, want - start)
        if size is None:
            ended = len(data) < want - start
            if not ended:
                raise RemoteError(
                    name.name,
                    "the server ignores byte ranges and sends no Content-Length "
                    "(the file size cannot be known without downloading it)",
                )
            size = start + len(data)
        elif len(data) < want - start:
            raise _Transient(
                f"the body ended after {start + len(data)} of {size} bytes (truncated)"
            )
        return Fetched(data, start, size, False, final)

    def _read(self, response: httpx.Response, skip: int, count: int) -> bytes:
        """`count` bytes of the body after skipping `skip`; fewer if it ends first."""
        parts: list[bytes] = []
        got = 0
        position = 0
        for chunk in response.iter_raw(CHUNK):
            if position + len(chunk) > skip:
                piece = chunk[max(skip - position, 0) :]
                parts.append(piece[: count - got])
                got += len(parts[-1])
            position += len(chunk)
            if got >= count:
                break
        return b"".join(parts)

    # -- whole bodies

    def stream(self, name: RemoteName, url: str, sink: Callable[[], Any]) -> Any:
        """Stream the whole body once into a fresh `sink()` per attempt (its `update(bytes)`
        is fed every byte; nothing is kept); return that sink. Transient failures restart."""
        return self._retrying(name, lambda: self._stream_once(name, url, sink()))

    def _stream_once(self, name: RemoteName, url: str, target: Any) -> Any:
        with self._get(name, url, {}) as (response, _final, token_sent):
            self._check_status(name, response, token_sent)
            if response.status_code != 200:
                raise RemoteError(name.name, f"HTTP {response.status_code} to a plain GET")
            length = response.headers.get("content-length")
            total = 0
            for chunk in response.iter_raw(CHUNK):
                target.update(chunk)
                total += len(chunk)
            if length is not None and length.strip().isdigit() and total != int(length):
                raise _Transient(f"the body ended after {total} of {length} bytes (truncated)")
        return target
