"""Incidents and escalation: paging at the plan's waits on an injected clock, acknowledgement,
two consoles ticking the same incident, the outbox across a restart, and the Slack and
PagerDuty targets against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kconsole.cli import main
from kconsole.errors import UsageError
from kconsole.incidents import IncidentDesk
from kconsole.incidents.announce import read_ending
from kconsole.lab.httpd import HttpServer, Request, Response
from kconsole.services import Clock
from kconsole.site import Site, load_site

T0 = datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC)

SITE = """
[site]
name = "incidents"
state_dir = "state"

[[nodes]]
name = "validator3"
host = "127.0.0.1"

[[contacts]]
name = "John Smith"
role = "Backup Administrator"
phone = "+1-555-0101"

[[contacts]]
name = "Jane Doe"
role = "Backup Engineer"
phone = "+1-555-0102"

[[contacts]]
name = "Sarah Wilson"
role = "Operations Lead"
phone = "+1-555-0104"

[[contacts]]
name = "Tom Brown"
role = "Security Engineer"
phone = "+1-555-0105"

[escalation.backup]
title = "Backup Issues"
levels = [
  { role = "Backup Administrator", wait = "15m" },
  { role = "Operations Lead", wait = "30m" },
  { role = "CTO", wait = "1h" },
  { role = "CEO" },
]

[escalation.recovery]
title = "Recovery Issues"
levels = [
  { role = "Backup Engineer", wait = "5m" },
  { role = "Operations Lead", wait = "15m" },
  { role = "CTO", wait = "30m" },
  { role = "CEO" },
]

[escalation.security]
title = "Security Incidents"
levels = [
  { role = "Security Engineer", wait = "5m" },
  { role = "Security Lead", wait = "10m" },
  { role = "CTO", wait = "15m" },
  { role = "CEO" },
]

[notify.slack]
webhook_env = "KCONSOLE_TEST_WEBHOOK"

