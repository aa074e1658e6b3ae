"""`kconsole incident ...` and `kconsole contacts --now`: the CLI side of incidents."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from kconsole.errors import EXIT_OK, UsageError
from kconsole.incidents.model import INCIDENT_TYPES, SEVERITIES, UPDATE_STATUSES, Incident

if TYPE_CHECKING:
    # The desk (HTTP client, targets), asyncio and the site model are imported where a
    # command uses them: building the parser must not cost every `kconsole` invocation
    # (`--version` included) their imports.
    from kconsole.incidents.desk import IncidentDesk
    from kconsole.site import Site

T = TypeVar("T")

Printer = Callable[[str], None]


def _run(work: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, imported when a command needs it."""
    import asyncio

    return asyncio.run(work)


def add_incident_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The `incident` command and its subcommands (DESIGN.md's contract)."""
    inc = sub.add_parser("incident", parents=[common], help="incidents: open, page, ack, resolve")
    ins = inc.add_subparsers(dest="incident_command", required=True, parser_class=type(inc))
    op = ins.add_parser("open", parents=[common], help="open an incident and page level 1")
    op.add_argument("--type", required=True, choices=INCIDENT_TYPES)
    op.add_argument("--severity", required=True, choices=SEVERITIES)
    op.add_argument("--summary", required=True)
    op.add_argument("--node", action="append", default=[], metavar="N")
    op.add_argument("--detected", metavar="TIME", help="when it was detected (ISO 8601)")
    op.add_argument("--impact", default="", help="the impact, in words")
    op.add_argument("--drill", action="store_true")
    op.add_argument("--json", action="store_true")
    ls = ins.add_parser("list", parents=[common], help="open incidents, newest first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="resolved ones too")
    sh = ins.add_parser("show", parents=[common], help="an incident and its timeline")
    sh.add_argument("id", metavar="ID")
    sh.add_argument("--json", action="store_true")
    ack = ins.add_parser("ack", parents=[common], help="acknowledge: the escalation clock stops")
    ack.add_argument("id", metavar="ID")
    esc = ins.add_parser("escalate", parents=[common], help="page the next level now")
    esc.add_argument("id", metavar="ID")
    esc.add_argument("--note", default="")
    up = ins.add_parser("update", parents=[common], help="set the status, with a note")
    up.add_argument("id", metavar="ID")
    up.add_argument("--status", required=True, choices=UPDATE_STATUSES)
    up.add_argument("--note", default="")
    no = ins.add_parser("note", parents=[common], help="add a note to the timeline")
    no.add_argument("id", metavar="ID")
    no.add_argument("text", metavar="TEXT")
    ins.add_parser("tick", parents=[common], help="page what is due, retry the outbox")
    al = ins.add_parser("alerts", parents=[common], help="alerts firing in Alertmanager")
    al.add_argument("--json", action="store_true")
    al.add_argument(
        "--open", metavar="FINGERPRINT", help="open the incident this firing alert suggests"
    )
    rep = ins.add_parser("report", parents=[common], help="the filled emergency notification")
    rep.add_argument("id", metavar="ID")
    rep.add_argument("--format", choices=["md", "json"], default="md")
    rep.add_argument("-o", dest="output", metavar="FILE")


def _detected(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f'--detected "{text}" is not a time; use ISO 8601, e.g. 2026-12-03T18:40:00Z.'
        ) from None
    return t if t.tzinfo else t.astimezone()


def _line(desk: IncidentDesk, inc: Incident) -> str:
    nxt = desk.next_page_at(inc)
    when = f"next page {nxt:%H:%M:%S}Z" if nxt else ""
    ack = f"ack {inc.acknowledged_by}" if inc.acknowledged_by else when
    drill = " [drill]" if inc.drill else ""
    where = f"  (opened by {inc.opened_by} on {inc.opened_on})" if inc.opened_on else ""
    return (
        f"{inc.id:26} {inc.type:9} {inc.severity:9} {inc.status:13} L{inc.level} "
        f"{ack:24} {inc.summary}{drill}{where}"
    )


def _report_deliveries(desk: IncidentDesk, out: Printer) -> None:
    """Try the outbox now (one short timeout per target), and say what stayed in it."""
    _pages, results = _run(desk.tick())
    for r in results:
        if r.delivered:
            out(f"notified {r.message.target}")
        else:
            out(f"not delivered to {r.message.target} yet ({r.error}); kept in the outbox")


def cmd_incident(args: argparse.Namespace, site: Site, out: Printer) -> int:
    """Run one `kconsole incident` subcommand (with a shared store: having read every
    console's incidents first, and sent this one's changes after, within a bounded wait)."""
    from kconsole.incidents.desk import IncidentDesk

    desk = IncidentDesk(site)
    if args.incident_command != "alerts":
        _warn(desk.pull_shared())
    try:
        return _cmd_incident(args, site, desk, out)
    finally:
        _warn(desk.close_shared())


def _warn(problem: str) -> None:
    if problem:
        print(f"kconsole: warning: {problem}", file=sys.stderr)


def _cmd_incident(args: argparse.Namespace, site: Site, desk: IncidentDesk, out: Printer) -> int:
    cmd = args.incident_command
    if cmd == "open":
        inc = desk.open(
            args.type,
            args.severity,
            args.summary,
            nodes=args.node,
            detected=_detected(args.detected),
            drill=args.drill,
            impact=args.impact,
        )
        if args.json:
            out(json.dumps(inc.as_json()))
        else:
            out(inc.id)
        _report_deliveries(desk, out if not args.json else lambda _l: None)
        return EXIT_OK
    if cmd == "list":
        incidents = desk.incidents(include_resolved=args.all)
        if args.json:
            for inc in incidents:
                out(json.dumps(inc.as_json()))
        elif not incidents:
            out("no open incidents." if not args.all else "no incidents yet.")
        else:
            for inc in incidents:
                out(_line(desk, inc))
        return EXIT_OK
    if cmd == "show":
        inc = desk.get(args.id)
        if args.json:
            out(json.dumps(inc.as_json(timeline=True)))
            return EXIT_OK
        out(_line(desk, inc))
        for t in inc.timeline:
            on = f"  [{t['console']}]" if t.get("console") and t["console"] != inc.opened_on else ""
            out(f"  {t['time']}  {t['event']:22} {t['by']:12} {t['text']}{on}")
        return EXIT_OK
    if cmd == "ack":
        inc = desk.acknowledge(args.id)
        out(f"incident {inc.id} acknowledged by {inc.acknowledged_by}; no further level is paged.")
    elif cmd == "escalate":
        inc = desk.escalate(args.id, args.note)
        out(f"incident {inc.id}: level {inc.level} paged.")
    elif cmd == "update":
        inc = desk.update(args.id, args.status, args.note)
        out(f"incident {inc.id} is {inc.status}.")
    elif cmd == "note":
        desk.note(args.id, args.text)
        out(f"note added to incident {args.id}.")
    elif cmd == "tick":
        pages, results = _run(desk.tick())
        for p in pages:
            out(f"incident {p.incident}: level {p.level} ({p.role}) paged")
        kept = [r for r in results if not r.delivered]
        for r in kept:
            out(f"not delivered to {r.message.target} yet ({r.error}); kept in the outbox")
        return EXIT_OK
    elif cmd == "report":
        return _report(args, site, desk, out)
    elif cmd == "alerts":
        return _alerts(args, site, desk, out)
    _report_deliveries(desk, out)
    return EXIT_OK


def _alerts(args: argparse.Namespace, site: Site, desk: IncidentDesk, out: Printer) -> int:
    from kconsole.incidents.alerts import firing_alerts, suggest

    if not site.alertmanager_url:
        raise UsageError("the site has no [alertmanager] url; add one to read firing alerts.")
    alerts = _run(firing_alerts(site))
    if args.open:
        alert = next((a for a in alerts if a.fingerprint == args.open), None)
        if alert is None:
            raise UsageError(f"no alert with fingerprint {args.open} is firing now.")
        inc = desk.open_from_alert(alert)
        out(inc.id)
        _report_deliveries(desk, out)
        return EXIT_OK
    for a in alerts:
        hint = suggest(a, site)
        if args.json:
            row = {
                "name": a.name,
                "severity": a.severity,
                "summary": a.summary,
                "starts_at": a.starts_at,
                "fingerprint": a.fingerprint,
                "labels": a.labels,
                "suggested": {"type": hint.type, "runbook": hint.runbook, "nodes": hint.nodes},
            }
            out(json.dumps(row))
        else:
            out(f"{a.fingerprint:18} {a.line()}  -> {hint.type} incident, runbook {hint.runbook}")
    if not alerts and not args.json:
        out("no alert is firing.")
    return EXIT_OK


def _report(args: argparse.Namespace, site: Site, desk: IncidentDesk, out: Printer) -> int:
    from kconsole.fsutil import atomic_write
    from kconsole.incidents.report import incident_report_json, incident_report_markdown

    inc = desk.get(args.id)
    if args.format == "json":
        text = json.dumps(incident_report_json(site, inc), indent=2) + "\n"
    else:
        text = incident_report_markdown(site, inc)
    if args.output:
        atomic_write(args.output, text.encode("utf-8"), 0o644)
        out(f"wrote the report of incident {inc.id} to {args.output}")
    else:
        out(text.rstrip("\n"))
    return EXIT_OK


def print_call_now(site: Site, as_json: bool, out: Printer) -> int:
    """`kconsole contacts --now`: who to call for each open incident, or for a fresh one."""
    from kconsole.incidents.desk import IncidentDesk
    from kconsole.incidents.oncall import call_now

    desk = IncidentDesk(site)
    _warn(desk.pull_shared())
    now = desk.clock.now()
    incidents = desk.incidents()
    rows: list[tuple[str, Any]] = []
    if incidents:
        for inc in incidents:
            rows.append((inc.id, call_now(site, now, inc.type, level_no=max(inc.level, 1))))
    else:
        rows.append(("", call_now(site, now, "recovery")))
    for inc_id, who in rows:
        if as_json:
            out(
                json.dumps(
                    {
                        "type": "call-now",
                        "incident": inc_id or None,
                        "matrix": who.matrix.name if who.matrix else None,
                        "level": who.level.level if who.level else None,
                        "role": who.level.role if who.level else None,
                        "people": [{"name": c.name, "phone": c.phone} for c in who.people],
                        "off_duty": [c.name for c in who.off_duty],
                    }
                )
            )
        else:
            prefix = f"{inc_id}: " if inc_id else "no open incident; a recovery would page "
            out(prefix + who.line())
    return EXIT_OK
