"""The headless command line. Every TUI action is an engine call this CLI can make too.

Exit codes: 0 success, 1 the operation ran and failed, 2 bad input or usage,
3 interrupted and resumable. Errors are one sentence on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from kconsole import __version__
from kconsole.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    KconsoleError,
    OperationFailed,
    UsageError,
)

# asyncio, tempfile, traceback and signal are imported where used: `kconsole --version`
# and usage errors should cost no more than starting Python.


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one sentence (its default is usage + message)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`).")


def _out(line: str) -> None:
    """Print to stdout, surviving a terminal that went away (a dropped SSH session)."""
    with contextlib.suppress(BrokenPipeError, OSError):
        print(line, flush=True)


def _table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain fixed-width table on stdout, laid out by rich: columns as wide as their
    content (in terminal cells, so wide characters line up), one space apart, never
    wrapped, no trailing spaces. A column named with a leading `>` is right-aligned (the `>`
    is not shown). Cells are printed as they are, never read as markup; a line break in one
    is a space."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="")
    for name in columns:
        right = name.startswith(">")
        table.add_column(name.lstrip(">"), justify="right" if right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(" ".join(str(cell).splitlines())) for cell in row))
    console = Console(width=100_000, color_system=None, highlight=False, emoji=False)
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        _out(line.rstrip())


def _err(line: str) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        print(line, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The full CLI (docs/cli.md)."""
    # --site is accepted before or after the command; SUPPRESS keeps a subcommand's
    # unset --site from overwriting one given before it.
    common = _Parser(add_help=False)
    common.add_argument(
        "--site",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="site file (default $KCONSOLE_SITE, then ./site.toml)",
    )
    p = _Parser(prog="kconsole", description="Backup and disaster recovery console.")
    p.add_argument(
        "--site", metavar="FILE", help="site file (default $KCONSOLE_SITE, then ./site.toml)"
    )
    p.add_argument("--version", action="version", version=f"kconsole {__version__}")
    p.add_argument(
        "--keymap", metavar="FILE", help="key remapping file for the console ([keys] table)"
    )
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    lab = sub.add_parser(
        "lab", parents=[common], help="start the embedded lab and open the console on it"
    )
    lab.add_argument("--nodes", type=int, default=9)
    lab.add_argument(
        "--dir", metavar="DIR", help="lab directory (default: a per-user state directory)"
    )
    lab.add_argument("--faults", default="", metavar="SPEC")
    lab.add_argument(
        "--state-size", metavar="SIZE", help="grow each fleet node's chain state to SIZE (e.g. 1G)"
    )
    lab.add_argument(
        "mode", nargs="?", choices=["serve"], help="serve headless until SIGINT/SIGTERM"
    )

    v = sub.add_parser("validate", parents=[common], help="check runbooks and site files")
    v.add_argument("paths", nargs="+", metavar="PATH")

    r = sub.add_parser("run", parents=[common], help="run a runbook headless")
    r.add_argument("runbook", metavar="RUNBOOK", help="path or id of a shipped runbook")
    r.add_argument("--param", action="append", default=[], metavar="K=V")
    r.add_argument("--yes", action="store_true", help="confirm every gate")
    r.add_argument("--drill", action="store_true", help="mark the run as a drill")
    r.add_argument("--json", action="store_true", help="one JSON event per line")
    r.add_argument("--resume", metavar="RUN_ID")
    r.add_argument("--incident", metavar="ID", help="the incident this run belongs to")

    runs = sub.add_parser("runs", parents=[common], help="runs in the journal, newest first")
    runs.add_argument("--json", action="store_true")

    st = sub.add_parser("status", parents=[common], help="one poll of every node")
    st.add_argument("--json", action="store_true")
    st.add_argument(
        "--ssh",
        action="store_true",
        help="check the service over SSH on every node (default: only where the health URL "
        "is missing or does not answer 200)",
    )

    cat = sub.add_parser("catalog", parents=[common], help="backups across all locations")
    cat.add_argument("--json", action="store_true")
    cat.add_argument("--kind")
    cat.add_argument("--node")
    cat.add_argument("--location")

    ver = sub.add_parser("verify", parents=[common], help="verify backups end to end")
    ver.add_argument("backups", nargs="*", metavar="BACKUP")

    cr = sub.add_parser("crypto", parents=[common], help="keys and encryption")
    crs = cr.add_subparsers(dest="crypto_command", required=True, parser_class=_Parser)
    kg = crs.add_parser("keygen", parents=[common], help="make a new key file (0600)")
    kg.add_argument("-o", dest="output", required=True, metavar="KEYFILE")
    enc = crs.add_parser("encrypt", parents=[common], help="encrypt a file")
    enc.add_argument("--key", required=True, metavar="KEYFILE")
    enc.add_argument("input", metavar="IN")
    enc.add_argument("-o", dest="output", required=True, metavar="OUT")
    dec = crs.add_parser("decrypt", parents=[common], help="decrypt a native or legacy file")
    group = dec.add_mutually_exclusive_group(required=True)
    group.add_argument("--key", metavar="KEYFILE")
    group.add_argument("--keyring", metavar="DIR")
    dec.add_argument("--pbkdf2", action="store_true", help="legacy file made with openssl -pbkdf2")
    dec.add_argument(
        "--iter",
        type=int,
        metavar="N",
        help="legacy file made with openssl -iter N (implies PBKDF2)",
    )
    dec.add_argument("input", metavar="IN")
    dec.add_argument("-o", dest="output", required=True, metavar="OUT")

    rep = sub.add_parser(
        "report", parents=[common], help="the filled incident / drill report of a run"
    )
    rep.add_argument("run_id", metavar="RUN_ID", help="a run id, or `sign` then the run id")
    rep.add_argument("sign_run", nargs="?", metavar="SIGN_RUN_ID", help=argparse.SUPPRESS)
    rep.add_argument("--format", choices=["md", "json", "html"], default="md")
    rep.add_argument("-o", dest="output", metavar="FILE")
    rep.add_argument(
        "--role",
        choices=["test-engineer", "operations-lead"],
        help="with `report sign RUN_ID`: the sign-off role",
    )

    dr = sub.add_parser(
        "drill", parents=[common], help="a guided drill of one of the plan's scenarios"
    )
    dr.add_argument(
        "scenario",
        metavar="SCENARIO",
        help="single-node | multiple-nodes | complete-network | security-incident",
    )
    dr.add_argument("--lab", action="store_true", help="the site is the lab (required there)")
    dr.add_argument("--yes", action="store_true", help="unattended: confirm every step")
    dr.add_argument("--json", action="store_true")
    dr.add_argument("--param", action="append", default=[], metavar="K=V")
    dr.add_argument(
        "--exercise",
        choices=["dr-drill", "full-scale"],
        default="",
        help="count this drill as the plan's quarterly DR drill or bi-annual full-scale exercise",
    )
    drs = sub.add_parser(
        "drills", parents=[common], help="drill history and the plan's testing schedule"
    )
    drs.add_argument("--json", action="store_true")
    drs.add_argument("--crontab", action="store_true", help="cron lines for the automated tests")

    au = sub.add_parser("audit", parents=[common], help="the audit log")
    aus = au.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    aus.add_parser("verify", parents=[common], help="check the hash chain")
    ash = aus.add_parser("show", parents=[common], help="print the audit log")
    ash.add_argument("--json", action="store_true")

    co = sub.add_parser("contacts", parents=[common], help="contacts and escalation matrices")
    co.add_argument("--json", action="store_true")
    co.add_argument("--now", action="store_true", help="who to call now, per open incident")

    from kconsole.incidents.cli import add_incident_parser

    add_incident_parser(sub, common)

    me = sub.add_parser("metrics", parents=[common], help="backup metrics, Prometheus text format")
    me.add_argument("-o", dest="output", metavar="FILE")

    sc = sub.add_parser("schedule", parents=[common], help="the plan's schedules")
    sc.add_argument("--crontab", action="store_true", help="print the crontab that runs them")
    sc.add_argument("--json", action="store_true")

    si = sub.add_parser("site", parents=[common], help="site files")
    sis = si.add_subparsers(dest="site_command", required=True, parser_class=_Parser)
    imp = sis.add_parser(
        "import", parents=[common], help="a site.toml from the plan's primary.conf"
    )
    imp.add_argument(
        "config", metavar="PRIMARY_CONF", help="the plan's INI file (/etc/backup/primary.conf)"
    )
    imp.add_argument(
        "-o", dest="output", metavar="FILE", help="write the site file here (default: stdout)"
    )
    imp.add_argument("--force", action="store_true", help="replace FILE if it exists")

    web = sub.add_parser(
        "web", parents=[common], help="serve the console to a browser on localhost"
    )
    web.add_argument("--port", type=int, default=8000)
    return p


