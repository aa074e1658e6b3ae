"""`kconsole report`: the plan's test report template, filled from a run's journal."""

from __future__ import annotations

import json
from pathlib import Path


def test_report_of_a_drill(cli, site_path: Path, write_runbook, tmp_path: Path) -> None:
    rb = write_runbook(
        """
        [runbook]
        id = "drill-demo"
        title = "Drill demo"
        rto = "10m"
        rpo = "15m"
        scenario = "drill"

        [[steps]]
        id = "ok"
        action = "shell"
        command = "echo fine"
        gate = "confirm"

        [[steps]]
        id = "meh"
        action = "shell"
        command = "echo boom >&2; exit 2"
        needs = ["ok"]
        on_failure = "continue"
    """.replace("        ", "")
    )
    code, out, err = cli("--site", site_path, "run", rb, "--yes", "--drill", "--json")
    assert code == 0, out + err
    run_id = json.loads(out.splitlines()[0])["run"]
    code, md, err = cli("--site", site_path, "report", run_id)
    assert code == 0, err
    assert md.startswith("# Backup and Recovery Test Report")
    assert "- **Test Type**: Automated (drill;" in md
    assert "- **RTO Met**: Yes" in md
    assert "ok: confirmed by --yes" in md
    assert "1. **Step meh failed: exit code 2, expected 0: boom.** - Severity: Medium" in md
    code, js, _ = cli("--site", site_path, "report", run_id, "--format", "json")
    rep = json.loads(js)
    assert rep["drill"] is True and rep["rto_met"] is True and rep["status"] == "succeeded"
    out_file = tmp_path / "r.md"
    code, _, _ = cli("--site", site_path, "report", run_id, "-o", out_file)
    assert code == 0 and out_file.read_text().startswith("# Backup and Recovery Test Report")


def test_report_of_unknown_run(cli, site_path: Path) -> None:
    code, _, err = cli("--site", site_path, "report", "nope")
    assert code == 2
    assert "no run nope" in err


PLAN_LABELS = (
    "## Test Information",
    "- **Test Date**: ",
    "- **Test Type**: ",
    "- **Test Scenario**: ",
    "- **Test Duration**: ",
    "## Test Objectives",
    "## Test Results",
    "- **Backup Integrity**: ",
    "- **Recovery Success**: ",
    "- **RTO Met**: ",
    "- **RPO Met**: ",
    "- **Data Consistency**: ",
    "## Performance Metrics",
    "- **Backup Creation Time**: ",
    "- **Recovery Time**: ",
    "- **Data Transfer Rate**: ",
    "- **System Resource Usage**: ",
    "## Issues Identified",
    "## Recommendations",
    "## Next Steps",
    "## Sign-off",
    "- **Test Engineer**: ",
    "- **Operations Lead**: ",
    "- **Date**: ",
)


def assert_template_filled(md: str) -> None:
    """Every label of the plan's template, none left as a placeholder or an empty line."""
    for label in PLAN_LABELS:
        assert label in md, label
    for line in md.splitlines():
        assert "[Date]" not in line and "[Name]" not in line and "[Action Item]" not in line
        assert line.rstrip() not in ("1.", "- [ ]", "-"), repr(line)
        if line.startswith("- **") and "**: " in line:
            assert line.split("**: ", 1)[1].strip(), repr(line)


FAILING = """
[runbook]
id = "recover-demo"
title = "Recover demo"
rto = "1h"
rpo = "15m"
scenario = "single-node"

[[steps]]
id = "stop"
action = "shell"
command = "echo stopping"

[[steps]]
id = "restore"
action = "shell"
command = "echo no space >&2; exit 5"
needs = ["stop"]
"""


