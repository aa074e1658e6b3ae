"""The lab plays systemd: each node's `kaldrix-node` service is a child of the lab process.

`Service` starts the node program, waits for it to say `READY=1`, watches it, stops it
with SIGTERM (then SIGKILL), and records the unit's state where the node's `systemctl
is-active` reads it. `Init` is the loopback endpoint the nodes' `systemctl` talks to for
every other verb. Because the lab is the parent, no service outlives it and none is left
a zombie; a service notices a vanished lab within one block interval and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kconsole.lab import labtool

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
UNIT = "kaldrix-node"
DESCRIPTION = "KALDRIX validator network node"
ALWAYS_ACTIVE = ("sshd", "ssh")

JOB_FAILED = (
    "Job for kaldrix-node.service failed because the control process exited with error code.\n"
    'See "systemctl status kaldrix-node.service" and "journalctl -xeu kaldrix-node.service" for details.\n'
)


@dataclass
class Reply:
    """What a `systemctl` invocation prints and returns."""

    rc: int = 0
    stdout: str = ""
    stderr: str = ""


class Service:
    """One node's kaldrix-node unit: state, main process, start/stop/reload, crash."""

    def __init__(self, node: str, root: Path, argv: list[str], env: dict[str, str]) -> None:
        self.node = node
        self.root = root
        self.argv = argv
        self.env = env
        self.state = "inactive"
        """systemd's ActiveState: inactive, activating, active, deactivating or failed."""
        self.result = "success"
        self.enabled = True
        self.since = time.time()
        self.exit_status: int | None = None
        self.last_pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self._write_state()

    @property
    def main_pid(self) -> int | None:
        """The running service's pid, or None."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def _set(self, state: str, result: str | None = None) -> None:
        self.state = state
        if result is not None:
            self.result = result
        self.since = time.time()
        self._write_state()

    def _write_state(self) -> None:
        path = self.root / "run" / "systemd" / f"{UNIT}.state"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            detail = {
                "result": self.result,
                "since": self.since,
                "pid": self.main_pid,
                "enabled": self.enabled,
            }
            tmp.write_text(f"{self.state}\n{json.dumps(detail)}\n")
            os.replace(tmp, path)

    async def start(self) -> Reply:
        """Start the service and wait until it is ready; JOB_FAILED if it dies first."""
        async with self._lock:
            if self.state == "active":
                return Reply()
            self._set("activating")
            log_path = self.root / labtool.NODE_LOG
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log_fd,
                    cwd=self.root,
                    env=self.env,
                    start_new_session=True,
                )
            except OSError as exc:
                self._set("failed", "resources")
                return Reply(1, "", f"Failed to start kaldrix-node.service: {exc.strerror}\n")
            finally:
                os.close(log_fd)
            self.last_pid = proc.pid
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
            except TimeoutError:
                line = b""
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if line.strip() != b"READY=1":
                self.exit_status = await proc.wait()
                self._set("failed", "exit-code" if self.exit_status >= 0 else "signal")
                return Reply(1, "", JOB_FAILED)
            self._proc = proc
            self._stopping = False
            self.exit_status = None
            self._set("active", "success")
            self._watch = asyncio.create_task(self._watch_exit(proc))
            return Reply()

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            while await proc.stdout.read(4096):
                pass
        rc = await proc.wait()
        if self._proc is proc:
            self._proc = None
            self.exit_status = rc
            if self._stopping:
                self._set("inactive", "success")
            else:
                self._set("failed", "exit-code" if rc >= 0 else "signal")

    async def stop(self) -> Reply:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; a failed unit stays failed."""
        async with self._lock:
            proc, watch = self._proc, self._watch
            if proc is None or watch is None:
                return Reply()
            self._stopping = True
            self._set("deactivating")
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(watch), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await watch
            return Reply()

    async def restart(self) -> Reply:
        """Stop, then start."""
        await self.stop()
        return await self.start()

    def reload(self) -> Reply:
        """SIGHUP to the running service."""
        pid = self.main_pid
        if pid is None:
            return Reply(1, "", "kaldrix-node.service is not active, cannot reload.\n")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
        return Reply()

    def crash(self, sig: int = signal.SIGKILL) -> bool:
        """Kill the service as a crash or power loss would: the unit ends up failed."""
        pid = self.main_pid
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return True

    def reset_failed(self) -> None:
        """`systemctl reset-failed`."""
        if self.state == "failed":
            self._set("inactive", "success")

    async def close(self) -> None:
        """Stop the service for good (the lab is shutting down)."""
        await self.stop()
        if self._watch is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    def status_text(self) -> tuple[str, int]:
        """`systemctl status kaldrix-node` output and exit code."""
        since = time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        ago = _ago(time.time() - self.since)
        enabled = "enabled" if self.enabled else "disabled"
        lines = [
            f"● kaldrix-node.service - {DESCRIPTION}",
            f"     Loaded: loaded (/etc/systemd/system/kaldrix-node.service; {enabled}; preset: enabled)",
        ]
        pid = self.main_pid
        if self.state == "active" and pid is not None:
            lines += [
                f"     Active: active (running) since {since}; {ago} ago",
                f"   Main PID: {pid} (kaldrix-node)",
                "      Tasks: 1 (limit: 4915)",
                "     CGroup: /system.slice/kaldrix-node.service",
                f"             └─{pid} /usr/bin/kaldrix-node run",
            ]
        elif self.state == "failed":
            rc = self.exit_status or 0
            code = "killed" if rc < 0 else "exited"
            status = f"{-rc}/{signal.Signals(-rc).name[3:]}" if rc < 0 else f"{rc}/FAILURE"
            lines += [
                f"     Active: failed (Result: {self.result}) since {since}; {ago} ago",
                f"    Process: {self.last_pid} ExecStart=/usr/bin/kaldrix-node run (code={code}, status={status})",
                f"   Main PID: {self.last_pid} (code={code}, status={status})",
            ]
        else:
            lines.append(
                f"     Active: {self.state} (dead) since {since}; {ago} ago"
                if self.state == "inactive"
                else f"     Active: {self.state}"
            )
        tail = _tail(self.root / labtool.NODE_LOG, 10, self.node)
        if tail:
            lines.append("")
            lines += tail
        return "\n".join(lines) + "\n", 0 if self.state == "active" else 3


