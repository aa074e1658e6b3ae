"""Shared fixtures: a small site on disk, and helpers to run the CLI in-process."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

SITE = """
[site]
name = "unit"
state_dir = "state"

[[nodes]]
name = "bootstrap1"
host = "127.0.0.1"
groups = ["bootstrap"]

[[nodes]]
name = "validator1"
host = "127.0.0.1"
groups = ["validator"]

[[nodes]]
name = "validator2"
host = "127.0.0.1"
groups = ["validator"]

[[nodes]]
name = "validator3"
host = "127.0.0.1"
groups = ["validator"]

[tiers.critical]
rpo = "15m"
rto = "1h"
kinds = ["blockchain-state", "validator-keys"]

[[contacts]]
name = "Jane Doe"
role = "Backup Engineer"
phone = "+1-555-0102"

[escalation.recovery]
title = "Recovery Issues"
levels = [{ role = "Backup Engineer", wait = "5m" }, { role = "Operations Lead", wait = "15m" }]

[notify.slack]
webhook_env = "KCONSOLE_TEST_WEBHOOK"
"""


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No discovered site, no real webhook, no colour."""
    monkeypatch.delenv("KCONSOLE_SITE", raising=False)
    monkeypatch.delenv("KCONSOLE_TEST_WEBHOOK", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def site_path(tmp_path: Path) -> Path:
    """A site file with four local nodes in three groups."""
    p = tmp_path / "site.toml"
    p.write_text(SITE)
    return p


@pytest.fixture
def write_runbook(tmp_path: Path):
    """Write a runbook from a dedented string; returns its path."""

    def write(text: str, name: str = "rb.toml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip())
        return p

    return write


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `kconsole ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from kconsole.cli import main

    def run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