[notify.pagerduty]
kind = "pagerduty"
routing_key_env = "KCONSOLE_TEST_PD_KEY"
events_url = "{pd_url}"
"""


class StepClock(Clock):
    """Wall time that moves only when the test says so."""

    def __init__(self, start: datetime = T0) -> None:
        self.t = start

    def now(self) -> datetime:
        return self.t

    def advance(self, **delta: float) -> None:
        self.t += timedelta(**delta)


class Sink:
    """A real HTTP server on loopback recording every post; `down` makes it answer 503."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.down = False
        self.server = HttpServer(self._handle)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, req: Request) -> Response:
        if self.down:
            return Response.json(503, {"error": "down"})
        self.posts.append((req.path, json.loads(req.body or b"{}")))
        return Response.json(202 if req.path.startswith("/v2") else 200, {"status": "success"})

    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def texts(self) -> list[str]:
        return [body.get("text", "") for path, body in self.posts if path == "/hook"]

    def pagerduty(self) -> list[dict[str, Any]]:
        return [body for path, body in self.posts if path == "/v2/enqueue"]


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def site(tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> Site:
    base = f"http://127.0.0.1:{sink.server.port}"
    monkeypatch.setenv("KCONSOLE_TEST_WEBHOOK", f"{base}/hook")
    monkeypatch.setenv("KCONSOLE_TEST_PD_KEY", "routing-key-for-tests")
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{pd_url}", f"{base}/v2/enqueue"))
    return load_site(path)


def _levels_paged(desk: IncidentDesk, incident_id: str) -> list[int]:
    return [e["level"] for e in desk.store.events(incident_id) if e["event"] == "paged"]


class TestPaging:
    """Levels advance at the plan's waits unless acknowledged."""

    def test_recovery_levels_at_the_plans_waits(self, site: Site, sink: Sink) -> None:
        clock = StepClock()
        desk = IncidentDesk(site, clock, user="oncall")
        inc = desk.open("recovery", "critical", "validator3 down", nodes=["validator3"])
        assert inc.level == 1
        assert desk.next_page_at(inc) == T0 + timedelta(minutes=5)
        clock.advance(minutes=4, seconds=59)
        assert desk.due_pages() == []
        clock.advance(seconds=1)  # 5 min: level 2
        assert [p.level for p in desk.due_pages()] == [2]
        clock.advance(minutes=15)  # 20 min: level 3
        assert [p.level for p in desk.due_pages()] == [3]
        clock.advance(minutes=29)
        assert desk.due_pages() == []
        clock.advance(minutes=1)  # 50 min: level 4, the top
        assert [p.level for p in desk.due_pages()] == [4]
        clock.advance(hours=5)
        assert desk.due_pages() == []
        assert desk.next_page_at(desk.get(inc.id)) is None
        assert _levels_paged(desk, inc.id) == [1, 2, 3, 4]
        roles = [e["role"] for e in desk.store.events(inc.id) if e["event"] == "paged"]
        assert roles == ["Backup Engineer", "Operations Lead", "CTO", "CEO"]

    def test_a_late_tick_pages_every_level_due_and_keeps_the_schedule(self, site: Site) -> None:
        clock = StepClock()
        desk = IncidentDesk(site, clock, user="oncall")
        inc = desk.open("backup", "high", "blockchain-state backups failing")
        clock.advance(minutes=50)  # backup matrix: L2 at 15 min, L3 at 45 min
        assert [p.level for p in desk.due_pages()] == [2, 3]
        inc = desk.get(inc.id)
        assert desk.next_page_at(inc) == T0 + timedelta(minutes=105)

    def test_acknowledgement_stops_the_clock(self, site: Site) -> None:
        clock = StepClock()
        desk = IncidentDesk(site, clock, user="oncall")
        inc = desk.open("security", "critical", "unexpected ssh keys on api2")
        clock.advance(minutes=3)
        inc = desk.acknowledge(inc.id)
        assert inc.status == "acknowledged" and inc.acknowledged_by == "oncall"
        assert desk.next_page_at(inc) is None
        clock.advance(hours=3)
        assert desk.due_pages() == []
        assert _levels_paged(desk, inc.id) == [1]
        with pytest.raises(UsageError, match="already acknowledged by oncall"):
            desk.acknowledge(inc.id)

    def test_escalate_pages_the_next_level_now_and_restarts_its_wait(self, site: Site) -> None:
        clock = StepClock()
        desk = IncidentDesk(site, clock, user="oncall")
        inc = desk.open("recovery", "high", "validator3 will not start")
        clock.advance(minutes=1)
        inc = desk.escalate(inc.id, "need the operations lead")
        assert inc.level == 2
        assert desk.next_page_at(inc) == T0 + timedelta(minutes=16)
        kinds = [e["event"] for e in desk.store.events(inc.id)]
        assert kinds == ["opened", "paged", "escalated", "paged"]

    def test_two_consoles_ticking_page_each_level_once(self, site: Site) -> None:
        clock = StepClock()
        first = IncidentDesk(site, clock, user="alice")
        second = IncidentDesk(site, clock, user="bob")
        inc = first.open("recovery", "critical", "validator3 down")
        for _ in range(60):
            clock.advance(minutes=1)
            # Both consoles tick at the same moment, from two threads.
            threads = [threading.Thread(target=d.due_pages) for d in (first, second, first)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert _levels_paged(first, inc.id) == [1, 2, 3, 4]
        messages = first.outbox.pending()
        slack_pages = [m for m in messages if m.target == "slack" and "Paging level" in m.text]
        assert len(slack_pages) == 4

    def test_resolved_incidents_leave_the_open_list(self, site: Site) -> None:
        desk = IncidentDesk(site, StepClock(), user="oncall")
        inc = desk.open("backup", "low", "archive backup slow")
        desk.update(inc.id, "investigating", "disk on backup-dr is slow")
        desk.resolve(inc.id, "replaced the disk")
        assert desk.incidents() == []
        assert [i.id for i in desk.incidents(include_resolved=True)] == [inc.id]
        assert desk.get(inc.id).status == "resolved"
        with pytest.raises(UsageError, match="already resolved"):
            desk.update(inc.id, "resolving")


class TestDelivery:
    """The outbox holds what a target did not take, across restarts, and sends it once."""

    def test_slack_and_pagerduty_receive_the_page(self, site: Site, sink: Sink) -> None:
        desk = IncidentDesk(site, StepClock(), user="oncall")
        inc = desk.open("recovery", "critical", "validator3 down", nodes=["validator3"])
        results = asyncio.run(desk.deliver())
        assert all(r.delivered for r in results) and len(results) == 2
        (text,) = sink.texts()
        assert "# EMERGENCY NOTIFICATION" in text
        assert "**Incident Type**: Recovery Required" in text
        assert "Jane Doe +1-555-0102" in text
        (event,) = sink.pagerduty()
        assert event["routing_key"] == "routing-key-for-tests"
        assert event["event_action"] == "trigger"
        assert event["dedup_key"] == inc.id
        assert event["payload"]["severity"] == "critical"
        assert event["payload"]["source"] == "incidents"
        desk.acknowledge(inc.id)
        asyncio.run(desk.deliver())
        assert [e["event_action"] for e in sink.pagerduty()] == ["trigger", "acknowledge"]
        assert not desk.outbox.pending()

    def test_outbox_survives_a_restart_while_the_webhook_is_down(
        self, site: Site, sink: Sink
    ) -> None:
        clock = StepClock()
        sink.down = True
        desk = IncidentDesk(site, clock, user="oncall")
        inc = desk.open("recovery", "critical", "validator3 down")
        results = asyncio.run(desk.deliver())
        assert [r.delivered for r in results] == [False, False]
        assert "HTTP 503" in results[0].error
        assert len(desk.outbox.pending()) == 2
        # Not due again yet: the retry waits (never a tight loop against a dead target).
        assert asyncio.run(desk.deliver()) == []
        # The console is closed and opened again: only the files remain.
        del desk
        sink.down = False
        clock.advance(minutes=1)
        again = IncidentDesk(site, clock, user="oncall")
        results = asyncio.run(again.deliver())
        assert [r.delivered for r in results] == [True, True]
        assert len(sink.texts()) == 1 and len(sink.pagerduty()) == 1
        assert not again.outbox.pending()
        events = [e["event"] for e in again.store.events(inc.id)]
        assert events.count("notification-failed") == 2
        assert events.count("notification-delivered") == 2

    def test_a_dead_target_costs_one_try_per_pass_and_order_is_kept(
        self, site: Site, sink: Sink
    ) -> None:
        clock = StepClock()
        sink.down = True
        desk = IncidentDesk(site, clock, user="oncall")
        first = desk.open("recovery", "critical", "validator3 down")
        second = desk.open("backup", "high", "backups stale")
        results = asyncio.run(desk.deliver())
        assert sorted(r.message.target for r in results) == ["pagerduty", "slack"]
        assert len(desk.outbox.pending()) == 4
        sink.down = False
        clock.advance(minutes=5)
        assert len(asyncio.run(desk.deliver())) == 4
        texts = sink.texts()
        assert first.id in texts[0] and second.id in texts[1]

    def test_a_drill_never_reaches_pagerduty(self, site: Site, sink: Sink) -> None:
        desk = IncidentDesk(site, StepClock(), user="oncall")
        desk.open("recovery", "critical", "drill: validator3 wiped", drill=True)
        desk.announce("[DRILL] Recover a single node (run R9) succeeded in 23 s.")
        asyncio.run(desk.deliver())
        assert sink.pagerduty() == []
        texts = sink.texts()
        assert texts[0].startswith("# [DRILL] EMERGENCY NOTIFICATION")
        assert texts[1].startswith("[DRILL] Recover")

    def test_no_secret_reaches_the_outbox_or_the_timeline(self, site: Site, sink: Sink) -> None:
        sink.down = True
        desk = IncidentDesk(site, StepClock(), user="oncall")
        inc = desk.open("backup", "high", "backups stale")
        asyncio.run(desk.deliver())
        stored = "".join(p.read_text() for p in desk.outbox.dir.glob("*.json"))
        stored += json.dumps(desk.store.events(inc.id))
        assert "routing-key-for-tests" not in stored
        assert f"127.0.0.1:{sink.server.port}" not in stored

    def test_an_unset_secret_keeps_the_message(
        self, site: Site, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("KCONSOLE_TEST_WEBHOOK")
        desk = IncidentDesk(site, StepClock(), user="oncall")
        desk.open("backup", "medium", "backup-dr unreachable")
        results = asyncio.run(desk.deliver())
        slack = next(r for r in results if r.message.target == "slack")
        assert not slack.delivered
        assert "KCONSOLE_TEST_WEBHOOK is not set" in slack.error
        assert any(m.target == "slack" for m in desk.outbox.pending())


ESCALATING_RUNBOOK = """
[runbook]
id = "escalating"
title = "Escalates"
rto = "1h"
rpo = "1h"
scenario = "single-node"

[[steps]]
id = "escalate"
action = "incident.escalate"
matrix = "recovery"
level = 3
text = "restore failed (run {run.id})"
"""


class TestRunbookEscalation:
    """`incident.escalate` in a run that belongs to an incident escalates that incident."""

    def test_the_step_pages_up_to_its_level_once(self, site: Site, sink: Sink) -> None:
        from kconsole.executor import Executor
        from kconsole.gates import confirm_yes
        from kconsole.journal import RunJournal
        from kconsole.runbook import load_runbook
        from kconsole.services import Services

        clock = StepClock()
        desk = IncidentDesk(site, clock, user="oncall")
        inc = desk.open("recovery", "critical", "validator3 down", nodes=["validator3"])
        path = site.base_dir / "escalating.toml"
        path.write_text(ESCALATING_RUNBOOK)
        rb = load_runbook(path)

        async def run(run_id: str) -> str:
            journal = RunJournal.create(site.state_dir, run_id, rb.text)
            ex = Executor(rb, site, {}, journal=journal, confirm=confirm_yes,
                          services=Services(clock=clock), user="oncall", incident=inc.id)  # fmt: skip
            try:
                return (await ex.run()).status
            finally:
                journal.close()

        assert asyncio.run(run("20261203-030000-0001")) == "succeeded"
        assert asyncio.run(run("20261203-030000-0002")) == "succeeded"  # a second run: no page
        assert _levels_paged(desk, inc.id) == [1, 2, 3]
        shown = desk.get(inc.id)
        assert shown.runs == ["20261203-030000-0001", "20261203-030000-0002"]
        notes = [t["text"] for t in shown.timeline if t["event"] == "note"]
        assert (
            notes[0]
            == "run 20261203-030000-0001, step escalate: restore failed (run 20261203-030000-0001)"
        )


class TestRunEnding:
    """How a run ended, as the channel is told, from its journal."""

    def _journal(self, tmp_path: Path, records: list[dict[str, Any]]) -> Path:
        path = tmp_path / "journal.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    def test_failed_names_step_node_and_reason(self, tmp_path: Path) -> None:
        journal = self._journal(
            tmp_path,
            [
                {"type": "run", "event": "created", "run": "R1", "runbook": "recover-single-node",
                 "title": "Recover a single node", "params": {"node": "validator3"}, "user": "ann"},
                {"type": "step", "event": "failed", "step": "stop-service", "node": "validator3",
                 "reason": "cannot reach validator3"},
                {"type": "run", "event": "finished", "run": "R1", "status": "failed",
                 "reason": "stop-service on validator3 failed"},
            ],
        )  # fmt: skip
        ending = read_ending(journal)
        assert ending is not None
        assert ending.line() == (
            "Recover a single node (run R1) on validator3 FAILED at stop-service on validator3: "
            "cannot reach validator3."
        )

    def test_succeeded_names_the_backup_restored(self, tmp_path: Path) -> None:
        journal = self._journal(
            tmp_path,
            [
                {"type": "run", "event": "created", "run": "R2", "runbook": "recover-single-node",
                 "title": "Recover", "params": {"node": "validator1", "backup": "latest"},
                 "drill": True, "incident": "INC-1"},
                {"type": "step", "event": "finished", "step": "restore", "node": "validator1",
                 "data": {"backup": "bs-validator1-20261203T0255", "replica": "primary",
                          "members": 12}},
                {"type": "run", "event": "finished", "run": "R2", "status": "succeeded",
                 "elapsed_s": 23.4},
            ],
        )  # fmt: skip
        ending = read_ending(journal)
        assert ending is not None
        line = ending.line()
        assert line.startswith("[DRILL] Recover (run R2) on validator1 succeeded in 23 s")
        assert "restored bs-validator1-20261203T0255@validator1" in line
        assert "latest" not in line and "[incident INC-1]" in line


class TestCli:
    """`kconsole incident ...` and `kconsole contacts --now`."""

    def test_open_ack_show_report(
        self, site: Site, sink: Sink, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        args = ["--site", str(site.path)]
        assert main([*args, "incident", "open", "--type", "recovery", "--severity", "critical",
                     "--summary", "validator3 down", "--node", "validator3", "--json"]) == 0  # fmt: skip
        opened = json.loads(capsys.readouterr().out.splitlines()[0])
        inc = opened["id"]
        assert (
            opened["status"] == "open"
            and opened["level"] == 1
            and opened["nodes"] == ["validator3"]
        )
        assert main([*args, "contacts", "--now"]) == 0
        assert "L1 Backup Engineer: Jane Doe +1-555-0102" in capsys.readouterr().out
        assert main([*args, "incident", "ack", inc]) == 0
        assert main([*args, "incident", "note", inc, "power cycled validator3 via the BMC"]) == 0
        assert main([*args, "incident", "update", inc, "--status", "investigating"]) == 0
        capsys.readouterr()
        assert main([*args, "incident", "show", inc, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        events = [t["event"] for t in shown["timeline"]]
        assert events[:3] == ["opened", "paged", "notification-delivered"]
        assert {"acknowledged", "note", "status"} <= set(events)
        assert shown["acknowledged_by"] and shown["status"] == "investigating"
        out = tmp_path / "incident.md"
        assert main([*args, "incident", "report", inc, "-o", str(out)]) == 0
        text = out.read_text()
        assert "# EMERGENCY NOTIFICATION" in text and "## Timeline" in text
        assert "[x] Investigation underway" in text
        assert "[Action" not in text and "[Name/Phone]" not in text and "[Date/Time]" not in text
        assert main([*args, "incident", "tick"]) == 0

    def test_bad_input_is_one_sentence_and_exit_2(
        self, site: Site, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["--site", str(site.path)]
        assert main([*args, "incident", "ack", "INC-nope"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kconsole: no incident INC-nope") and "Traceback" not in err
        assert main([*args, "incident", "open", "--type", "recovery", "--severity", "high",
                     "--summary", "x", "--node", "validator9"]) == 2  # fmt: skip
        assert 'unknown node "validator9"' in capsys.readouterr().err
        assert main([*args, "incident", "open", "--type", "recovery", "--severity", "high",
                     "--summary", "x", "--detected", "yesterday"]) == 2  # fmt: skip
        assert "is not a time" in capsys.readouterr().err
        assert main([*args, "run", "verify-backups", "--incident", "INC-nope"]) == 2
