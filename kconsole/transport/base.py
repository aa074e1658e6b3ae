"""The seam between the executor's actions and the wire: one small protocol for running
commands on nodes, with a real implementation over SSH (`ssh.py`) and an in-memory one
for executor tests (`memory.py`), the way httpx separates its transports from its client.
"""

from __future__ import annotations

import inspect
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kconsole.errors import OperationFailed
from kconsole.site import Node

OutputCallback = Callable[[str, bytes], Awaitable[None] | None]
"""`on_output(stream_name, data)`: "stdout" or "stderr" pieces as they arrive (for the journal)."""

Sink = Callable[[bytes], Awaitable[None]]
"""Where `capture` delivers the remote command's stdout, piece by piece."""


@dataclass(frozen=True)
class CommandResult:
    """How a remote command ended, and what it printed."""

    exit_status: int
    """The remote exit code; -1 when the process was killed by a signal (see `signal`)."""
    stdout: bytes
    """Everything on stdout; empty for `capture`, whose stdout went to the sink."""
    stderr: bytes
    """Everything on stderr (for streams, the last MiB: on_output saw all of it)."""
    duration_s: float
    """Wall time from the channel opening to the exit status arriving."""
    signal: str = ""
    """The signal that killed the remote process ("KILL", "TERM"), if one did."""

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_status == 0

    def text(self) -> str:
        """stdout decoded as UTF-8, undecodable bytes replaced."""
        return self.stdout.decode("utf-8", "replace")


class NodeUnreachable(OperationFailed):
    """The node could not be reached: refused, no answer, unknown name, or login refused."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node} is unreachable: {reason}.")
        self.node = node
        self.reason = reason


class HostKeyRejected(OperationFailed):
    """The node offered a host key that is not, or no longer, in known_hosts."""

    def __init__(
        self,
        node: str,
        host: str,
        port: int,
        fingerprint: str,
        *,
        known_hosts: str,
        changed: bool,
        key_line: str = "",
    ) -> None:
        target = known_hosts_name(host, port)
        if changed:
            message = (
                f"node {node} ({host}:{port}) offered host key {fingerprint}, which does NOT match "
                f"the key recorded for it in {known_hosts}: the host was rebuilt or the connection "
                f"is being intercepted; if the change is expected, check the fingerprint out of band, "
                f"then run `ssh-keygen -R '{target}' -f {known_hosts}` and add the new key."
            )
        else:
            message = (
                f"node {node} ({host}:{port}) offered host key {fingerprint}, which is not in "
                f"{known_hosts}; check the fingerprint out of band, then add it with "
                f"`ssh-keyscan -p {port} {host} >> {known_hosts}`."
            )
        super().__init__(message)
        self.node = node
        self.host = host
        self.port = port
        self.fingerprint = fingerprint
        self.known_hosts = known_hosts
        self.changed = changed
        self.key_line = key_line
        """The known_hosts line that would trust the offered key (for an audited TOFU action)."""


class CommandTimeout(OperationFailed):
    """The remote command ran past its timeout and was terminated."""

    def __init__(self, node: str, command: str, timeout: float, *, stopped: bool = True) -> None:
        outcome = (
            "the remote command was terminated"
            if stopped
            else "it was sent SIGTERM and SIGKILL but its session did not end, so it may still be running"
        )
        super().__init__(
            f"`{short_command(command)}` on {node} did not finish within {format_seconds(timeout)}; "
            f"{outcome}."
        )
        self.node = node
        self.command = command
        self.timeout = timeout
        self.stopped = stopped


class ConnectionLost(OperationFailed):
    """The connection dropped while a command was running or data was streaming."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"the connection to {node} was lost: {reason}.")
        self.node = node
        self.reason = reason


@runtime_checkable
class NodeTransport(Protocol):
    """Runs commands on nodes. The executor's actions only ever talk to this."""

    async def run(
        self,
        node: Node,
        command: str,
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Run `command` on `node` and collect its output. A non-zero exit is a result, not an error."""
        ...

    async def stream_in(
        self,
        node: Node,
        command: str,
        source: AsyncIterator[bytes],
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Feed `source` into the remote command's stdin, waiting for the remote to keep up."""
        ...

    async def capture(
        self,
        node: Node,
        command: str,
        sink: Sink,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Deliver the remote command's stdout to `sink`; stderr goes to `on_output`."""
        ...

    async def probe(self, node: Node) -> float:
        """Reach the node (or reuse the connection) and return the round trip in ms."""
        ...

    async def timed_run(
        self, node: Node, command: str, *, timeout: float | None = None
    ) -> tuple[float, CommandResult]:
        """`probe` and `run` in one command: a read-only `command`'s round trip in ms (the
        handshake not counted) and its result. A lost connection is retried once."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


def quote_argv(argv: Iterable[str]) -> str:
    """A shell command line that runs `argv` exactly, each argument quoted."""
    return " ".join(shlex.quote(str(arg)) for arg in argv)


def bounded_command(command: str, seconds: float, *, grace: float = 10.0) -> str:
    """`command` wrapped in coreutils `timeout`, so the node itself stops it even if we vanish.

    A timeout on our side terminates the session's process, but a child of a compound
    command can outlive its shell; bounding on the remote side as well stops the whole tree.
    """
    return quote_argv(["timeout", f"--kill-after={grace:g}", f"{seconds:g}", "sh", "-c", command])


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts spells a host: `host` on port 22, `[host]:port` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def short_command(command: str, limit: int = 80) -> str:
    """`command` on one line, cut to `limit` characters for a message."""
    flat = " ".join(command.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def format_seconds(value: float) -> str:
    """`1.5 s`, `30 s`, `15 min`: a duration for a message."""
    if value >= 120 and value % 60 == 0:
        return f"{value / 60:g} min"
    return f"{value:g} s"


async def deliver(callback: OutputCallback | None, stream: str, data: bytes) -> None:
    """Call `on_output`, awaiting it if it is a coroutine function."""
    if callback is None or not data:
        return
    outcome = callback(stream, data)
    if inspect.isawaitable(outcome):
        await outcome


class TailBuffer:
    """Bytes kept up to a limit; past it only the newest `limit` bytes are kept."""

    def __init__(self, limit: int | None = None) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.limit = limit
        self.dropped = 0
        """How many of the oldest bytes were thrown away."""

    def append(self, data: bytes) -> None:
        """Keep `data`, dropping the oldest bytes if the limit is passed."""
        self._parts.append(data)
        self._size += len(data)
        if self.limit is not None and self._size > 2 * self.limit:
            self._compact()

    def _compact(self) -> None:
        assert self.limit is not None
        whole = b"".join(self._parts)
        cut = len(whole) - self.limit
        if cut > 0:
            self.dropped += cut
            whole = whole[cut:]
        self._parts = [whole]
        self._size = len(whole)

    def getvalue(self) -> bytes:
        """What is kept."""
        if self.limit is not None and self._size > self.limit:
            self._compact()
        return b"".join(self._parts)
