"""A run's lease: which console drives it, held by conditional writes on one object.

`runs/<run-id>/lease.json` is created with `If-None-Match: *` and renewed with `If-Match`
(each renewal rewrites it, moving its `LastModified`). A lease is expired when the
store's own clock (the `Date` of the response that read it) is `lease_s` past the
object's `LastModified`: both timestamps come from the store, so a console whose clock is
wrong can neither expire someone else's lease early nor keep its own alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kconsole.errors import UsageError
from kconsole.journal import iso
from kconsole.shared.store import SharedStore, StoreUnavailable


class LeaseHeld(UsageError):
    """Another console drives the run right now (exit 2)."""

    def __init__(self, run_id: str, holder: str, user: str, expires: datetime) -> None:
        self.holder = holder
        self.user = user
        self.expires = expires
        super().__init__(
            f"run {run_id} is being driven by {user or '?'} on {holder}; its lease expires at "
            f"{iso(expires)} (store time) unless that console renews it."
        )


@dataclass(frozen=True)
class LeaseView:
    """A lease as read from the store."""

    holder: str
    user: str
    state: str
    expires: datetime
    expired: bool
    etag: str

    @property
    def live(self) -> bool:
        """Held and not expired: nobody else may drive the run."""
        return self.state == "live" and not self.expired


def lease_name(run_id: str) -> str:
    """The lease object's name in the store."""
    return f"runs/{run_id}/lease.json"


def read_lease(store: SharedStore, run_id: str, lease_s: float) -> LeaseView | None:
    """The run's lease as the store has it, or None if it never had one."""
    obj = store.read(lease_name(run_id))
    if obj is None:
        return None
    try:
        data = json.loads(obj.body)
    except ValueError:
        data = {}
    duration = float(data.get("lease_s", lease_s))
    expires = obj.last_modified + timedelta(seconds=duration)
    return LeaseView(
        holder=str(data.get("holder", "?")),
        user=str(data.get("user", "")),
        state=str(data.get("state", "live")),
        expires=expires,
        expired=obj.store_now >= expires,
        etag=obj.etag,
    )


class Lease:
    """This console's hold on one run; renewed by a background thread while the run lives."""

    def __init__(
        self, store: SharedStore, run_id: str, holder: str, user: str, lease_s: float
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.holder = holder
        self.user = user
        self.lease_s = lease_s
        self.etag = ""
        self.lost = ""
        """Why the lease was lost ("" while held): another console took it over."""
        self.on_lost: Callable[[str], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _body(self, state: str) -> bytes:
        return json.dumps(
            {
                "run": self.run_id,
                "holder": self.holder,
                "user": self.user,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "state": state,
                "lease_s": self.lease_s,
            }
        ).encode("utf-8")

    def acquire(self) -> None:
        """Take the lease: create it, or take over a released or expired one.

        Raises LeaseHeld while another console's lease is live, StoreUnavailable when
        the store cannot be asked. Of two consoles racing, exactly one gets it: both
        writes are conditional on what they read, and the store accepts only the first.
        """
        name = lease_name(self.run_id)
        etag = self.store.create(name, self._body("live"))
        if etag is None:
            view = read_lease(self.store, self.run_id, self.lease_s)
            if view is None:  # released and deleted between our two requests: try once more
                etag = self.store.create(name, self._body("live"))
            elif view.live and view.holder != self.holder:
                raise LeaseHeld(self.run_id, view.holder, view.user, view.expires)
            else:
                etag = self.store.replace(name, self._body("live"), view.etag)
            if etag is None:
                view = read_lease(self.store, self.run_id, self.lease_s)
                raise LeaseHeld(
                    self.run_id,
                    view.holder if view else "?",
                    view.user if view else "",
                    view.expires if view else datetime.now().astimezone(),
                )
        self.etag = etag

    def renew(self) -> bool:
        """Rewrite the lease (If-Match): False if another console took it over."""
        with self._lock:
            if self.lost or not self.etag:
                return False
            etag = self.store.replace(lease_name(self.run_id), self._body("live"), self.etag)
            if etag is None:
                self.lost = "another console took over the run's lease"
                return False
            self.etag = etag
            return True

    def keep(self) -> None:
        """Hold the lease from a daemon thread until `release`: take it first if it is not
        held yet (a new run: nobody else knows its id, so its start need not wait for the
        store), then renew it every third of its duration."""

        def loop() -> None:
            wait = 0.0
            sent = time.monotonic()  # when the last write that succeeded was sent
            while not self._stop.wait(wait):
                attempt = time.monotonic()
                try:
                    if not self.etag:
                        self.acquire()
                        sent, wait = attempt, self.lease_s / 3
                        continue
                    ok = self.renew()
                    sent = attempt if ok else sent
                except StoreUnavailable:
                    wait = min(self.lease_s / 3, 5.0)
                    if not self.etag or time.monotonic() - sent < self.lease_s:
                        continue  # try again; the lease still holds
                    # Not renewed for a whole lease (elapsed time on this host's monotonic
                    # clock, which skew does not touch): another console may have it now.
                    self.lost = (
                        f"the lease could not be renewed for {self.lease_s:g}s (store "
                        "unreachable); another console may take the run over"
                    )
                    ok = False
                except LeaseHeld as exc:
                    self.lost = str(exc)
                    ok = False
                if not ok:
                    if self.on_lost is not None:
                        self.on_lost(self.lost)
                    return
                wait = self.lease_s / 3

        self._thread = threading.Thread(target=loop, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and mark the lease released, so another console may take the run
        at once (best effort: an unreachable store leaves it to expire)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        with self._lock:
            if self.lost or not self.etag:
                return
            with contextlib.suppress(StoreUnavailable):
                self.store.replace(lease_name(self.run_id), self._body("released"), self.etag)
            self.etag = ""

    def stop_renewing(self) -> None:
        """Stop the renewals without releasing (tests: a console that died holding it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
