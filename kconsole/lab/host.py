"""One machine of the lab: a sandbox root, an SSH server behind a fault-injecting relay,
an HTTP health endpoint and, on fleet nodes, the kaldrix-node service.

A command sent over SSH runs through a real `bash -c` (no rc files) in the sandbox with
cwd = root, `KALDRIX_ROOT`/`KALDRIX_NODE` set and the lab's programs first on PATH. The
sandbox is a directory convention, not a security boundary: commands run as the lab's
own user. The DR host also serves SFTP, confined to its root.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from kconsole.lab import labtool
from kconsole.lab.httpd import HttpServer, Request, Response
from kconsole.lab.relay import CHUNK, Link, Relay
from kconsole.lab.service import Service

SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
_SHELL_ARGS = ["--noprofile", "--norc"] if SHELL.endswith("bash") else []
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class LabContext:
    """What every host of one lab shares."""

    dir: Path
    bin_dir: Path
    python: str
    init_port: int
    token: str
    client_keys: asyncssh.SSHAuthorizedKeys


class LabHost:
    """One lab machine (a fleet node or the DR backup host)."""

    def __init__(
        self,
        ctx: LabContext,
        name: str,
        groups: tuple[str, ...],
        root: Path,
        host_key: asyncssh.SSHKey,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.groups = groups
        self.root = root
        self.control = ctx.dir / "lab" / "nodes" / name
        self.host_key = host_key
        self.link = Link()
        self.disk_full = False
        self.sftp = "dr" in groups
        self.service: Service | None = None
        if "dr" not in groups:
            argv = [ctx.python, "-I", "-S", str(ctx.bin_dir / "labtool.py"), "kaldrix-node", "run"]
            self.service = Service(name, root, argv, self.env("root"))
        self.ssh_port = 0
        self.health_port = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._relay: Relay | None = None
        self._health: HttpServer | None = None
        self._sessions: set[asyncio.subprocess.Process] = set()

    @property
    def fault_bin(self) -> Path:
        """The per-node directory a fault fills with failing commands (first on PATH)."""
        return self.control / "bin"

    @property
    def health_url(self) -> str:
        """The node's health endpoint."""
        return f"http://127.0.0.1:{self.health_port}/health"

    def env(self, user: str) -> dict[str, str]:
        """The environment of a command run on this host (nothing leaks from the lab's own)."""
        extra = [
            p
            for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and p not in _HOST_PATH.split(":")
        ]
        path = os.pathsep.join([str(self.fault_bin), str(self.ctx.bin_dir), _HOST_PATH, *extra])
        return {
            "PATH": path,
            "HOME": str(self.root / "root"),
            "USER": user,
            "LOGNAME": user,
            "SHELL": SHELL,
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.root / "tmp"),
            "KALDRIX_ROOT": str(self.root),
            "KALDRIX_NODE": self.name,
            "KALDRIX_LAB_DIR": str(self.control),
            "KALDRIX_LAB_BIN": str(self.ctx.bin_dir),
            "KALDRIX_LAB_FAULT_BIN": str(self.fault_bin),
            "KALDRIX_LAB_INIT": f"127.0.0.1:{self.ctx.init_port}",
            "KALDRIX_LAB_TOKEN": self.ctx.token,
            "KALDRIX_LAB_PID": str(os.getpid()),
        }

    async def start(self) -> None:
        """Open the SSH server, its relay and the health endpoint."""
        self.fault_bin.mkdir(parents=True, exist_ok=True)
        sftp_factory = (
            functools.partial(
                _ChrootSftp, root=str(self.root).encode(), disk_full=lambda: self.disk_full
            )
            if self.sftp
            else None
        )
        self._acceptor = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_factory=functools.partial(_LabSshServer, self),
            server_host_keys=[self.host_key],
            authorized_client_keys=self.ctx.client_keys,
            process_factory=self._session,
            sftp_factory=sftp_factory,
            allow_scp=self.sftp,
            encoding=None,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=30,
        )
        internal = self._acceptor.sockets[0].getsockname()[1]
        self._relay = Relay(internal, lambda: self.link)
        self.ssh_port = await self._relay.start()
        self._health = HttpServer(self._health_request)
        self.health_port = await self._health.start()

    def drop_connections(self) -> None:
        """Cut every open SSH connection (the link just went down)."""
        if self._relay is not None:
            self._relay.drop_all()

    async def close(self) -> None:
        """Stop serving, end running commands and the service."""
        if self._relay is not None:
            await self._relay.close()
        if self._acceptor is not None:
            self._acceptor.close()
        if self._health is not None:
            await self._health.close()
        for proc in list(self._sessions):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self.service is not None:
            await self.service.close()
        if self._acceptor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), 5)

    # ------------------------------------------------------------------ health

    def health(self) -> tuple[int, dict[str, object]]:
        """HTTP status and body of the health endpoint (when the host is reachable)."""
        if self.service is None:
            return 200, {
                "node": self.name,
                "state": "active",
                "height": None,
                "service": "sshd",
                "role": "dr",
            }
        height: int | None
        try:
            height = int(
                json.loads((self.root / labtool.STATE_DIR / "index.json").read_text())["height"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            height = None
        try:
            fw = json.loads((self.root / labtool.UFW_STATE).read_text())
        except (OSError, ValueError):
            fw = {}
        isolated = fw.get("incoming") in ("deny", "reject") and fw.get("outgoing") in (
            "deny",
            "reject",
        )
        state = "active" if self.service.state == "active" else "inactive"
        body: dict[str, object] = {
            "node": self.name,
            "state": state,
            "height": height,
            "service": self.service.state,
            "role": self.groups[0] if self.groups else "",
            "firewall": "isolated" if isolated else "open",
            "version": labtool.VERSION,
        }
        return (200 if state == "active" else 503), body

    async def _health_request(self, req: Request) -> Response | None:
        link = self.link
        if link.closed:
            return None
        if link.delay > 0:
            await asyncio.sleep(link.delay)
        if req.path.split("?", 1)[0] not in ("/health", "/healthz", "/"):
            return Response.json(404, {"error": f"no such path {req.path}"})
        status, body = self.health()
        return Response.json(status, body)

    # ------------------------------------------------------------------ ssh

    def auth_log(self, message: str) -> None:
        """A line in the host's /var/log/auth.log (what journalctl shows for sshd)."""
        with contextlib.suppress(OSError):
            labtool.append_log(self.root, labtool.AUTH_LOG, "sshd", message)

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run one exec (or shell) request through a real shell in the sandbox."""
        user = str(process.get_extra_info("username") or "root")
        command = process.command
        argv = (
            [SHELL, *_SHELL_ARGS, "-c", command]
            if command is not None
            else [SHELL, *_SHELL_ARGS, "-s"]
        )
        loop = asyncio.get_running_loop()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                cwd=self.root,
                env=self.env(user),
                start_new_session=True,
            )
        except OSError as exc:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            process.stderr.write(f"lab: cannot run {SHELL}: {exc.strerror}\n".encode())
            process.exit(126)
            return
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        self._sessions.add(proc)
        try:
            stdin = await _pipe_writer(loop, in_w)
            out_reader, out_pipe = await _pipe_reader(loop, out_r)
            err_reader, err_pipe = await _pipe_reader(loop, err_r)
            feeder = asyncio.create_task(_feed(process, stdin, proc.pid))
            await asyncio.gather(
                _forward(out_reader, process.stdout, out_pipe),
                _forward(err_reader, process.stderr, err_pipe),
            )
            rc = await proc.wait()
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        finally:
            self._sessions.discard(proc)
        with contextlib.suppress(Exception):
            if rc < 0:
                process.exit_with_signal(signal.Signals(-rc).name.removeprefix("SIG"))
            else:
                process.exit(rc)


class _LabSshServer(asyncssh.SSHServer):
    """Per-connection hooks: log logins to the host's auth.log, as sshd would."""

    def __init__(self, host: LabHost) -> None:
        self._host = host
        self._user = ""
        self._session = secrets.randbelow(90000) + 10000

    def begin_auth(self, username: str) -> bool:
        self._user = username
        return True

    def auth_completed(self) -> None:
        self._host.auth_log(
            f"Accepted publickey for {self._user} from 127.0.0.1 port 22 ssh2: ED25519"
        )
        self._host.auth_log(
            f"pam_unix(sshd:session): session {self._session} opened for user {self._user}"
        )


class _ChrootSftp(asyncssh.SFTPServer):
    """SFTP confined to the host's root: `..` and symlinks cannot leave it; writes fail
    with "No space left on device" while the host's disk is full."""

    def __init__(
        self, chan: asyncssh.SSHServerChannel[bytes], *, root: bytes, disk_full: Callable[[], bool]
    ) -> None:
        super().__init__(chan, chroot=root)
        self._real_root = os.path.realpath(root)
        self._disk_full = disk_full

    def map_path(self, path: bytes) -> bytes:
        mapped = super().map_path(path)
        real = os.path.realpath(mapped)
        if real != self._real_root and not real.startswith(self._real_root + b"/"):
            raise asyncssh.SFTPPermissionDenied("path leaves the SFTP root")
        return mapped

    def write(self, file_obj: object, offset: int, data: bytes) -> int:  # type: ignore[override]
        if self._disk_full():
            raise asyncssh.SFTPFailure("No space left on device")
        result = super().write(file_obj, offset, data)
        assert isinstance(result, int)
        return result


async def _pipe_reader(
    loop: asyncio.AbstractEventLoop, fd: int
) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    reader = asyncio.StreamReader(limit=4 * CHUNK)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader, transport


async def _pipe_writer(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamWriter:
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", buffering=0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def _forward(
    reader: asyncio.StreamReader, channel: asyncssh.SSHWriter[bytes], pipe: asyncio.BaseTransport
) -> None:
    """Command output -> SSH channel. If the client has gone, close the pipe so the command
    gets SIGPIPE on its next write, as under sshd (it is not killed outright)."""
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        try:
            channel.write(data)
            await channel.drain()
        except (OSError, asyncssh.Error):
            pipe.close()
            return


async def _feed(
    process: asyncssh.SSHServerProcess[bytes], stdin: asyncio.StreamWriter, pgid: int
) -> None:
    """SSH channel -> command stdin; SSH signal requests go to the command's process group."""
    broken = False
    try:
        while True:
            try:
                data = await process.stdin.read(CHUNK)
            except asyncssh.SignalReceived as exc:
                sig = getattr(signal, f"SIG{exc.signal}", None)
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, sig)
                continue
            except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                continue
            if not data:
                break
            if broken:
                continue
            try:
                stdin.write(data)
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                broken = True  # the command stopped reading; discard the rest as sshd does
    except (OSError, asyncssh.Error):
        pass
    finally:
        stdin.close()
