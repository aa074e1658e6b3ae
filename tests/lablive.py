"""A lab served by a real `kconsole lab serve` subprocess, for tests that drive the CLI
in-process against it (the CLI runs its own event loop, so the lab cannot share one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kconsole.lablauncher import read_env_file


class LiveLab:
    """A running lab subprocess and helpers to poke it."""

    def __init__(self, directory: Path, proc: subprocess.Popen[str]) -> None:
        self.dir = directory
        self.proc = proc
        self.site = directory / "site.toml"

    def env(self) -> dict[str, str]:
        """The variables of DIR/lab.env (webhook sink, AWS files)."""
        return read_env_file(self.dir / "lab.env")

    def fault(self, action: str, spec: str | None = None) -> None:
        """Change the running lab's faults (it re-reads faults.toml every 0.5 s)."""
        args = [sys.executable, "-m", "kconsole.lab", "fault", "--dir", str(self.dir), action]
        if spec:
            args.append(spec)
        subprocess.run(args, check=True, capture_output=True, timeout=30)
        time.sleep(1.2)

    def root(self, node: str) -> Path:
        """A node's sandbox root."""
        return self.dir / "nodes" / node


@contextmanager
def live_lab(directory: Path, nodes: int = 9, faults: str = "") -> Iterator[LiveLab]:
    """Start `kconsole lab serve` and wait for its ready line; SIGTERM it afterwards."""
    args = [sys.executable, "-m", "kconsole", "lab", "serve", "--dir", str(directory), "--nodes", str(nodes)]
    if faults:
        args += ["--faults", faults]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready "):
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"lab did not start: {line!r} {err}")
        yield LiveLab(directory, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