def test_a_failed_recovery_never_meets_its_rto(cli, site_path: Path, write_runbook) -> None:
    rb = write_runbook(FAILING)
    code, out, err = cli("--site", site_path, "run", rb, "--yes", "--json")
    assert code == 1, out + err
    run_id = json.loads(out.splitlines()[0])["run"]
    code, md, err = cli("--site", site_path, "report", run_id)
    assert code == 0, err
    assert "- **Recovery Success**: Fail (failed)" in md
    assert "- **RTO Met**: No (the recovery failed; target 1h00m)" in md
    assert "Step restore failed: exit code 5, expected 0: no space." in md
    assert "Severity: High" in md
    assert "- **Recovery Time**: not measured (the recovery did not succeed" in md
    assert "Data Consistency**: Not Verified" in md
    # The appendix names every command as run, with its exit code.
    assert "| restore | - | `echo no space >&2; exit 5` | 5 |" in md.replace("\\|", "|")
    assert "Audit chain head: entry " in md
    assert_template_filled(md)
    rep = json.loads(cli("--site", site_path, "report", run_id, "--format", "json")[1])
    assert rep["rto_met"] is False and rep["status"] == "failed"
    assert rep["issues"][0]["severity"] == "High"


def test_consistency_is_verified_only_when_a_check_proved_it(
    cli, site_path: Path, write_runbook
) -> None:
    from kconsole.reports import build_report, consistency_check, render_markdown, write_evidence
    from kconsole.site import load_site

    rb = write_runbook(FAILING.replace("exit 5", "exit 0"))
    code, out, err = cli("--site", site_path, "run", rb, "--yes", "--json")
    assert code == 0, out + err
    run_id = json.loads(out.splitlines()[0])["run"]
    site = load_site(site_path)
    rep = build_report(site, run_id)
    assert rep["data_consistency"]["text"].startswith("Not Verified: no consistency check ran")
    heights = {"validator1": 900, "validator2": 1400, "validator3": 1401}
    write_evidence(
        site,
        run_id,
        consistency=consistency_check(heights, ["validator1"], "2026-12-03T10:00:00.000Z"),
        detected={"time": "2026-12-03T09:00:00.000Z", "source": "a test detection"},
    )
    rep = build_report(site, run_id)
    assert rep["data_consistency"]["verified"] is False
    assert "validator1 is 501 blocks behind its peers" in rep["data_consistency"]["text"]
    assert rep["detected_source"] == "a test detection"
    assert any(i["kind"] == "lag" for i in rep["issues"])
    write_evidence(
        site,
        run_id,
        consistency=consistency_check({**heights, "validator1": 1398}, ["validator1"], "t"),
    )
    rep = build_report(site, run_id)
    assert rep["data_consistency"]["verified"] is True
    assert render_markdown(rep).count("- **Data Consistency**: Verified: validator1") == 1


def test_sign_off_is_audited_and_shown(cli, site_path: Path, write_runbook, tmp_path) -> None:
    rb = write_runbook(FAILING)
    code, out, _ = cli("--site", site_path, "run", rb, "--yes", "--json")
    run_id = json.loads(out.splitlines()[0])["run"]
    code, out, err = cli("--site", site_path, "report", "sign", run_id, "--role", "test-engineer")
    assert code == 0, err
    assert "signed the report of run" in out
    code, md, _ = cli("--site", site_path, "report", run_id)
    line = next(x for x in md.splitlines() if x.startswith("- **Test Engineer**: "))
    assert "(signed 20" in line and "not signed" not in line
    assert "- **Operations Lead**: not signed" in md
    code, audit, _ = cli("--site", site_path, "audit", "show", "--json")
    assert any(
        json.loads(x)["action"] == "report.sign" and json.loads(x)["target"] == run_id
        for x in audit.splitlines()
    )
    code, _, err = cli("--site", site_path, "report", "sign", run_id, "--role", "boss")
    assert code == 2
    code, _, err = cli("--site", site_path, "report", "sign", run_id)
    assert code == 2 and "usage: kconsole report sign" in err
    out_file = tmp_path / "r.html"
    code, _, err = cli("--site", site_path, "report", run_id, "--format", "html", "-o", out_file)
    assert code == 0, err
    page = out_file.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h2>Test Results</h2>" in page
    assert "<script" not in page and "src=" not in page and "href=" not in page


def test_drills_lists_the_plans_testing_schedule(cli, site_path: Path) -> None:
    code, out, err = cli("--site", site_path, "drills")
    assert code == 0, err
    for cadence, test in (
        ("daily", "Automated backup verification"),
        ("weekly", "Single node recovery test"),
        ("monthly", "Multiple node recovery test"),
        ("quarterly", "Complete network recovery test"),
        ("monthly", "Security incident recovery simulation"),
        ("quarterly", "Disaster recovery drill"),
        ("bi-annually", "Full-scale recovery exercise"),
    ):
        assert any(cadence in line and test in line for line in out.splitlines()), test
    assert "now (never run)  OVERDUE" in out
    code, out, _ = cli("--site", site_path, "drills", "--json")
    rows = [json.loads(x)["schedule"] for x in out.splitlines() if "schedule" in x]
    assert len(rows) == 7 and all(r["overdue"] for r in rows)
    code, cron, _ = cli("--site", site_path, "drills", "--crontab")
    assert "kconsole run verify-backups --yes" in cron and "Manual" not in cron


