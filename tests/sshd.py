"""SSH servers for tests, on loopback only.

- `Sshd` / the `sshd_server` fixture: a real OpenSSH `sshd` in a temporary directory,
  with its own host key, client key, authorized_keys and config.
- `InProcessServer`: an asyncssh server in the test's own event loop, for fault
  injection (drop the connection mid-stream) and for machines without sshd.
- `Blackhole`: a listener that accepts TCP and never answers, until released.

Both servers understand the commands in `Commands` the same way, so one test can run
against either.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from kconsole.site import Node, Site, SshSettings

SSHD = Path("/usr/sbin/sshd")


class Commands:
    """Commands both test servers run identically (the real one through the shell)."""

    MIXED = "echo out; echo err >&2; exit 3"
    LINES = "for i in 1 2 3 4 5; do echo line $i; done; echo warn >&2"
    ECHO_STDIN = "cat"
    SHA256 = "sha256sum"
    TRUE = "true"
    SLEEP_MARKER = "987654"
    SLEEP = f"sleep {SLEEP_MARKER}"

    @staticmethod
    def cat(path: Path | str) -> str:
        """`cat PATH` (the path must not need quoting)."""
        return f"cat {path}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    return free_port()


def local_user() -> str:
    """The user tests log in as: whoever runs them (root in CI)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry
        return str(os.getuid())


def write_private_key(key: asyncssh.SSHKey, path: Path) -> Path:
    """`key` in OpenSSH format at `path`, mode 0600."""
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    return path


def known_hosts_line(host: str, port: int, key: asyncssh.SSHKey) -> str:
    """The known_hosts line trusting `key` for host:port."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key.export_public_key().decode().strip()}\n"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class ServerBase:
    """What a test needs to reach a server: address, keys, a site file for it."""

    host: str
    port: int
    user: str
    directory: Path
    host_key: asyncssh.SSHKey
    client_key_path: Path
    known_hosts_path: Path
    drop_command: str = ""
    """A command that sends about 1 MiB of stdout, then the server drops the connection."""
    kind: str = ""

    async def running(self, marker: str) -> bool:
        """Whether a command whose command line contains `marker` still runs on the server."""
        raise NotImplementedError

    def node(self, name: str = "node1", *, port: int | None = None) -> Node:
        """A Node pointing at this server (or at another `port` on loopback)."""
        return Node(name=name, host=self.host, port=self.port if port is None else port)

    def site(self, nodes: dict[str, int] | None = None, **ssh: Any) -> Site:
        """A Site whose nodes are on this server; `nodes` maps name -> port."""
        nodes = nodes if nodes is not None else {"node1": self.port}
        settings: dict[str, Any] = {
            "user": self.user,
            "identity": self.client_key_path,
            "known_hosts": self.known_hosts_path,
            "connect_timeout": 10.0,
            "keepalive": 15.0,
            "command_timeout": 60.0,
        }
        settings.update(ssh)
        return Site(
            path=self.directory / "site.toml",
            name=f"test-{self.kind}",
            state_dir=self.directory / "state",
            ssh=SshSettings(**settings),
            nodes={
                name: Node(name=name, host=self.host, port=port) for name, port in nodes.items()
            },
        )


# -- real OpenSSH sshd ---------------------------------------------------------------


@dataclass
class Sshd(ServerBase):
    """A running OpenSSH sshd on 127.0.0.1; stop() ends it."""

    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    def stop(self) -> None:
        """Stop sshd and wait for it."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log(self) -> str:
        """sshd's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def running(self, marker: str) -> bool:
        """Whether a process whose command line contains `marker` runs (sshd is local)."""
        return bool(pids_matching(marker))


def pids_matching(marker: str) -> list[int]:
    """Pids of processes (other than ourselves) whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def sshd_config(directory: Path, port: int, extra: dict[str, str] | None = None) -> str:
    """The sshd_config text for a test server in `directory`."""
    options = {
        "Port": str(port),
        "ListenAddress": "127.0.0.1",
        "HostKey": str(directory / "ssh_host_ed25519_key"),
        "PidFile": str(directory / "sshd.pid"),
        "AuthorizedKeysFile": str(directory / "authorized_keys"),
        "UsePAM": "no",
        "StrictModes": "no",
        "PermitRootLogin": "prohibit-password",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "ForceCommand": "none",
        "Subsystem": "sftp internal-sftp",
        "PrintMotd": "no",
        "PrintLastLog": "no",
        "UseDNS": "no",
        "LogLevel": "VERBOSE",
        # Debian's bash sources ~/.bashrc for commands run by sshd when SHLVL < 2 at
        # start-up; root's rc (pyenv init and friends) then costs ~0.5 s per command.
        # SHLVL=1 in the session makes bash count itself as level 2 and skip it.
        "SetEnv": "SHLVL=1",
        # As Debian and Ubuntu ship it: lets the transport tag each command (LC_KCONSOLE_RUN).
        "AcceptEnv": "LANG LC_*",
    }
    options.update(extra or {})
    return "".join(f"{key} {value}\n" for key, value in options.items())


