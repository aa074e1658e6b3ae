"""The filled incident / drill report of a run, from its journal (the plan's test report
template, with what the run actually did: times against the RTO, the backups it used and
their age against the RPO, gates and who confirmed them, failures, operator notes).

Nothing secret is in a journal, so nothing secret can reach a report.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from kconsole.backups.manifest import parse_id, parse_iso
from kconsole.config import format_duration
from kconsole.journal import RunSummary, run_dir, summarise
from kconsole.runbook import load_runbook
from kconsole.site import Site

SCENARIO_NAMES = {
    "single-node": "Single Node",
    "multiple-nodes": "Multiple Node",
    "complete-network": "Complete Network",
    "security-incident": "Security",
    "backup": "Backup",
    "verification": "Backup Verification",
    "recovery-test": "Single Node (recovery test)",
    "drill": "Drill",
}


def _t(text: str) -> datetime | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None


def build_report(site: Site, run_id: str) -> dict[str, Any]:
    """The report's facts as a dict (the `--format json` output)."""
    rdir = run_dir(site.state_dir, run_id)
    summary: RunSummary = summarise(rdir)
    runbook = load_runbook(rdir / "runbook.toml", shown_as=f"{run_id}/runbook.toml")
    records = summary.records
    started, finished = _t(summary.started), _t(summary.finished)
    elapsed = (finished - started).total_seconds() if started and finished else None
    steps: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    gates: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    backups_used: list[dict[str, Any]] = []
    verified = created = 0
    verify_failed = False
    for r in records:
        if r.get("type") == "note":
            notes.append({"time": r.get("time"), "user": r.get("user"), "text": r.get("text")})
            continue
        if r.get("type") != "step":
            continue
        ev, step = r.get("event"), runbook.steps.get(str(r.get("step")))
        action = step.action if step else ""
        if ev in ("confirmed", "refused"):
            gates.append(
                {
                    "time": r.get("time"),
                    "step": r.get("step"),
                    "node": r.get("node"),
                    "answer": ev,
                    "by": r.get("by", ""),
                    "note": r.get("note", ""),
                }
            )
        elif ev == "finished":
            data = r.get("data") or {}
            steps.append(
                {
                    "step": r.get("step"),
                    "node": r.get("node"),
                    "duration_s": r.get("duration_s"),
                    "summary": r.get("summary", ""),
                }
            )
            if action == "backup.restore" and data.get("backup"):
                parsed = parse_id(str(data["backup"]))
                age = (started - parsed[2]).total_seconds() if parsed and started else None
                backups_used.append(
                    {
                        "node": r.get("node"),
                        "backup": data["backup"],
                        "replica": data.get("replica"),
                        "key_id": data.get("key_id"),
                        "age_at_start_s": age,
                    }
                )
            if action == "backup.verify":
                verified += int(data.get("verified", 0))
            if action == "backup.create":
                created += 1
        elif ev == "failed":
            failures.append(
                {
                    "time": r.get("time"),
                    "step": r.get("step"),
                    "node": r.get("node"),
                    "reason": r.get("reason", ""),
                }
            )
            if action == "backup.verify":
                verify_failed = True
    rpo_ages = [b["age_at_start_s"] for b in backups_used if b["age_at_start_s"] is not None]
    return {
        "run": run_id,
        "runbook": runbook.id,
        "title": runbook.title,
        "scenario": runbook.scenario,
        "drill": summary.drill,
        "status": summary.status,
        "reason": summary.reason,
        "user": summary.user,
        "site": site.name,
        "started": summary.started,
        "finished": summary.finished or None,
        "elapsed_s": elapsed,
        "rto_s": runbook.rto,
        "rpo_s": runbook.rpo,
        "rto_met": None if elapsed is None or not runbook.rto else elapsed <= runbook.rto,
        "rpo_met": None if not rpo_ages or not runbook.rpo else max(rpo_ages) <= runbook.rpo,
        "backup_integrity": None if not verified and not verify_failed else not verify_failed,
        "backups_verified": verified,
        "backups_created": created,
        "backups_used": backups_used,
        "params": summary.params,
        "steps": steps,
        "failures": failures,
        "gates": gates,
        "notes": notes,
    }


def _yes(value: bool | None, yes: str = "Yes", no: str = "No") -> str:
    return "Not measured" if value is None else (yes if value else no)


