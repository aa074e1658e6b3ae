"""The run journal: every step transition written and fsynced before it is acted on.

Layout under the site's `state_dir`::

    runs/<run-id>/journal.jsonl   one JSON object per line, append-only
    runs/<run-id>/runbook.toml    the runbook exactly as it ran (resume uses this copy)
    runs/<run-id>/lock            flock held by the process running it

A crash can leave a torn last line; readers ignore it and writers cut it off before
appending, so a `kill -9` at any moment leaves a journal that resumes.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kconsole.errors import UsageError
from kconsole.fsutil import atomic_write, fsync_dir

STEP_EVENTS = (
    "started",
    "output",
    "gate",
    "confirmed",
    "approved",
    "refused",
    "retrying",
    "finished",
    "failed",
    "skipped",
)
RUN_STATUSES = ("running", "waiting", "succeeded", "failed", "aborted", "interrupted")


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: `20261126-063522-1a2b`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def iso(t: datetime) -> str:
    """RFC 3339 UTC with milliseconds."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_records(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """All complete records of a journal, and whether a torn last line was found."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], False
    torn = bool(raw) and not raw.endswith(b"\n")
    lines = raw.split(b"\n")
    if torn:
        lines = lines[:-1]
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            # A bad line in the middle is damage, not a crash artefact; skip it but keep going.
            continue
        if isinstance(record, dict):  # a JSON line that is not a record is damage too
            records.append(record)
    return records, torn


class RunJournal:
    """Appends records to one run's journal, durably."""

    def __init__(self, state_dir: Path, run_id: str) -> None:
        self.dir = state_dir / "runs" / run_id
        self.path = self.dir / "journal.jsonl"
        self.run_id = run_id
        self._fh: Any = None
        self._lock_fd: int | None = None
        self.mirror: Any = None
        """Where records also go once written here (the shared store's `SharedRun`), or None.
        It must only queue: the local journal is the source of truth and is never held up."""

    @classmethod
    def create(cls, state_dir: Path, run_id: str, runbook_text: str) -> RunJournal:
        """Make the run's directory, save the runbook copy, and open the journal."""
        journal = cls(state_dir, run_id)
        journal.dir.mkdir(parents=True, exist_ok=False)
        fsync_dir(journal.dir.parent)
        atomic_write(journal.dir / "runbook.toml", runbook_text.encode("utf-8"), 0o600)
        journal.open()
        return journal

    def open(self) -> None:
        """Take the run's lock and open the journal for appending (cutting a torn tail)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                f"run {self.run_id} is being run by another kconsole process right now."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                with self.path.open("r+b") as fh:
                    fh.truncate(raw.rfind(b"\n") + 1)
                    fh.flush()
                    os.fsync(fh.fileno())
        self._fh = self.path.open("ab")

    def write(self, record: dict[str, Any], durable: bool = True) -> None:
        """Append one record; with `durable` it is on disk before this returns."""
        assert self._fh is not None, "journal is not open"
        line = json.dumps(record, sort_keys=False, separators=(",", ":"), ensure_ascii=False) + "\n"
        self._fh.write(line.encode("utf-8"))
        self._fh.flush()
        if durable:
            os.fsync(self._fh.fileno())
        if self.mirror is not None:
            self.mirror.push(record)

    def close(self) -> None:
        """Flush, close and release the lock (and hand the shared copy its last records)."""
        if self.mirror is not None:
            mirror, self.mirror = self.mirror, None
            mirror.close()
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def is_locked(run_dir: Path) -> bool:
    """Whether some live process holds the run's lock."""
    lock = run_dir / "lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@dataclass
class InstanceState:
    """What the journal says about one (step, node) instance."""

    step: str
    node: str | None
    last: str = ""
    attempts: int = 0
    confirmed: bool = False
    approved_by: list[str] = field(default_factory=list)
    """Accounts that approved a two-person gate so far (distinct, in order)."""
    reason: str = ""
    output: list[str] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    exit_code: int | None = None

    @property
    def done(self) -> bool:
        """Finished, failed for good, or skipped: never re-run without asking."""
        return self.last in ("finished", "failed", "skipped")

    @property
    def in_flight(self) -> bool:
        """Started (or retrying) with no outcome: the process died mid-step."""
        return self.last in ("started", "retrying", "output")


