"""Gates asked on a real terminal (tmux): confirm, typed confirm, and Ctrl+C at a prompt."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

RUNBOOK = """
[runbook]
id = "terminal-gates"
title = "Terminal gates"
rto = "5m"

[params.node]
type = "node"
default = "validator1"

[[steps]]
id = "plain"
action = "shell"
command = "echo plain done"
gate = "confirm"

[[steps]]
id = "typed"
action = "shell"
command = "echo typed done on {node}"
for_each = "node"
gate = "type:{node}"
needs = ["plain"]
"""


class Term:
    """A tmux session running one command."""

    def __init__(self, command: str) -> None:
        self.name = f"kc-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                self.name,
                "-x",
                "120",
                "-y",
                "40",
                f"{command}; echo EXITED $?; sleep 60",
            ],
            check=True,
        )

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        ).stdout

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared:\n{self.screen()}")
            time.sleep(0.1)

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def _run(site_path: Path, rb: Path) -> str:
    return (
        f"{shlex.quote(sys.executable)} -m kconsole --site {shlex.quote(str(site_path))} "
        f"run {shlex.quote(str(rb))}"
    )


def test_confirm_and_typed_gates_on_a_terminal(site_path: Path, tmp_path: Path) -> None:
    rb = tmp_path / "rb.toml"
    rb.write_text(RUNBOOK)
    term = Term(_run(site_path, rb))
    try:
        term.wait_for("[y/N]")
        term.keys("y", "Enter")
        term.wait_for("type 'validator1' to confirm")
        term.keys("validator2", "Enter")  # a slip: asked again
        term.wait_for("'validator2' does not match 'validator1'")
        term.keys("Enter")  # an empty answer refuses
        term.wait_for("Abort the run? (no: back to the gate)")
        term.keys("y", "Enter")
        term.wait_for("EXITED 1")
        assert "typed done" not in term.screen()
    finally:
        term.close()
    term = Term(_run(site_path, rb))
    try:
        term.wait_for("[y/N]")
        term.keys("y", "Enter")
        term.wait_for("to confirm")
        term.keys("validatr1", "Enter")
        term.wait_for("does not match")
        term.keys("validator1", "Enter")
        term.wait_for("EXITED 0")
        assert "typed done on validator1" in term.screen()
    finally:
        term.close()


def test_ctrl_c_at_a_gate_prompt_stops_resumable_at_once(site_path: Path, tmp_path: Path) -> None:
    rb = tmp_path / "rb.toml"
    rb.write_text(RUNBOOK)
    term = Term(_run(site_path, rb))
    try:
        term.wait_for("[y/N]")
        term.keys("C-c")
        term.wait_for("EXITED 3", timeout=15)
        assert "--resume" in term.screen()
    finally:
        term.close()
