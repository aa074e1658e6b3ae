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
def served_lab(
    directory: Path, nodes: int = 9, faults: str = ""
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Run `kconsole lab serve` in a child process until the block ends: (process, site path).

    Its log goes to DIR/lab.log: a pipe nobody reads would fill and stall the lab.
    """
    directory.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "kconsole",
        "lab",
        "serve",
        "--dir",
        str(directory),
        "--nodes",
        str(nodes),
    ]
    if faults:
        args += ["--faults", faults]
    log_path = directory / "lab.log"
    log = log_path.open("a")
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("ready "):
            proc.wait(timeout=10)
            tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
            raise OperationFailed(f"the lab did not start: {tail[0]}")
        yield proc, Path(line.removeprefix("ready "))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def lab_in_background(directory: Path, nodes: int = 9, faults: str = "") -> Iterator[Path]:
    """Serve the lab in a child process, export its lab.env into this process (S3
    credentials file, webhook sink) and yield the site path; stop it afterwards."""
    with served_lab(directory, nodes, faults) as (_, site):
        env_file = directory / "lab.env"
        if env_file.exists():
            os.environ.update(read_env_file(env_file))
        yield site
