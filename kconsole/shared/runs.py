"""Runs shared between consoles: the lease, the journal copy, take-over and listing.

A console that starts a run takes its lease and copies every journal record to the
store behind the local journal. Another console resuming it (`run --resume`, or `e` on
the Runs screen) takes the lease over — refused while the first one's is live — and
replays the shared journal into its own `state_dir` before it reads it, so it carries on
exactly where the other stopped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kconsole.errors import UsageError
from kconsole.fsutil import atomic_write, fsync_dir
from kconsole.journal import RunJournal, RunSummary, is_locked, read_records, summarise_records
from kconsole.shared.lease import Lease, LeaseView, read_lease
from kconsole.shared.mirror import StreamMirror
from kconsole.shared.store import SharedStore, StoreUnavailable, console_name
from kconsole.site import Site


def _warn(text: str) -> None:
    print(f"kconsole: warning: {text}", file=sys.stderr)


@dataclass
class SharedRun:
    """This console's part in a shared run: its lease and its journal copy."""

    run_id: str
    lease: Lease | None
    mirror: StreamMirror

    def push(self, record: dict[str, Any]) -> None:
        """Queue a record for the store (the journal calls this after writing it locally)."""
        self.mirror.push(record)

    def close(self) -> None:
        """Send the queued records (bounded wait), then release the lease."""
        if not self.mirror.close() and self.mirror.failures:
            _warn(
                f"run {self.run_id}: {self.mirror.pending} journal records not yet in the shared "
                "store (unreachable); they go the next time this console resumes the run."
            )
        if self.lease is not None:
            self.lease.release()


def share_new_run(site: Site, journal: RunJournal, runbook_text: str, user: str) -> None:
    """Copy a run this console just created to the store, and hold its lease. Both happen
    in the background: the id is new, so no other console can contend for it, and the run
    starts without waiting for the store (an unreachable one is tried again later)."""
    store = SharedStore.for_site(site)
    if store is None:
        return
    me = console_name(site)
    lease = Lease(store, journal.run_id, me, user, site.lease)
    lease.keep()
    mirror = StreamMirror(
        store, f"runs/{journal.run_id}", next_batch=1, console=me, header={"runbook": runbook_text}
    )
    journal.mirror = SharedRun(journal.run_id, lease, mirror)


def take_over(site: Site, run_id: str, user: str) -> SharedRun | None:
    """Before resuming `run_id`: take its lease (LeaseHeld, exit 2, while another console's
    is live) and bring this console's copy of the journal up to the shared one.

    Returns the SharedRun to attach once the journal is open, or None when the site has no
    shared store or it cannot be reached (the run is then resumed from the local journal).
    """
    store = SharedStore.for_site(site)
    if store is None:
        return None
    rdir = site.state_dir / "runs" / run_id
    if is_locked(rdir):
        raise UsageError(f"run {run_id} is being run by another kconsole process right now.")
    me = console_name(site)
    lease = Lease(store, run_id, me, user, site.lease)
    try:
        lease.acquire()
        view = store.read_stream(f"runs/{run_id}")
    except StoreUnavailable as exc:
        if lease.etag:
            lease.release()
        if not (rdir / "journal.jsonl").exists():
            raise UsageError(
                f"run {run_id} is not in this console's journal and {exc}".rstrip(".") + "."
            ) from None
        _warn(f"{exc} Resuming from this console's own journal.")
        return None
    try:
        local, _ = read_records(rdir / "journal.jsonl")
        if len(view.records) > len(local):
            _replay(rdir, view.records, str(view.header.get("runbook", "")), run_id)
            local = view.records
        elif not view.records and not local:
            raise UsageError(f"no run {run_id} here or in the shared store {store.describe()}.")
    except BaseException:
        lease.release()
        raise
    lease.keep()
    mirror = StreamMirror(
        store,
        f"runs/{run_id}",
        next_batch=view.batches + 1,
        backlog=local[len(view.records) :],
        console=me,
        header={"runbook": (rdir / "runbook.toml").read_text(encoding="utf-8")}
        if view.batches == 0
        else None,
    )
    return SharedRun(run_id, lease, mirror)