def _ago(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}min {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}min"


def _tail(path: Path, n: int, host: str) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            data = fh.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return []
    out = []
    for line in data:
        stamp, _, rest = line.partition(" ")
        try:
            t = time.strftime("%b %d %H:%M:%S", time.gmtime(labtool.parse_iso(stamp)))
        except ValueError:
            t = stamp
        out.append(f"{t} {host} {rest}")
    return out


async def systemctl(service: Service | None, argv: list[str]) -> Reply:
    """Carry out one `systemctl ARGS` for a node (`service` is None on a host without the unit)."""
    words = [a for a in argv if not a.startswith("-")]
    quiet = "-q" in argv or "--quiet" in argv
    if not words:
        state = service.state if service else "inactive"
        sub = "running" if state == "active" else "dead"
        text = (
            "  UNIT                 LOAD   ACTIVE SUB     DESCRIPTION\n"
            "  sshd.service         loaded active running OpenBSD Secure Shell server\n"
        )
        if service:
            text += f"  kaldrix-node.service loaded {state:<6} {sub:<7} {DESCRIPTION}\n"
        return Reply(0, text)
    verb, units = words[0], [u.removesuffix(".service") for u in words[1:]]
    if verb == "daemon-reload":
        return Reply()
    if not units:
        return Reply(1, "", "Too few arguments.\n")
    out = Reply()
    for unit in units:
        r = await _one(service, verb, unit, quiet)
        out.stdout += r.stdout
        out.stderr += r.stderr
        out.rc = out.rc or r.rc
    return out


