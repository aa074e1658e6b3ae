"""`MemoryTransport`: the node transport in memory, for testing the executor without sockets.

Replies are scripted per node and command pattern; every call is recorded.

    transport = MemoryTransport()
    transport.reply("validator1", r"^systemctl stop", exit_status=0)
    transport.reply("*", r"^tar ", stdout=b"...", delay=0.1)
    transport.down("api2")                     # NodeUnreachable for everything on api2
    result = await transport.run(node, "systemctl stop kaldrix-node")
    assert transport.commands("validator1") == ["systemctl stop kaldrix-node"]
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from kconsole.site import Node
from kconsole.transport.base import (
    CommandResult,
    CommandTimeout,
    NodeUnreachable,
    OutputCallback,
    Sink,
    deliver,
)

CallKind = Literal["run", "stream_in", "capture", "probe"]

Pattern = str | re.Pattern[str] | Callable[[str], bool]
"""How a reply picks commands: a regular expression searched in the command, or a predicate."""


@dataclass
class Reply:
    """What a scripted command does."""

    exit_status: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    delay: float = 0.0
    """Seconds the command "runs" before answering (timeouts apply to it)."""
    raises: BaseException | None = None
    """Raised instead of answering (after `delay`): NodeUnreachable, ConnectionLost, ..."""
    stdout_from_stdin: Callable[[bytes], bytes] | None = None
    """Computes stdout from what was fed to stdin (e.g. a fake `sha256sum`)."""
    times: int | None = None
    """How many calls this reply answers before it is used up; None for every call."""


@dataclass
class Call:
    """One recorded call."""

    kind: CallKind
    node: str
    command: str
    stdin: bytes = b""
    timeout: float | None = None


@dataclass
class _Rule:
    node: str
    pattern: Pattern
    reply: Reply
    used: int = 0

    def matches(self, node: str, command: str) -> bool:
        if self.node not in ("*", node):
            return False
        if self.reply.times is not None and self.used >= self.reply.times:
            return False
        if callable(self.pattern) and not isinstance(self.pattern, re.Pattern):
            return bool(self.pattern(command))
        return re.search(self.pattern, command) is not None


UNSCRIPTED = Reply(
    exit_status=127, stderr=b"memory transport: no reply scripted for this command\n"
)
"""What an unscripted command answers: "command not found"."""


@dataclass
class MemoryTransport:
    """A NodeTransport that answers from a script and records every call."""

    default: Reply = field(default_factory=lambda: UNSCRIPTED)
    """The reply for commands no rule matches."""
    chunk_size: int = 64 * 1024
    """Size of the pieces stdout is delivered in (to sinks and on_output)."""
    calls: list[Call] = field(default_factory=list)
    """Every call, in order."""
    latency_ms: dict[str, float] = field(default_factory=dict)
    """What `probe` answers per node (default 1.0)."""
    closed: bool = False

    def __post_init__(self) -> None:
        self._rules: list[_Rule] = []
        self._down: dict[str, str] = {}

    # -- scripting --------------------------------------------------------------------

    def reply(
        self,
        node: str,
        pattern: Pattern,
        *,
        exit_status: int = 0,
        stdout: bytes | str = b"",
        stderr: bytes | str = b"",
        delay: float = 0.0,
        raises: BaseException | None = None,
        stdout_from_stdin: Callable[[bytes], bytes] | None = None,
        times: int | None = None,
    ) -> Reply:
        """Answer commands on `node` ("*" for any) that match `pattern`.

        Rules are tried in the order they were added; one with `times` stops matching
        when used up, so a `times=1` failure added before a success scripts a retry.
        """
        reply = Reply(
            exit_status=exit_status,
            stdout=stdout.encode() if isinstance(stdout, str) else stdout,
            stderr=stderr.encode() if isinstance(stderr, str) else stderr,
            delay=delay,
            raises=raises,
            stdout_from_stdin=stdout_from_stdin,
            times=times,
        )
        self._rules.append(_Rule(node, pattern, reply))
        return reply

    def down(self, node: str, reason: str = "connection refused") -> None:
        """Make every call to `node` raise NodeUnreachable."""
        self._down[node] = reason

    def up(self, node: str) -> None:
        """Undo `down`."""
        self._down.pop(node, None)

    def commands(self, node: str | None = None) -> list[str]:
        """The commands run so far (on `node`, or everywhere)."""
        return [
            c.command for c in self.calls if c.kind != "probe" and (node is None or c.node == node)
        ]

    # -- the NodeTransport protocol ---------------------------------------------------

    async def run(
        self,
        node: Node,
        command: str,
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Answer from the script; stdout and stderr are buffered and sent to on_output."""
        self.calls.append(Call("run", node.name, command, stdin or b"", timeout))
        return await self._answer(node, command, stdin or b"", timeout, on_output, None)

    async def stream_in(
        self,
        node: Node,
        command: str,
        source: AsyncIterator[bytes],
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Consume `source` (recorded as the call's stdin), then answer from the script."""
        call = Call("stream_in", node.name, command, b"", timeout)
        self.calls.append(call)
        self._check_up(node)
        parts = []
        async for chunk in source:
            parts.append(chunk)
        call.stdin = b"".join(parts)
        return await self._answer(node, command, call.stdin, timeout, on_output, None)

    async def capture(
        self,
        node: Node,
        command: str,
        sink: Sink,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Answer from the script, stdout going to `sink` in `chunk_size` pieces."""
        self.calls.append(Call("capture", node.name, command, b"", timeout))
        return await self._answer(node, command, b"", timeout, on_output, sink)

    async def probe(self, node: Node) -> float:
        """`latency_ms[node]` (1.0 by default), or NodeUnreachable if the node is down."""
        self.calls.append(Call("probe", node.name, ""))
        self._check_up(node)
        return self.latency_ms.get(node.name, 1.0)

    async def timed_run(
        self, node: Node, command: str, *, timeout: float | None = None
    ) -> tuple[float, CommandResult]:
        """`probe` then `run`, so scripted latencies, holds and replies all apply."""
        latency = await self.probe(node)
        return latency, await self.run(node, command, timeout=timeout)

    async def close(self) -> None:
        """Mark the transport closed."""
        self.closed = True

    # -- answering --------------------------------------------------------------------

    def _check_up(self, node: Node) -> None:
        if node.name in self._down:
            raise NodeUnreachable(node.name, self._down[node.name])

    def _find(self, node: str, command: str) -> Reply:
        for rule in self._rules:
            if rule.matches(node, command):
                rule.used += 1
                return rule.reply
        return self.default

    async def _answer(
        self,
        node: Node,
        command: str,
        stdin: bytes,
        timeout: float | None,
        on_output: OutputCallback | None,
        sink: Sink | None,
    ) -> CommandResult:
        self._check_up(node)
        reply = self._find(node.name, command)
        started = time.monotonic()
        if reply.delay:
            if timeout is not None and reply.delay > timeout:
                await asyncio.sleep(timeout)
                raise CommandTimeout(node.name, command, timeout)
            await asyncio.sleep(reply.delay)
        if reply.raises is not None:
            raise reply.raises
        stdout = reply.stdout_from_stdin(stdin) if reply.stdout_from_stdin else reply.stdout
        for start in range(0, len(stdout), self.chunk_size):
            piece = stdout[start : start + self.chunk_size]
            if sink is not None:
                await sink(piece)
            else:
                await deliver(on_output, "stdout", piece)
        await deliver(on_output, "stderr", reply.stderr)
        return CommandResult(
            exit_status=reply.exit_status,
            stdout=b"" if sink is not None else stdout,
            stderr=reply.stderr,
            duration_s=time.monotonic() - started,
        )
