"""Helpers for tests that use the lab: start one, reach its nodes, wait for a condition.

Import them (`from tests.labfixture import running_lab, ssh_to, ...`); nothing here is
a pytest fixture by itself, so a test module picks its own scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import httpx

from kconsole.lab import Lab


@contextlib.asynccontextmanager
async def running_lab(directory: Path, nodes: int = 9, faults: str = "") -> AsyncIterator[Lab]:
    """A started lab in `directory`, stopped on exit."""
    lab = await Lab.start(directory, nodes=nodes, faults=faults)
    try:
        yield lab
    finally:
        await lab.stop()


def connect_options(lab: Lab, **overrides: Any) -> dict[str, Any]:
    """asyncssh.connect() options that trust exactly the lab's host keys and use its key."""
    options: dict[str, Any] = {
        "username": "root",
        "client_keys": [str(lab.client_key_path)],
        "known_hosts": str(lab.known_hosts_path),
        "config": None,
        "agent_path": None,
        "connect_timeout": 10,
    }
    options.update(overrides)
    return options


@contextlib.asynccontextmanager
async def ssh_to(
    lab: Lab, node: str, **overrides: Any
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """An SSH connection to a lab node, host key checked against DIR/known_hosts."""
    async with asyncssh.connect(
        "127.0.0.1", lab.host(node).ssh_port, **connect_options(lab, **overrides)
    ) as conn:
        yield conn


async def run_on(
    lab: Lab, node: str, command: str, timeout: float = 30
) -> asyncssh.SSHCompletedProcess:
    """Run one command on a lab node (new connection); never raises on a non-zero exit."""
    async with ssh_to(lab, node) as conn:
        return await conn.run(command, check=False, timeout=timeout)


async def health(lab: Lab, node: str, timeout: float = 5) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a node's health endpoint."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        resp = await client.get(lab.host(node).health_url)
    return resp.status_code, resp.json()


async def wait_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 15,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Poll `check` (sync or async) until true; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def processes_of_lab(lab_pid: int) -> list[int]:
    """Live processes started for the lab running in process `lab_pid` (found by their
    KALDRIX_LAB_PID environment variable); zombies are ignored."""
    found = []
    marker = f"KALDRIX_LAB_PID={lab_pid}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == lab_pid:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
            if state == b"Z":
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if marker in env:
            found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    """True if `pid` is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