def test_a_drill_refuses_a_production_site(cli, site_path: Path) -> None:
    code, _, err = cli("--site", site_path, "drill", "single-node", "--yes")
    assert code == 2
    assert "neither the lab nor marked `staging = true`" in err
    code, _, err = cli("--site", site_path, "drill", "everything", "--yes")
    assert code == 2 and "unknown scenario" in err


def test_test_runbooks_are_drills_by_default() -> None:
    from kconsole.drills import is_test_runbook
    from kconsole.runbook import load_runbook, resolve_runbook_path

    assert is_test_runbook(load_runbook(resolve_runbook_path("test-single-node-recovery", [])))
    assert not is_test_runbook(load_runbook(resolve_runbook_path("recover-single-node", [])))


async def test_a_drill_gate_can_skip_a_step_and_the_report_says_so(site_path: Path) -> None:
    """Only a drill's gates are skippable; a skipped step does not run, is journaled and
    audited, later steps still run, and the report lists it as an issue."""
    from kconsole.audit import AuditLog
    from kconsole.executor import Executor
    from kconsole.gates import GateRequest
    from kconsole.journal import RunJournal, new_run_id
    from kconsole.reports import build_report
    from kconsole.runbook import load_runbook
    from kconsole.services import Services
    from kconsole.site import load_site

    site = load_site(site_path)
    rb_path = site_path.parent / "skip.toml"
    rb_path.write_text(
        FAILING.replace("exit 5", "exit 0").replace(
            'command = "echo stopping"', 'command = "echo stopping"\ngate = "confirm"'
        )
    )
    rb = load_runbook(rb_path)
    asked: list[GateRequest] = []

    async def skip_first(request: GateRequest) -> bool:
        asked.append(request)
        request.answered_by = "tester"
        request.skipped = request.skippable
        return True

    for drill in (False, True):
        run_id = new_run_id()
        journal = RunJournal.create(site.state_dir, run_id, rb.text)
        events: list[dict] = []
        executor = Executor(
            rb,
            site,
            {},
            journal=journal,
            confirm=skip_first,
            services=Services(),
            user="tester",
            drill=drill,
            on_event=events.append,
        )
        try:
            outcome = await executor.run()
        finally:
            journal.close()
        assert outcome.status == "succeeded"
        stop = [e for e in events if e.get("step") == "stop" and e.get("type") == "step"]
        if not drill:
            assert asked[-1].skippable is False
            assert any(e["event"] == "finished" for e in stop)
            continue
        assert asked[-1].skippable is True
        assert [e["event"] for e in stop] == ["gate", "skipped"]
        assert stop[-1]["reason"] == "skipped by tester in the drill walkthrough"
        assert any(e.get("step") == "restore" and e["event"] == "finished" for e in events)
        rep = build_report(site, run_id)
        assert any(
            i["kind"] == "skipped"
            and i["severity"] == "Medium"
            and "Step stop was skipped" in i["text"]
            for i in rep["issues"]
        )
        assert any(e["action"] == "gate.skip" for e in AuditLog(site.state_dir).read())


def test_rto_counts_from_the_incidents_detected_time(cli, site_path: Path, write_runbook) -> None:
    """A run started for an incident counts its RTO from the incident's detection, and says so."""
    code, out, err = cli(
        "--site",
        site_path,
        "incident",
        "open",
        "--type",
        "recovery",
        "--severity",
        "high",
        "--summary",
        "validator1 down",
        "--detected",
        "2026-01-01T00:00:00Z",
        "--json",
    )
    assert code == 0, err
    incident = json.loads(out.splitlines()[-1])["id"]
    rb = write_runbook(FAILING.replace("exit 5", "exit 0"))
    code, out, err = cli("--site", site_path, "run", rb, "--yes", "--json", "--incident", incident)
    assert code == 0, out + err
    run_id = json.loads(out.splitlines()[0])["run"]
    code, md, _ = cli("--site", site_path, "report", run_id)
    assert f"- **Incident**: {incident}" in md
    assert f"(from incident {incident}'s detected time)" in md
    # Detected months before the run: far outside the 1h RTO, though the run took seconds.
    assert "- **RTO Met**: No (" in md and "from detection against 1h00m)" in md
    assert "Recovery took" in md and "Severity: High" in md


