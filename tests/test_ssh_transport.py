"""SshTransport and SftpStore against real servers on loopback: an in-process asyncssh
server (fault injection) and OpenSSH sshd (what the fleet runs). Every test runs against
both unless it says why not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncssh
import pytest

from kconsole.errors import OperationFailed, UsageError
from kconsole.site import Node, Site, SshSettings
from kconsole.transport import (
    CommandTimeout,
    ConnectionLost,
    HostKeyRejected,
    NodeTransport,
    NodeUnreachable,
    quote_argv,
)
from kconsole.transport.sftp import SftpStore
from kconsole.transport.ssh import SshTransport, node_from_spec
from tests.sshd import (
    Blackhole,
    Commands,
    InProcessServer,
    ServerBase,
    Sshd,
    closed_port,
    copy_key_with_mode,
    known_hosts_line,
    sha256,
    sshd_server,  # noqa: F401 - a fixture, used through getfixturevalue
    start_in_process_server,
    start_sshd,
    write_private_key,
)

MiB = 1024 * 1024


@pytest.fixture(params=["asyncssh", "sshd"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ServerBase]:
    """Each test once against the in-process server and once against OpenSSH sshd."""
    if request.param == "asyncssh":
        srv = await start_in_process_server(tmp_path / "asyncssh")
        try:
            yield srv
        finally:
            await srv.stop()
    else:
        yield request.getfixturevalue("sshd_server")


@pytest.fixture
async def transport(server: ServerBase) -> AsyncIterator[SshTransport]:
    """A transport for a one-node site on `server`, ~/.ssh/config ignored."""
    t = SshTransport(server.site(), use_ssh_config=False)
    try:
        yield t
    finally:
        await t.close()


def node_of(t: SshTransport, name: str = "node1") -> Node:
    return t.site.nodes[name]


def with_ssh(site: Site, **changes: object) -> Site:
    return dataclasses.replace(site, ssh=dataclasses.replace(site.ssh, **changes))  # type: ignore[arg-type]


async def until(
    predicate: Callable[[], Awaitable[bool]], *, expect: bool = True, limit: float = 10.0
) -> bool:
    """Poll `predicate` until it returns `expect`, for at most `limit` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end:
        if await predicate() == expect:
            return True
        await asyncio.sleep(0.05)
    return False


# -- running commands ----------------------------------------------------------------


async def test_ssh_transport_is_a_node_transport(transport: SshTransport) -> None:
    assert isinstance(transport, NodeTransport)


