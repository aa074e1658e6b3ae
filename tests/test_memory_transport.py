"""MemoryTransport: the scripted, in-memory NodeTransport the executor is tested with."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import pytest

from kconsole.site import Node
from kconsole.transport import (
    CommandTimeout,
    ConnectionLost,
    NodeTransport,
    NodeUnreachable,
)
from tests.memory_transport import MemoryTransport

V1 = Node("validator1", "10.0.0.1")
V2 = Node("validator2", "10.0.0.2")


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_it_is_a_node_transport() -> None:
    assert isinstance(MemoryTransport(), NodeTransport)


async def test_scripted_reply_with_output_and_exit_status() -> None:
    t = MemoryTransport()
    t.reply("validator1", r"^systemctl is-active", stdout="active\n", exit_status=0)
    t.reply("*", r"^systemctl is-active", stdout="inactive\n", exit_status=3)
    pieces: list[tuple[str, bytes]] = []
    one = await t.run(
        V1, "systemctl is-active kaldrix-node", on_output=lambda s, d: pieces.append((s, d))
    )
    two = await t.run(V2, "systemctl is-active kaldrix-node")
    assert (one.exit_status, one.stdout) == (0, b"active\n")
    assert (two.exit_status, two.stdout) == (3, b"inactive\n")
    assert pieces == [("stdout", b"active\n")]
    assert t.commands("validator1") == ["systemctl is-active kaldrix-node"]


async def test_unscripted_commands_are_not_found() -> None:
    result = await MemoryTransport().run(V1, "rm -rf /")
    assert result.exit_status == 127 and b"no reply scripted" in result.stderr


async def test_patterns_can_be_compiled_or_predicates() -> None:
    t = MemoryTransport()
    t.reply("*", re.compile(r"tar\s+-c"), stdout=b"archive")
    t.reply("*", lambda command: command.endswith("--version"), stdout=b"1.0")
    assert (await t.run(V1, "sudo -n tar  -czf - /x")).stdout == b"archive"
    assert (await t.run(V1, "kaldrix --version")).stdout == b"1.0"


async def test_times_scripts_a_failure_then_a_success() -> None:
    t = MemoryTransport()
    t.reply("validator1", "curl", exit_status=7, times=1)
    t.reply("validator1", "curl", exit_status=0)
    assert [(await t.run(V1, "curl -f http://x")).exit_status for _ in range(3)] == [7, 0, 0]


async def test_down_node_is_unreachable_everywhere() -> None:
    t = MemoryTransport()
    t.down("validator2", "connection refused")
    with pytest.raises(NodeUnreachable, match="validator2"):
        await t.probe(V2)
    with pytest.raises(NodeUnreachable):
        await t.run(V2, "true")
    t.up("validator2")
    assert await t.probe(V2) == 1.0


async def test_raises_scripts_a_failure() -> None:
    t = MemoryTransport()
    t.reply("*", "tar", raises=ConnectionLost("validator1", "the network closed it"))
    with pytest.raises(ConnectionLost):
        await t.capture(V1, "tar -cf -", sink=_discard)


async def test_delay_past_the_timeout_is_a_command_timeout() -> None:
    t = MemoryTransport()
    t.reply("*", "sleep", delay=5.0)
    with pytest.raises(CommandTimeout, match="0.01 s"):
        await t.run(V1, "sleep 5", timeout=0.01)


async def test_stream_in_records_stdin_and_can_answer_from_it() -> None:
    t = MemoryTransport()
    t.reply(
        "*", "^sha256sum$", stdout_from_stdin=lambda data: hashlib.sha256(data).hexdigest().encode()
    )
    result = await t.stream_in(V1, "sha256sum", chunks(b"abc", b"def"))
    assert result.stdout == hashlib.sha256(b"abcdef").hexdigest().encode()
    assert t.calls[-1].kind == "stream_in" and t.calls[-1].stdin == b"abcdef"


async def test_capture_sends_stdout_to_the_sink_in_pieces() -> None:
    t = MemoryTransport(chunk_size=4)
    t.reply("*", "cat", stdout=b"0123456789", stderr=b"note\n")
    got: list[bytes] = []
    journal: list[tuple[str, bytes]] = []

    async def sink(piece: bytes) -> None:
        got.append(piece)

    async def on_output(stream: str, data: bytes) -> None:
        journal.append((stream, data))

    result = await t.capture(V1, "cat /x", sink, on_output=on_output)
    assert got == [b"0123", b"4567", b"89"]
    assert result.stdout == b"" and result.stderr == b"note\n"
    assert journal == [("stderr", b"note\n")]


async def test_calls_are_recorded_with_timeouts_and_close() -> None:
    t = MemoryTransport(latency_ms={"validator1": 12.5})
    t.reply("*", "", stdout=b"")
    await t.run(V1, "hostname", timeout=3, stdin=b"in")
    assert await t.probe(V1) == 12.5
    assert [(c.kind, c.node, c.command, c.stdin, c.timeout) for c in t.calls] == [
        ("run", "validator1", "hostname", b"in", 3),
        ("probe", "validator1", "", b"", None),
    ]
    await t.close()
    assert t.closed


async def _discard(_piece: bytes) -> None:
    return None
