"""Anchoring the audit log off-host: after every run the chain's head (seq, hash, HMAC) is
written to each remote backup location (the DR host, the S3 bucket with its versioning and
Object Lock). A hash chain alone cannot show that its tail was cut off or the whole file
rewritten by someone holding the host; a head kept elsewhere can."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from kconsole.audit import AuditLog, canonical
from kconsole.backups.stores import LocalStore, Store
from kconsole.errors import OperationFailed

CHECKPOINT_KEY = "audit/checkpoint.json"


def checkpoint(log: AuditLog) -> dict[str, Any] | None:
    """The head of the chain with an HMAC over it, or None for an empty log."""
    entries = log.read()
    if not entries:
        return None
    last = entries[-1]
    body = {"seq": last["seq"], "head": last["hash"], "ts": last["ts"], "site_log": str(log.path.name)}
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
    problems: list[str] = []

    async def one(name: str, store: Store) -> None:
        try:
            await asyncio.wait_for(store.write_bytes(CHECKPOINT_KEY, data), timeout)
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


async def check(log: AuditLog, stores: dict[str, Store]) -> list[AnchorCheck]:
    """Compare the local log with each remote checkpoint."""
    entries = log.read()
    by_seq = {e.get("seq"): e for e in entries}
    last = entries[-1]["seq"] if entries else 0
    key = log.key()
    out: list[AnchorCheck] = []
    for name, store in remote_stores(stores).items():
        try:
            raw = await asyncio.wait_for(store.read_bytes(CHECKPOINT_KEY), 20)
        except (OperationFailed, OSError, TimeoutError) as exc:
            out.append(AnchorCheck(name, True, f"no checkpoint could be read ({str(exc).rstrip('.')})"))
            continue
        try:
            cp = json.loads(raw)
            body = {k: cp[k] for k in ("seq", "head", "ts", "site_log")}
        except (ValueError, KeyError, TypeError):
            out.append(AnchorCheck(name, False, "the checkpoint there is not readable"))
            continue
        if not hmac.compare_digest(str(cp.get("mac", "")), hmac.new(key, canonical(body), hashlib.sha256).hexdigest()):
            out.append(AnchorCheck(name, False, "the checkpoint there has a bad HMAC"))
        elif body["seq"] > last:
            out.append(AnchorCheck(name, False, f"the log ends at entry {last} but {name} saw entry {body['seq']}: "
                                   "entries were cut off or the log was replaced"))
        elif by_seq.get(body["seq"], {}).get("hash") != body["head"]:
            out.append(AnchorCheck(name, False, f"entry {body['seq']} differs from the one {name} saw: "
                                   "the log was rewritten"))
        else:
            out.append(AnchorCheck(name, True, f"matches the checkpoint at entry {body['seq']}"))
    return out
