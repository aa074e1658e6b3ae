"""`SshTransport`: the node transport over asyncssh.

One connection per node, shared by every command and SFTP session to it (asyncssh's
equivalent of an OpenSSH ControlMaster), created lazily under a per-node lock and
dropped when it closes. Host keys are always checked against the site's known_hosts
file; connect timeout and keepalive are always set; every command is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from kconsole.errors import OperationFailed, UsageError
from kconsole.site import Node, Site, current_user
from kconsole.transport.base import (
    CommandResult,
    CommandTimeout,
    ConnectionLost,
    HostKeyRejected,
    NodeUnreachable,
    OutputCallback,
    Sink,
    TailBuffer,
    bounded_command,
    deliver,
    format_seconds,
    known_hosts_name,
    quote_argv,
)
from kconsole.transport.sshconfig import preloaded_options

__all__ = ["SshTransport", "node_from_spec", "quote_argv", "bounded_command"]

READ_BLOCK = 256 * 1024
"""How much is read from a channel at a time."""

STREAM_KEEP = 1024 * 1024
"""How much stderr (and stdout of `stream_in`) a streaming result keeps; on_output sees it all."""

STOP_GRACE = 2.0
"""Seconds a timed-out command gets between SIGTERM and SIGKILL."""

SESSION_RETRY = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
"""Pauses before asking again when a node refuses a new session on a live connection."""

RUN_TAG = "LC_KCONSOLE_RUN"
"""Environment variable carrying a per-command token, so a stuck command can be found and killed."""

REMOTE_BOUND_MARGIN = 30.0
"""Seconds the node-side bound (coreutils `timeout`) allows beyond ours: our timeout fires
first and is reported; the node's own stops the command if we are gone by then."""


def remote_command(command: str, tag: str, limit: float) -> str:
    """What the node's shell is asked to run for `command`.

    `env` sets the kill tag itself, so finding the command's processes does not depend on
    the server accepting our environment request (`AcceptEnv`); with a limit, coreutils
    `timeout` bounds it on the node as well, so it stops even if this console vanishes.
    """
    inner = (
        bounded_command(command, limit + REMOTE_BOUND_MARGIN)
        if limit > 0
        else quote_argv(["sh", "-c", command])
    )
    return f"exec env {RUN_TAG}={tag} {inner}"


log = logging.getLogger(__name__)

RETRY_JITTER = (0.2, 0.8)
"""Seconds to wait, at random in this range, before the one reconnect after a lost connection."""

DEFAULT_MAX_NEW_CONNECTIONS = 32
"""Handshakes in flight at once across the fleet (sshd's MaxStartups starts dropping at 10 per host)."""