@dataclass
class RunSummary:
    """A run as `kconsole runs` shows it."""

    id: str
    runbook: str
    status: str
    started: str
    finished: str
    drill: bool
    user: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    reason: str = ""
    instances: dict[tuple[str, str | None], InstanceState] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    console: str = ""
    """The console that last wrote the run (shared runs), or "" for this console's own."""
    holder: str = ""
    """Who holds the run's lease right now (`user@console`), or "" if nobody does."""

    def as_json(self) -> dict[str, Any]:
        """The `runs --json` line."""
        return {
            "console": self.console,
            "holder": self.holder,
            "id": self.id,
            "runbook": self.runbook,
            "status": self.status,
            "started": self.started,
            "finished": self.finished or None,
            "drill": self.drill,
            "user": self.user,
            "reason": self.reason,
        }


def summarise(run_dir: Path) -> RunSummary:
    """Rebuild a run's state from its journal."""
    records, _ = read_records(run_dir / "journal.jsonl")
    return summarise_records(run_dir.name, records, lambda: is_locked(run_dir))


def summarise_records(
    run_id: str, records: list[dict[str, Any]], live: Callable[[], bool]
) -> RunSummary:
    """Rebuild a run's state from its records; `live()` says whether a run with no final
    record is still going (else it was interrupted)."""
    head = next((r for r in records if r.get("type") == "run" and r.get("event") == "created"), {})
    summary = RunSummary(
        id=run_id,
        runbook=str(head.get("runbook", "?")),
        status="running",
        started=str(head.get("time", "")),
        finished="",
        drill=bool(head.get("drill")),
        user=str(head.get("user", "")),
        params=dict(head.get("params", {})),
        title=str(head.get("title", "")),
        records=records,
    )
    final: dict[str, Any] | None = None
    for r in records:
        if r.get("type") == "step":
            key = (r["step"], r.get("node"))
            inst = summary.instances.setdefault(key, InstanceState(r["step"], r.get("node")))
            ev = r["event"]
            if ev == "output":
                inst.output.append(f"{r.get('stream', 'stdout')}: {r.get('text', '')}")
                continue
            if ev == "confirmed":
                inst.confirmed = True
            if ev == "approved" and r.get("by") not in inst.approved_by:
                inst.approved_by.append(str(r.get("by")))
            if ev in ("gate", "confirmed", "refused", "approved"):
                continue
            inst.last = ev
            if ev == "started":
                inst.attempts = int(r.get("attempt", inst.attempts + 1))
                inst.started = inst.started or r["time"]
            if ev in ("finished", "failed", "skipped"):
                inst.finished = r["time"]
                inst.reason = str(r.get("reason", ""))
                inst.exit_code = r.get("exit_code")
        elif r.get("type") == "run" and r.get("event") in ("finished", "stopped"):
            final = r
        elif r.get("type") == "run" and r.get("event") == "resumed":
            final = None
    if final is not None:
        summary.status = str(final.get("status"))
        summary.finished = str(final.get("time", "")) if final.get("event") == "finished" else ""
        summary.reason = str(final.get("reason", ""))
    elif not live():
        summary.status = "interrupted"
    return summary


def list_runs(state_dir: Path) -> list[RunSummary]:
    """Every run in the journal, newest first."""
    runs_dir = state_dir / "runs"
    if not runs_dir.is_dir():
        return []
    out = [summarise(d) for d in runs_dir.iterdir() if (d / "journal.jsonl").exists()]
    return sorted(out, key=lambda s: (s.started, s.id), reverse=True)


def run_dir(state_dir: Path, run_id: str) -> Path:
    """The directory of an existing run; UsageError if there is none."""
    d = state_dir / "runs" / run_id
    if not (d / "journal.jsonl").exists() or "/" in run_id or run_id.startswith("."):
        raise UsageError(f"no run {run_id} in {state_dir / 'runs'}; `kconsole runs` lists them.")
    return d
