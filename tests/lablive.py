"""A lab served by a real `kconsole lab serve` subprocess, for tests that drive the CLI
in-process against it (the CLI runs its own event loop, so the lab cannot share one)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kconsole.lablauncher import read_env_file, served_lab


class LiveLab:
    """A running lab subprocess and helpers to poke it."""

    def __init__(self, directory: Path, proc: subprocess.Popen[str]) -> None:
        self.dir = directory
        self.proc = proc
        self.site = directory / "site.toml"

    def env(self) -> dict[str, str]:
        """The variables of DIR/lab.env (webhook sink, AWS files)."""
        return read_env_file(self.dir / "lab.env")

    def _fault_events(self) -> int:
        try:
            text = (self.dir / "lab" / "events.log").read_text()
        except FileNotFoundError:
            return 0
        return sum(
            1 for line in text.splitlines() if " fault set: " in line or " fault cleared: " in line
        )

    def _current_faults(self) -> int:
        listed = subprocess.run(
            [sys.executable, "-m", "kconsole.lab", "fault", "--dir", str(self.dir), "list"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return len([line for line in listed.stdout.splitlines() if line.strip()])

    def fault(self, action: str, spec: str | None = None, timeout: float = 30) -> None:
        """Change the running lab's faults and wait until the lab has applied them (it
        re-reads faults.toml every 0.5 s; on a loaded machine that can take longer)."""
        changes = (
            len(spec.split(",")) if spec else (self._current_faults() if action == "clear" else 0)
        )
        before = self._fault_events()
        args = [sys.executable, "-m", "kconsole.lab", "fault", "--dir", str(self.dir), action]
        if spec:
            args.append(spec)
        subprocess.run(args, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while self._fault_events() < before + changes:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the lab did not apply `fault {action} {spec or ''}` within {timeout}s"
                )
            time.sleep(0.1)

    def root(self, node: str) -> Path:
        """A node's sandbox root."""
        return self.dir / "nodes" / node


@contextmanager
def live_lab(directory: Path, nodes: int = 9, faults: str = "") -> Iterator[LiveLab]:
    """`kconsole lab serve` in a child process, ready; stopped afterwards."""
    with served_lab(directory, nodes, faults) as (proc, _):
        yield LiveLab(directory, proc)