async def test_run_returns_exit_status_and_both_streams(transport: SshTransport) -> None:
    result = await transport.run(node_of(transport), Commands.MIXED)
    assert (result.exit_status, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert not result.ok


async def test_run_streams_output_to_on_output(transport: SshTransport) -> None:
    pieces: list[tuple[str, bytes]] = []

    async def on_output(stream: str, data: bytes) -> None:
        pieces.append((stream, data))

    result = await transport.run(node_of(transport), Commands.LINES, on_output=on_output)
    assert result.ok
    assert b"".join(d for s, d in pieces if s == "stdout") == result.stdout
    assert result.stdout == b"".join(f"line {i}\n".encode() for i in range(1, 6))
    assert b"".join(d for s, d in pieces if s == "stderr") == result.stderr == b"warn\n"


async def test_run_is_binary_safe_both_ways(transport: SshTransport) -> None:
    data = bytes(range(256)) * 64
    result = await transport.run(node_of(transport), Commands.ECHO_STDIN, stdin=data)
    assert result.stdout == data


async def test_stream_in_feeds_megabytes_into_sha256sum(transport: SshTransport) -> None:
    data = os.urandom(3 * MiB + 123)

    async def source() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    result = await transport.stream_in(node_of(transport), Commands.SHA256, source())
    assert result.ok, result.stderr
    assert result.stdout.split()[0].decode() == sha256(data)


async def test_stream_in_stops_the_remote_when_the_source_fails(transport: SshTransport) -> None:
    class SourceBroke(Exception):
        pass

    async def source() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise SourceBroke

    with pytest.raises(SourceBroke):
        await transport.stream_in(node_of(transport), Commands.SHA256, source())
    # The connection is still good for the next command.
    assert (await transport.run(node_of(transport), Commands.TRUE)).ok


async def test_capture_delivers_megabytes_to_the_sink(
    transport: SshTransport, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 7)
    source = tmp_path / "capture-source.bin"
    source.write_bytes(data)
    received: list[bytes] = []

    async def sink(piece: bytes) -> None:
        received.append(piece)

    result = await transport.capture(node_of(transport), Commands.cat(source), sink)
    assert result.ok and result.stdout == b""
    assert sha256(b"".join(received)) == sha256(data)


async def test_twenty_concurrent_runs_share_one_connection(
    transport: SshTransport, server: ServerBase
) -> None:
    node = node_of(transport)
    results = await asyncio.gather(*(transport.run(node, f"echo n{i}") for i in range(20)))
    assert [r.stdout for r in results] == [f"n{i}\n".encode() for i in range(20)]
    assert transport.connections_opened == 1
    if isinstance(server, InProcessServer):
        assert server.connections == 1


async def test_probe_returns_latency_and_reuses_the_connection(transport: SshTransport) -> None:
    first = await transport.probe(node_of(transport))
    second = await transport.probe(node_of(transport))
    assert first >= 0 and second >= 0
    assert transport.connections_opened == 1 and transport.open_connections() == 1


async def test_idle_connections_are_closed_and_remade_on_demand(transport: SshTransport) -> None:
    assert (await transport.run(node_of(transport), Commands.TRUE)).ok
    assert await transport.close_idle(0) == 1
    assert transport.open_connections() == 0
    assert (await transport.run(node_of(transport), Commands.TRUE)).ok
    assert transport.connections_opened == 2


# -- host keys -----------------------------------------------------------------------


async def test_unknown_host_key_is_refused_with_its_fingerprint(
    server: ServerBase, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    other = asyncssh.generate_private_key("ssh-ed25519")
    known_hosts.write_text(known_hosts_line("192.0.2.1", 22, other))  # some other host only
    t = SshTransport(with_ssh(server.site(), known_hosts=known_hosts), use_ssh_config=False)
    try:
        with pytest.raises(HostKeyRejected) as caught:
            await t.run(node_of(t), Commands.TRUE)
        fingerprint = server.host_key.get_fingerprint("sha256")
        message = str(caught.value)
        assert (
            fingerprint in message and "node1" in message and f"127.0.0.1:{server.port}" in message
        )
        assert str(known_hosts) in message and not caught.value.changed
        # The operator adds the offered key (an audited action in the console): it now connects.
        with known_hosts.open("a") as fh:
            fh.write(caught.value.key_line + "\n")
        assert (await t.run(node_of(t), Commands.TRUE)).ok
    finally:
        await t.close()


async def test_missing_known_hosts_file_trusts_nobody(server: ServerBase, tmp_path: Path) -> None:
    t = SshTransport(with_ssh(server.site(), known_hosts=tmp_path / "absent"), use_ssh_config=False)
    try:
        with pytest.raises(HostKeyRejected):
            await t.probe(node_of(t))
    finally:
        await t.close()


async def test_changed_host_key_is_refused(server: ServerBase, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    known_hosts.write_text(known_hosts_line("127.0.0.1", server.port, impostor))
    t = SshTransport(with_ssh(server.site(), known_hosts=known_hosts), use_ssh_config=False)
    try:
        with pytest.raises(HostKeyRejected) as caught:
            await t.run(node_of(t), Commands.TRUE)
        assert caught.value.changed
        assert server.host_key.get_fingerprint("sha256") in str(caught.value)
        assert "does NOT match" in str(caught.value)
    finally:
        await t.close()


# -- failures ------------------------------------------------------------------------


async def test_connection_refused_names_the_node(server: ServerBase) -> None:
    site = server.site({"validator3": closed_port()})
    t = SshTransport(site, use_ssh_config=False)
    try:
        with pytest.raises(NodeUnreachable) as caught:
            await t.run(site.nodes["validator3"], Commands.TRUE)
        assert "validator3" in str(caught.value) and "refused" in str(caught.value)
    finally:
        await t.close()


async def test_login_refused_is_unreachable(server: ServerBase, tmp_path: Path) -> None:
    stranger = write_private_key(
        asyncssh.generate_private_key("ssh-ed25519"), tmp_path / "stranger"
    )
    t = SshTransport(with_ssh(server.site(), identity=stranger), use_ssh_config=False)
    try:
        with pytest.raises(NodeUnreachable, match="refused the login"):
            await t.run(node_of(t), Commands.TRUE)
    finally:
        await t.close()


async def test_timeout_terminates_the_remote_command(
    transport: SshTransport, server: ServerBase
) -> None:
    node = node_of(transport)
    marker = Commands.SLEEP_MARKER
    assert not await server.running(marker), "a sleep from an earlier run is still alive"
    task = asyncio.ensure_future(transport.run(node, Commands.SLEEP, timeout=1.5))
    assert await until(lambda: server.running(marker)), "the remote sleep never started"
    with pytest.raises(CommandTimeout) as caught:
        await task
    assert "1.5 s" in str(caught.value) and "terminated" in str(caught.value)
    assert await until(lambda: server.running(marker), expect=False), (
        "the remote sleep outlived its timeout"
    )
    assert (await transport.run(node, Commands.TRUE)).ok


async def test_timeout_kills_a_compound_commands_children_without_accept_env(
    tmp_path: Path,
) -> None:
    """An sshd that accepts no LC_* variables, a root-style login that ignores the SSH signal
    request, and a command whose sleep runs in a subshell: the transport still finds and kills
    it by the tag `env` puts in the command itself."""
    server = start_sshd(tmp_path / "sshd", extra={"AcceptEnv": "LANG"})
    t = SshTransport(server.site(), use_ssh_config=False)
    marker = "3617.25"
    try:
        task = asyncio.ensure_future(
            t.run(node_of(t), f"(sleep {marker}; true) & wait", timeout=1.5)
        )
        assert await until(lambda: server.running(marker)), "the remote sleep never started"
        with pytest.raises(CommandTimeout):
            await task
        assert await until(lambda: server.running(marker), expect=False), (
            "the subshell's sleep outlived its command's timeout"
        )
    finally:
        await t.close()
        server.stop()


async def test_connection_dropped_mid_stream_is_connection_lost(
    transport: SshTransport, server: ServerBase
) -> None:
    received = 0

    async def sink(piece: bytes) -> None:
        nonlocal received
        received += len(piece)

    with pytest.raises(ConnectionLost) as caught:
        await transport.capture(node_of(transport), server.drop_command, sink)
    assert "node1" in str(caught.value)
    # The dead connection left the pool: the next command reconnects.
    assert (await transport.run(node_of(transport), Commands.TRUE)).ok
    assert transport.connections_opened == 2


async def test_a_dead_node_never_holds_up_or_fails_the_others(server: ServerBase) -> None:
    silent = await Blackhole().start()
    site = server.site({"good1": server.port, "refused": closed_port(), "silent": silent.port})
    t = SshTransport(site, use_ssh_config=False)
    try:
        good = [asyncio.ensure_future(t.run(site.nodes["good1"], f"echo g{i}")) for i in range(3)]
        refused = asyncio.ensure_future(t.run(site.nodes["refused"], Commands.TRUE))
        hung = asyncio.ensure_future(t.run(site.nodes["silent"], Commands.TRUE))
        # The good node answers while the silent one is still stuck in its handshake.
        results = await asyncio.wait_for(asyncio.gather(*good), 30)
        assert [r.stdout for r in results] == [b"g0\n", b"g1\n", b"g2\n"]
        assert not hung.done()
        await silent.release()
        outcomes = await asyncio.wait_for(asyncio.gather(refused, hung, return_exceptions=True), 30)
        assert isinstance(outcomes[0], NodeUnreachable) and "refused" in str(outcomes[0])
        assert isinstance(outcomes[1], NodeUnreachable) and "silent" in str(outcomes[1])
    finally:
        await silent.release()
        await t.close()


async def test_world_readable_identity_is_refused(tmp_path: Path) -> None:
    key = write_private_key(asyncssh.generate_private_key("ssh-ed25519"), tmp_path / "id")
    loose = copy_key_with_mode(key, tmp_path / "id_loose", 0o644)
    site = Site(
        path=tmp_path / "site.toml",
        name="t",
        state_dir=tmp_path,
        ssh=SshSettings(identity=loose, known_hosts=tmp_path / "known_hosts"),
        nodes={"n": Node("n", "127.0.0.1", closed_port())},
    )
    t = SshTransport(site, use_ssh_config=False)
    with pytest.raises(UsageError, match="chmod 600"):
        await t.run(site.nodes["n"], Commands.TRUE)
    await t.close()


async def test_jump_host_tunnels_and_checks_both_host_keys(
    server: ServerBase, tmp_path: Path
) -> None:
    # The server is its own jump host: reached as 127.0.0.1, it forwards to "localhost".
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        known_hosts_line("127.0.0.1", server.port, server.host_key)
        + known_hosts_line("localhost", server.port, server.host_key)
    )
    site = with_ssh(
        server.site({}), known_hosts=known_hosts, jump_host=f"{server.user}@127.0.0.1:{server.port}"
    )
    site.nodes["behind"] = Node("behind", "localhost", server.port)
    t = SshTransport(site, use_ssh_config=False)
    try:
        assert (await t.run(site.nodes["behind"], "echo tunnelled")).stdout == b"tunnelled\n"
        assert t.connections_opened == 2  # the jump host, then the node through it
    finally:
        await t.close()


# -- SFTP ----------------------------------------------------------------------------


async def test_sftp_put_get_verified_and_renamed(transport: SshTransport, tmp_path: Path) -> None:
    store = SftpStore(transport)
    remote_dir = tmp_path / "dr"
    remote_dir.mkdir()
    local = tmp_path / "backup.enc"
    data = os.urandom(2 * MiB + 5)
    local.write_bytes(data)
    seen: list[tuple[int, int]] = []

    sent = await store.put(
        "node1", local, str(remote_dir / "backup.enc"), progress=lambda d, t: seen.append((d, t))
    )
    assert (sent.size, sent.sha256) == (len(data), sha256(data))
    assert (remote_dir / "backup.enc").read_bytes() == data
    assert (remote_dir / "backup.enc").stat().st_mode & 0o777 == 0o600
    assert not (remote_dir / "backup.enc.partial").exists()
    assert seen and seen[-1] == (2 * len(data), 2 * len(data))

    got = await store.get(
        "node1",
        str(remote_dir / "backup.enc"),
        tmp_path / "back" / "copy.enc",
        expected_sha256=sha256(data),
    )
    assert (tmp_path / "back" / "copy.enc").read_bytes() == data and got.sha256 == sha256(data)
    assert (tmp_path / "back" / "copy.enc").stat().st_mode & 0o077 == 0

    assert await store.listdir("node1", str(remote_dir)) == ["backup.enc"]
    info = await store.stat("node1", str(remote_dir / "backup.enc"))
    assert info is not None and info.size == len(data) and not info.is_dir
    assert await store.stat("node1", str(remote_dir / "nothing")) is None
    await store.remove("node1", str(remote_dir / "backup.enc"))
    assert await store.listdir("node1", str(remote_dir)) == []


async def test_sftp_get_with_wrong_expected_digest_leaves_nothing(
    transport: SshTransport, tmp_path: Path
) -> None:
    (tmp_path / "src.bin").write_bytes(b"abc" * 1000)
    store = SftpStore(transport)
    with pytest.raises(OperationFailed, match="expected"):
        await store.get(
            "node1", str(tmp_path / "src.bin"), tmp_path / "out.bin", expected_sha256="0" * 64
        )
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "out.bin.partial").exists()


async def test_sftp_open_write_streams_and_cleans_up_on_failure(
    transport: SshTransport, tmp_path: Path
) -> None:
    store = SftpStore(transport)
    target = tmp_path / "stream.enc"
    data = os.urandom(5 * MiB + 1)
    async with store.open_write("node1", str(target)) as writer:
        for start in range(0, len(data), 100_000):
            await writer.write(data[start : start + 100_000])
    assert writer.result is not None and writer.result.sha256 == sha256(data)
    assert target.read_bytes() == data and target.stat().st_mode & 0o777 == 0o600

    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted):
        async with store.open_write("node1", str(tmp_path / "half.enc")) as writer:
            await writer.write(b"half")
            raise Interrupted
    assert not (tmp_path / "half.enc").exists() and not (tmp_path / "half.enc.partial").exists()


