"""The filled test / incident report of a run, from its journal (the plan's "Test Report
Template", under the plan's own labels).

A report is audit evidence, so every figure says only what was checked or measured:

- RTO is counted from detection (the incident's detected time when the run has one, else the
  first failure the console saw on the node, else the run's start; the report names the
  source) to the run's successful end; a run that did not succeed never meets its RTO.
- RPO achieved is the data-loss window: detection minus the restored backup's creation time,
  plus the block-height lag measured after catch-up (when it was measured).
- Data consistency is "Verified" only when a consistency check (a node's height compared with
  its peers') proved it; otherwise the report says what was not verified.
- A field nothing measured says "not measured (why)"; no line is left empty.

Evidence gathered outside the journal (the detection time, the consistency check, a drill's
scenario and injected faults) sits beside it in `evidence.json` (see `write_evidence`);
sign-offs are audit entries (`report.sign`). Nothing secret is in a journal, so nothing
secret can reach a report.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from kconsole.audit import AuditLog
from kconsole.backups.manifest import parse_id, parse_iso
from kconsole.config import format_duration
from kconsole.errors import KconsoleError, UsageError
from kconsole.fsutil import atomic_write
from kconsole.journal import RunSummary, iso, list_runs, run_dir, summarise
from kconsole.outages import first_failure
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

ROLES = {"test-engineer": "Test Engineer", "operations-lead": "Operations Lead"}
"""Sign-off roles of the plan's template: `--role` value -> label."""

CONSISTENCY_BLOCKS = 10
"""A recovered node counts as consistent when its height is within this many blocks of the
highest of its active peers."""

EVIDENCE = "evidence.json"
SEVERITY_ORDER = {"High": 0, "Medium": 1, "Low": 2}


def _t(text: Any) -> datetime | None:
    try:
        return parse_iso(str(text)) if text else None
    except ValueError:
        return None


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f}s" if seconds < 10 else format_duration(seconds)


# -- evidence beside the journal -----------------------------------------------------------


