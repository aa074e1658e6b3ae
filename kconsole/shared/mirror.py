"""Copying a stream of records to the shared store in the background, in order.

The local journal is written (and fsynced) first and stays the source of truth; `push`
only queues the record and returns. One daemon thread sends whatever has queued up as the
next batch, one request at a time, so records reach the store in order and a slow or
dead store never holds up a step. While the store is unreachable records pile up and
go later, in one batch, with the backlog of an earlier session's records first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kconsole.shared.store import SharedStore, StoreUnavailable

MAX_BATCH = 500
"""Records per batch object at most (a long backlog goes as several)."""
RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits between attempts while the store is unreachable."""


class StreamMirror:
    """The writer of one shared stream."""

    def __init__(
        self,
        store: SharedStore,
        stream: str,
        *,
        next_batch: int,
        backlog: list[dict[str, Any]] | None = None,
        console: str = "",
        header: dict[str, Any] | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.store = store
        self.stream = stream
        self.console = console
        self.header = header or {}
        """Carried by batch 1 only (a run's runbook text)."""
        self.next_batch = next_batch
        self.sent = 0
        """Records the store has acknowledged (this session)."""
        self.failures = 0
        """Attempts that failed in a row (0 while the store answers)."""
        self.last_error = ""
        self.lost = ""
        """Why this console stopped writing the stream ("" while it writes it)."""
        self.timings: list[float] = []
        """Seconds each acknowledged batch took (for measurements)."""
        self._pending: list[dict[str, Any]] = list(backlog or [])
        self._cond = threading.Condition()
        self._closing = False
        self._wake = threading.Event()
        self._sleep = sleep
        self._thread = threading.Thread(target=self._loop, name=f"mirror-{stream}", daemon=True)
        self._thread.start()

    def push(self, record: dict[str, Any]) -> None:
        """Queue one record (never blocks on the store)."""
        with self._cond:
            if self.lost:
                return
            self._pending.append(record)
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Records queued and not yet acknowledged by the store."""
        with self._cond:
            return len(self._pending)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = self._pending[:MAX_BATCH]
            t0 = time.monotonic()
            try:
                written = self.store.append(
                    self.stream,
                    batch,
                    self.next_batch,
                    self.console,
                    self.header if self.next_batch == 1 else None,
                )
            except StoreUnavailable as exc:
                self.failures += 1
                self.last_error = str(exc)
                with self._cond:
                    if self._closing:
                        return  # one failed attempt after close: leave the rest for later
                delay = RETRY_S[min(self.failures, len(RETRY_S)) - 1]
                if self._sleep is not None:
                    self._sleep(delay)
                else:
                    self._wake.wait(delay)
                    self._wake.clear()
                continue
            if not written:
                with self._cond:
                    self.lost = (
                        f"batch {self.next_batch} of {self.stream} was written by another "
                        "console; this one stopped copying its records there"
                    )
                    self._pending.clear()
                    self._cond.notify_all()
                return
            self.timings.append(time.monotonic() - t0)
            with self._cond:
                del self._pending[: len(batch)]
                self.sent += len(batch)
                self.next_batch += 1
                self.failures = 0
                self.last_error = ""
                self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is queued (up to `timeout`; after a failed attempt, give up at once)
        and stop. True if everything reached the store."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(timeout)
        with self._cond:
            return not self._pending and not self.lost