# -- helpers -------------------------------------------------------------------------


def test_quote_argv_and_node_specs() -> None:
    assert (
        quote_argv(["tar", "-C", "/var/lib/my dir", "x;rm -rf /"])
        == "tar -C '/var/lib/my dir' 'x;rm -rf /'"
    )
    assert node_from_spec("ops@bastion:2222") == Node(
        "ops@bastion:2222", "bastion", 2222, user="ops"
    )
    assert node_from_spec("[::1]:22").host == "::1"
    with pytest.raises(UsageError):
        node_from_spec("host:notaport")


def test_sshd_fixture_starts_a_real_sshd(sshd_server: Sshd) -> None:  # noqa: F811
    assert sshd_server.process is not None and sshd_server.process.poll() is None


# -- the OpenSSH client config -------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["web1", "web2", "Web1", "db1", "db2", "dbx", "other7", "other299", "nosuch"]
)
def test_ssh_config_evaluation_matches_asyncssh(tmp_path: Path, host: str) -> None:
    """The cached evaluation (skipping blocks that do not apply, plain Host names matched
    by set) gives exactly the options asyncssh's own parser gives, wildcards, negations,
    Match blocks and case included."""
    import getpass

    from asyncssh.config import SSHClientConfig

    from kconsole.transport.sshconfig import preloaded_options

    config = tmp_path / "ssh_config"
    blocks = "".join(
        f"Host other{i}\n  HostName 10.0.0.{i % 250}\n  Port {1000 + i}\n" for i in range(300)
    )
    config.write_text(
        "User global\n"
        + blocks
        + "Host web1,web2 db?\n  Port 2201\nHost web*\n  User w\nHost !web2 web2\n  Port 9\n"
        "Host Web1\n  Port 7\nHost db1 !db2\n  Port 3\nMatch host db*\n  User m\n"
        "Host *\n  Port 22\n  IdentityFile ~/.ssh/id_%h\n"
    )
    ours = preloaded_options([str(config)], host, 22, "root").config
    theirs = SSHClientConfig.load(
        None, [str(config)], False, False, False, getpass.getuser(), "root", host, 22
    )
    assert ours._options == theirs._options


