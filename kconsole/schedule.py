"""The plan's backup schedule as data: which runbook runs when, when each is next due,
whether one is overdue, and the crontab that runs them headless.

The plan's cron table (its `/etc/crontab`) names shell scripts; here each line names the
runbook that replaces the script. A site tier that holds a single kind may set its own
`schedule`; a tier holding several kinds (tier 1: chain state every 5 minutes, keys every
15) cannot say which of them it means, so the plan's line stands for each of those.

Cron expressions are the standard five fields (minute hour day-of-month month
day-of-week, with `*`, `a-b`, `*/n`, `a-b/n`, lists, month and day names, and the
`@hourly`-style shorthands), parsed and evaluated by cronsim. Like cron, they are read in
the machine's local time and, as in Vixie cron, when both day fields are restricted a day
matching either one fires.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from cronsim import CronSim, CronSimError

from kconsole.errors import UsageError
from kconsole.site import Site

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression, parsed and evaluated by cronsim (Vixie cron's rules)
    on the wall clock of the times it is given."""

    text: str
    expr: str
    """The five fields (a `@daily`-style shorthand spelled out)."""
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Sunday (7 is folded onto 0). The sets hold the plain values; cronsim's extensions
    (`L`, `5#2`) are evaluated by `next_after` and `last_at_or_before` only."""
    day_and: bool
    """Whether a day must match both day fields (one of them starts with `*`)."""

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse `text`; ValueError naming the bad field."""
        expr = _ALIASES.get(text.strip().lower(), text.strip())
        if len(expr.split()) != 5:
            raise ValueError(
                f'"{text}" is not a cron expression (five fields: minute hour day month weekday)'
            )
        try:
            sim = CronSim(expr, datetime(2000, 1, 1))
        except CronSimError as exc:
            why = str(exc).rstrip(".").lower()
            raise ValueError(f'{why} in cron expression "{text}"') from None
        return cls(
            text.strip(),
            expr,
            frozenset(sim.minutes),
            frozenset(sim.hours),
            frozenset(d for d in sim.days if d > 0),
            frozenset(sim.months),
            frozenset(0 if d == 7 else d for d in sim.weekdays if isinstance(d, int)),
            sim.day_and,
        )

    def day_matches(self, d: date) -> bool:
        """Whether cron runs on day `d` (Vixie cron's either-day rule when both are restricted)."""
        dom = d.day in self.days
        dow = d.isoweekday() % 7 in self.weekdays
        return (dom and dow) if self.day_and else (dom or dow)

    def matches(self, t: datetime) -> bool:
        """Whether cron fires in the minute of `t` (read as wall-clock time)."""
        return (
            t.minute in self.minutes
            and t.hour in self.hours
            and t.month in self.months
            and self.day_matches(t.date())
        )

    def next_after(self, t: datetime) -> datetime:
        """The first firing strictly after `t` (same tzinfo as `t`; computed on its wall clock)."""
        start = _wall(t).replace(second=0, microsecond=0)
        return next(CronSim(self.expr, start)).replace(tzinfo=t.tzinfo)

    def last_at_or_before(self, t: datetime) -> datetime:
        """The latest firing at or before `t` (same tzinfo as `t`)."""
        # cronsim's reverse walk excludes its start: start one minute on to include `t`'s.
        start = _wall(t).replace(second=0, microsecond=0) + _MINUTE
        return next(CronSim(self.expr, start, reverse=True)).replace(tzinfo=t.tzinfo)

    def firings(self, after: datetime, until: datetime, limit: int = 10_000) -> int:
        """How many times it fires in (after, until], counting at most `limit`."""
        n = 0
        for t in CronSim(self.expr, _wall(after).replace(second=0, microsecond=0)):
            if n >= limit or t.replace(tzinfo=after.tzinfo) > until:
                break
            n += 1
        return n


def _wall(t: datetime) -> datetime:
    return t.replace(tzinfo=None)


@dataclass(frozen=True)
class ScheduleEntry:
    """One line of the schedule: a runbook and when it runs."""

    runbook: str
    cron: str
    kind: str = ""
    source: str = "the plan's cron table"