class _LostBeforeStart(Exception):
    """The connection went away before the command was sent: safe to try once more."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Link:
    """The pooled connection to one (user, host, port) and its channel budget."""

    channels: asyncio.Semaphore
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conn: asyncssh.SSHClientConnection | None = None
    active: int = 0
    last_used: float = 0.0


class _HostKeyWitness(asyncssh.SSHClient):
    """Remembers the host key a server offered when known_hosts did not trust it.

    asyncssh only asks this when the key is not trusted by known_hosts, and we always
    answer no: the key is refused, and the message can show its fingerprint.
    """

    def __init__(self, known_hosts: asyncssh.SSHKnownHosts) -> None:
        super().__init__()
        self._known_hosts = known_hosts
        self.offered: asyncssh.SSHKey | None = None
        self.recorded = False

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key
        lookup_port = None if port == 22 else port
        keys, ca_keys, *_ = self._known_hosts.match(host, addr, lookup_port)
        self.recorded = bool(keys or ca_keys)
        return False


def node_from_spec(spec: str, name: str | None = None) -> Node:
    """A Node for `[user@]host[:port]` (IPv6 as `[addr]:port`)."""
    user, _, hostport = spec.rpartition("@")
    host, port = hostport, 22
    if hostport.startswith("["):
        addr, _, rest = hostport[1:].partition("]")
        host = addr
        if rest.startswith(":"):
            port = _port(rest[1:], spec)
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
        port = _port(port_text, spec)
    if not host:
        raise UsageError(f'"{spec}" is not a host: write [user@]host[:port].')
    return Node(name=name or spec, host=host, port=port, user=user)


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f'"{spec}" has a bad port: write [user@]host[:port].')
    return int(text)


def _reason(exc: BaseException) -> str:
    """One phrase for an exception from asyncssh or the socket layer."""
    if isinstance(exc, asyncssh.ConnectionLost | asyncio.IncompleteReadError):
        return "the node or the network closed it unexpectedly"
    if isinstance(exc, asyncssh.Error):
        return exc.reason.rstrip(".") or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.rstrip(".")
    return str(exc).rstrip(".") or type(exc).__name__


_LOST_TYPES: tuple[type[BaseException], ...] = (
    asyncssh.ConnectionLost,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    asyncio.IncompleteReadError,
)
_LOST_OR_DISCONNECTED: tuple[type[BaseException], ...] = (*_LOST_TYPES, asyncssh.DisconnectError)


class SshTransport:
    """Runs commands on the site's nodes over SSH, one shared connection per node."""

    def __init__(
        self,
        site: Site,
        *,
        use_ssh_config: bool = True,
        use_agent: bool = False,
        max_new_connections: int = DEFAULT_MAX_NEW_CONNECTIONS,
    ) -> None:
        """`use_ssh_config=False` ignores ~/.ssh/config (tests); `use_agent` lets SSH_AUTH_SOCK in."""
        self.site = site
        self.settings = site.ssh
        self._use_ssh_config = use_ssh_config
        self._use_agent = use_agent
        self._dialing = asyncio.Semaphore(max(1, max_new_connections))
        self._links: dict[tuple[str, str, int], _Link] = {}
        self._client_keys: list[asyncssh.SSHKeyPair] | None = None
        self._known_hosts_cache: tuple[tuple[int, int], asyncssh.SSHKnownHosts] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self.connections_opened = 0
        """How many SSH connections this transport has made (a reused one counts once)."""

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
        """Run `command` on `node`; a non-zero exit is a result, not an error.

        `timeout` in seconds: None takes [ssh] command_timeout, 0 means no limit. When it
        runs out the remote command is terminated and CommandTimeout is raised. If the
        pooled connection turns out dead before the command starts, it reconnects once;
        a connection lost while the command runs raises ConnectionLost and is never
        retried here (the command may have done part of its work: the runbook's
        `retries` decide, and the journal shows it).
        """

        async def feed(writer: asyncssh.SSHWriter[bytes]) -> None:
            if stdin:
                writer.write(stdin)
                await writer.drain()

        return await self._execute(
            node,
            command,
            timeout=timeout,
            on_output=on_output,
            feed=feed,
            sink=None,
            keep=None,
            stdout_to_journal=True,
        )

    async def stream_in(
        self,
        node: Node,
        command: str,
        source: AsyncIterator[bytes],
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Feed `source` into the remote stdin, at the pace the remote reads it.

        If `source` raises, the remote command is terminated without seeing end-of-file and
        the exception propagates: a half-fed command never looks like a finished one.
        """

        async def feed(writer: asyncssh.SSHWriter[bytes]) -> None:
            async for chunk in source:
                if chunk:
                    writer.write(chunk)
                    await writer.drain()

        return await self._execute(
            node,
            command,
            timeout=timeout,
            on_output=on_output,
            feed=feed,
            sink=None,
            keep=STREAM_KEEP,
            stdout_to_journal=True,
        )

    async def capture(
        self,
        node: Node,
        command: str,
        sink: Sink,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Deliver the remote stdout to `sink` piece by piece; stderr goes to `on_output`.

        The remote waits while `sink` is busy (the SSH window closes), so memory stays flat.
        """
        return await self._execute(
            node,
            command,
            timeout=timeout,
            on_output=on_output,
            feed=None,
            sink=sink,
            keep=STREAM_KEEP,
            stdout_to_journal=False,
        )

    async def probe(self, node: Node) -> float:
        """Connect (or reuse the connection) and return the round trip of running `true`, in ms.

        The handshake is not counted, so a fresh and a reused connection compare fairly.
        Raises NodeUnreachable (also when the node answers too slowly) or HostKeyRejected.
        """
        return (await self.timed_run(node, "true"))[0]

    async def timed_run(
        self, node: Node, command: str, *, timeout: float | None = None
    ) -> tuple[float, CommandResult]:
        """Connect (or reuse the connection), run the read-only `command`, and return its
        round trip in ms with its result: a status poll's one command per node.

        The handshake is not counted, so a fresh and a reused connection compare fairly.
        Raises NodeUnreachable (also when the node answers too slowly) or HostKeyRejected.
        """
        limit = timeout or self.settings.connect_timeout
        for attempt in range(2):
            await self._connection(node, retry=True)
            started = time.monotonic()
            try:
                result = await self.run(node, command, timeout=limit)
            except CommandTimeout:
                raise NodeUnreachable(
                    node.name, f"it took longer than {format_seconds(limit)} to run `{command}`"
                ) from None
            except ConnectionLost as exc:
                # A read-only command is harmless to run again: one reconnect, as for a
                # stale connection.
                if attempt:
                    raise NodeUnreachable(node.name, exc.reason) from None
                await asyncio.sleep(random.uniform(*RETRY_JITTER))
                continue
            return (time.monotonic() - started) * 1000.0, result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def close(self) -> None:
        """Stop what is still being stopped, then close every connection (the jump host's last)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=STOP_GRACE * 3)
        links = list(self._links.items())
        self._links.clear()
        jump = self._jump_key()
        ordered = sorted(links, key=lambda item: item[0] == jump)
        for _, link in ordered:
            conn, link.conn = link.conn, None
            if conn is not None:
                conn.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.wait_closed(), 5)

    # -- pool -------------------------------------------------------------------------

    async def close_idle(self, idle_s: float) -> int:
        """Close connections that carried nothing for `idle_s` seconds; how many were closed."""
        now = time.monotonic()
        closed = 0
        for key, link in list(self._links.items()):
            if key == self._jump_key() or link.conn is None or link.active:
                continue
            if now - link.last_used >= idle_s:
                conn, link.conn = link.conn, None
                conn.close()
                closed += 1
        return closed

    def open_connections(self) -> int:
        """How many pooled connections are open right now."""
        return sum(1 for link in self._links.values() if link.conn and not link.conn.is_closed())

    @contextlib.asynccontextmanager
    async def connection(self, node: Node) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """The pooled connection to `node`, with one of its channels reserved while inside.

        For the SFTP helpers; anything opened on it must be closed before leaving the block.
        """
        link = self._link(node)
        async with link.channels:
            link.active += 1
            try:
                conn = await self._connection(node, retry=True)
                yield conn
            finally:
                link.active -= 1
                link.last_used = time.monotonic()

    def forget(self, node: Node, conn: asyncssh.SSHClientConnection) -> None:
        """Drop `conn` from the pool if it is still the one pooled for `node`."""
        link = self._links.get(self._key(node))
        if link is not None and link.conn is conn:
            link.conn = None
        conn.close()

    def user_for(self, node: Node) -> str:
        """Who we log in as: the node's user, else the site's, else the local user."""
        return node.user or self.settings.user or current_user()

    def _key(self, node: Node) -> tuple[str, str, int]:
        return (self.user_for(node), node.host, node.port)

    def _link(self, node: Node) -> _Link:
        key = self._key(node)
        link = self._links.get(key)
        if link is None:
            link = _Link(channels=asyncio.Semaphore(max(1, self.settings.max_channels)))
            self._links[key] = link
        return link

    def _jump_node(self) -> Node | None:
        spec = self.settings.jump_host
        return node_from_spec(spec, name=f"jump host {spec}") if spec else None

    def _jump_key(self) -> tuple[str, str, int] | None:
        jump = self._jump_node()
        return self._key(jump) if jump else None

    async def _connection(self, node: Node, *, retry: bool = False) -> asyncssh.SSHClientConnection:
        """The pooled connection to `node`, made if there is none.

        With `retry`, a connection that drops during the handshake (sshd's MaxStartups does
        that under load) is tried once more after a jittered pause.
        """
        reason = ""
        for attempt in range(2 if retry else 1):
            if attempt:
                await asyncio.sleep(random.uniform(*RETRY_JITTER))
            try:
                return await self._pooled(node)
            except _LostBeforeStart as exc:
                reason = exc.reason
        raise NodeUnreachable(
            node.name, f"the connection was closed during the handshake ({reason})"
        )

    async def _pooled(self, node: Node) -> asyncssh.SSHClientConnection:
        link = self._link(node)
        async with link.lock:
            conn = link.conn
            if conn is None or conn.is_closed():
                link.conn = None
                conn = await self._connect(node)
                link.conn = conn
            link.last_used = time.monotonic()
            return conn

    async def _connect(self, node: Node) -> asyncssh.SSHClientConnection:
        known_hosts, known_hosts_path = self._known_hosts()
        witness = _HostKeyWitness(known_hosts)
        options: dict[str, Any] = {
            "known_hosts": known_hosts,
            "connect_timeout": self.settings.connect_timeout,
            "keepalive_interval": self.settings.keepalive,
            "keepalive_count_max": 3,
            "client_factory": lambda: witness,
        }
        user = node.user or self.settings.user
        if user:
            options["username"] = user
        elif not self._use_ssh_config:
            options["username"] = current_user()
        keys = self._identity()
        if keys is not None:
            options["client_keys"] = keys
        if not self._use_agent:
            options["agent_path"] = None
        jump = self._jump_node()
        if jump is not None and self._key(jump) != self._key(node):
            try:
                options["tunnel"] = await self._connection(jump, retry=True)
            except NodeUnreachable as exc:
                raise NodeUnreachable(
                    node.name, f"its {jump.name} is unreachable ({exc.reason})"
                ) from None
        config = self._ssh_config()
        if config:
            # Read and tokenized once per process, not once per connection.
            options["options"] = preloaded_options(
                config, node.host, node.port, options.get("username")
            )
        else:
            options["config"] = None
        where = f"{node.host}:{node.port}"
        try:
            async with self._dialing:
                conn = await asyncssh.connect(node.host, node.port, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            if witness.offered is None:
                raise NodeUnreachable(
                    node.name, f"its host key could not be verified ({_reason(exc)})"
                ) from None
            key = witness.offered
            raise HostKeyRejected(
                node.name,
                node.host,
                node.port,
                key.get_fingerprint("sha256"),
                known_hosts=known_hosts_path,
                changed=witness.recorded,
                key_line=f"{known_hosts_name(node.host, node.port)} {key.export_public_key().decode().strip()}",
            ) from None
        except asyncssh.PermissionDenied:
            login = user or current_user()
            raise NodeUnreachable(
                node.name, f"{where} refused the login as {login} (no accepted key)"
            ) from None
        except TimeoutError:
            raise NodeUnreachable(
                node.name,
                f"{where} did not complete the SSH handshake within "
                f"{format_seconds(self.settings.connect_timeout)}",
            ) from None
        except ConnectionRefusedError:
            raise NodeUnreachable(
                node.name, f"{where} refused the connection (is sshd running?)"
            ) from None
        except socket.gaierror:
            raise NodeUnreachable(
                node.name, f'the host name "{node.host}" could not be resolved'
            ) from None
        except _LOST_TYPES as exc:
            raise _LostBeforeStart(f"{where}: {_reason(exc)}") from None
        except (OSError, asyncssh.Error) as exc:
            raise NodeUnreachable(node.name, f"{where}: {_reason(exc)}") from None
        self.connections_opened += 1
        return conn

    def _known_hosts(self) -> tuple[asyncssh.SSHKnownHosts, str]:
        """The trusted host keys, re-read when the file changes, so an added key takes effect."""
        path = self.settings.known_hosts or Path("~/.ssh/known_hosts").expanduser()
        try:
            st = path.stat()
        except FileNotFoundError:
            # An empty list trusts nobody: every host is refused with its fingerprint shown.
            return asyncssh.SSHKnownHosts(), str(path)
        except OSError as exc:
            raise UsageError(f"known_hosts file {path} cannot be read: {_reason(exc)}.") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if self._known_hosts_cache is None or self._known_hosts_cache[0] != stamp:
            try:
                parsed = asyncssh.read_known_hosts(str(path))
            except (OSError, ValueError, asyncssh.Error) as exc:
                raise UsageError(
                    f"known_hosts file {path} cannot be read: {_reason(exc)}."
                ) from None
            self._known_hosts_cache = (stamp, parsed)
        return self._known_hosts_cache[1], str(path)

    def _ssh_config(self) -> list[str] | None:
        if not self._use_ssh_config:
            return None
        if self.settings.config is not None:
            if not self.settings.config.is_file():
                raise UsageError(
                    f"ssh config file {self.settings.config} (from [ssh] config) not found."
                )
            return [str(self.settings.config)]
        default = Path("~/.ssh/config").expanduser()
        return [str(default)] if default.is_file() else None

    def _identity(self) -> list[asyncssh.SSHKeyPair] | None:
        """The site's client key, refused unless only its owner can read it."""
        path = self.settings.identity
        if path is None:
            return None
        if self._client_keys is None:
            self._client_keys = load_identity(path)
        return self._client_keys

    # -- running one command ----------------------------------------------------------

    async def _execute(
        self,
        node: Node,
        command: str,
        *,
        timeout: float | None,
        on_output: OutputCallback | None,
        feed: Callable[[asyncssh.SSHWriter[bytes]], Awaitable[None]] | None,
        sink: Sink | None,
        keep: int | None,
        stdout_to_journal: bool,
    ) -> CommandResult:
        limit = self.settings.command_timeout if timeout is None else timeout
        link = self._link(node)
        async with link.channels:
            link.active += 1
            try:
                tag = secrets.token_hex(16)
                conn, proc = await self._open_process(
                    node, remote_command(command, tag, limit), tag
                )
                return await self._drive(
                    node,
                    command,
                    conn,
                    proc,
                    tag,
                    limit=limit,
                    on_output=on_output,
                    feed=feed,
                    sink=sink,
                    keep=keep,
                    stdout_to_journal=stdout_to_journal,
                )
            finally:
                link.active -= 1
                link.last_used = time.monotonic()

    async def _open_process(
        self, node: Node, command: str, tag: str
    ) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[bytes]]:
        """Open a session channel and start `command`, reconnecting once if the pooled
        connection turns out to be dead. Nothing has reached the remote command before
        this returns, so the retry never runs anything twice."""
        reason = ""
        handshake = False
        reconnects = refusals = 0
        while True:
            try:
                conn = await self._pooled(node)
            except _LostBeforeStart as exc:
                reason, handshake = exc.reason, True
                reconnects += 1
            else:
                try:
                    return conn, await conn.create_process(
                        command, encoding=None, env={RUN_TAG: tag}
                    )
                except (asyncssh.Error, OSError) as exc:
                    reason, handshake = _reason(exc), False
                    if conn.is_closed() or isinstance(exc, _LOST_TYPES):
                        self.forget(node, conn)
                        reconnects += 1
                    else:
                        # sshd frees a session slot a little after the channel closes, so a
                        # busy connection can be refused ("no more sessions") for a moment.
                        refusals += 1
                        if refusals > len(SESSION_RETRY):
                            raise OperationFailed(
                                f"{node.name} keeps refusing new sessions ({reason}); "
                                "lower [ssh] max_channels or raise MaxSessions on the node."
                            ) from None
                        await asyncio.sleep(SESSION_RETRY[refusals - 1] * random.uniform(0.5, 1.5))
                        continue
            if reconnects >= 2:
                break
            await asyncio.sleep(random.uniform(*RETRY_JITTER))
        if handshake:
            raise NodeUnreachable(
                node.name, f"the connection was closed during the handshake ({reason})"
            )
        raise ConnectionLost(
            node.name, f"it dropped twice before the command could start ({reason})"
        )

    async def _drive(
        self,
        node: Node,
        command: str,
        conn: asyncssh.SSHClientConnection,
        proc: asyncssh.SSHClientProcess[bytes],
        tag: str,
        *,
        limit: float,
        on_output: OutputCallback | None,
        feed: Callable[[asyncssh.SSHWriter[bytes]], Awaitable[None]] | None,
        sink: Sink | None,
        keep: int | None,
        stdout_to_journal: bool,
    ) -> CommandResult:
        started = time.monotonic()
        out = TailBuffer(keep)
        err = TailBuffer(keep)

        async def pump_stdout() -> None:
            while data := await proc.stdout.read(READ_BLOCK):
                if sink is not None:
                    await sink(data)
                else:
                    out.append(data)
                if stdout_to_journal:
                    await deliver(on_output, "stdout", data)

        async def pump_stderr() -> None:
            while data := await proc.stderr.read(READ_BLOCK):
                err.append(data)
                await deliver(on_output, "stderr", data)

        async def pump_stdin() -> None:
            try:
                if feed is not None:
                    await feed(proc.stdin)
                proc.stdin.write_eof()
            except BrokenPipeError:
                # The remote stopped reading (it exited early); its exit status tells why.
                pass

        tasks = [asyncio.ensure_future(c) for c in (pump_stdin(), pump_stdout(), pump_stderr())]
        cleanly = False
        try:
            async with asyncio.timeout(limit if limit and limit > 0 else None) as deadline:
                try:
                    await asyncio.gather(*tasks)
                    await proc.wait_closed()
                except BaseException:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
            cleanly = True
        except TimeoutError:
            if not deadline.expired():
                raise
            cleanly = True  # stopped here, below, rather than in the background
            stopped = await self._stop(node, conn, proc, tag)
            raise CommandTimeout(node.name, command, limit, stopped=stopped) from None
        except _LOST_OR_DISCONNECTED as exc:
            if not (isinstance(exc, asyncssh.Error) or conn.is_closed()):
                raise  # a local pipe broke (the sink's), not the connection
            cleanly = True
            self.forget(node, conn)
            raise ConnectionLost(node.name, _reason(exc)) from None
        finally:
            if not cleanly:
                # Cancelled, or the source or sink failed: stop the remote side as well,
                # without holding up whoever is unwinding.
                self._in_background(self._stop(node, conn, proc, tag))
        status = proc.exit_status
        if status is None:
            raise ConnectionLost(node.name, "the command's exit status never arrived")
        exit_signal = proc.exit_signal
        return CommandResult(
            exit_status=status,
            stdout=out.getvalue(),
            stderr=err.getvalue(),
            duration_s=time.monotonic() - started,
            signal=exit_signal[0] if exit_signal else "",
        )

    # -- stopping a remote command ----------------------------------------------------

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop(
        self,
        node: Node,
        conn: asyncssh.SSHClientConnection,
        proc: asyncssh.SSHClientProcess[bytes],
        tag: str,
    ) -> bool:
        """Stop a remote command: SIGTERM, then SIGKILL after a grace period, then close
        the channel. True when the session is known to have ended.

        Two ways at once, because neither works everywhere. The SSH signal request reaches
        the session's process, but OpenSSH ignores it for root logins and forced commands.
        So a second session also kills every process that inherited this command's
        LC_KCONSOLE_RUN tag (sent as an environment request: Debian's and Ubuntu's
        `AcceptEnv LANG LC_*` lets it through, and `remote_command` sets it with `env` as
        well), which catches a compound command's children too. The node-side `timeout`
        from `remote_command` stops it whatever happens to us.
        """
        for sig in ("TERM", "KILL"):
            with contextlib.suppress(OSError, asyncssh.Error):
                proc.send_signal(sig)
            await self._reap(conn, tag, sig)
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await asyncio.wait_for(asyncio.shield(proc.wait_closed()), STOP_GRACE)
                return True
        proc.close()
        log.warning("%s: a timed-out command's session did not end after SIGKILL", node.name)
        return False

    async def _reap(self, conn: asyncssh.SSHClientConnection, tag: str, sig: str) -> None:
        """Send `sig` to every process on the node carrying `tag`, over a fresh session.

        This bypasses the channel budget on purpose: the budget may be full of exactly the
        commands that need stopping, and sshd's MaxSessions (10) leaves room above ours.
        """
        if conn.is_closed():
            return
        script = (
            f"grep -lsxzF {RUN_TAG}={tag} /proc/[0-9]*/environ | while read -r f; do "
            f'f=${{f#/proc/}}; kill -{sig} "${{f%/environ}}" 2>/dev/null; done; true'
        )
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(conn.run(script, stdin=asyncssh.DEVNULL), STOP_GRACE * 2)


def load_identity(path: Path) -> list[asyncssh.SSHKeyPair]:
    """The client key in `path`; UsageError if it is missing, unreadable or not private."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"identity file {path} (from [ssh] identity) not found.") from None
    except OSError as exc:
        raise UsageError(f"identity file {path} cannot be read: {_reason(exc)}.") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise UsageError(
            f"identity file {path} can be read by other users (mode {mode:04o}); "
            f"run `chmod 600 {path}`."
        )
    try:
        return list(asyncssh.load_keypairs([str(path)]))
    except (OSError, ValueError, asyncssh.Error) as exc:
        raise UsageError(f"identity file {path} cannot be loaded: {exc}.") from None
