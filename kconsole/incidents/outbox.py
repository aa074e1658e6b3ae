"""The outbox: every notification is written here first, then delivered and removed.

A message that cannot be delivered (target down, secret unset) stays, with its attempts and
the time of its next try, until a later delivery pass (the console, a headless run, `kconsole
incident tick`) gets it through: never dropped, and the operator never waits on it beyond one
short HTTP timeout. Two processes delivering at once never send a message twice: each message
is sent under its own flock and removed before the lock is released.

    outbox/<created>-<rand>.json   one message (written temp + fsync + rename)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kconsole.fsutil import atomic_write, fsync_dir
from kconsole.journal import iso

RETRY_FIRST = 30.0
"""Seconds before the first retry; each later one waits twice as long, up to RETRY_MAX."""
RETRY_MAX = 600.0


@dataclass
class Message:
    """One notification for one target."""

    id: str
    target: str
    text: str
    created: str
    incident: str = ""
    title: str = ""
    """A one-line summary (PagerDuty's `payload.summary`)."""
    severity: str = "high"
    dedup_key: str = ""
    event_action: str = "trigger"
    """PagerDuty event action: trigger, acknowledge or resolve."""
    attempts: int = 0
    next_try: str = ""
    last_error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """What one delivery attempt did."""

    message: Message
    delivered: bool
    error: str = ""


Sender = Callable[[Message], Awaitable[None]]
"""Sends one message or raises with a reason that names no secret."""


class Outbox:
    """The site's notification outbox under `state_dir/outbox/`."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "outbox"

    def put(self, message: Message) -> Path:
        """Store a message durably (before any attempt to send it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{message.id}.json"
        atomic_write(path, json.dumps(asdict(message)).encode("utf-8"))
        return path

    def new(self, now: datetime, target: str, text: str, **fields: Any) -> Message:
        """Make and store a message for `target`."""
        # Sorted by name = sent in order: the (possibly injected) time, then the real one.
        stamp = f"{now:%Y%m%dT%H%M%S%f}-{time.time_ns():020d}"
        message = Message(
            id=f"{stamp}-{secrets.token_hex(3)}",
            target=target,
            text=text,
            created=iso(now),
            **fields,
        )
        self.put(message)
        return message

    def pending(self) -> list[Message]:
        """Messages not yet delivered, oldest first."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.json")):
            with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
                out.append(Message(**json.loads(path.read_text())))
        return out

    def due(self, now: datetime) -> bool:
        """Whether any message is due to be tried now."""
        return any(_due(m, now) for m in self.pending())

    async def deliver(self, send: Sender, now: datetime, force: bool = False) -> list[Delivery]:
        """Try every message that is due (all of them with `force`); returns what happened."""
        results: list[Delivery] = []
        failing: set[str] = set()
        for message in self.pending():
            if not force and not _due(message, now):
                continue
            if message.target in failing:
                # One failure per target per pass: a black-holed target costs one timeout,
                # not one per queued message. The rest wait for the next pass.
                continue
            path = self.dir / f"{message.id}.json"
            result = await self._deliver_one(path, send, now)
            if result is not None:
                results.append(result)
                if not result.delivered:
                    failing.add(message.target)
        return results

    async def _deliver_one(self, path: Path, send: Sender, now: datetime) -> Delivery | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # someone else delivered it meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another process is sending it right now
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    return None
            except FileNotFoundError:
                return None  # delivered and removed while we waited for the lock
            message = Message(**json.loads(path.read_text()))
            try:
                await send(message)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the message for a retry
                message.attempts += 1
                wait = min(RETRY_FIRST * 2 ** (message.attempts - 1), RETRY_MAX)
                message.next_try = iso(now + timedelta(seconds=wait))
                message.last_error = str(exc) or exc.__class__.__name__
                self.put(message)
                return Delivery(message, False, message.last_error)
            os.unlink(path)
            fsync_dir(self.dir)
            return Delivery(message, True)
        finally:
            os.close(fd)


def _due(message: Message, now: datetime) -> bool:
    """Whether `message` is to be tried now (never tried, or its backoff has passed)."""
    return not message.next_try or message.next_try <= iso(now)
