"""The plan's cron table as data: cron parsing and next/previous firing (checked against a
minute-by-minute walk), the site's tier schedules, overdue runs from the journal, and the
crontab that runs the backup runbooks headless under flock."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kconsole.errors import UsageError
from kconsole.schedule import (
    PLAN_SCHEDULE,
    Cron,
    ScheduleEntry,
    crontab,
    schedule_for,
    schedule_status,
)
from kconsole.site import Site
from tests.catalogkit import make_site

T0 = datetime(2026, 11, 26, 10, 7, 30, tzinfo=UTC)  # a Thursday


def test_parse_fields_names_and_shorthands() -> None:
    c = Cron.parse("*/15 9-17/4 1,15 jan-mar mon-fri")
    assert c.minutes == {0, 15, 30, 45} and c.hours == {9, 13, 17} and c.days == {1, 15}
    assert c.months == {1, 2, 3} and c.weekdays == {1, 2, 3, 4, 5}
    assert Cron.parse("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert Cron.parse("5/20 * * * *").minutes == {5, 25, 45}
    assert Cron.parse("@hourly").minutes == {0} and Cron.parse("@weekly").weekdays == {0}
    for bad, why in (
        ("* * * *", "five fields"),
        ("60 * * * *", 'bad minute in cron expression "60 '),
        ("* * * foo *", "bad month"),
        ("*/0 * * * *", "bad minute"),
        ("5-1 * * * *", "bad minute"),
        ("0 0 31 2 *", "bad day-of-month"),  # a day February never has: it never fires
    ):
        with pytest.raises(ValueError, match=why):
            Cron.parse(bad)


def _walk_next(c: Cron, t: datetime) -> datetime:
    cur = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while not c.matches(cur):
        cur += timedelta(minutes=1)
    return cur


def _walk_prev(c: Cron, t: datetime) -> datetime:
    cur = t.replace(second=0, microsecond=0)
    while not c.matches(cur):
        cur -= timedelta(minutes=1)
    return cur


@pytest.mark.parametrize(
    "expr",
    [e.cron for e in PLAN_SCHEDULE]
    + ["30 4 1,15 * 5", "0 12 * 2 *", "15 */6 * * 1-5", "0 0 29 2 *", "59 23 31 * *", "@yearly"],
)
def test_next_and_previous_match_a_minute_by_minute_walk(expr: str) -> None:
    c = Cron.parse(expr)
    starts = [
        T0,
        datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
        datetime(2027, 2, 28, 3, 0, tzinfo=UTC),
        datetime(2026, 11, 29, 3, 0, tzinfo=UTC),
    ]
    for t in starts:
        nxt = c.next_after(t)
        assert nxt > t and nxt.tzinfo is UTC
        if expr not in ("0 0 29 2 *", "@yearly"):  # a walk of years is too slow to be a check
            assert nxt == _walk_next(c, t)
            assert c.last_at_or_before(t) == _walk_prev(c, t)
        assert c.last_at_or_before(nxt) == nxt and c.matches(nxt)


def test_plan_table_next_due() -> None:
    nxt = {e.runbook: Cron.parse(e.cron).next_after(T0) for e in PLAN_SCHEDULE}
    assert nxt["backup-blockchain-state"] == datetime(2026, 11, 26, 10, 10, tzinfo=UTC)
    assert nxt["backup-validator-keys"] == datetime(2026, 11, 26, 10, 15, tzinfo=UTC)
    assert nxt["backup-transaction-logs"] == datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    assert nxt["backup-system-logs"] == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    assert nxt["backup-full-system"] == datetime(2026, 11, 29, 3, 0, tzinfo=UTC)  # Sunday
    assert nxt["backup-archive"] == datetime(2026, 12, 1, 4, 0, tzinfo=UTC)


def test_either_day_rule_and_never() -> None:
    c = Cron.parse("0 0 13 * 5")  # the 13th, or any Friday
    assert c.next_after(T0) == datetime(2026, 11, 27, 0, 0, tzinfo=UTC)  # Friday 27th
    # A day field starting with * makes it "and": odd days that are Thursdays (the 26th is even).
    assert Cron.parse("0 0 */2 * 4").next_after(T0) == datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
    assert c.firings(T0, T0 + timedelta(days=14)) == 2


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def test_schedule_for_applies_single_kind_tier_schedules(site: Site, tmp_path: Path) -> None:
    assert [e.runbook for e in schedule_for(site)] == [e.runbook for e in PLAN_SCHEDULE]
    text = site.path.read_text()
    text = text.replace(
        'kinds = ["transaction-logs"]', 'kinds = ["transaction-logs"]\nschedule = "30 * * * *"'
    )
    text = text.replace('retention = "24h"', 'retention = "24h"\nschedule = "*/5 * * * *"')
    tuned = make_site(tmp_path, text=text)
    got = {e.runbook: e for e in schedule_for(tuned)}
    assert (got["backup-transaction-logs"].cron, got["backup-transaction-logs"].source) == (
        "30 * * * *",
        "[tiers.important] schedule",
    )
    # Tier 1 holds two kinds: its one schedule cannot say which, so the plan's lines stand.
    assert got["backup-validator-keys"].cron == "*/15 * * * *"
    broken = make_site(tmp_path, text=text.replace('"30 * * * *"', '"every hour"'))
    with pytest.raises(UsageError, match=r"\[tiers.important\] schedule: .*not a cron expression"):
        schedule_for(broken)


def write_run(state: Path, runbook: str, started: datetime, status: str) -> str:
    run_id = f"{started:%Y%m%d-%H%M%S}-{abs(hash(runbook)) % 9999:04d}"
    d = state / "runs" / run_id
    d.mkdir(parents=True)
    t = started.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    recs = [{"type": "run", "event": "created", "run": run_id, "runbook": runbook, "time": t}]
    if status != "interrupted":
        recs.append(
            {"type": "run", "event": "finished", "run": run_id, "status": status, "time": t}
        )
    (d / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run_id


def test_overdue_from_the_journal(site: Site) -> None:
    entries = [
        ScheduleEntry("backup-blockchain-state", "*/5 * * * *", "blockchain-state"),
        ScheduleEntry("backup-validator-keys", "*/15 * * * *", "validator-keys"),
        ScheduleEntry("backup-transaction-logs", "0 * * * *", "transaction-logs"),
        ScheduleEntry("backup-system-logs", "0 2 * * *", "system-logs"),
        ScheduleEntry("no-such-runbook", "0 * * * *"),
    ]
    state = site.state_dir
    write_run(
        state, "backup-blockchain-state", datetime(2026, 11, 26, 9, 50, 2, tzinfo=UTC), "succeeded"
    )
    ok_id = write_run(
        state, "backup-validator-keys", datetime(2026, 11, 26, 9, 45, 1, tzinfo=UTC), "succeeded"
    )
    write_run(
        state, "backup-transaction-logs", datetime(2026, 11, 26, 9, 0, 3, tzinfo=UTC), "succeeded"
    )
    bad_id = write_run(
        state, "backup-transaction-logs", datetime(2026, 11, 26, 10, 0, 2, tzinfo=UTC), "failed"
    )
    rows = {r.entry.runbook: r for r in schedule_status(site, now=T0, tz=UTC, entries=entries)}
    state_ = rows["backup-blockchain-state"]
    assert state_.overdue and state_.missed == 3  # due 09:55, 10:00, 10:05 went by without a run
    assert state_.prev_due == datetime(2026, 11, 26, 10, 5, tzinfo=UTC)
    assert state_.reason == "3 due time(s) since its last run at 2026-11-26T09:50:02Z went by"
    keys = rows["backup-validator-keys"]
    assert (
        keys.overdue and keys.last.last_id == ok_id and keys.missed == 1
    )  # 10:00, 7.5 minutes ago
    tx = rows["backup-transaction-logs"]
    assert not tx.overdue and tx.last.last_id == bad_id and tx.last.last_status == "failed"
    assert (
        tx.last.success_started.startswith("2026-11-26T09:00:03") and tx.reason == "last run failed"
    )
    logs = rows["backup-system-logs"]
    assert logs.overdue and logs.missed is None and logs.reason == "never run"
    assert logs.next_due == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    missing = rows["no-such-runbook"]
    assert not missing.available and not missing.overdue
    line = json.loads(json.dumps(state_.as_json()))
    assert line["overdue"] is True and line["next_due"] == "2026-11-26T10:10:00Z" and line["as_of"]


def test_keys_become_overdue_after_the_grace(site: Site) -> None:
    entries = [ScheduleEntry("backup-validator-keys", "*/15 * * * *", "validator-keys")]
    write_run(
        site.state_dir,
        "backup-validator-keys",
        datetime(2026, 11, 26, 9, 45, 1, tzinfo=UTC),
        "succeeded",
    )
    just_late = schedule_status(
        site, now=datetime(2026, 11, 26, 10, 3, tzinfo=UTC), tz=UTC, entries=entries
    )[0]
    assert not just_late.overdue  # due 10:00, within the 5-minute grace
    late = schedule_status(
        site, now=datetime(2026, 11, 26, 10, 6, tzinfo=UTC), tz=UTC, entries=entries
    )[0]
    assert late.overdue and late.missed == 1


def test_crontab_runs_each_backup_runbook_under_flock(site: Site) -> None:
    text = crontab(site, python="/opt/py 3/bin/python")
    lines = [
        x for x in text.splitlines() if x and not x.startswith("#") and "=" not in x.split()[0]
    ]
    (tick,) = [x for x in lines if " incident tick " in x]
    lines.remove(tick)
    assert tick.startswith("* * * * * mkdir -p ") and "flock -n" in tick
    assert tick.endswith(f"incident tick >> {site.state_dir / 'cron' / 'incident-tick.log'} 2>&1")
    assert len(lines) == len(PLAN_SCHEDULE)
    by_runbook = {}
    for line in lines:
        fields = line.split(" ", 5)
        cron, command = " ".join(fields[:5]), fields[5]
        Cron.parse(cron)
        words = shlex.split(command.replace("\\%", "%"))
        runbook = words[words.index("run") + 1]
        by_runbook[runbook] = (cron, words)
        assert words[:2] == ["mkdir", "-p"]
        flock = words.index("flock")
        assert words[flock + 1] == "-n" and words[flock + 2].endswith(f"/cron/{runbook}.lock")
        assert words[flock + 3 : flock + 8] == [
            "/opt/py 3/bin/python",
            "-m",
            "kconsole",
            "--site",
            str(site.path),
        ]
        assert words[-5:] == [
            "--yes",
            "--json",
            ">>",
            str(site.state_dir / "cron" / f"{runbook}.log"),
            "2>&1",
        ]
    assert {r: c for r, (c, _) in by_runbook.items()} == {e.runbook: e.cron for e in PLAN_SCHEDULE}
    assert "SHELL=/bin/sh" in text.splitlines()
    # `%` ends a cron command unless escaped.
    odd = crontab(
        site, entries=[ScheduleEntry("backup-archive", "0 4 1 * *")], python="/tmp/50%/python"
    )
    assert "/tmp/50\\%/python" in odd and "/tmp/50%/python" not in odd.replace("\\%", "")
    gone = crontab(site, entries=[ScheduleEntry("no-such-runbook", "0 * * * *")])
    assert "# no-such-runbook: not found" in gone and "run no-such-runbook" not in gone


def test_cli_schedule(site: Site, cli) -> None:
    code, out, err = cli("--site", site.path, "schedule")
    assert code == 0, err
    assert "as of" in out and "backup-blockchain-state" in out and "OVERDUE (never run)" in out
    code, out, _ = cli("--site", site.path, "schedule", "--json")
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["runbook"] for r in rows] == [e.runbook for e in PLAN_SCHEDULE]
    assert all(r["overdue"] and r["last_run"] is None for r in rows)
    code, out, _ = cli("--site", site.path, "schedule", "--crontab")
    assert code == 0 and "flock -n" in out and "run backup-validator-keys --yes --json" in out
