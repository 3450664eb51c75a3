"""Shared CLI helpers: the JSON schema version and the console."""

from __future__ import annotations

from rich.console import Console

JSON_SCHEMA_VERSION = 1


def console() -> Console:
    return Console(highlight=False, soft_wrap=False)