OPEN_FILES_WANTED = 65536
"""Descriptors a fleet needs: a pooled SSH connection per node (the dashboard, `status
--ssh`) and a socket per health read; the common default soft limit of 1024 runs out
at about a thousand nodes."""


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise this process's soft limit on open files towards `wanted`, within the hard
    limit (an unprivileged process may); returns the soft limit in force. Never fails."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        return soft
    except (ImportError, ValueError, OSError):
        return -1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kconsole` script."""
    try:
        given = list(sys.argv[1:] if argv is None else argv)
        if any("\x00" in a for a in given):
            raise UsageError("an argument holds a NUL character, which no path or value may.")
        args = build_parser().parse_args(given)
        raise_open_files_limit()
        handler = _HANDLERS.get(args.command or "console")
        if handler is None:
            raise UsageError(f"kconsole {args.command} is not available in this version.")
        return handler(args)
    except KconsoleError as exc:
        for line in str(exc).splitlines() or [exc.__class__.__name__]:
            _err(line if _looks_located(line) else f"kconsole: {line}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("kconsole: interrupted.")
        return EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno not in _SETUP_ERRNOS:
            return _internal_error(exc)
        # A path the operator gave or configured (state_dir, -o FILE) cannot be used.
        where = f" {exc.filename}" if exc.filename else ""
        _err(f"kconsole: cannot use{where}: {exc.strerror}; check the path and its permissions.")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the operator gets one sentence, the log the rest
        return _internal_error(exc)


_SETUP_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EROFS}
)
"""OSErrors that mean a configured or given path is unusable (bad input, exit 2)."""


def _internal_error(exc: BaseException) -> int:
    """One sentence on stderr, the traceback in a crash log."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="kconsole-crash-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exc(file=fh)
    _err(f"kconsole: internal error ({exc.__class__.__name__}: {exc}); details in {path}.")
    return EXIT_FAILED


def _looks_located(line: str) -> bool:
    head = line.split(": ", 1)[0]
    return head.count(":") >= 2 and head.rsplit(":", 2)[-1].isdigit()


def _site(args: argparse.Namespace) -> Any:
    from kconsole.site import find_site_path, load_site

    site = load_site(find_site_path(args.site))
    site.check_state_dir()
    return site


def cmd_validate(args: argparse.Namespace) -> int:
    """`kconsole validate PATH...`"""
    from kconsole.runbook import validate_paths

    count, problems = validate_paths(args.paths)
    for problem in sorted(problems):
        _err(str(problem))
    if problems:
        files = len({p.path for p in problems})
        _err(f"{len(problems)} problem(s) in {files} of {count} file(s).")
        return EXIT_USAGE
    _out(f"{count} file(s) valid.")
    return EXIT_OK


def cmd_site(args: argparse.Namespace) -> int:
    """`kconsole site import PRIMARY_CONF [-o FILE] [--force]`: the notes go to stderr, the
    site file to FILE (atomically, never over an existing one without --force) or stdout."""

    from kconsole.fsutil import atomic_write, refuse_overwriting_input
    from kconsole.site import load_site
    from kconsole.siteimport import import_plan_config

    source = Path(args.config)
    imported = import_plan_config(source)
    text = imported.toml(source)
    out = Path(args.output) if args.output else None
    if out is not None:
        refuse_overwriting_input(out, plan_configuration=source)
    if out is not None and out.exists() and not args.force:
        raise UsageError(f"{out} already exists; pass --force to replace it.")
    if out is not None and not out.parent.is_dir():
        raise UsageError(
            f"directory {out.parent} does not exist; create it or pick another -o FILE."
        )
    import tempfile

    with (
        tempfile.TemporaryDirectory() as tmp
    ):  # the result must load as a site, or nothing is written
        check = Path(tmp) / "site.toml"
        check.write_text(text)
        load_site(check)
    if out is None:
        _out(text.rstrip("\n"))
    else:
        try:
            atomic_write(out, text.encode(), mode=0o644)
        except OSError as exc:
            raise OperationFailed(f"cannot write {out}: {exc.strerror}.") from None
        _err(f"kconsole: wrote {out} from {source}.")
    for note in imported.notes:
        _err(f"kconsole: note: {note}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """`kconsole run RUNBOOK ...`"""
    from kconsole.headless import run_headless

    return run_headless(
        site=_site(args),
        runbook=args.runbook,
        params=args.param,
        yes=args.yes,
        drill=args.drill,
        as_json=args.json,
        resume=args.resume,
        printer=_out,
        incident=args.incident or "",
    )


def cmd_runs(args: argparse.Namespace) -> int:
    """`kconsole runs`"""
    from kconsole.journal import list_runs
    from kconsole.shared.runs import merged_runs
    from kconsole.site import current_user

    site = _site(args)
    runs, problem = merged_runs(site, list_runs(site.state_dir), current_user())
    if problem:
        _err(f"kconsole: warning: {problem} Showing this console's runs only.")
    if args.json:
        for r in runs:
            _out(json.dumps(r.as_json()))
        return EXIT_OK
    if not runs:
        _out("no runs yet.")
        return EXIT_OK
    if not site.shared:
        _table(
            ("RUN", "RUNBOOK", "STATUS", "STARTED", "DRILL"),
            ((r.id, r.runbook, r.status, r.started, "yes" if r.drill else "") for r in runs),
        )
        return EXIT_OK

    def console_of(r: Any) -> str:
        held = f" (lease: {r.holder})" if r.holder else ""
        return (r.console or "this console") + held

    _table(
        ("RUN", "RUNBOOK", "STATUS", "STARTED", "DRILL", "USER", "CONSOLE"),
        (
            (r.id, r.runbook, r.status, r.started, "yes" if r.drill else "", r.user, console_of(r))
            for r in runs
        ),
    )
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """`kconsole audit verify|show`"""
    from kconsole.audit import AuditLog

    site = _site(args)
    log = AuditLog(site.state_dir)
    if args.audit_command == "show":
        entries = log.read()
        if args.json:
            for entry in entries:
                _out(json.dumps(entry, sort_keys=True))
        elif entries:
            _table(
                (">SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "RESULT"),
                (
                    (
                        e["seq"],
                        e["ts"],
                        e["actor"],
                        e["action"],
                        e.get("target", ""),
                        e.get("result", ""),
                    )
                    for e in entries
                ),
            )
        return EXIT_OK
    result = log.verify()
    if not result.ok:
        _err(f"kconsole: audit log {log.path} is tampered: {result.message}.")
        return EXIT_FAILED
    _out(f"audit log {log.path}: {result.message}.")
    # An emptied or deleted log verifies as a chain; only an off-host head can contradict it.
    if not any(loc.type != "local" for loc in site.locations.values()):
        _err(
            "kconsole: warning: this site has no off-host backup location to keep audit "
            "checkpoints in, so a cut-off or deleted audit log cannot be detected."
        )
        return EXIT_OK
    from kconsole.anchor import check

    anchors = _with_backups(site, lambda session: check(log, session.stores()))
    for a in anchors:
        (_out if a.ok else _err)(
            f"{'' if a.ok else 'kconsole: '}off-host checkpoint in {a.location}: {a.message}."
        )
    if not all(a.ok for a in anchors):
        return EXIT_FAILED
    if not any(a.found for a in anchors):
        _err(
            "kconsole: warning: no off-host location holds a checkpoint of this console's "
            "audit log, so a cut-off or deleted log cannot be detected."
        )
    return EXIT_OK


def cmd_contacts(args: argparse.Namespace) -> int:
    """`kconsole contacts [--now]`"""
    site = _site(args)
    if args.now:
        from kconsole.incidents.cli import print_call_now

        return print_call_now(site, args.json, _out)
    if args.json:
        for c in site.contacts:
            _out(json.dumps({"type": "contact", **c.__dict__}))
        for m in site.escalation.values():
            _out(
                json.dumps(
                    {
                        "type": "escalation",
                        "name": m.name,
                        "title": m.title,
                        "levels": [
                            {"level": lv.level, "role": lv.role, "wait_s": lv.wait}
                            for lv in m.levels
                        ],
                    }
                )
            )
        return EXIT_OK
    from kconsole.config import format_duration

    _table(
        ("NAME", "ROLE", "PHONE", "ON CALL", "EMAIL"),
        ((c.name, c.role, c.phone, c.on_call, c.email) for c in site.contacts),
    )
    for m in site.escalation.values():
        _out("")
        _out(f"{m.title}:")
        for lv in m.levels:
            wait = f"  then after {format_duration(lv.wait)} with no response" if lv.wait else ""
            _out(f"  L{lv.level} {lv.role}{wait}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """`kconsole status`: exit 0 when the poll ran, whatever the nodes' states."""
    from kconsole.fleet import poll_once

    site = _site(args)
    statuses, took = poll_once(site, ssh=args.ssh)
    if args.json:
        for s in statuses:
            _out(json.dumps(s.as_json()))
        return EXIT_OK
    # The latency says what it measured: the SSH command's round trip or the health read's.
    _table(
        ("NODE", "HOST", "STATE", ">LATENCY", ">HEIGHT", "DETAIL"),
        (
            (
                s.name,
                f"{s.host}:{site.nodes[s.name].port}",
                s.state,
                f"{s.latency_ms:.0f} ms {s.latency_of}" if s.latency_ms is not None else "-",
                s.height if s.height is not None else "-",
                s.detail,
            )
            for s in statuses
        ),
    )
    up = sum(1 for s in statuses if s.state == "active")
    over_ssh = sum(1 for s in statuses if "ssh" in s.checked)
    _out(
        f"{up}/{len(statuses)} active, polled in {took:.2f}s "
        f"({over_ssh} of {len(statuses)} checked over SSH)"
    )
    return EXIT_OK


def _with_backups(site: Any, fn: Callable[[Any], Any]) -> Any:
    """Run `fn(session)` on a fresh event loop with the site's backup session."""
    from kconsole.services import run_once

    return run_once(site, lambda services: fn(services.backups(site)))


def cmd_catalog(args: argparse.Namespace) -> int:
    """`kconsole catalog`: every copy of every backup, then per tier, kind and node the newest
    good backup against the RPO and what a failure now would lose."""
    from kconsole.backups.catalog import live_heights, tier_summary
    from kconsole.config import format_duration
    from kconsole.runbook.coverage import expected_nodes
    from kconsole.services import run_once
    from kconsole.site import BACKUP_KINDS

    site = _site(args)
    if args.kind and args.kind not in BACKUP_KINDS:
        raise UsageError(f"--kind must be one of {', '.join(BACKUP_KINDS)}.")
    if args.node and args.node not in site.nodes:
        site.node(args.node)
    if args.location and args.location not in site.locations:
        raise UsageError(
            f"unknown location {args.location}; the site has {', '.join(site.locations)}."
        )

    async def build(services: Any) -> tuple[Any, dict[str, int | None]]:
        import asyncio

        catalog, heights = await asyncio.gather(
            services.backups(site).catalog(),
            live_heights(site, [args.node] if args.node else None, health=services.health),
        )
        return catalog, heights

    catalog, heights = run_once(site, build)
    rows = catalog.rows(args.kind, args.node, args.location)
    fresh = [
        f
        for f in catalog.freshness(site, heights, expected=expected_nodes(site))
        if (not args.kind or f["kind"] == args.kind) and (not args.node or f["node"] == args.node)
    ]
    for loc, err in catalog.errors.items():
        _err(f"kconsole: location {loc} could not be listed: {err}.")
    orphans = [
        o
        for o in catalog.orphans
        if (not args.location or o.location == args.location)
        and (not args.kind or o.key.startswith(f"{args.kind}/"))
        and (not args.node or f"/{args.node}/" in f"/{o.key}")
    ]
    if args.json:
        for row in rows:
            _out(json.dumps(row))
        for f in fresh:
            _out(json.dumps(f))
        for o in orphans:
            _out(json.dumps(o.as_json()))
        return EXIT_OK
    _out(f"catalog of {site.name} as of {catalog.as_of:%Y-%m-%d %H:%M:%S} UTC")
    _table(
        ("ID", "LOCATION", ">SIZE", ">AGE", ">RPO", "STATUS", "KEY"),
        (
            (
                r["id"],
                r["location"],
                r["size"],
                format_duration(r["age_s"]),
                format_duration(r["rpo_s"]) if r["rpo_s"] else "-",
                r["status"],
                "legacy" if r["legacy"] else r["key_id"][:8],
            )
            for r in rows
        ),
    )
    _out(f"{len(rows)} copies of {len({r['id'] for r in rows})} backups")
    if orphans:
        _out(
            f"{len(orphans)} orphaned objects (left by a backup that failed or was "
            "interrupted; backup.prune removes them):"
        )
        for o in orphans:
            _out(f"  {o.path} ({o.size} bytes; {o.what})")
    if not fresh:
        return EXIT_OK
    _out("")
    _out(
        f"newest good backup against the RPO, as of {catalog.as_of:%Y-%m-%d %H:%M:%S} UTC "
        "(LOSS: what a failure now would lose)"
    )
    _table(
        ("TIER", "KIND", "NODE", ">AGE", ">RPO", "STATE", ">LOSS", ">BLOCKS", "NEWEST"),
        (
            (
                f["tier"],
                f["kind"],
                f["node"],
                format_duration(f["age_s"]) if f["age_s"] is not None else "never",
                format_duration(f["rpo_s"]),
                f["status"],
                format_duration(f["loss_s"]) if f["loss_s"] is not None else "all",
                f["block_lag"] if f["block_lag"] is not None else "?",
                f["newest"] or "-",
            )
            for f in fresh
        ),
    )
    for t in tier_summary(fresh):
        worst = format_duration(t["max_loss_s"]) if t["max_loss_s"] is not None else "everything"
        _out(
            f"tier {t['tier']}: {t['status']}, {t['breached']} of {t['nodes']} past the "
            f"{format_duration(t['rpo_s'])} RPO; a failure now loses up to {worst}"
            + (f" and {t['max_block_lag']} blocks" if t["max_block_lag"] is not None else "")
        )
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """`kconsole metrics [-o FILE]`: the backup metrics, Prometheus text format; a file is
    replaced atomically (node_exporter's textfile collector never sees half of it)."""
    from kconsole.backups.attempts import backup_attempts
    from kconsole.backups.metrics import (
        WINDOW,
        collect,
        recovery_samples,
        render,
        write_textfile,
    )
    from kconsole.backups.rotation import key_rotation
    from kconsole.reports import recent_reports
    from kconsole.runbook.coverage import expected_nodes

    site = _site(args)
    catalog = _with_backups(site, lambda s: s.catalog())
    text = render(
        collect(
            site,
            catalog,
            backup_attempts(site.state_dir, runs_per_runbook=WINDOW),
            expected=expected_nodes(site),
            rotation=key_rotation(site),
        )
        + recovery_samples(site, recent_reports(site))
    )
    for loc, err in catalog.errors.items():
        _err(f"kconsole: location {loc} could not be listed: {err}.")
    if not args.output:
        _out(text.rstrip("\n"))
        return EXIT_OK
    out = Path(args.output)
    if not out.parent.is_dir():
        raise UsageError(
            f"directory {out.parent} does not exist; create it or pick another -o FILE."
        )
    try:
        write_textfile(out, text)
    except OSError as exc:
        raise OperationFailed(f"cannot write {out}: {exc.strerror}.") from None
    if out.suffix != ".prom":
        _err(
            f"kconsole: note: node_exporter's textfile collector reads only *.prom files, not {out.name}."
        )
    return EXIT_OK


def cmd_schedule(args: argparse.Namespace) -> int:
    """`kconsole schedule [--crontab]`: next due, last run and overdue per scheduled runbook;
    or the crontab that runs them. Exit 0 whatever is overdue (it says so)."""
    from kconsole.backups.rotation import key_rotation
    from kconsole.schedule import crontab, schedule_status

    site = _site(args)
    if args.crontab:
        _out(crontab(site).rstrip("\n"))
        return EXIT_OK
    rows = schedule_status(site)
    if args.json:
        for row in rows:
            _out(json.dumps(row.as_json()))
        rotation = key_rotation(site)
        if rotation is not None:
            _out(json.dumps({"key_rotation": rotation.as_json()}))
        return EXIT_OK
    if not rows:
        return EXIT_OK
    now = rows[0].as_of
    _out(f"schedule of {site.name} as of {now:%Y-%m-%d %H:%M %Z} (cron's local time)")
    table = []
    for r in rows:
        last = (
            f"{r.last.last_started[:16].replace('T', ' ')} {r.last.last_status}"
            if r.last.last_id
            else "never"
        )
        state = "OVERDUE" if r.overdue else ("no runbook" if not r.available else "ok")
        if r.reason:
            state += f" ({r.reason})"
        table.append((r.entry.runbook, r.entry.cron, f"{r.next_due:%Y-%m-%d %H:%M}", last, state))
    _table(("RUNBOOK", "CRON", "NEXT DUE", "LAST RUN", "STATE"), table)
    overdue = [r.entry.runbook for r in rows if r.overdue]
    rotation = key_rotation(site, now)
    if rotation is not None:
        when = f"due {rotation.due:%Y-%m-%d}"
        state = f"OVERDUE ({when})" if rotation.overdue else when
        _out(
            f"key rotation: current key {rotation.key_id[:12]} is {rotation.age_s / 86400:.0f} days old, "
            f"rotate every {rotation.rotate_after_s / 86400:.0f} days: {state}"
        )
        if rotation.overdue:
            overdue.append("key rotation")
    _out(f"{len(overdue)} overdue: {', '.join(overdue)}" if overdue else "nothing overdue")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """`kconsole verify [BACKUP...]`: exit 1 naming each bad backup."""
    from kconsole.backups.verify import verify_backup

    site = _site(args)

    async def run(session: Any) -> list[Any]:
        catalog = await session.catalog(refresh=True)
        targets = [catalog.find(b) for b in args.backups] if args.backups else catalog.backups
        keyring = session.keyring()
        stores = session.stores()

        async def emit(stream: str, text: str) -> None:
            (_out if stream == "stdout" else _err)(text)

        return [
            await verify_backup(site, b, stores, keyring, emit, unreachable=catalog.errors)
            for b in targets
        ]

    outcomes = _with_backups(site, run)
    bad = [o.id for o in outcomes if not o.ok]
    incomplete = [o.id for o in outcomes if o.ok and not o.complete]
    if bad or incomplete:
        from kconsole.backups.verify import verify_failure

        why = {o.id: o.problems[0] for o in outcomes if not o.ok and o.problems}
        _err(f"kconsole: {verify_failure(bad, incomplete, len(outcomes), None, why)}.")
        return EXIT_FAILED
    _out(f"{len(outcomes)} backups verified.")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """`kconsole report RUN_ID [--format md|json|html] [-o FILE]`, and
    `kconsole report sign RUN_ID --role test-engineer|operations-lead`."""
    from kconsole.fsutil import atomic_write
    from kconsole.reports import render_report, sign_report
    from kconsole.site import current_user

    if args.run_id == "sign":
        if not args.sign_run or not args.role:
            raise UsageError(
                "usage: kconsole report sign RUN_ID --role test-engineer|operations-lead."
            )
        site = _site(args)
        entry = sign_report(site, args.sign_run, args.role, current_user())
        _out(
            f"{entry['actor']} signed the report of run {args.sign_run} as {args.role} at {entry['ts']}"
        )
        return EXIT_OK
    if args.sign_run or args.role:
        raise UsageError("--role and a second run id go with `kconsole report sign RUN_ID`.")
    site = _site(args)
    text = render_report(site, args.run_id, args.format)
    if args.output:
        atomic_write(args.output, text.encode("utf-8"), 0o644)
        _out(f"wrote the report of run {args.run_id} to {args.output}")
    else:
        _out(text.rstrip("\n"))
    return EXIT_OK


def cmd_incident(args: argparse.Namespace) -> int:
    """`kconsole incident open|list|show|ack|escalate|update|note|tick|report`"""
    from kconsole.incidents.cli import cmd_incident as run

    return run(args, _site(args), _out)


def cmd_drill(args: argparse.Namespace) -> int:
    """`kconsole drill SCENARIO [--lab] [--yes] [--json]`"""
    from kconsole.drills import run_drill

    code, _ = run_drill(
        site=_site(args),
        name=args.scenario,
        lab=args.lab,
        yes=args.yes,
        as_json=args.json,
        printer=_out,
        params=args.param,
        exercise=args.exercise,
    )
    return code


def cmd_drills(args: argparse.Namespace) -> int:
    """`kconsole drills [--json] [--crontab]`: drill history per scenario and the plan's
    testing schedule with next due and overdue."""
    from kconsole.config import format_duration
    from kconsole.drills import drills_crontab, drills_status

    site = _site(args)
    if args.crontab:
        _out(drills_crontab(str(site.path)).rstrip("\n"))
        return EXIT_OK
    status = drills_status(site)
    if args.json:
        for row in status["schedule"]:
            _out(json.dumps({"schedule": row}))
        for name, runs in status["history"].items():
            _out(json.dumps({"scenario": name, "drills": runs}, default=str))
        return EXIT_OK
    _out("Testing schedule (the plan's):")
    _out(f"  {'CADENCE':<12} {'MODE':<10} {'TEST':<40} {'LAST':<26} NEXT DUE")
    for row in status["schedule"]:
        due = row["next_due"] or "now (never run)"
        flag = "  OVERDUE" if row["overdue"] else ""
        _out(
            f"  {row['cadence']:<12} {row['mode']:<10} {row['test']:<40} {row['last'] or '-':<26} {due}{flag}"
        )
    _out("")
    _out("Drill history:")
    for name, runs in status["history"].items():
        if not runs:
            _out(f"  {name}: no drill yet")
            continue
        _out(f"  {name}:")
        for r in runs:
            rec = format_duration(r["recovery_s"]) if r["recovery_s"] is not None else "-"
            met = {True: "met", False: "missed", None: "-"}[r["rto_met"]]
            _out(
                f"    {r['run']}  {r['status']:<11} recovery {rec:<7} RTO {met:<6} issues {r['issues']}"
            )
    return EXIT_OK


def cmd_crypto(args: argparse.Namespace) -> int:
    """`kconsole crypto keygen|encrypt|decrypt`"""
    from kconsole.crypto import cli as crypto_cli

    # Any file written into the site's key directory (a new key, or a decrypted one that
    # holds 64 hex characters) can become the key the site encrypts with: admins only.
    site = _site_owning_keys(args, Path(args.output))
    if site is not None:
        from kconsole.site import current_user

        user = current_user()
        site.access.require_admin(user, "write into the site's key directory")
    if args.crypto_command == "keygen":
        code = crypto_cli.cmd_keygen(Path(args.output))
        if site is not None:
            from kconsole.audit import AuditLog

            target = str(Path(args.output).resolve())
            AuditLog(site.state_dir).append(user, "crypto-keygen", target)
        return code
    if args.crypto_command == "encrypt":
        return crypto_cli.cmd_encrypt(Path(args.key), Path(args.input), Path(args.output))
    return crypto_cli.cmd_decrypt(
        Path(args.input),
        Path(args.output),
        key_path=Path(args.key) if args.key else None,
        keyring_dir=Path(args.keyring) if args.keyring else None,
        pbkdf2=args.pbkdf2 or args.iter is not None,
        iterations=args.iter,
    )


def _site_owning_keys(args: argparse.Namespace, out: Path) -> Any:
    """The site whose key directory `out` is in, or None: a key written there becomes one
    the site encrypts with (the newest key file is current), so only an admin may put it
    there. A key written anywhere else is just a file of the caller's."""
    from kconsole.site import find_site_path

    path = find_site_path(getattr(args, "site", None))
    if not path.exists():
        return None
    site = _site(args)
    if site.keys_dir is None:
        return None
    keys_dir = site.keys_dir.resolve()
    target = out.resolve().parent
    return site if target == keys_dir or keys_dir in target.parents else None


def cmd_lab(args: argparse.Namespace) -> int:
    """`kconsole lab serve` headless; `kconsole lab` serves it in a child process and
    opens the console on it, stopping the lab when the console closes."""
    directory = Path(args.dir) if args.dir else _default_lab_dir()
    if args.mode == "serve":
        from kconsole.lab.serve import serve

        if not args.dir:
            raise UsageError("kconsole lab serve needs --dir DIR.")
        return serve(directory, args.nodes, args.faults, state_size=args.state_size)
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise UsageError(
            "kconsole lab opens the console and needs a terminal; "
            "for a headless lab use `kconsole lab serve --dir DIR`."
        )
    from kconsole.lablauncher import lab_in_background

    with lab_in_background(directory, args.nodes, args.faults) as site_path:
        return _open_console(site_path, getattr(args, "keymap", None))


def _default_lab_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "kconsole" / "lab"


def _screens_app() -> Any:
    """The TUI package, imported only when the console is opened (the engine never needs it)."""
    import importlib

    return importlib.import_module("screens.app")


def _open_console(site_path: Path, keymap: str | None) -> int:
    return int(_screens_app().run_console(site_path, keymap))


def cmd_console(args: argparse.Namespace) -> int:
    """`kconsole` with no command: the console on the site."""
    from kconsole.site import find_site_path, load_site

    path = find_site_path(args.site)
    # a bad site file is one sentence here, before the screen takes over
    load_site(path).check_state_dir()
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise UsageError(
            "the console needs a terminal; the headless commands are listed by `kconsole --help`."
        )
    return _open_console(path, args.keymap)


def cmd_web(args: argparse.Namespace) -> int:
    """`kconsole web`: the console served to a browser on 127.0.0.1 only."""
    from kconsole.site import find_site_path, load_site

    path = find_site_path(args.site)
    load_site(path).check_state_dir()
    try:
        import textual_serve  # noqa: F401 - only to say so before announcing anything
    except ImportError:
        raise UsageError("kconsole web needs textual-serve: pip install 'kconsole[web]'.") from None
    _out(f"serving the console on http://127.0.0.1:{args.port}/ (localhost only; Ctrl+C stops)")
    return int(_screens_app().serve_web(path, args.port))


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": cmd_validate,
    "run": cmd_run,
    "runs": cmd_runs,
    "audit": cmd_audit,
    "contacts": cmd_contacts,
    "incident": cmd_incident,
    "site": cmd_site,
    "status": cmd_status,
    "catalog": cmd_catalog,
    "verify": cmd_verify,
    "metrics": cmd_metrics,
    "schedule": cmd_schedule,
    "crypto": cmd_crypto,
    "lab": cmd_lab,
    "console": cmd_console,
    "report": cmd_report,
    "drill": cmd_drill,
    "drills": cmd_drills,
    "web": cmd_web,
}
