"""How the engine reaches nodes: the `NodeTransport` protocol, its SSH implementation
and SFTP helpers for the DR backup host.

`SshTransport`, `SftpStore` and `node_from_spec` load asyncssh on first use, so importing
this package stays cheap for commands that never touch the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kconsole.transport.base import (
    CommandResult,
    CommandTimeout,
    ConnectionLost,
    HostKeyRejected,
    NodeTransport,
    NodeUnreachable,
    OutputCallback,
    Sink,
    bounded_command,
    quote_argv,
)

if TYPE_CHECKING:
    from kconsole.transport.sftp import SftpStore, Transferred
    from kconsole.transport.ssh import SshTransport, node_from_spec

__all__ = [
    "CommandResult",
    "CommandTimeout",
    "ConnectionLost",
    "HostKeyRejected",
    "NodeTransport",
    "NodeUnreachable",
    "OutputCallback",
    "SftpStore",
    "Sink",
    "SshTransport",
    "Transferred",
    "bounded_command",
    "node_from_spec",
    "quote_argv",
]

_LAZY = {
    "SshTransport": "kconsole.transport.ssh",
    "node_from_spec": "kconsole.transport.ssh",
    "SftpStore": "kconsole.transport.sftp",
    "Transferred": "kconsole.transport.sftp",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