def render_markdown(rep: dict[str, Any]) -> str:
    """The plan's test report template, filled."""
    kind = "Drill" if rep["drill"] else "Incident"
    elapsed = format_duration(rep["elapsed_s"]) if rep["elapsed_s"] is not None else "unfinished"
    out = [
        f"# Backup and Recovery {'Test' if rep['drill'] else 'Incident'} Report",
        "",
        "## Test Information" if rep["drill"] else "## Incident Information",
        f"- **Date**: {rep['started'][:10]}",
        f"- **Type**: {kind} (run `{rep['run']}` by {rep['user'] or 'unknown'} on site {rep['site']})",
        f"- **Scenario**: {SCENARIO_NAMES.get(rep['scenario'], rep['scenario'] or '-')} — {rep['title']} (`{rep['runbook']}`)",
        f"- **Duration**: {elapsed} ({rep['started']} to {rep['finished'] or '-'})",
        f"- **Outcome**: {rep['status']}" + (f" — {rep['reason']}" if rep["reason"] else ""),
        f"- **Parameters**: {', '.join(f'{k}={v}' for k, v in rep['params'].items()) or 'none'}",
        "",
        "## Objectives",
        f"- [{'x' if rep['backup_integrity'] is not None else ' '}] Verify backup integrity",
        f"- [{'x' if rep['status'] != 'running' else ' '}] Test recovery procedures",
        f"- [{'x' if rep['rto_met'] is not None else ' '}] Validate RTO/RPO targets",
        "- [x] Document recovery time",
        f"- [{'x' if rep['failures'] or rep['notes'] else ' '}] Identify improvement areas",
        "",
        "## Results",
        f"- **Backup Integrity**: {_yes(rep['backup_integrity'], 'Pass', 'Fail')} ({rep['backups_verified']} verified)",
        f"- **Recovery Success**: {'Pass' if rep['status'] == 'succeeded' else 'Fail'}",
        f"- **RTO Met**: {_yes(rep['rto_met'])} ({elapsed} against {format_duration(rep['rto_s'])})",
        f"- **RPO Met**: {_yes(rep['rpo_met'])}"
        + (f" (target {format_duration(rep['rpo_s'])})" if rep["rpo_s"] else ""),
        f"- **Data Consistency**: {'Verified' if rep['backups_used'] and rep['status'] == 'succeeded' else 'Not Verified'}",
        "",
        "## Backups Used",
    ]
    if rep["backups_used"]:
        out += ["| node | backup | from | key | age at start |", "| --- | --- | --- | --- | --- |"]
        for b in rep["backups_used"]:
            age = format_duration(b["age_at_start_s"]) if b["age_at_start_s"] is not None else "-"
            out.append(
                f"| {b['node']} | {b['backup']} | {b['replica']} | {str(b['key_id'])[:8]} | {age} |"
            )
    else:
        out.append("None restored.")
    out += [
        "",
        "## Performance Metrics",
        "| step | node | duration | result |",
        "| --- | --- | ---: | --- |",
    ]
    for s in rep["steps"]:
        out.append(
            f"| {s['step']} | {s['node'] or '-'} | {s['duration_s']}s | {s['summary'] or 'ok'} |"
        )
    out += ["", "## Gates"]
    out += [
        f"- {g['time']} {g['step']}{' on ' + g['node'] if g['node'] else ''}: {g['answer']} by {g['by']}"
        + (f" — note: {g['note']}" if g["note"] else "")
        for g in rep["gates"]
    ] or ["No gates."]
    out += ["", "## Issues Identified"]
    out += [
        f"{i}. **{f['step']}{' on ' + f['node'] if f['node'] else ''}** — {f['reason']} - Severity: "
        f"{'High' if rep['status'] != 'succeeded' else 'Medium'}"
        for i, f in enumerate(rep["failures"], 1)
    ]
    if not rep["failures"]:
        out.append("None.")
    out += ["", "## Operator Notes"]
    out += [f"- {n['time']} {n['user']}: {n['text']}" for n in rep["notes"]] or ["None."]
    out += [
        "",
        "## Recommendations",
        "1. ",
        "",
        "## Next Steps",
        "- [ ] ",
        "",
        "## Sign-off",
        "- **Test Engineer**: ",
        "- **Operations Lead**: ",
        "- **Date**: ",
        "",
    ]
    return "\n".join(out)


def render_report(site: Site, run_id: str, fmt: str = "md") -> str:
    """The report of a run as Markdown or JSON text."""
    rep = build_report(site, run_id)
    if fmt == "json":
        return json.dumps(rep, indent=2, default=str) + "\n"
    return render_markdown(rep)
