"""Anchoring the audit log off-host: after every run the chain's head (seq, hash, HMAC) is
written to each remote backup location (the DR host, the S3 bucket with its versioning and
Object Lock). A hash chain alone cannot show that its tail was cut off or the whole file
rewritten by someone holding the host; a head kept elsewhere can.

Checkpoints are filed per console (`audit/<console id>/checkpoint.json`, the id kept in the
console's state_dir): several consoles may share the backup locations, and each verifies
its own log against its own head."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kconsole.audit import AuditLog, canonical
from kconsole.backups.stores import LocalStore, S3Store, Store
from kconsole.errors import OperationFailed


def checkpoint_key(console_id: str) -> str:
    """Where one console's checkpoint lives in a backup location."""
    return f"audit/{console_id}/checkpoint.json"


def checkpoint(log: AuditLog) -> dict[str, Any] | None:
    """The head of the chain with an HMAC over it, or None for an empty log."""
    entries = log.read()
    if not entries:
        return None
    last = entries[-1]
    body = {
        "seq": last["seq"],
        "head": last["hash"],
        "ts": last["ts"],
        "site_log": str(log.path.name),
        "console": log.console_id(create=True),
    }
    key = log.key()
    return {**body, "mac": hmac.new(key, canonical(body), hashlib.sha256).hexdigest()}


def remote_stores(stores: dict[str, Store]) -> dict[str, Store]:
    """The locations that are not on this host."""
    return {n: s for n, s in stores.items() if not isinstance(s, LocalStore)}


async def publish(log: AuditLog, stores: dict[str, Store], timeout: float = 20.0) -> list[str]:
    """Write the checkpoint to every remote location; returns the problems (never raises)."""
    cp = checkpoint(log)
    if cp is None:
        return []
    data = canonical(cp) + b"\n"
    key_name = checkpoint_key(str(cp["console"]))
    problems: list[str] = []

    async def one(name: str, store: Store) -> None:
        try:
            await asyncio.wait_for(store.write_bytes(key_name, data), timeout)
        except (OperationFailed, OSError, TimeoutError) as exc:
            problems.append(f"{name}: {str(exc).rstrip('.') or exc.__class__.__name__}")

    await asyncio.gather(*(one(n, s) for n, s in remote_stores(stores).items()))
    return problems


@dataclass
class AnchorCheck:
    """The log against one off-host checkpoint."""

    location: str
    ok: bool
    message: str
    found: bool = False
    """A checkpoint of this console was there to compare with."""


def _compare(
    raw: bytes, name: str, key: bytes | None, by_seq: dict[Any, dict[str, Any]], last: int
) -> tuple[bool, str, int]:
    """One checkpoint against the local log: (ok, what is wrong, the entry it names). With
    no key (it was deleted with the log) a checkpoint cannot be authenticated, but one that
    names any entry at all still shows the log had entries that are gone."""
    try:
        cp = json.loads(raw)
        body = {k: cp[k] for k in ("seq", "head", "ts", "site_log", "console")}
        if not isinstance(body["seq"], int) or isinstance(body["seq"], bool):
            raise TypeError("seq")
    except (ValueError, KeyError, TypeError):
        return False, "the checkpoint there is not readable", 0
    if key is None:
        return (
            False,
            (
                f"the log and its audit key are gone but {name} saw entry {body['seq']}: "
                "the log was deleted"
            ),
            body["seq"],
        )
    if not hmac.compare_digest(
        str(cp.get("mac", "")), hmac.new(key, canonical(body), hashlib.sha256).hexdigest()
    ):
        return False, "the checkpoint there has a bad HMAC", 0
    if body["seq"] > last:
        return (
            False,
            (
                f"the log ends at entry {last} but {name} saw entry {body['seq']}: "
                "entries were cut off or the log was replaced"
            ),
            body["seq"],
        )
    if by_seq.get(body["seq"], {}).get("hash") != body["head"]:
        return (
            False,
            f"entry {body['seq']} differs from the one {name} saw: the log was rewritten",
            body["seq"],
        )
    return True, "", body["seq"]


async def check(log: AuditLog, stores: dict[str, Store]) -> list[AnchorCheck]:
    """Compare the local log with each remote checkpoint, and on S3 with every earlier
    version of it too: a versioned, Object Lock bucket keeps them, so someone holding this
    host (and its HMAC key) who rewrites old entries and re-anchors the new head is still
    contradicted by the checkpoints written before."""
    entries = log.read()
    by_seq = {e.get("seq"): e for e in entries}
    last = entries[-1]["seq"] if entries else 0
    console = log.console_id()
    if console is None:  # this console never anchored anything: nothing to compare with
        return [
            AnchorCheck(name, True, "no checkpoint of this console yet")
            for name in remote_stores(stores)
        ]
    key = log.key() if entries or log.key_path.exists() else None
    key_name = checkpoint_key(console)
    out: list[AnchorCheck] = []
    for name, store in remote_stores(stores).items():
        versions: list[tuple[datetime | None, bytes]]
        try:
            if isinstance(store, S3Store):
                versions = list(await asyncio.wait_for(store.read_versions(key_name), 120))
                if not versions:
                    raise OperationFailed("there is none yet")
            else:
                versions = [(None, await asyncio.wait_for(store.read_bytes(key_name), 20))]
        except (OperationFailed, OSError, TimeoutError) as exc:
            out.append(
                AnchorCheck(name, True, f"no checkpoint could be read ({str(exc).rstrip('.')})")
            )
            continue
        ok, problem, seq = _compare(versions[0][1], name, key, by_seq, last)
        if not ok:
            out.append(AnchorCheck(name, False, problem, found=True))
            continue
        for when, raw in versions[1:]:
            old_ok, old_problem, _ = _compare(raw, name, key, by_seq, last)
            if not old_ok:
                stamp = f" of {when:%Y-%m-%d %H:%M:%S}Z" if when is not None else ""
                out.append(
                    AnchorCheck(
                        name, False, f"an earlier checkpoint{stamp}: {old_problem}", found=True
                    )
                )
                break
        else:
            kept = (
                f", and all {len(versions) - 1} earlier ones kept there"
                if len(versions) > 1
                else ""
            )
            out.append(
                AnchorCheck(name, True, f"matches the checkpoint at entry {seq}{kept}", found=True)
            )
    return out
