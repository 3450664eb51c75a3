"""Shared CLI helpers: the JSON schema version and the console."""

from __future__ import annotations

import json
from typing import Any, Protocol

from rich.console import Console

from sa3ckpt.textsafe import escape_control

JSON_SCHEMA_VERSION = 1


def console() -> Console:
    return Console(highlight=False, soft_wrap=False)


class Ledger(Protocol):
    def lines(self) -> list[str]: ...

    def to_json(self) -> dict[str, Any]: ...


def print_ledger(ledger: Ledger, command: str, as_json: bool) -> None:
    """A command's ledger: one versioned JSON document, or escaped lines for people."""
    if as_json:
        doc = {"schema": JSON_SCHEMA_VERSION, "command": command, **ledger.to_json()}
        print(json.dumps(doc, indent=1))
        return
    for line in ledger.lines():
        print(escape_control(line))
