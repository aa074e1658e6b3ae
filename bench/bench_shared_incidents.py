"""Benchmark: what sharing incidents through the site's S3 location adds to a change.

Starts the lab (`kconsole lab serve`, 1 node; its moto S3 answers one request at a time)
and measures, on its site:

- `IncidentDesk.note` (one event appended and fsynced) without and with the store: all
  the operator waits for;
- `close_shared` right after a change: the wait a CLI command adds before it exits;
- a second console's read of every incident (`pull_shared`) with N incidents in the store;
- `escalate` with the store (it waits for the page claim, a conditional create).

    python bench/bench_shared_incidents.py [--changes 30] [--incidents 10]

Not a test: nothing here asserts a time. The machine is shared, so medians swing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from kconsole.incidents import IncidentDesk
from kconsole.lablauncher import read_env_file
from kconsole.site import load_site
from tests.lablive import live_lab


def _ms(xs: list[float]) -> str:
    p95 = sorted(xs)[int(len(xs) * 0.95)]
    return f"median {statistics.median(xs) * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--incidents", type=int, default=10)
    args = parser.parse_args()
    with live_lab(Path(tempfile.mkdtemp(prefix="bench-incidents-")), nodes=1) as lab:
        os.environ.update(read_env_file(lab.dir / "lab.env"))
        site = load_site(lab.site)
        user = site.access.admin[0]
        a = IncidentDesk(site, user=user)
        local = IncidentDesk(site, user=user)
        local.store.mirror = None
        inc = a.open("backup", "low", "bench")
        a.close_shared()

        for label, desk in (("no shared store", local), ("shared store", a)):
            times = []
            for i in range(args.changes):
                t0 = time.perf_counter()
                desk.note(inc.id, f"note {i}")
                times.append(time.perf_counter() - t0)
                if desk is a:
                    a.close_shared()
            print(f"note (append, fsync), {label}: {_ms(times)}")

        sends = []
        for i in range(args.changes):
            a.note(inc.id, f"sent {i}")
            t0 = time.perf_counter()
            a.close_shared()
            sends.append(time.perf_counter() - t0)
        print(
            f"close_shared right after a change (what a CLI command waits before exit): {_ms(sends)}"
        )

        for i in range(args.incidents - 1):
            a.open("backup", "low", f"bench {i}")
        a.close_shared()
        other = load_site(lab.site)
        other = type(other)(**{**other.__dict__, "state_dir": lab.dir / "state-other"})
        b = IncidentDesk(other, user=user)
        reads = []
        for _ in range(5):
            t0 = time.perf_counter()
            problem = b.pull_shared()
            reads.append(time.perf_counter() - t0)
            assert not problem, problem
        print(f"another console reads {args.incidents} incidents (pull): {_ms(reads)}")

        t0 = time.perf_counter()
        a.escalate(inc.id)
        print(f"escalate with the page claim: {(time.perf_counter() - t0) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
