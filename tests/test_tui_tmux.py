"""The real program in a real terminal: tmux runs the console on a site whose nodes are
closed loopback ports, and the test walks the command palette to every screen, then quits."""

from __future__ import annotations

import inspect
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kconsole.cli
from screens.app import SCREENS

SITE = """
[site]
name = "tmux-site"
state_dir = "state"

[ssh]
connect_timeout = "2s"
known_hosts = "known_hosts"

[[nodes]]
name = "validator1"
host = "127.0.0.1"
port = 9
groups = ["validator"]

[[nodes]]
name = "api1"
host = "127.0.0.1"
port = 9
groups = ["api"]

[tiers.critical]
rpo = "15m"
rto = "1h"
kinds = ["blockchain-state"]

[[contacts]]
name = "Jane Doe"
role = "Backup Engineer"
phone = "+1-555-0102"

[escalation.recovery]
title = "Recovery Issues"
levels = [{ role = "Backup Engineer", wait = "5m" }, { role = "CTO" }]
"""


def console_command(site: Path) -> str:
    """`kconsole --site SITE` once the CLI opens the console; until then `python -m screens.app`."""
    if "run_console" in inspect.getsource(kconsole.cli):
        return f"{shlex.quote(sys.executable)} -m kconsole --site {shlex.quote(str(site))}"
    return f"{shlex.quote(sys.executable)} -m screens.app --site {shlex.quote(str(site))}"


class Tmux:
    """One private tmux server running one session of the console."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "console").stdout

    def wait_for(self, text: str, limit: float = 15.0) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{self.screen()}")

    def alive(self) -> bool:
        return self("has-session", "-t", "console").returncode == 0


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip(
            "tmux is not installed (apt-get install tmux); the console is still tested with Pilot"
        )
    server = Tmux(f"kconsole-test-{os.getpid()}")
    yield server
    server("kill-server")


def test_palette_reaches_every_screen_and_ctrl_q_quits(tmp_path: Path, tmux: Tmux) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    (tmp_path / "known_hosts").write_text("")
    exit_file = tmp_path / "exit-code"
    # COLUMNS and LINES from the calling shell would override the pane's real size.
    env = f"-u COLUMNS -u LINES XDG_CONFIG_HOME={shlex.quote(str(tmp_path / 'config'))} TEXTUAL_ANIMATIONS=none"
    command = f"env {env} {console_command(site)}; echo $? > {shlex.quote(str(exit_file))}"
    started = tmux("new-session", "-d", "-s", "console", "-x", "120", "-y", "40", command)
    assert started.returncode == 0, started.stderr

    shown = tmux.wait_for("unreachable")  # the first poll came back without blocking anything
    assert "kconsole · tmux-site — Dashboard" in shown
    for mode, screen_cls in SCREENS.items():
        if mode == "dashboard":
            continue
        tmux("send-keys", "-t", "console", "C-p")
        tmux.wait_for("Search for commands")
        tmux("send-keys", "-t", "console", "-l", screen_cls.NAME)
        tmux.wait_for(screen_cls.HELP[:30])
        tmux("send-keys", "-t", "console", "Enter")
        tmux.wait_for(f"— {screen_cls.NAME} ·")
    tmux(
        "send-keys", "-t", "console", "Escape"
    )  # the catalog's filter has focus: back to the table
    time.sleep(0.3)  # an Escape followed at once by a letter reads as Alt+letter
    tmux("send-keys", "-t", "console", "d")
    shown = tmux.wait_for("— Dashboard ·")
    assert len(max(shown.splitlines(), key=len)) > 100  # laid out for the real 120 columns
    tmux("send-keys", "-t", "console", "C-q")
    deadline = time.monotonic() + 10
    while not exit_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exit_file.read_text().strip() == "0"


HOLD_RUNBOOK = """
[runbook]
id = "hold"
title = "Hold the line"
rto = "10m"

[[steps]]
id = "hold"
title = "Hold"
action = "shell"
gate = "confirm"
command = "echo $$ > {pid}; exec sleep 60"
"""


def test_a_dropped_session_stops_the_run_resumable(tmp_path: Path, tmux: Tmux) -> None:
    """The SSH session drops mid-step (tmux kills the pane: SIGHUP): the step's process is
    killed, the journal says interrupted, and the run can be re-attached."""
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    (tmp_path / "known_hosts").write_text("")
    pid_file = tmp_path / "step.pid"
    rb = tmp_path / "hold.toml"
    rb.write_text(HOLD_RUNBOOK.replace("{pid}", shlex.quote(str(pid_file))))
    cli = [sys.executable, "-m", "kconsole", "--site", str(site)]
    # No terminal: the run stops at its gate, waiting and resumable (exit 3).
    first = subprocess.run(
        [*cli, "run", str(rb)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 3, first.stdout + first.stderr

    env = f"-u COLUMNS -u LINES XDG_CONFIG_HOME={shlex.quote(str(tmp_path / 'config'))} TEXTUAL_ANIMATIONS=none"
    started = tmux(
        "new-session",
        "-d",
        "-s",
        "console",
        "-x",
        "120",
        "-y",
        "40",
        f"env {env} {console_command(site)}",
    )
    assert started.returncode == 0, started.stderr
    tmux.wait_for("— Dashboard ·")
    tmux("send-keys", "-t", "console", "h")
    tmux.wait_for("Hold the line")
    tmux("send-keys", "-t", "console", "e")
    tmux.wait_for("Cancel")  # the gate, re-asked on re-attach
    tmux("send-keys", "-t", "console", "y")
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    step_pid = int(pid_file.read_text())

    tmux("kill-session", "-t", "console")  # the terminal goes away: SIGHUP

    def run_record() -> dict:
        out = subprocess.run(
            [*cli, "runs", "--json"], capture_output=True, text=True, timeout=30
        ).stdout
        return json.loads(out.splitlines()[0])

    deadline = time.monotonic() + 20
    while run_record()["status"] != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.2)
    record = run_record()
    assert record["status"] == "interrupted", record
    journal = (
        (tmp_path / "state" / "runs" / record["id"] / "journal.jsonl").read_text().splitlines()
    )
    last = json.loads(journal[-1])  # written by the console itself, not inferred from a free lock
    assert (last["type"], last["event"], last["status"]) == ("run", "stopped", "interrupted"), last
    deadline = time.monotonic() + 10
    while Path(f"/proc/{step_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{step_pid}").exists(), "the step's process outlived the console"
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    assert "console.hangup" in audit and "SIGHUP" in audit

    def consoles() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if str(site).encode() in cmdline and b"runs" not in cmdline:
                    found.append(int(entry.name))
        return found

    deadline = time.monotonic() + 15
    while consoles() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = consoles()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the console kept running after its terminal went away"
