"""`python -m kconsole.lab serve --dir DIR [--nodes N] [--faults SPEC] [--state-size SIZE]`,
`python -m kconsole.lab grow --dir DIR NODE SIZE` and
`python -m kconsole.lab fault --dir DIR (set SPEC | clear [SPEC] | list)`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kconsole.errors import KconsoleError, UsageError
from kconsole.lab.faults import (
    FAULT_KINDS,
    parse_fault,
    parse_faults,
    read_fault_file,
    split_spec,
    write_fault_file,
)
from kconsole.lab.serve import serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kconsole.lab", description="The kconsole lab fleet."
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the lab until SIGINT/SIGTERM")
    s.add_argument(
        "--dir", required=True, type=Path, help="lab directory (site.toml is written here)"
    )
    s.add_argument("--nodes", type=int, default=9, help="fleet size (default 9: the plan's nodes)")
    s.add_argument(
        "--faults", default="", help="faults to start with, e.g. down=validator2,slow=api1:0.5"
    )
    s.add_argument(
        "--state-size",
        default=None,
        help="grow every fleet node's chain state to this size first (e.g. 1G; see grow)",
    )
    g = sub.add_parser(
        "grow", help="add SIZE bytes of block bodies to NODE's chain state (e.g. 1G, 256M)"
    )
    g.add_argument("--dir", required=True, type=Path)
    g.add_argument("node")
    g.add_argument("size")
    f = sub.add_parser(
        "fault",
        help="change the faults of a running lab (edits DIR/faults.toml)",
        epilog="kinds:\n" + "\n".join(f"  {t}" for t in FAULT_KINDS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--dir", required=True, type=Path)
    f.add_argument("action", choices=("set", "clear", "list"))
    f.add_argument("spec", nargs="?", default=None)
    h = sub.add_parser(
        "history", help="write days of backups at the plan's cadence into a lab's locations"
    )
    h.add_argument("--dir", required=True, type=Path)
    h.add_argument("--days", type=float, default=3)
    h.add_argument("--locations", default="primary,dr", help="comma-separated: primary, dr, cloud")
    return p


def _fault(dir: Path, action: str, spec: str | None) -> int:
    path = dir / "faults.toml"
    current = read_fault_file(path)
    if action == "set":
        if not spec:
            raise KconsoleError("fault set needs a SPEC such as down=validator2.")
        new = parse_faults(spec)
        ids = {f.identity for f in new}
        current = [f for f in current if f.identity not in ids] + new
    elif action == "clear":
        if spec:
            patterns = [parse_fault(p, pattern=True) for p in split_spec(spec)]
            current = [f for f in current if not any(p.covers(f) for p in patterns)]
        else:
            current = []
    if action != "list":
        write_fault_file(path, current)
    for f in current:
        print(f)
    return 0


def _history(dir: Path, days: float, locations: str) -> int:
    from kconsole.lab.history import write_history
    from kconsole.site import load_site

    summary = write_history(
        load_site(dir / "site.toml"),
        days=days,
        locations=[x.strip() for x in locations.split(",") if x.strip()],
    )
    for kind, n in summary.counts.items():
        print(f"{kind:<18} {n:>6}")
    print(f"{summary.total} backups written to {', '.join(summary.locations)}")
    return 0


def _grow(dir: Path, node: str, size: str) -> int:
    from kconsole.lab.grow import grow_state, parse_size
    from kconsole.lab.labtool import STATE_DIR

    root = dir / "nodes" / node
    if not root.is_dir():
        raise UsageError(f"{dir} has no lab node named {node!r}.")
    added = grow_state(root / STATE_DIR, parse_size(size), node)
    print(f"{node}: {added} bytes of block bodies added")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; KconsoleError becomes one line on stderr and its exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args.dir, args.nodes, args.faults, state_size=args.state_size)
        if args.command == "grow":
            return _grow(args.dir, args.node, args.size)
        if args.command == "history":
            return _history(args.dir, args.days, args.locations)
        return _fault(args.dir, args.action, args.spec)
    except KconsoleError as exc:
        print(f"kconsole lab: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