def start_sshd(directory: Path, *, extra: dict[str, str] | None = None, attempts: int = 3) -> Sshd:
    """Start sshd for the current user in `directory` and wait until it answers.

    Skips the test if /usr/sbin/sshd is not installed.
    """
    if not SSHD.exists():
        pytest.skip(f"{SSHD} is not installed (apt-get install openssh-server)")
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # sshd's privilege separation chroot; the package makes it at boot, containers lack it.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    write_private_key(host_key, directory / "ssh_host_ed25519_key")
    client_key_path = write_private_key(client_key, directory / "id_ed25519")
    (directory / "authorized_keys").write_bytes(client_key.export_public_key())
    (directory / "authorized_keys").chmod(0o600)
    last_log = ""
    for _ in range(attempts):
        port = free_port()
        config = directory / "sshd_config"
        config.write_text(sshd_config(directory, port, extra))
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_key))
        log_path = directory / "sshd.log"
        log_path.write_bytes(b"")
        proc = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(config), "-E", str(log_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        server = Sshd(
            host="127.0.0.1",
            port=port,
            user=local_user(),
            directory=directory,
            host_key=host_key,
            client_key_path=client_key_path,
            known_hosts_path=known_hosts,
            drop_command=(  # kill this session's sshd, however deep the transport's wrapper nests us
                "head -c 1048576 /dev/zero; p=$$; "
                "while p=$(cut -d' ' -f4 /proc/$p/stat) && [ \"$p\" -gt 1 ]; do "
                "case $(cat /proc/$p/comm) in sshd*) kill -9 $p; break;; esac; done; sleep 30"
            ),
            kind="sshd",
            process=proc,
            log_path=log_path,
        )
        if _wait_for_banner(proc, port, deadline=time.monotonic() + 15):
            return server
        server.stop()
        last_log = server.log()
    raise RuntimeError(f"sshd did not start; its log:\n{last_log}")


def _wait_for_banner(proc: subprocess.Popen[bytes], port: int, *, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real OpenSSH sshd for the test module, logging in as the current user."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


# -- in-process asyncssh server ------------------------------------------------------


def unwrap(command: str) -> str:
    """The runbook's command inside the transport's wrapper (`exec env TAG=... [timeout ...]
    sh -c CMD`): this server answers known commands and has no shell to run the wrapper."""
    if not command.startswith("exec env "):
        return command
    argv = shlex.split(command)
    assert argv[-3:-1] == ["sh", "-c"], command
    return argv[-1]


@dataclass
class InProcessServer(ServerBase):
    """An asyncssh server in the running event loop; `await stop()` ends it."""

    server: asyncssh.SSHAcceptor | None = None
    live: set[str] = field(default_factory=set)
    """Markers of commands still running on the server side."""
    connections: int = 0
    """How many SSH connections the server has accepted."""

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def running(self, marker: str) -> bool:
        """Whether a command with `marker` is still running on the server side."""
        return marker in self.live

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = unwrap(process.command or "")
        try:
            status = await self._dispatch(process, command)
        except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged):
            status = 130
        except (asyncssh.Error, OSError, BrokenPipeError):
            return
        if status is None:
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            process.exit(status)

    async def _dispatch(
        self, process: asyncssh.SSHServerProcess[bytes], command: str
    ) -> int | None:
        out, err = process.stdout, process.stderr
        if command == Commands.MIXED:
            out.write(b"out\n")
            err.write(b"err\n")
            return 3
        if command == Commands.LINES:
            for i in range(1, 6):
                out.write(f"line {i}\n".encode())
                await out.drain()
            err.write(b"warn\n")
            return 0
        if command == Commands.TRUE:
            return 0
        if command.startswith("echo ") and not any(c in command for c in ";&|$`'\"<>"):
            out.write(command[5:].encode() + b"\n")
            return 0
        if command == Commands.ECHO_STDIN:
            while data := await process.stdin.read(65536):
                out.write(data)
                await out.drain()
            return 0
        if command == Commands.SHA256:
            digest = hashlib.sha256()
            while data := await process.stdin.read(65536):
                digest.update(data)
            out.write(f"{digest.hexdigest()}  -\n".encode())
            return 0
        if command.startswith("cat "):
            with open(command[4:], "rb") as fh:
                while data := fh.read(256 * 1024):
                    out.write(data)
                    await out.drain()
            return 0
        if command == Commands.SLEEP:
            return await self._sleep_until_stopped(process, Commands.SLEEP_MARKER)
        if command == self.drop_command:
            out.write(b"\0" * 1048576)
            await out.drain()
            process.channel.get_connection().abort()
            return None
        err.write(f"in-process server: unknown command {command!r}\n".encode())
        return 127

    async def _sleep_until_stopped(
        self, process: asyncssh.SSHServerProcess[bytes], marker: str
    ) -> int | None:
        """Sleep like `sleep` until a signal arrives or the channel closes."""
        stopped = asyncio.Event()
        got: list[str] = []
        lost = process.connection_lost

        def on_signal(name: str) -> None:
            got.append(name)
            stopped.set()

        def on_lost(exc: Exception | None) -> None:
            stopped.set()
            lost(exc)

        process.signal_received = on_signal  # type: ignore[method-assign]
        process.connection_lost = on_lost  # type: ignore[method-assign]
        self.live.add(marker)
        try:
            await stopped.wait()
        finally:
            self.live.discard(marker)
        if got:
            with contextlib.suppress(OSError, asyncssh.Error):
                process.exit_with_signal(got[0])
        return None


class _CountingServer(asyncssh.SSHServer):
    def __init__(self, owner: InProcessServer) -> None:
        self._owner = owner

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._owner.connections += 1

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        # Let clients use this server as a jump host, to loopback only.
        return dest_host in ("127.0.0.1", "localhost")


async def start_in_process_server(directory: Path) -> InProcessServer:
    """An asyncssh server on a free loopback port, trusting a fresh client key."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = write_private_key(client_key, directory / "id_ed25519")
    server = InProcessServer(
        host="127.0.0.1",
        port=0,
        user=local_user(),
        directory=directory,
        host_key=host_key,
        client_key_path=client_key_path,
        known_hosts_path=directory / "known_hosts",
        drop_command="drop-after-1MiB",
        kind="asyncssh",
    )
    factory: Callable[[], asyncssh.SSHServer] = lambda: _CountingServer(server)  # noqa: E731
    server.server = await asyncssh.create_server(
        factory,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        process_factory=server._handle,
        sftp_factory=True,
        encoding=None,
    )
    server.port = server.server.sockets[0].getsockname()[1]
    server.known_hosts_path.write_text(known_hosts_line("127.0.0.1", server.port, host_key))
    return server


# -- a listener that never speaks ----------------------------------------------------


class Blackhole:
    """Accepts TCP on loopback and says nothing until `release()` closes everything."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.accepted = asyncio.Event()

    async def start(self) -> Blackhole:
        """Start listening."""

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            self.accepted.set()

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def release(self) -> None:
        """Stop listening and close every held connection."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


def copy_key_with_mode(src: Path, dest: Path, mode: int) -> Path:
    """A copy of the key file `src` at `dest` with `mode`."""
    shutil.copyfile(src, dest)
    dest.chmod(mode)
    return dest