def read_evidence(site: Site, run_id: str) -> dict[str, Any]:
    """What was recorded beside a run's journal (empty when nothing was)."""
    try:
        data = json.loads((run_dir(site.state_dir, run_id) / EVIDENCE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_evidence(site: Site, run_id: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into a run's evidence file (temp + fsync + rename)."""
    data = read_evidence(site, run_id)
    data.update(fields)
    path = run_dir(site.state_dir, run_id) / EVIDENCE
    atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode(), 0o644)
    return data


def consistency_check(
    heights: dict[str, int | None], recovered: list[str], checked: str
) -> dict[str, Any]:
    """Compare each recovered node's height with the highest of the other nodes that answered.

    `heights`: node -> height (None: unreachable or no height). The result is stored as the
    run's `consistency` evidence and decides "Data Consistency"."""
    nodes = []
    for name in recovered:
        own = heights.get(name)
        peers = [h for n, h in heights.items() if n != name and h is not None]
        peer_max = max(peers) if peers else None
        lag = None if own is None or peer_max is None else max(0, peer_max - own)
        nodes.append(
            {
                "node": name,
                "height": own,
                "peers_max": peer_max,
                "lag_blocks": lag,
                "ok": lag is not None and lag <= CONSISTENCY_BLOCKS,
            }
        )
    return {"checked": checked, "limit_blocks": CONSISTENCY_BLOCKS, "nodes": nodes}


def console_usage(cpu_before: float) -> dict[str, Any]:
    """What the console process can measure of itself: CPU seconds (user + system) since
    `cpu_before` (a `console_cpu()` reading) and its peak resident set size so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu_before, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports kilobytes
        "measured": "the kconsole process that drove the run (getrusage RUSAGE_SELF)",
    }


def console_cpu() -> float:
    """The console process's CPU seconds so far (user + system)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


# -- facts ---------------------------------------------------------------------------------


def _detection(
    site: Site, summary: RunSummary, head: dict[str, Any], evidence: dict[str, Any]
) -> tuple[datetime | None, str]:
    """(detected time, which source gave it)."""
    incident = head.get("incident") or summary.params.get("incident")
    for source, value in (
        ("the incident's detected time", head.get("detected")),
        ("the incident's detected time", summary.params.get("detected")),
    ):
        if _t(value):
            return _t(value), source
    if incident:
        from kconsole.incidents.store import IncidentStore

        try:
            found = _t(IncidentStore(site.state_dir).load(str(incident)).detected)
        except KconsoleError:
            found = None  # an incident file gone or unreadable: fall back, and say so below
        if found:
            return found, f"incident {incident}'s detected time"
    seen = evidence.get("detected") or {}
    if _t(seen.get("time")):
        return _t(seen["time"]), str(seen.get("source") or "the first failure the console saw")
    started = _t(summary.started)
    if started is not None:
        outage = first_failure(site.state_dir, _runbook_nodes(summary), started, _t)
        if outage is not None:
            when, node, source = outage
            return when, f"the first failure the console saw on {node} ({source})"
    return started, "the run's start, as no detection time was recorded"


def _runbook_nodes(summary: RunSummary) -> list[str]:
    names: list[str] = []
    for key in ("node", "nodes"):
        value = summary.params.get(key)
        if value:
            names += [n for n in str(value).split(",") if n and n not in names]
    return names


def build_report(site: Site, run_id: str, *, compare: bool = True) -> dict[str, Any]:
    """The report's facts as a dict (the `--format json` output)."""
    rdir = run_dir(site.state_dir, run_id)
    summary: RunSummary = summarise(rdir)
    runbook = load_runbook(rdir / "runbook.toml", shown_as=f"{run_id}/runbook.toml")
    records = summary.records
    head = next((r for r in records if r.get("type") == "run" and r.get("event") == "created"), {})
    evidence = read_evidence(site, run_id)
    started, finished = _t(summary.started), _t(summary.finished)
    elapsed = (finished - started).total_seconds() if started and finished else None
    detected, detected_source = _detection(site, summary, head, evidence)
    succeeded = summary.status == "succeeded"

    steps: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    retries: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    gates: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    backups_used: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    open_cmds: dict[tuple[Any, Any], dict[str, Any]] = {}
    verified = 0
    verify_failed = False
    creation_s = 0.0
    created_bytes = 0
    restored_bytes = 0
    restore_s = 0.0
    created = 0
    for r in records:
        kind = r.get("type")
        if kind == "note":
            notes.append({"time": r.get("time"), "user": r.get("user"), "text": r.get("text")})
            continue
        if kind == "run":
            if r.get("event") in ("stopped", "resumed") or (
                r.get("event") == "finished" and r.get("status") != "succeeded"
            ):
                timeline.append(
                    {
                        "time": r.get("time"),
                        "what": f"run {r.get('event')}"
                        + (f" ({r.get('status')})" if r.get("status") else "")
                        + (f": {r.get('reason')}" if r.get("reason") else ""),
                    }
                )
            continue
        if kind != "step":
            continue
        ev, step_id, node = r.get("event"), r.get("step"), r.get("node")
        step = runbook.steps.get(str(step_id))
        action = str(r.get("action") or (step.action if step else ""))
        if ev in ("confirmed", "refused"):
            gates.append(
                {
                    "time": r.get("time"),
                    "step": step_id,
                    "node": node,
                    "answer": ev,
                    "by": r.get("by", ""),
                    "note": r.get("note", ""),
                }
            )
        elif ev == "started":
            entry = {
                "time": r.get("time"),
                "step": step_id,
                "node": node,
                "action": action,
                "attempt": r.get("attempt", 1),
                "command": r.get("command") or (step.fields.get("command") if step else None),
                "rendered": bool(r.get("command")),
                "exit_code": None,
                "duration_s": None,
                "result": "no end recorded",
            }
            open_cmds[(step_id, node)] = entry
            timeline.append(entry)
        elif ev == "retrying":
            retries.append(
                {
                    "step": step_id,
                    "node": node,
                    "attempt": r.get("attempt"),
                    "reason": r.get("reason", ""),
                }
            )
        elif ev == "skipped":
            skipped.append({"step": step_id, "node": node, "reason": r.get("reason", "")})
        if ev in ("finished", "failed"):
            done = open_cmds.pop((step_id, node), None)
            if done is not None:
                entry = done
                entry["exit_code"] = r.get("exit_code")
                begun = _t(entry["time"])
                ended = _t(r.get("time"))
                entry["duration_s"] = r.get("duration_s") or (
                    (ended - begun).total_seconds() if begun and ended else None
                )
                entry["result"] = "ok" if ev == "finished" else f"failed: {r.get('reason', '')}"
        if ev == "finished":
            data = r.get("data") or {}
            duration = r.get("duration_s")
            steps.append(
                {
                    "step": step_id,
                    "node": node,
                    "duration_s": duration,
                    "estimate_s": step.estimate if step else None,
                    "summary": r.get("summary", ""),
                }
            )
            if action == "backup.restore" and data.get("backup"):
                parsed = parse_id(str(data["backup"]))
                created_at = parsed[2] if parsed else None
                window = (
                    (detected - created_at).total_seconds() if created_at and detected else None
                )
                if data.get("bytes") and duration:
                    restored_bytes += int(data["bytes"])
                    restore_s += float(duration)
                backups_used.append(
                    {
                        "node": node,
                        "backup": data["backup"],
                        "replica": data.get("replica"),
                        "key_id": data.get("key_id"),
                        "created": created_at.isoformat() if created_at else None,
                        "window_s": window,
                    }
                )
            if action == "backup.verify":
                verified += int(data.get("verified", 0))
            if action == "backup.create":
                created += 1
                creation_s += float(duration or 0)
                created_bytes += int(data.get("size") or 0)
        elif ev == "failed":
            failures.append(
                {
                    "time": r.get("time"),
                    "step": step_id,
                    "node": node,
                    "reason": r.get("reason", ""),
                }
            )
            if action == "backup.verify":
                verify_failed = True

    # -- results ---------------------------------------------------------------------------
    recovery_s = (
        (finished - detected).total_seconds() if succeeded and finished and detected else None
    )
    rto_s = runbook.rto
    if not rto_s:
        rto_met: bool | None = None
    elif not succeeded:
        rto_met = False
    else:
        rto_met = recovery_s is not None and recovery_s <= rto_s

    consistency = evidence.get("consistency") or {}
    lag_by_node = {
        n["node"]: n.get("lag_blocks") for n in consistency.get("nodes", []) if isinstance(n, dict)
    }
    for b in backups_used:
        b["lag_blocks"] = lag_by_node.get(b["node"])
    windows = [b["window_s"] for b in backups_used if b["window_s"] is not None]
    rpo_window = max(windows) if windows else None
    lags = [v for v in lag_by_node.values() if v is not None]
    rpo_lag = max(lags) if lags else None
    rpo_s = runbook.rpo
    rpo_met = None if rpo_window is None or not rpo_s else rpo_window <= rpo_s

    recovered = [str(b["node"]) for b in backups_used] or _runbook_nodes(summary)
    checked_nodes = [n for n in consistency.get("nodes", []) if isinstance(n, dict)]
    if not checked_nodes:
        data_consistency = {
            "verified": False,
            "text": "Not Verified: no consistency check ran for this run "
            + (
                f"({', '.join(recovered)}'s height was not compared with its peers')"
                if recovered
                else "(no node was recovered)"
            ),
        }
    elif all(n.get("ok") for n in checked_nodes) and succeeded:
        data_consistency = {
            "verified": True,
            "text": "Verified: "
            + "; ".join(
                f"{n['node']} at height {n['height']}, {n['lag_blocks']} blocks behind its peers' highest "
                f"{n['peers_max']} (limit {consistency.get('limit_blocks')})"
                for n in checked_nodes
            )
            + f", checked {consistency.get('checked')}",
        }
    else:
        bad = [
            f"{n['node']} is {n['lag_blocks']} blocks behind its peers (height {n['height']} against "
            f"{n['peers_max']}, limit {consistency.get('limit_blocks')})"
            if n.get("lag_blocks") is not None
            else f"{n['node']} gave no height to compare"
            for n in checked_nodes
            if not n.get("ok")
        ]
        if not succeeded and not bad:
            bad = [f"the run did not succeed ({summary.status})"]
        data_consistency = {
            "verified": False,
            "text": f"Not Verified: {'; '.join(bad)}, checked {consistency.get('checked')}",
        }

    backup_integrity = None if not verified and not verify_failed else not verify_failed
    human_gates = [g for g in gates if g["by"] not in ("--yes", "")]
    test_type = "Manual" if human_gates else "Automated"

    rep: dict[str, Any] = {
        "run": run_id,
        "runbook": runbook.id,
        "title": runbook.title,
        "scenario": runbook.scenario,
        "scenario_name": SCENARIO_NAMES.get(runbook.scenario, runbook.scenario or "not set"),
        "drill": summary.drill,
        "test_type": test_type,
        "status": summary.status,
        "reason": summary.reason,
        "user": summary.user,
        "site": site.name,
        "started": summary.started,
        "finished": summary.finished or None,
        "elapsed_s": elapsed,
        "incident": head.get("incident") or summary.params.get("incident") or None,
        "detected": iso(detected) if detected else None,
        "detected_source": detected_source,
        "recovery_s": recovery_s,
        "rto_s": rto_s,
        "rpo_s": rpo_s,
        "rto_met": rto_met,
        "rpo_met": rpo_met,
        "rpo_window_s": rpo_window,
        "rpo_lag_blocks": rpo_lag,
        "data_consistency": data_consistency,
        "consistency": consistency or None,
        "backup_integrity": backup_integrity,
        "backups_verified": verified,
        "backups_created": created,
        "backup_creation_s": creation_s if created else None,
        "backup_bytes": created_bytes if created else None,
        "restored_bytes": restored_bytes or None,
        "restore_s": restore_s or None,
        "console_resources": evidence.get("console_resources"),
        "backups_used": backups_used,
        "params": summary.params,
        "steps": steps,
        "failures": failures,
        "retries": retries,
        "skipped": skipped,
        "gates": gates,
        "notes": notes,
        "timeline": timeline,
        "injected": evidence.get("injected") or [],
        "signoffs": signoffs(site, run_id),
        "audit_head": _audit_head(site),
    }
    rep["issues"] = derive_issues(rep)
    rep["recommendations"] = derive_recommendations(rep["issues"])
    rep["next_steps"] = derive_next_steps(rep)
    if compare and summary.drill:
        rep["previous_drills"] = previous_drills(site, runbook.scenario, summary.started, run_id)
    return rep


def _audit_head(site: Site) -> dict[str, Any] | None:
    entries = AuditLog(site.state_dir).read()
    if not entries:
        return None
    last = entries[-1]
    return {"seq": last.get("seq"), "hash": last.get("hash"), "time": last.get("ts")}


def signoffs(site: Site, run_id: str) -> dict[str, dict[str, str]]:
    """role -> {name, time} of the latest `report.sign` audit entry per role for the run."""
    out: dict[str, dict[str, str]] = {}
    for e in AuditLog(site.state_dir).read():
        if e.get("action") == "report.sign" and e.get("target") == run_id:
            role = str((e.get("detail") or {}).get("role", ""))
            if role in ROLES:
                out[role] = {"name": str(e.get("actor", "")), "time": str(e.get("ts", ""))}
    return out


def sign_report(site: Site, run_id: str, role: str, user: str) -> dict[str, Any]:
    """Record `user`'s sign-off of a run's report in the audit log (the only copy)."""
    if role not in ROLES:
        raise UsageError(f"--role must be one of {', '.join(ROLES)}, not {role!r}.")
    site.access.require_operate(user, "sign reports")
    summary = summarise(run_dir(site.state_dir, run_id))
    if summary.status in ("running", "waiting"):
        raise UsageError(f"run {run_id} is {summary.status}; sign its report once it has ended.")
    return AuditLog(site.state_dir).append(
        user, "report.sign", run_id, role=role, status=summary.status
    )


# -- derived sections ------------------------------------------------------------------------


def derive_issues(rep: dict[str, Any]) -> list[dict[str, str]]:
    """Issues Identified: what went wrong or fell short, each with a severity and a kind."""
    issues: list[dict[str, str]] = []
    ok = rep["status"] == "succeeded"

    def add(kind: str, severity: str, text: str) -> None:
        issues.append({"kind": kind, "severity": severity, "text": text})

    if rep["status"] in ("aborted", "failed"):
        add(
            "run",
            "High",
            f"The recovery {rep['status']}" + (f": {rep['reason']}" if rep["reason"] else "") + ".",
        )
    elif rep["status"] == "interrupted":
        add("interrupted", "High", "The run was interrupted and never finished; it can be resumed.")
    elif rep["status"] in ("running", "waiting"):
        add("open", "Medium", f"The run is still {rep['status']}: nothing here is final.")
    for f in rep["failures"]:
        where = f" on {f['node']}" if f["node"] else ""
        add(
            "failure",
            "High" if not ok else "Medium",
            f"Step {f['step']}{where} failed: {f['reason'] or 'no reason recorded'}.",
        )
    for r in rep["retries"]:
        where = f" on {r['node']}" if r["node"] else ""
        add(
            "retry",
            "Low",
            f"Step {r['step']}{where} was retried (attempt {r['attempt']}): {r['reason'] or 'no reason recorded'}.",
        )
    for s in rep["skipped"]:
        where = f" on {s['node']}" if s["node"] else ""
        add(
            "skipped",
            "Medium",
            f"Step {s['step']}{where} was skipped: {s['reason'] or 'no reason recorded'}.",
        )
    for s in rep["steps"]:
        if s["estimate_s"] and s["duration_s"] and s["duration_s"] > 2 * s["estimate_s"]:
            where = f" on {s['node']}" if s["node"] else ""
            add(
                "budget",
                "Low",
                f"Step {s['step']}{where} took {_dur(s['duration_s'])} against an estimate of {_dur(s['estimate_s'])}.",
            )
    if ok and rep["rto_met"] is False:
        add(
            "rto",
            "High",
            f"Recovery took {_dur(rep['recovery_s'])} from detection, over the RTO of {_dur(rep['rto_s'])}.",
        )
    if rep["rpo_met"] is False:
        add(
            "rpo",
            "High",
            f"The restored backup was {_dur(rep['rpo_window_s'])} older than detection, over the RPO of {_dur(rep['rpo_s'])} (stale tier).",
        )
    for n in (rep["consistency"] or {}).get("nodes", []):
        if not n.get("ok"):
            add(
                "lag",
                "High" if n.get("lag_blocks") is None else "Medium",
                f"{n['node']} came back {n['lag_blocks']} blocks behind its peers."
                if n.get("lag_blocks") is not None
                else f"{n['node']} gave no chain height after the recovery.",
            )
    issues.sort(key=lambda i: SEVERITY_ORDER[i["severity"]])
    return issues


_ADVICE = {
    "run": "Find the failed step's cause in the appendix timeline, fix it and repeat the recovery as a drill.",
    "interrupted": "Resume the run (`kconsole run RUNBOOK --resume RUN_ID`) or close it out, and find why the session ended.",
    "open": "Let the run end before relying on this report.",
    "failure": "Fix the failing steps' causes (see the appendix for their commands and exit codes).",
    "retry": "Look into the retried steps: a step that needs retries is a step that may fail next time.",
    "skipped": "Run the skipped steps in the next drill; a skipped step is an untested step.",
    "budget": "Revise the runbook's estimates or speed up the slow steps so the RTO clock stays honest.",
    "rto": "Shorten the recovery (faster restore location, parallel restores) or review the tier's RTO.",
    "rpo": "Back this tier up more often, or check why the newest backup was old (`kconsole schedule`).",
    "lag": "Let recovered nodes catch up with their peers before calling the recovery done, and check peering.",
}


def derive_recommendations(issues: list[dict[str, str]]) -> list[str]:
    """One recommendation per kind of issue, in the issues' order; empty when there are none."""
    out: list[str] = []
    for issue in issues:
        advice = _ADVICE.get(issue["kind"])
        if advice and advice not in out:
            out.append(advice)
    return out


def derive_next_steps(rep: dict[str, Any]) -> list[str]:
    """Open items: what someone still has to do about this run."""
    out: list[str] = []
    if rep["status"] in ("interrupted", "waiting"):
        out.append(
            f"Resume or close run {rep['run']} (`kconsole run {rep['runbook']} --resume {rep['run']}`)."
        )
    elif rep["status"] != "succeeded" and rep["status"] != "running":
        out.append(f"Recover the node(s) of run {rep['run']}: the recovery did not succeed.")
    if not rep["data_consistency"]["verified"] and rep["status"] == "succeeded":
        out.append(
            "Check the recovered nodes' chain height against their peers (`kconsole status`)."
        )
    for role, label in ROLES.items():
        if role not in rep["signoffs"]:
            out.append(f"{label} sign-off: `kconsole report sign {rep['run']} --role {role}`.")
    return out


def previous_drills(
    site: Site, scenario: str, before: str, exclude: str = ""
) -> list[dict[str, Any]]:
    """Earlier drills of the same scenario, newest first: their RTO, RPO and issue figures."""
    out: list[dict[str, Any]] = []
    for s in list_runs(site.state_dir):
        if not s.drill or s.id == exclude or not s.started or s.started >= before:
            continue
        try:
            rep = build_report(site, s.id, compare=False)
        except Exception:  # noqa: BLE001 - an unreadable old run is left out, not fatal
            continue
        if rep["scenario"] != scenario:
            continue
        out.append(
            {
                "run": s.id,
                "started": s.started,
                "status": rep["status"],
                "recovery_s": rep["recovery_s"],
                "rto_met": rep["rto_met"],
                "rpo_window_s": rep["rpo_window_s"],
                "rpo_lag_blocks": rep["rpo_lag_blocks"],
                "issues": len(rep["issues"]),
                "high_issues": sum(1 for i in rep["issues"] if i["severity"] == "High"),
            }
        )
    out.sort(key=lambda d: str(d["started"]), reverse=True)
    return out


def recent_reports(site: Site, limit: int = 100) -> list[dict[str, Any]]:
    """Reports of the newest `limit` runs, newest first (unreadable runs left out), for the
    recovery metrics."""
    out = []
    for s in list_runs(site.state_dir)[:limit]:
        try:
            out.append(build_report(site, s.id, compare=False))
        except Exception:  # noqa: BLE001 - one damaged journal must not hide the others
            continue
    return out


# -- rendering -------------------------------------------------------------------------------


def _yn(value: bool | None, why: str, yes: str = "Yes", no: str = "No") -> str:
    return f"not measured ({why})" if value is None else (yes if value else no)


def _rto_line(rep: dict[str, Any]) -> str:
    if not rep["rto_s"]:
        return "not measured (the runbook sets no RTO)"
    target = _dur(rep["rto_s"])
    if rep["status"] in ("failed", "aborted"):
        return f"No (the recovery {rep['status']}; target {target})"
    if rep["status"] != "succeeded":
        return f"No (the recovery has not finished: {rep['status']}; target {target})"
    return f"{'Yes' if rep['rto_met'] else 'No'} ({_dur(rep['recovery_s'])} from detection against {target})"


def _rpo_line(rep: dict[str, Any]) -> str:
    if not rep["rpo_s"]:
        return "not measured (the runbook sets no RPO)"
    if rep["rpo_window_s"] is None:
        return f"not measured (no backup was restored; target {_dur(rep['rpo_s'])})"
    lag = (
        f" plus {rep['rpo_lag_blocks']} blocks of lag"
        if rep["rpo_lag_blocks"] is not None
        else "; block-height lag not measured"
    )
    return (
        f"{'Yes' if rep['rpo_met'] else 'No'} ({_dur(rep['rpo_window_s'])} of data lost{lag}, "
        f"against {_dur(rep['rpo_s'])})"
    )


def _perf(rep: dict[str, Any]) -> list[tuple[str, str]]:
    if rep["backup_creation_s"] is not None:
        creation = f"{_dur(rep['backup_creation_s'])} for {rep['backups_created']} backup(s)"
    else:
        creation = "not measured (this run created no backup)"
    if rep["recovery_s"] is not None:
        recovery = f"{_dur(rep['recovery_s'])} from detection ({rep['detected_source']}) to the recovery verified"
    elif rep["elapsed_s"] is not None:
        recovery = (
            f"not measured (the recovery did not succeed; the run lasted {_dur(rep['elapsed_s'])})"
        )
    else:
        recovery = "not measured (the run has not ended)"
    rates = []
    if rep.get("restored_bytes") and rep.get("restore_s"):
        rates.append(
            f"{rep['restored_bytes'] / rep['restore_s'] / 1e6:.2f} MB/s restored "
            f"({rep['restored_bytes']} bytes written to the node(s) over "
            f"{_dur(rep['restore_s'])} of restore steps)"
        )
    if rep["backup_bytes"] and rep["backup_creation_s"]:
        rates.append(
            f"{rep['backup_bytes'] / rep['backup_creation_s'] / 1e6:.2f} MB/s "
            "(encrypted backup bytes over creation time)"
        )
    rate = "; ".join(rates) or (
        "not measured (no backup was created, and no restore recorded its byte count)"
    )
    res = rep.get("console_resources")
    if isinstance(res, dict) and res.get("cpu_s") is not None:
        usage = (
            f"the console process only: {res['cpu_s']:.2f}s CPU time (user + system) during "
            f"the run, peak RSS {res['peak_rss_mb']:.1f} MB over the process's life; "
            "not measured on the nodes (kconsole does not sample their CPU, memory or disk)"
        )
    else:
        usage = (
            "not measured (this run was not driven by `kconsole run` or `kconsole drill`, "
            "which measure the console process; the nodes are never sampled)"
        )
    return [
        ("Backup Creation Time", creation),
        ("Recovery Time", recovery),
        ("Data Transfer Rate", rate),
        ("System Resource Usage", usage),
    ]


def _sign_line(rep: dict[str, Any], role: str) -> str:
    s = rep["signoffs"].get(role)
    if s:
        return f"{s['name']} (signed {s['time']})"
    return f"not signed (`kconsole report sign {rep['run']} --role {role}`)"


def render_markdown(rep: dict[str, Any]) -> str:
    """The plan's test report template, every field filled."""
    kind = "drill" if rep["drill"] else "incident recovery"
    title = (
        "Backup and Recovery Test Report" if rep["drill"] else "Backup and Recovery Incident Report"
    )
    if rep["elapsed_s"] is not None:
        elapsed = f"{_dur(rep['elapsed_s'])} ({rep['started']} to {rep['finished']})"
    else:
        elapsed = f"not measured (the run is {rep['status']}; it started {rep['started']})"
    objectives = [
        (rep["backup_integrity"] is not None, "Verify backup integrity"),
        (rep["status"] not in ("running", "waiting"), "Test recovery procedures"),
        (rep["rto_met"] is not None and rep["rpo_met"] is not None, "Validate RTO/RPO targets"),
        (rep["recovery_s"] is not None, "Document recovery time"),
        (True, "Identify improvement areas"),
    ]
    dates = [s["time"][:10] for s in rep["signoffs"].values()]
    out = [
        f"# {title}",
        "",
        "## Test Information",
        f"- **Test Date**: {rep['started'][:10] or 'not recorded'}",
        f"- **Test Type**: {rep['test_type']} ({kind}; run `{rep['run']}` by {rep['user'] or 'unknown'} on site {rep['site']})",
        f"- **Test Scenario**: {rep['scenario_name']} — {rep['title']} (`{rep['runbook']}`)",
        f"- **Test Duration**: {elapsed}",
        f"- **Outcome**: {rep['status']}" + (f" — {rep['reason']}" if rep["reason"] else ""),
        f"- **Detected**: {rep['detected'] or 'not recorded'} (from {rep['detected_source']})",
        f"- **Parameters**: {', '.join(f'{k}={v}' for k, v in rep['params'].items()) or 'none'}",
    ]
    if rep["incident"]:
        out.append(
            f"- **Incident**: {rep['incident']} (`kconsole incident report {rep['incident']}`)"
        )
    if rep["injected"]:
        out.append(f"- **Injected Failure**: {', '.join(rep['injected'])}")
    out += ["", "## Test Objectives"]
    out += [f"- [{'x' if done else ' '}] {text}" for done, text in objectives]
    integrity = _yn(rep["backup_integrity"], "no backup.verify step ran", "Pass", "Fail")
    if rep["backup_integrity"] is not None:
        integrity += f" ({rep['backups_verified']} verified)"
    out += [
        "",
        "## Test Results",
        f"- **Backup Integrity**: {integrity}",
        f"- **Recovery Success**: {'Pass' if rep['status'] == 'succeeded' else 'Fail'} ({rep['status']})",
        f"- **RTO Met**: {_rto_line(rep)}",
        f"- **RPO Met**: {_rpo_line(rep)}",
        f"- **Data Consistency**: {rep['data_consistency']['text']}",
        "",
        "## Performance Metrics",
    ]
    out += [f"- **{label}**: {value}" for label, value in _perf(rep)]
    out += ["", "## Issues Identified"]
    out += [
        f"{i}. **{issue['text']}** - Severity: {issue['severity']}"
        for i, issue in enumerate(rep["issues"], 1)
    ] or ["None."]
    out += ["", "## Recommendations"]
    out += [f"{i}. **{r}**" for i, r in enumerate(rep["recommendations"], 1)] or ["None."]
    out += ["", "## Next Steps"]
    out += [f"- [ ] {s}" for s in rep["next_steps"]] or ["None."]
    out += [
        "",
        "## Sign-off",
        f"- **Test Engineer**: {_sign_line(rep, 'test-engineer')}",
        f"- **Operations Lead**: {_sign_line(rep, 'operations-lead')}",
        f"- **Date**: {max(dates) if dates else 'not signed'}",
    ]
    if "previous_drills" in rep:
        out += ["", "## Compared With Previous Drills"]
        prev = rep["previous_drills"]
        if not prev:
            out.append("None: this is the first drill of this scenario.")
        else:
            out += [
                "| run | status | recovery time | RTO met | RPO window | lag | issues (high) |",
                "| --- | --- | ---: | --- | ---: | ---: | ---: |",
                _compare_row(
                    "this drill",
                    rep["status"],
                    rep["recovery_s"],
                    rep["rto_met"],
                    rep["rpo_window_s"],
                    rep["rpo_lag_blocks"],
                    len(rep["issues"]),
                    sum(1 for i in rep["issues"] if i["severity"] == "High"),
                ),
            ]
            out += [
                _compare_row(
                    p["run"],
                    p["status"],
                    p["recovery_s"],
                    p["rto_met"],
                    p["rpo_window_s"],
                    p["rpo_lag_blocks"],
                    p["issues"],
                    p["high_issues"],
                )
                for p in prev
            ]
            last = prev[0]
            if rep["recovery_s"] is not None and last["recovery_s"] is not None:
                delta = rep["recovery_s"] - last["recovery_s"]
                out.append(
                    f"Recovery time {'down' if delta < 0 else 'up'} {_dur(abs(delta))} and "
                    f"{len(rep['issues']) - last['issues']:+d} issues against the previous drill ({last['run']})."
                )
            else:
                out.append(
                    f"Recovery times not comparable with the previous drill ({last['run']}): one of them did not succeed."
                )
    out += ["", "## Backups Used"]
    if rep["backups_used"]:
        out += [
            "| node | backup | from | key | created | window to detection |",
            "| --- | --- | --- | --- | --- | ---: |",
        ]
        out += [
            f"| {b['node']} | {b['backup']} | {b['replica']} | {str(b['key_id'])[:8]} | {b['created'] or '-'} | {_dur(b['window_s'])} |"
            for b in rep["backups_used"]
        ]
    else:
        out.append("None restored.")
    out += ["", "## Gates"]
    out += [
        f"- {g['time']} {g['step']}{' on ' + g['node'] if g['node'] else ''}: {g['answer']} by {g['by']}"
        + (f" — note: {g['note']}" if g["note"] else "")
        for g in rep["gates"]
    ] or ["No gates."]
    out += ["", "## Operator Notes"]
    out += [f"- {n['time']} {n['user']}: {n['text']}" for n in rep["notes"]] or ["None."]
    out += [
        "",
        "## Appendix: Timeline",
        "",
        "| time | step | node | command | exit | duration | result |",
        "| --- | --- | --- | --- | ---: | ---: | --- |",
    ]
    for e in rep["timeline"]:
        if "step" not in e:
            out.append(f"| {e['time']} | - | - | {e['what']} | - | - | - |")
            continue
        cmd = e["command"] or e["action"]
        cmd = str(cmd).strip().replace("|", "\\|").replace("\n", " ")
        shown = f"`{cmd}`" if e["command"] else cmd
        if e["command"] and not e["rendered"]:
            shown += " (as written in the runbook)"
        code = "-" if e["exit_code"] is None else str(e["exit_code"])
        out.append(
            f"| {e['time']} | {e['step']} | {e['node'] or '-'} | {shown} | {code} | {_dur(e['duration_s'])} | {str(e['result']).replace('|', '/')} |"
        )
    head = rep["audit_head"]
    out += [
        "",
        f"Audit chain head: entry {head['seq']}, hash `{head['hash']}` ({head['time']})"
        if head
        else "Audit chain head: the audit log is empty.",
        "",
    ]
    return "\n".join(out)


def _compare_row(
    name: str,
    status: str,
    rec: float | None,
    met: bool | None,
    window: float | None,
    lag: int | None,
    issues: int,
    high: int,
) -> str:
    return (
        f"| {name} | {status} | {_dur(rec)} | {'-' if met is None else ('Yes' if met else 'No')} | "
        f"{_dur(window)} | {'-' if lag is None else lag} | {issues} ({high}) |"
    )


def render_html(markdown: str, title: str) -> str:
    """A self-contained HTML page of the Markdown report (no script, no external resource)."""
    body: list[str] = []
    in_list: str | None = None
    in_table = False

    def inline(text: str) -> str:
        out = html.escape(text)
        parts = out.split("**")
        out = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
        parts = out.split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    def close() -> None:
        nonlocal in_list, in_table
        if in_list:
            body.append(f"</{in_list}>")
            in_list = None
        if in_table:
            body.append("</table>")
            in_table = False

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").replace("\\|", "\x00").split("|")]
            cells = [c.replace("\x00", "|") for c in cells]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            if not in_table:
                close()
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if line.startswith("#"):
            close()
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            if in_list != "ul":
                close()
                body.append("<ul>")
                in_list = "ul"
            text = line[2:]
            if text.startswith("[x] ") or text.startswith("[ ] "):
                box = "&#9745;" if text[1] == "x" else "&#9744;"
                text_html = f"{box} {inline(text[4:])}"
            else:
                text_html = inline(text)
            body.append(f"<li>{text_html}</li>")
        elif line[:1].isdigit() and ". " in line[:5]:
            if in_list != "ol":
                close()
                body.append("<ol>")
                in_list = "ol"
            body.append(f"<li>{inline(line.split('. ', 1)[1])}</li>")
        elif not line.strip():
            close()
        else:
            close()
            body.append(f"<p>{inline(line)}</p>")
    close()
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#111}"
        "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #999;padding:.2em .4em;"
        "text-align:left;vertical-align:top}code{font-size:.9em;background:#f3f3f3}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


FORMATS = ("md", "json", "html")


def render_report(site: Site, run_id: str, fmt: str = "md") -> str:
    """The report of a run as Markdown, JSON or self-contained HTML text."""
    rep = build_report(site, run_id)
    if fmt == "json":
        return json.dumps(rep, indent=2, default=str) + "\n"
    md = render_markdown(rep)
    if fmt == "html":
        return render_html(md, f"Report of run {run_id}")
    return md


def save_report(site: Site, run_id: str, fmt: str = "md", path: Path | None = None) -> Path:
    """Write a run's report (default `state_dir/reports/RUN_ID.FMT`), temp + fsync + rename."""
    text = render_report(site, run_id, fmt)
    target = path or site.state_dir / "reports" / f"{run_id}.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, text.encode("utf-8"), 0o644)
    return target