async def test_ssh_config_is_honoured_and_read_once_per_process(
    server: ServerBase, tmp_path: Path
) -> None:
    """The login user comes from the site's ssh_config (the site sets none); a fleet's worth of
    connections reads and tokenizes the file once, and an edit is read again."""
    from kconsole.transport import sshconfig

    config = tmp_path / "ssh_config"
    blocks = "".join(f"Host other{i}\n  HostName 10.0.{i // 250}.{i % 250}\n" for i in range(300))
    config.write_text(f"{blocks}Host {server.host}\n  User {server.user}\n")
    site = with_ssh(server.site(), user=None, config=config)
    before = sshconfig.reads
    for _ in range(3):
        t = SshTransport(site)
        try:
            assert (await t.run(node_of(t), Commands.TRUE)).ok
        finally:
            await t.close()
    assert sshconfig.reads == before + 1
    config.write_text(f"{blocks}Host {server.host}\n  User {server.user}\n  Port 1\n")
    os.utime(config, ns=(1, 1))
    t = SshTransport(site)
    try:
        # The node's own port still wins over the file's (as OpenSSH's -p does).
        async with t.connection(node_of(t)) as conn:
            assert conn.get_extra_info("username") == server.user
    finally:
        await t.close()
    assert sshconfig.reads == before + 2