def test_interrupted_and_aborted_runs_are_issues_not_none() -> None:
    from kconsole.reports import derive_issues, derive_next_steps, derive_recommendations

    base = {
        "run": "r1",
        "runbook": "recover-single-node",
        "reason": "",
        "failures": [],
        "retries": [],
        "skipped": [],
        "steps": [],
        "rto_met": False,
        "rpo_met": None,
        "consistency": None,
        "signoffs": {},
        "data_consistency": {"verified": False},
    }
    for status, kind in (("interrupted", "interrupted"), ("aborted", "run")):
        rep = {**base, "status": status}
        issues = derive_issues(rep)
        assert issues and issues[0]["kind"] == kind and issues[0]["severity"] == "High"
        assert derive_recommendations(issues)
        steps = derive_next_steps(rep)
        assert steps[0].startswith(
            "Resume or close run r1" if status == "interrupted" else "Recover"
        )


def test_the_first_failure_the_console_saw_is_kept_per_node(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from kconsole.outages import FILE, first_failure, record_polls
    from kconsole.reports import _t

    t0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    down = [("validator1", "unreachable", "no answer"), ("validator2", "active", "ok")]
    assert record_polls(tmp_path, down, t0, "`kconsole status`") is True
    # Still down: the first failure stays the first, and nothing is rewritten.
    assert record_polls(tmp_path, down, t0 + timedelta(minutes=1), "a drill poll") is False
    at = t0 + timedelta(minutes=5)
    assert first_failure(tmp_path, ["validator1", "validator2"], at, _t) == (
        t0,
        "validator1",
        "`kconsole status`",
    )
    assert first_failure(tmp_path, ["validator2"], at, _t) is None
    assert first_failure(tmp_path, ["validator1"], t0 - timedelta(seconds=1), _t) is None
    up = [("validator1", "behind", "catching up")]  # behind is not down
    assert record_polls(tmp_path, up, t0 + timedelta(minutes=10), "the console's fleet poll")
    assert first_failure(tmp_path, ["validator1"], t0 + timedelta(minutes=11), _t) is None
    assert first_failure(tmp_path, ["validator1"], at, _t) is not None  # open at that time
    assert (tmp_path / FILE).stat().st_mode & 0o777 == 0o644


NODE_RUN = """
[runbook]
id = "recover-node-demo"
title = "Recover node demo"
rto = "1h"
rpo = "15m"
scenario = "single-node"

[params.node]
type = "node"

[[steps]]
id = "restore"
action = "shell"
command = "echo restoring"
"""


def test_rto_without_an_incident_counts_from_the_first_failure_seen(
    cli, site_path: Path, write_runbook
) -> None:
    from datetime import UTC, datetime

    from kconsole.outages import record_polls
    from kconsole.reports import build_report, render_markdown
    from kconsole.site import load_site

    site = load_site(site_path)
    seen = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    record_polls(site.state_dir, [("validator1", "inactive", "stopped")], seen, "`kconsole status`")
    rb = write_runbook(NODE_RUN)
    code, out, err = cli(
        "--site", site_path, "run", rb, "--param", "node=validator1", "--yes", "--json"
    )
    assert code == 0, out + err
    run_id = json.loads(out.splitlines()[0])["run"]
    rep = build_report(site, run_id)
    assert rep["detected"].startswith("2026-01-01T08:00:00")
    assert (
        rep["detected_source"]
        == "the first failure the console saw on validator1 (`kconsole status`)"
    )
    # The console measured itself while it drove the run, and says that is all it measured.
    usage = next(x for x in render_markdown(rep).splitlines() if "System Resource Usage" in x)
    assert "the console process only: " in usage and "CPU time" in usage
    assert "not measured on the nodes" in usage
    assert rep["console_resources"]["peak_rss_mb"] > 0
