"""Benchmark: what sharing runs through the site's S3 location adds to a step transition.

Starts the lab (`kconsole lab serve`, 3 nodes; its moto S3 answers one request at a time)
and measures, on its site:

- `RunJournal.write` (fsynced) without and with the shared copy attached;
- `StreamMirror.push` alone: all a step ever waits for (queue the record, return);
- how long until a record written alone is in the store (one PUT, off the step's path);
- a burst of back-to-back records: how they batch and when the last one is stored;
- the lease at a run's start (taken in the background) and the close (drain + release).

    python bench/bench_shared.py [--records 300]

Not a test: nothing here asserts a time. The machine is shared, so medians swing between
runs; compare the two journal lines of one run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kconsole.journal import RunJournal, iso, new_run_id
from kconsole.lablauncher import read_env_file
from kconsole.shared.mirror import StreamMirror
from kconsole.shared.runs import share_new_run
from kconsole.shared.store import SharedStore
from kconsole.site import load_site
from tests.lablive import live_lab


def _record(i: int) -> dict[str, Any]:
    return {
        "type": "step",
        "run": "bench",
        "step": f"s{i}",
        "node": None,
        "event": "started",
        "time": iso(datetime.now(UTC)),
    }


def _ms(xs: list[float]) -> str:
    p95 = sorted(xs)[int(len(xs) * 0.95)]
    return f"median {statistics.median(xs) * 1e3:.3f} ms, p95 {p95 * 1e3:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300)
    n = parser.parse_args().records
    with live_lab(Path(tempfile.mkdtemp(prefix="bench-shared-")), nodes=3) as lab:
        os.environ.update(read_env_file(lab.dir / "lab.env"))
        site = load_site(lab.site)
        store = SharedStore.for_site(site)
        assert store is not None, "the lab's site.toml sets [site] shared"
        store.names("runs", delimiter="/")  # build the client once, as a console has

        plain = RunJournal.create(site.state_dir, new_run_id(), "bench")
        alone = []
        for i in range(n):
            t = time.perf_counter()
            plain.write(_record(i))
            alone.append(time.perf_counter() - t)
        plain.close()

        journal = RunJournal.create(site.state_dir, new_run_id(), "bench")
        t = time.perf_counter()
        share_new_run(site, journal, "bench", "bench")
        start_s = time.perf_counter() - t
        mirror = journal.mirror.mirror
        shared, visible = [], []
        for i in range(n):
            t = time.perf_counter()
            journal.write(_record(i))
            shared.append(time.perf_counter() - t)
            while mirror.sent < i + 1:
                time.sleep(0.0005)
            visible.append(time.perf_counter() - t)
        batches = mirror.next_batch
        t = time.perf_counter()
        for i in range(n):
            journal.write(_record(i))
        burst_write = time.perf_counter() - t
        while mirror.pending:
            time.sleep(0.001)
        burst_stored = time.perf_counter() - t
        burst_batches = mirror.next_batch - batches
        puts = list(mirror.timings)
        t = time.perf_counter()
        journal.close()
        close_s = time.perf_counter() - t

        queue = StreamMirror(store, f"runs/bench-push-{new_run_id()}", next_batch=1)
        pushes = []
        for i in range(n):
            record = _record(i)
            t = time.perf_counter()
            queue.push(record)
            pushes.append(time.perf_counter() - t)
        queue.close()

    print(f"journal.write, no shared store:      {_ms(alone)}")
    print(f"journal.write, shared store:         {_ms(shared)}")
    print(f"StreamMirror.push alone:             median {statistics.median(pushes) * 1e6:.1f} us")
    print(f"record alone in the store after:     {_ms(visible)}")
    print(f"one batch PUT (If-None-Match):       {_ms(puts)}")
    print(
        f"burst of {n}: written in {burst_write * 1e3:.0f} ms, all stored after "
        f"{burst_stored * 1e3:.0f} ms, in {burst_batches} batches"
    )
    print(f"run start (lease in background): {start_s * 1e3:.1f} ms; close: {close_s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
