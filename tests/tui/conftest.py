"""Fixtures for the TUI tests.

Pilot tests are plain functions that drive the app with `asyncio.run`, so the suite needs
no async pytest plugin. Every test runs from inside fixtures/data so the paths the app
shows are short, relative and the same on every machine (the snapshots depend on it).
"""

from __future__ import annotations

import pytest

from tests.tui.helpers import DATA


@pytest.fixture(autouse=True)
def in_fixture_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