PLAN_SCHEDULE: tuple[ScheduleEntry, ...] = (
    ScheduleEntry("backup-blockchain-state", "*/5 * * * *", "blockchain-state"),
    ScheduleEntry("backup-validator-keys", "*/15 * * * *", "validator-keys"),
    ScheduleEntry("backup-transaction-logs", "0 * * * *", "transaction-logs"),
    ScheduleEntry("backup-system-logs", "0 2 * * *", "system-logs"),
    ScheduleEntry("backup-full-system", "0 3 * * 0", "full-system"),
    ScheduleEntry("backup-archive", "0 4 1 * *", "archive"),
    ScheduleEntry(
        "verify-backups",
        "0 5 * * *",
        "",
        "the plan's testing schedule (daily backup verification; 05:00, after the night's backups)",
    ),
)
"""The plan's `/etc/crontab`, each script replaced by the runbook that does its job."""


def schedule_for(site: Site) -> list[ScheduleEntry]:
    """The plan's schedule with the site's single-kind tier schedules applied; UsageError
    naming the tier when its schedule is not a cron expression."""
    out = []
    for entry in PLAN_SCHEDULE:
        tier = site.tier_for_kind(entry.kind) if entry.kind else None
        if tier is not None and tier.schedule and len(tier.kinds) == 1:
            try:
                Cron.parse(tier.schedule)
            except ValueError as exc:
                raise UsageError(f"{site.path}: [tiers.{tier.name}] schedule: {exc}.") from None
            entry = ScheduleEntry(
                entry.runbook, tier.schedule, entry.kind, f"[tiers.{tier.name}] schedule"
            )
        out.append(entry)
    return out


def runbook_available(site: Site, runbook: str) -> bool:
    """Whether `runbook` is a shipped runbook or one in the site's runbooks/ folder."""
    from kconsole.runbook.load import resolve_runbook_path

    try:
        resolve_runbook_path(runbook, [site.base_dir / "runbooks"])
    except UsageError:
        return False
    return True


@dataclass
class LastRuns:
    """The newest run of a runbook and its newest successful one."""

    last_id: str = ""
    last_started: str = ""
    last_status: str = ""
    success_id: str = ""
    success_started: str = ""


def last_runs(state_dir: Path, runbooks: Iterable[str]) -> dict[str, LastRuns]:
    """For each runbook: its newest run (any outcome) and newest succeeded run, from the journal.

    Only each journal's first record is read to learn its runbook; a run is summarised
    only while its runbook still lacks a known success.
    """
    from kconsole.backups.attempts import run_dirs
    from kconsole.journal import summarise

    wanted = set(runbooks)
    out: dict[str, LastRuns] = {r: LastRuns() for r in wanted}
    for d in run_dirs(state_dir):
        head = _first_record(d / "journal.jsonl")
        rb = str(head.get("runbook", ""))
        if rb not in wanted:
            continue
        info = out[rb]
        if info.success_id:
            continue
        summary = summarise(d)
        if not info.last_id:
            info.last_id, info.last_started, info.last_status = (
                summary.id,
                summary.started,
                summary.status,
            )
        if summary.status == "succeeded":
            info.success_id, info.success_started = summary.id, summary.started
        if all(v.success_id for v in out.values()):
            break
    return out