def _replay(rdir: Path, records: list[dict[str, Any]], runbook_text: str, run_id: str) -> None:
    """Write the shared journal as this console's own (atomically)."""
    if not (rdir / "runbook.toml").exists():
        if not runbook_text:
            raise UsageError(f"run {run_id}: the shared store has its journal but not its runbook.")
        rdir.mkdir(parents=True, exist_ok=True)
        fsync_dir(rdir.parent)
        atomic_write(rdir / "runbook.toml", runbook_text.encode("utf-8"), 0o600)
    text = "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records)
    atomic_write(rdir / "journal.jsonl", text.encode("utf-8"), 0o600)


def shared_runs(site: Site) -> list[RunSummary]:
    """Every run in the shared store, as the store has it (UsageError-free: an unreachable
    store raises StoreUnavailable for the caller to report)."""
    store = SharedStore.for_site(site)
    if store is None:
        return []
    out = []
    for run_id in store.names("runs", delimiter="/"):
        view = store.read_stream(f"runs/{run_id}")
        if not view.records:
            continue
        lease = read_lease(store, run_id, site.lease)
        summary = summarise_records(run_id, view.records, _const(bool(lease and lease.live)))
        summary.console = view.console
        summary.holder = _holder(lease)
        out.append(summary)
    return out


def _const(value: bool) -> Callable[[], bool]:
    return lambda: value


def _holder(lease: LeaseView | None) -> str:
    if lease is None or not lease.live:
        return ""
    return f"{lease.user}@{lease.holder}" if lease.user else lease.holder


def merged_runs(
    site: Site, local: list[RunSummary], user: str = ""
) -> tuple[list[RunSummary], str]:
    """This console's runs and the shared ones, newest first: for a run in both, the copy
    with more records wins (the other console went on with it). When `user` may operate,
    runs of this console the store is behind on (it was unreachable) are caught up first;
    an auditor's listing writes nothing. Also a problem sentence when the store could not
    be read ("" otherwise)."""
    may_write = bool(user) and site.access.role_of(user) in ("admin", "operator")
    try:
        shared = shared_runs(site)
        if may_write and catch_up(site, local, {r.id: r for r in shared}):
            shared = shared_runs(site)
    except StoreUnavailable as exc:
        return local, str(exc)
    by_id = {r.id: r for r in local}
    for r in shared:
        mine = by_id.get(r.id)
        if mine is None or len(r.records) > len(mine.records):
            by_id[r.id] = r
        else:
            mine.console, mine.holder = r.console, r.holder
    runs = sorted(by_id.values(), key=lambda s: (s.started, s.id), reverse=True)
    return runs, ""


def catch_up(site: Site, local: list[RunSummary], shared: dict[str, RunSummary]) -> int:
    """Send the store the records of this console's runs it missed while unreachable
    (runs not going on here right now, whose shared copy is a prefix of the local
    journal); the number of runs caught up."""
    store = SharedStore.for_site(site)
    if store is None:
        return 0
    me = console_name(site)
    done = 0
    for mine in local:
        theirs = shared.get(mine.id)
        have = theirs.records if theirs is not None else []
        if len(mine.records) <= len(have) or mine.records[: len(have)] != have:
            continue  # nothing missing, or the runs went separate ways: leave both as they are
        rdir = site.state_dir / "runs" / mine.id
        if is_locked(rdir):
            continue  # running here: its own mirror is sending them
        view = store.read_stream(f"runs/{mine.id}")
        if len(view.records) != len(have):
            continue
        header = None
        if view.batches == 0:
            header = {"runbook": (rdir / "runbook.toml").read_text(encoding="utf-8")}
        if store.append(f"runs/{mine.id}", mine.records[len(have) :], view.batches + 1, me, header):
            done += 1
    return done
