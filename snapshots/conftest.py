"""Snapshot tests: nothing animated, nothing blinking, UTC, colour unless a test asks otherwise."""

from __future__ import annotations

import os

import pytest

from tests.tui_support import utc_local_time  # noqa: F401 - re-exported as a fixture

os.environ["TEXTUAL_ANIMATIONS"] = "none"


@pytest.fixture(autouse=True)
def _pinned_environment(monkeypatch: pytest.MonkeyPatch, utc_local_time: None) -> None:  # noqa: F811
    """No NO_COLOR leaking in from the developer's shell, no discovered site or keymap."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("KCONSOLE_SITE", raising=False)
    monkeypatch.delenv("KCONSOLE_KEYMAP", raising=False)
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
