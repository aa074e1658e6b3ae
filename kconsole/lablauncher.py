"""Running the lab in a child process while the console runs in this one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from kconsole.errors import OperationFailed


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines of a lab.env file (optionally `export`ed and quoted)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            out[key.strip()] = value.strip().strip("'\"")
    return out


@contextlib.contextmanager
def lab_in_background(directory: Path, nodes: int = 9, faults: str = "") -> Iterator[Path]:
    """Start `kconsole lab serve` in a child, wait for `ready`, export its lab.env into
    this process (S3 credentials file, webhook sink), yield the site path, stop it."""
    directory.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "kconsole", "lab", "serve", "--dir", str(directory), "--nodes", str(nodes)]
    if faults:
        args += ["--faults", faults]
    log = (directory / "lab.log").open("a")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("ready "):
            proc.wait(timeout=10)
            tail = (directory / "lab.log").read_text().strip().splitlines()[-1:] or ["no output"]
            raise OperationFailed(f"the lab did not start: {tail[0]}")
        site = Path(line.removeprefix("ready "))
        env_file = directory / "lab.env"
        if env_file.exists():
            os.environ.update(read_env_file(env_file))
        yield site
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