async def _one(service: Service | None, verb: str, unit: str, quiet: bool) -> Reply:
    known = unit == UNIT and service is not None
    if unit in ALWAYS_ACTIVE:
        if verb in ("is-active", "status"):
            return Reply(
                0,
                ""
                if quiet
                else (
                    "active\n"
                    if verb == "is-active"
                    else "● sshd.service - OpenBSD Secure Shell server\n"
                    "     Active: active (running)\n"
                ),
            )
        if verb == "is-enabled":
            return Reply(0, "enabled\n")
        return Reply()
    if not known:
        missing = {
            "start": (5, f"Failed to start {unit}.service: Unit {unit}.service not found.\n"),
            "restart": (5, f"Failed to restart {unit}.service: Unit {unit}.service not found.\n"),
            "stop": (5, f"Failed to stop {unit}.service: Unit {unit}.service not loaded.\n"),
            "reload": (5, f"Failed to reload {unit}.service: Unit {unit}.service not found.\n"),
            "status": (4, f"Unit {unit}.service could not be found.\n"),
            "is-enabled": (
                1,
                f"Failed to get unit file state for {unit}.service: No such file or directory\n",
            ),
        }
        if verb == "is-active":
            return Reply(3, "" if quiet else "inactive\n")
        if verb == "is-failed":
            return Reply(1, "" if quiet else "inactive\n")
        rc, err = missing.get(verb, (1, f"Unknown command verb '{verb}'.\n"))
        return Reply(rc, "", err)
    assert service is not None
    if verb == "start":
        return await service.start()
    if verb == "stop":
        return await service.stop()
    if verb in ("restart", "reload-or-restart"):
        return await service.restart()
    if verb == "try-restart":
        return await service.restart() if service.state == "active" else Reply()
    if verb == "reload":
        return service.reload()
    if verb == "status":
        text, rc = service.status_text()
        return Reply(rc, text)
    if verb == "is-active":
        return Reply(0 if service.state == "active" else 3, "" if quiet else f"{service.state}\n")
    if verb == "is-failed":
        return Reply(0 if service.state == "failed" else 1, "" if quiet else f"{service.state}\n")
    if verb == "is-enabled":
        return Reply(0 if service.enabled else 1, "enabled\n" if service.enabled else "disabled\n")
    if verb in ("enable", "disable"):
        service.enabled = verb == "enable"
        service._write_state()
        link = "/etc/systemd/system/multi-user.target.wants/kaldrix-node.service"
        msg = (
            f"Created symlink {link} → /etc/systemd/system/kaldrix-node.service.\n"
            if service.enabled
            else f'Removed "{link}".\n'
        )
        return Reply(0, "", msg)
    if verb == "reset-failed":
        service.reset_failed()
        return Reply()
    if verb == "show":
        return Reply(
            0,
            f"Id=kaldrix-node.service\nActiveState={service.state}\nResult={service.result}\n"
            f"MainPID={service.main_pid or 0}\nUnitFileState={'enabled' if service.enabled else 'disabled'}\n",
        )
    return Reply(1, "", f"Unknown command verb '{verb}'.\n")


class Init:
    """The loopback endpoint the nodes' `systemctl` sends requests to (one per lab)."""

    def __init__(self, token: str, lookup: Callable[[str], tuple[bool, Service | None]]) -> None:
        self.token = token
        self._lookup = lookup
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Listen on 127.0.0.1; returns the port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 16)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            req = json.loads(line)
            if not hmac.compare_digest(str(req.get("token", "")), self.token):
                reply = Reply(1, "", "Failed to connect to bus: Permission denied\n")
            else:
                exists, service = self._lookup(str(req.get("node", "")))
                argv = [str(a) for a in req.get("argv", [])]
                reply = (
                    await systemctl(service, argv)
                    if exists
                    else Reply(1, "", "Failed to connect to bus: No such host\n")
                )
            writer.write(
                json.dumps(
                    {"rc": reply.rc, "stdout": reply.stdout, "stderr": reply.stderr}
                ).encode()
                + b"\n"
            )
            await writer.drain()
        except (OSError, ValueError, TimeoutError, AttributeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await self._server.wait_closed()
