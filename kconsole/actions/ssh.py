"""`ssh.exec`, `ssh.stream`, `ssh.capture`: commands on a node over the pooled SSH transport."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.errors import OperationFailed


class _LineEmitter:
    """Turn transport output pieces into journaled lines."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.partial: dict[str, str] = {}

    async def __call__(self, stream: str, data: bytes) -> None:
        text = self.partial.get(stream, "") + data.decode("utf-8", "replace")
        *lines, rest = text.split("\n")
        self.partial[stream] = rest
        for line in lines:
            await self.ctx.emit(stream, line)

    async def flush(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                await self.ctx.emit(stream, rest)
        self.partial.clear()


def transport_of(ctx: StepContext) -> Any:
    """The node transport, or a clear failure when the console has none."""
    if ctx.services.transport is None:
        raise OperationFailed("no SSH transport is configured for this run.")
    return ctx.services.transport


def with_sudo(command: str, sudo: bool) -> str:
    """Prefix `sudo -n` so a missing sudo rule fails at once instead of waiting for a password."""
    return f"sudo -n {command}" if sudo else command


def step_limit(ctx: StepContext, unbounded: float | None = None) -> float | None:
    """The transport's limit for the step's command: the step's own `timeout`, which must
    hold end to end (the node's `timeout` wrapper included); without one, `unbounded`
    (None: the site's `[ssh] command_timeout`; 0: no limit)."""
    return ctx.step.timeout or unbounded


async def run_on_node(ctx: StepContext, command: str, timeout: float | None = None) -> ActionResult:
    """Run `command` on the step's node, streaming its output into the journal; `timeout`
    (default: the step's, see `step_limit`) bounds it here and on the node."""
    node = ctx.require_node()
    emitter = _LineEmitter(ctx)
    limit = step_limit(ctx) if timeout is None else timeout
    result = await transport_of(ctx).run(node, command, timeout=limit, on_output=emitter)
    await emitter.flush()
    return ActionResult(
        exit_code=result.exit_status,
        stdout=result.stdout.decode("utf-8", "replace"),
        stderr=result.stderr.decode("utf-8", "replace"),
    )


class SshExec(Action):
    """Run a command on the node."""

    name = "ssh.exec"
    help = "Run a command on a node over SSH."
    needs_node = True
    fields: ClassVar[dict[str, Field]] = {
        "command": Field("command", required=True, help="remote command; values are quoted"),
        "sudo": Field("bool", help="run under sudo -n"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Run the command; the executor checks `expect`."""
        return await run_on_node(
            ctx, with_sudo(ctx.values["command"], bool(ctx.values.get("sudo")))
        )


async def _file_chunks(path: Path, size: int = 1 << 18) -> AsyncIterator[bytes]:
    # Reads in a thread: the console's event loop never waits on the disk.
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)


class SshStream(Action):
    """Stream a local file into a remote command's stdin."""

    name = "ssh.stream"
    help = "Stream a local file into a command's standard input on a node."
    needs_node = True
    fields: ClassVar[dict[str, Field]] = {
        "command": Field("command", required=True),
        "source": Field("text", required=True, help="local file to send"),
        "sudo": Field("bool"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Send the file with back-pressure; the remote exit status decides."""
        source = Path(ctx.values["source"])
        if not source.is_file():
            raise OperationFailed(f"local file {source} does not exist.")
        emitter = _LineEmitter(ctx)
        result = await transport_of(ctx).stream_in(
            ctx.require_node(),
            with_sudo(ctx.values["command"], bool(ctx.values.get("sudo"))),
            _file_chunks(source),
            timeout=step_limit(ctx, 0),
            on_output=emitter,
        )
        await emitter.flush()
        return ActionResult(
            exit_code=result.exit_status,
            stdout=result.stdout.decode("utf-8", "replace"),
            stderr=result.stderr.decode("utf-8", "replace"),
            summary=f"sent {source.stat().st_size} bytes",
        )


class SshCapture(Action):
    """Capture a remote command's stdout into a local file (written atomically)."""

    name = "ssh.capture"
    help = "Write a command's standard output on a node to a local file."
    needs_node = True
    fields: ClassVar[dict[str, Field]] = {
        "command": Field("command", required=True),
        "dest": Field("text", required=True, help="local file to write"),
        "sudo": Field("bool"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Write to a temp file beside `dest`; rename only if the command succeeded."""
        dest = Path(ctx.values["dest"])
        tmp = dest.with_name(f".{dest.name}.partial")

        def open_tmp() -> BinaryIO:
            dest.parent.mkdir(parents=True, exist_ok=True)
            return tmp.open("wb")

        def finish(fh: BinaryIO) -> None:
            fh.flush()
            os.fsync(fh.fileno())

        # Every file operation runs in a thread: the console's event loop never waits on
        # the disk (the executor awaits this action on it).
        fh = await asyncio.to_thread(open_tmp)
        size = 0

        async def sink(data: bytes) -> None:
            nonlocal size
            await asyncio.to_thread(fh.write, data)
            size += len(data)

        emitter = _LineEmitter(ctx)
        try:
            result = await transport_of(ctx).capture(
                ctx.require_node(),
                with_sudo(ctx.values["command"], bool(ctx.values.get("sudo"))),
                sink,
                timeout=step_limit(ctx, 0),
                on_output=emitter,
            )
            await asyncio.to_thread(finish, fh)
        finally:
            await asyncio.to_thread(fh.close)
            await emitter.flush()
        if result.exit_status != 0:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
        else:
            await asyncio.to_thread(os.replace, tmp, dest)
        return ActionResult(
            exit_code=result.exit_status,
            stderr=result.stderr.decode("utf-8", "replace"),
            summary=f"captured {size} bytes into {dest}",
        )
