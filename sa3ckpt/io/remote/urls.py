"""What a remote input names: `http(s)://` URLs and hub paths `hf://ORG/REPO[@REV]/PATH`.

Pure string work (no HTTP, no httpx import), so every command can ask "is this a URL?"
cheaply before deciding how to open an input. A hub path is resolved the way the hub's own
tools resolve it: `{endpoint}/ORG/REPO/resolve/{REVISION or main}/PATH`, the endpoint taken
from `HF_ENDPOINT` (default https://huggingface.co), which is also how a private hub or a
local test server is reached.

Files and folders: HTTP has no folders, so the URL's spelling decides. A URL ending in `/`,
or whose last segment has no checkpoint suffix and which carries no query, names a folder
(a PEFT adapter or a diffusers LoRA, whose files are fetched by name below it); anything
else names a file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

HTTP_SCHEMES = ("http", "https")
HUB_SCHEME = "hf"
SCHEMES = (*HTTP_SCHEMES, HUB_SCHEME)
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
HUB_REPO_TYPES = ("datasets", "spaces")  # hf://datasets/ORG/REPO/... as the hub's tools spell it
FILE_SUFFIXES = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".npz", ".bin", ".json")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(text: str) -> str | None:
    """The scheme of anything spelled `scheme://...` (lower case), None for plain paths."""
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def is_url(path: object) -> bool:
    """Whether `path` is an input this tool reads over HTTP (http, https or hf)."""
    return isinstance(path, str) and url_scheme(path) in SCHEMES


def unsupported_scheme(path: object) -> str | None:
    """The cause line for `scheme://...` with a scheme we do not read, None otherwise."""
    if not isinstance(path, str):
        return None
    scheme = url_scheme(path)
    if scheme is None or scheme in SCHEMES:
        return None
    return f"unsupported URL scheme {scheme!r} (http://, https:// and hf:// are read)"


def hub_endpoint() -> str:
    """The hub the `hf://` paths resolve against, as the hub's own tools choose it."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with default ports filled in: the unit a credential is scoped to."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def display(url: str) -> str:
    """A URL safe to print: user name and password (if anyone put them there) removed."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class RemoteName:
    """One remote input: `name` as the user wrote it (shown in reports, credentials removed),
    `url` the HTTP URL it resolves to, `hub` whether it was an `hf://` path."""

    name: str
    url: str
    hub: bool = False

    @property
    def is_folder(self) -> bool:
        parts = urlsplit(self.url)
        if parts.path.endswith("/"):
            return True
        last = parts.path.rsplit("/", 1)[-1]
        if self.hub:  # hf://ORG/REPO (no path): the repository root is the folder
            return "." not in last or not last.lower().endswith(FILE_SUFFIXES)
        return not parts.query and not last.lower().endswith(FILE_SUFFIXES)

    def child(self, filename: str) -> RemoteName:
        """The file `filename` inside this folder."""
        name = self.name.rstrip("/") + "/" + filename
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/") + "/" + quote(filename)
        return RemoteName(name, urlunsplit((parts.scheme, parts.netloc, path, "", "")), self.hub)


class BadUrl(ValueError):
    """A remote input that cannot be resolved (its one-line cause)."""


def _hub_url(path: str) -> str:
    """`ORG/REPO[@REV][/PATH]` (after `hf://`) as the hub's resolve URL."""
    segments = path.split("/")
    prefix = ""
    if segments and segments[0] in HUB_REPO_TYPES:
        prefix = segments.pop(0) + "/"
    if len(segments) < 2 or not segments[0] or not segments[1]:
        raise BadUrl("hf:// paths are hf://ORG/REPO[@REVISION]/PATH")
    org, repo = segments[0], segments[1]
    revision = DEFAULT_REVISION
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not repo or not revision:
            raise BadUrl("hf:// paths are hf://ORG/REPO[@REVISION]/PATH")
    rest_segments = segments[2:]
    if revision in ("refs", "refs%2Fpr%2F") or revision.startswith("refs%2F"):
        revision = unquote(revision)
    if revision == "refs" and len(rest_segments) >= 2 and rest_segments[0] in ("pr", "convert"):
        # hf://ORG/REPO@refs/pr/N/PATH, as the hub's file system spells pull requests
        revision = "/".join(["refs", *rest_segments[:2]])
        rest_segments = rest_segments[2:]
    rest = "/".join(rest_segments)
    # The revision is one path segment on the hub (`refs/pr/1` is sent as refs%2Fpr%2F1).
    return (
        f"{hub_endpoint()}/{prefix}{quote(org)}/{quote(repo)}/resolve/"
        f"{quote(revision, safe='')}/{quote(rest)}"
    )


def resolve(text: str) -> RemoteName:
    """The RemoteName of an http(s):// URL or an hf:// path; BadUrl when it cannot be one."""
    scheme = url_scheme(text)
    if scheme not in SCHEMES:
        raise BadUrl(unsupported_scheme(text) or "not a URL")
    rest = text[len(scheme) + 3 :]
    if scheme == HUB_SCHEME:
        return RemoteName(text, _hub_url(rest), hub=True)
    parts = urlsplit(text)
    if not parts.hostname:
        raise BadUrl("URL without a host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise BadUrl("URL with an invalid port") from None
    url = urlunsplit((parts.scheme.lower(), parts.netloc, parts.path or "/", parts.query, ""))
    return RemoteName(display(text), url)