def _first_record(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            line = fh.readline()
        data = json.loads(line)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


@dataclass
class ScheduleStatus:
    """Where one scheduled runbook stands now."""

    entry: ScheduleEntry
    available: bool
    as_of: datetime
    next_due: datetime
    prev_due: datetime
    last: LastRuns
    overdue: bool
    missed: int | None
    """Firings since the last run started (None: it never ran)."""
    reason: str

    def as_json(self) -> dict[str, Any]:
        """The `schedule --json` line."""
        return {
            "runbook": self.entry.runbook,
            "cron": self.entry.cron,
            "kind": self.entry.kind or None,
            "source": self.entry.source,
            "available": self.available,
            "as_of": _iso(self.as_of),
            "next_due": _iso(self.next_due),
            "prev_due": _iso(self.prev_due),
            "last_run": self.last.last_id or None,
            "last_status": self.last.last_status or None,
            "last_started": self.last.last_started or None,
            "last_success": self.last.success_id or None,
            "last_success_started": self.last.success_started or None,
            "overdue": self.overdue,
            "missed": self.missed,
            "reason": self.reason,
        }


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def local_tz() -> tzinfo:
    """The machine's local time zone, which cron reads its table in."""
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    return tz


def schedule_status(
    site: Site,
    now: datetime | None = None,
    tz: tzinfo | None = None,
    entries: list[ScheduleEntry] | None = None,
) -> list[ScheduleStatus]:
    """Next due, previous due, last run and overdue-ness of every scheduled runbook.

    A runbook is overdue when a due time passed more than a grace period ago (half its
    interval, at most 5 minutes) with no run of it started since; a run started up to a
    minute early (by hand, just before) counts for that due time. `missed` counts them.
    """
    tz = tz or local_tz()
    now = (now or datetime.now(tz)).astimezone(tz)
    entries = entries if entries is not None else schedule_for(site)
    runs = last_runs(site.state_dir, [e.runbook for e in entries])
    out = []
    for e in entries:
        cron = Cron.parse(e.cron)
        prev, nxt = cron.last_at_or_before(now), cron.next_after(now)
        interval = (nxt - prev).total_seconds() or 60.0
        grace = min(300.0, interval / 2)
        slack = timedelta(seconds=min(60.0, interval / 4))
        last = runs[e.runbook]
        started = _parse_time(last.last_started)
        available = runbook_available(site, e.runbook)
        if started is None:
            overdue, missed = available, None
            reason = "never run" if available else "runbook not found; nothing runs"
        else:
            missed = cron.firings(started.astimezone(tz) + slack, now - timedelta(seconds=grace))
            overdue = missed > 0
            reason = (
                f"{missed} due time(s) since its last run at {_iso(started)} went by"
                if overdue
                else f"last run {last.last_status}"
                if last.last_status in ("failed", "aborted", "interrupted")
                else ""
            )
        out.append(ScheduleStatus(e, available, now, nxt, prev, last, overdue, missed, reason))
    return out


def crontab(
    site: Site, entries: list[ScheduleEntry] | None = None, python: str | None = None
) -> str:
    """The crontab lines that run the scheduled runbooks headless, each under flock so a
    slow run is never overlapped by the next one, appending its JSON events to a log."""
    entries = entries if entries is not None else schedule_for(site)
    python = python or sys.executable
    site_file = site.path.resolve()
    cron_dir = site.state_dir.resolve() / "cron"
    kconsole = f"{shlex.quote(python)} -m kconsole --site {shlex.quote(str(site_file))}"
    lines = [
        f"# kconsole schedule for site {site.name}: the plan's cron table, run headless.",
        "# Times are the machine's local time, as cron reads them. Install for the user that runs kconsole",
        f"# (it must be an admin in the site's [access] table to prune): kconsole --site {site_file} schedule "
        "--crontab | crontab -",
        "# (that replaces the user's crontab: merge by hand if it has other lines).",
        "# Each run holds a lock (flock -n: a run still going makes the next one skip, never overlap) and",
        f"# appends its JSON events to {cron_dir}/RUNBOOK.log; `kconsole runs` and `kconsole schedule` show them.",
    ]
    envs = sorted({t.secret_env for t in site.notify.values() if t.secret_env})
    if envs:
        lines.append(
            f"# Notifications need {', '.join(envs)} in cron's environment: set it below (this crontab"
        )
        lines.append("# is private to its user); never in site.toml.")
        lines += [f"# {name}=" for name in envs]
    lines += ["SHELL=/bin/sh", ""]
    for e in entries:
        if not runbook_available(site, e.runbook):
            lines.append(
                f"# {e.runbook}: not found among the shipped or the site's runbooks; not scheduled."
            )
            continue
        lock = shlex.quote(str(cron_dir / f"{e.runbook}.lock"))
        log = shlex.quote(str(cron_dir / f"{e.runbook}.log"))
        command = (
            f"mkdir -p {shlex.quote(str(cron_dir))} && flock -n {lock} {kconsole} run {shlex.quote(e.runbook)}"
            f" --yes --json >> {log} 2>&1"
        )
        lines.append(f"# {e.runbook}: {e.source}")
        # `%` ends a cron command line (the rest becomes stdin) unless escaped.
        lines.append(f"{e.cron} {command.replace('%', chr(92) + '%')}")
    tick_lock = shlex.quote(str(cron_dir / "incident-tick.lock"))
    tick_log = shlex.quote(str(cron_dir / "incident-tick.log"))
    tick = (
        f"mkdir -p {shlex.quote(str(cron_dir))} && flock -n {tick_lock} {kconsole} incident tick"
        f" >> {tick_log} 2>&1"
    )
    lines += [
        "# incident tick: pages the next escalation level of an unacknowledged incident when its wait",
        "# has passed, and retries notifications waiting in the outbox (each level is paged once,",
        "# whoever ticks: this line, an open console or a headless run).",
        f"* * * * * {tick.replace('%', chr(92) + '%')}",
    ]
    lines += [
        "",
        "# Backup metrics for node_exporter's textfile collector (set the directory it reads):",
        f"# * * * * * {kconsole} metrics -o /var/lib/prometheus/node-exporter/kconsole.prom".replace(
            "%", chr(92) + "%"
        ),
    ]
    return "\n".join(lines) + "\n"
