"""The CLI's remote-input options and the one rule for URLs given to other commands.

inspect, validate, hash (and tui) read URLs by byte ranges; their fetch options are the same
everywhere, so they are added and applied here. Every other command needs tensor data, so a
URL among its arguments is refused up front (exit 2) with one line saying to download it
first; the readers refuse it too (`NeedsLocalFile`) if anything slipped through.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from sa3ckpt.errors import NeedsLocalFile, UsageError
from sa3ckpt.io import remote
from sa3ckpt.io.remote import RemoteSettings, is_url, unsupported_scheme
from sa3ckpt.io.remote.urls import display

URL_COMMANDS = frozenset({"inspect", "validate", "hash", "tui"})
"""Commands that take http(s):// and hf:// inputs (headers only, or hash's single stream)."""

_DEFAULTS = RemoteSettings()


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("remote inputs (http://, https://, hf://ORG/REPO[@REV]/PATH)")
    group.add_argument(
        "--token-env",
        metavar="NAME",
        help="send the token in $NAME to the hosts of the URLs given (default: $HF_TOKEN, "
        "to the hf:// hub only); never sent across a redirect to another host",
    )
    group.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="trust these TLS roots (PEM) instead of the system's, e.g. a private hub's CA",
    )
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=_DEFAULTS.connect_timeout,
        metavar="S",
        help=f"seconds to connect (default {_DEFAULTS.connect_timeout:g})",
    )
    group.add_argument(
        "--read-timeout",
        type=float,
        default=_DEFAULTS.read_timeout,
        metavar="S",
        help=f"seconds to wait for data (default {_DEFAULTS.read_timeout:g})",
    )
    group.add_argument(
        "--retries",
        type=int,
        default=_DEFAULTS.retries,
        metavar="N",
        help=f"retries of transient failures (default {_DEFAULTS.retries})",
    )
    group.add_argument(
        "--retry-backoff",
        type=float,
        default=_DEFAULTS.backoff,
        metavar="S",
        help=f"first retry delay, doubling after (default {_DEFAULTS.backoff:g})",
    )
    group.add_argument(
        "--max-redirects",
        type=int,
        default=_DEFAULTS.max_redirects,
        metavar="N",
        help=f"redirects followed per request (default {_DEFAULTS.max_redirects})",
    )


def apply_remote_arguments(args: argparse.Namespace, inputs: Iterable[str]) -> None:
    """Check the inputs' URL schemes and configure fetching from the flags (exit 2 if bad)."""
    for item in inputs:
        cause = unsupported_scheme(item)
        if cause is not None:
            raise UsageError(f"{item}: {cause}")
        if is_url(item) and "@" in urlsplit(item).netloc:
            raise UsageError(
                f"{display(item)}: credentials in a URL are not accepted (they would be "
                "printed and sent on); put the token in a variable and pass --token-env NAME"
            )
    remote.configure(
        RemoteSettings(
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
            retries=args.retries,
            backoff=args.retry_backoff,
            max_redirects=args.max_redirects,
            token_env=args.token_env,
            ca_bundle=args.ca_bundle,
        )
    )


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def refuse_urls(command: str, args: argparse.Namespace) -> None:
    """A command that reads tensor data given a URL anywhere in its arguments: exit 2."""
    if command in URL_COMMANDS:
        return
    for name, value in vars(args).items():
        if name in ("command", "run"):
            continue
        for text in _strings(value):
            if is_url(text) or unsupported_scheme(text) is not None:
                raise NeedsLocalFile(text, command)


def refuse_urls_for(option: str, paths: Iterable[str]) -> None:
    """An option that reads tensor data (`--stats`, `--deep`) with a URL among the inputs."""
    for path in paths:
        if is_url(path):
            raise NeedsLocalFile(path, option)
