"""`shell`: a command on the console's own machine (checks, glue, and the tests' workhorse)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.errors import OperationFailed


async def run_local(
    command: str, ctx: StepContext, cwd: str | None = None, env: dict[str, str] | None = None
) -> ActionResult:
    """Run `command` under /bin/sh locally, streaming output to the journal.

    The process gets its own process group so a timeout or cancellation kills the
    whole pipeline, not just the shell.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd or None,
            env=full_env,
            start_new_session=True,
        )
    except OSError as exc:
        raise OperationFailed(f"cannot start local command: {exc.strerror}.") from None
    out: list[str] = []
    err: list[str] = []

    async def pump(stream: asyncio.StreamReader, name: str, sink: list[str]) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace")
            sink.append(text)
            await ctx.emit(name, text.rstrip("\n"))

    assert proc.stdout is not None and proc.stderr is not None
    try:
        await asyncio.gather(pump(proc.stdout, "stdout", out), pump(proc.stderr, "stderr", err))
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    return ActionResult(exit_code=code, stdout="".join(out), stderr="".join(err))


class Shell(Action):
    """Run a command locally with /bin/sh."""

    name = "shell"
    help = "Run a command on the console's machine."
    fields: ClassVar[dict[str, Field]] = {
        "command": Field("command", required=True, help="shell command; values are quoted"),
        "cwd": Field("text", help="working directory"),
        "env": Field("table", help="extra environment variables"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Run the command and report its exit code and output."""
        env = {str(k): str(v) for k, v in (ctx.values.get("env") or {}).items()}
        return await run_local(ctx.values["command"], ctx, ctx.values.get("cwd"), env)
