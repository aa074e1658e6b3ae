"""Benchmark: the backup catalog index over 100,000 backups (generated manifests) in a
local location, against the tools an operator would otherwise reach for.

Generates N manifests (default 100,000; six kinds over 60 nodes, spread over 90 days)
plus a small object beside each, then measures in the same run:

- baseline, shell: `find DIR -name '*.kdx.json' -print0 | xargs -0 cat | jq -c 'select(.kind == K)'`
  (when jq is installed): every manifest read and filtered once;
- baseline, Python: os.walk + json.load of every manifest into dicts, then a list
  comprehension per filter;
- kconsole: `build_catalog` cold (no manifest cache: list, read, join, statuses), warm
  (manifest cache present, as every refresh after the first in the console) and warm with
  the cache file to parse (as in a new process, or after another process rewrote it), then
  the index's filters:
  by kind, by node, by status, by kind and node, `latest_good` of every (kind, node),
  `freshness` and `rows`.

Prints a Markdown table of wall times (median of --repeat runs; the cold build and the
baselines read from the OS page cache, which generation has just filled). Run from the
repository root:

    python bench/bench_catalog.py [--backups 100000] [--repeat 3] [--keep DIR]

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kconsole.backups.catalog import Catalog, build_catalog  # noqa: E402
from kconsole.backups.manifest import Manifest, backup_id, iso, manifest_key, object_key  # noqa: E402
from kconsole.backups.stores import open_stores  # noqa: E402
from kconsole.runbook.coverage import expected_nodes  # noqa: E402
from kconsole.site import BACKUP_KINDS, Site, load_site  # noqa: E402

GROUPS = ("bootstrap", "validator", "api")
NODES = 60


def write_site(base: Path) -> Site:
    """A site with NODES nodes, one local location and the plan's tiers."""
    lines = ['[site]\nname = "bench"\nstate_dir = "state"\n']
    for i in range(NODES):
        group = GROUPS[i % 3]
        lines.append(
            f'[[nodes]]\nname = "{group}{i // 3 + 1}"\nhost = "127.0.0.1"\ngroups = ["{group}"]\n'
        )
    lines.append('[locations.primary]\ntype = "local"\npath = "backups"\n')
    lines.append(
        '[tiers.critical]\nrpo = "15m"\nrto = "1h"\nkinds = ["blockchain-state", "validator-keys"]\n'
        'retention = { blockchain-state = "24h", validator-keys = "90d" }\n'
    )
    lines.append(
        '[tiers.important]\nrpo = "1h"\nrto = "4h"\nkinds = ["transaction-logs"]\nretention = "30d"\n'
    )
    lines.append(
        '[tiers.standard]\nrpo = "24h"\nrto = "8h"\nkinds = ["system-logs"]\nretention = "7d"\n'
    )
    lines.append(
        '[tiers.full]\nrpo = "7d"\nrto = "8h"\nkinds = ["full-system", "archive"]\nretention = "365d"\n'
    )
    (base / "site.toml").write_text("\n".join(lines))
    return load_site(base / "site.toml")


def generate(site: Site, count: int, now: datetime) -> None:
    """`count` manifests and objects, written straight to disk (no encryption: only the catalog is measured)."""
    root = Path(site.locations["primary"].path)
    nodes = list(site.nodes)
    span = 90 * 86400
    made: set[str] = set()
    i = 0
    while len(made) < count:
        kind = BACKUP_KINDS[i % len(BACKUP_KINDS)]
        node = nodes[(i // len(BACKUP_KINDS)) % len(nodes)]
        created = (now - timedelta(seconds=(i * 7919) % span)).replace(microsecond=0)
        i += 1
        bid = backup_id(node, kind, created)
        if bid in made:
            continue
        made.add(bid)
        m = Manifest(
            id=bid,
            kind=kind,
            node=node,
            created=iso(created),
            paths=["/var/lib/kaldrix/state"],
            key_id="0123456789abcdef0123456789abcdef",
            ciphertext_size=1000 + i % 977,
            ciphertext_sha256=f"{i:064x}",
            plaintext_size=4000,
            plaintext_sha256=f"{i * 3:064x}",
            chain_height=1_000_000 + i,
            run="bench",
            duration_s=1.0 + i % 5,
            tool="bench",
        )
        obj = root / object_key(kind, node, bid)
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(b"KDXENC\x00\x01bench")
        (root / manifest_key(kind, node, bid)).write_bytes(m.to_json())


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall seconds of `repeat` calls, and the last result. The previous call's result
    is dropped before the clock starts, so no call is charged for freeing the one before."""
    times, result = [], None
    for _ in range(repeat):
        result = None
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def python_load(root: Path) -> list[dict[str, Any]]:
    """The plain-Python baseline: every manifest through json.load."""
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".kdx.json"):
                with open(os.path.join(dirpath, name), "rb") as fh:
                    out.append(json.load(fh))
    return out


def shell_filter(root: Path, kind: str) -> int:
    """The shell baseline: find | xargs cat | jq, counting the matches."""
    cmd = (
        f"find {root} -name '*.kdx.json' -print0 | xargs -0 cat | "
        f"jq -c 'select(.kind == \"{kind}\") | .id' | wc -l"
    )
    out = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backups", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="generate into (or reuse) this directory and keep it")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="kconsole-bench-catalog-"))
    base.mkdir(parents=True, exist_ok=True)
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    try:
        site = write_site(base)
        root = Path(site.locations["primary"].path)
        if not (root.exists() and any(root.iterdir())):
            t0 = time.perf_counter()
            generate(site, args.backups, now)
            print(
                f"generated {args.backups} manifests + objects in {time.perf_counter() - t0:.1f}s under {root}",
                file=sys.stderr,
            )
        stores = open_stores(site, None)
        rows: list[tuple[str, str, float, str]] = []
        kind, node = "blockchain-state", "validator7"

        if shutil.which("jq"):
            t, n = timed(lambda: shell_filter(root, kind), args.repeat)
            rows.append(
                (
                    "baseline",
                    "find \\| xargs cat \\| jq select(kind), every manifest",
                    t,
                    f"{n} matches",
                )
            )
        t, docs = timed(lambda: python_load(root), args.repeat)
        rows.append(
            ("baseline", "os.walk + json.load of every manifest", t, f"{len(docs)} manifests")
        )
        loaded: list[dict[str, Any]] = docs
        t, n = timed(lambda: sum(1 for d in loaded if d["kind"] == kind), args.repeat)
        rows.append(
            ("baseline", "list comprehension on the loaded dicts, by kind", t, f"{n} matches")
        )
        docs = (
            loaded
        ) = []  # kconsole is measured without the baseline's 100,000 dicts alive beside it

        cache = site.state_dir / "catalog-cache.json"

        def cold() -> Catalog:
            cache.unlink(missing_ok=True)
            return asyncio.run(build_catalog(site, stores, now=now))

        t, catalog = timed(cold, args.repeat)
        built = len(catalog.backups)
        assert built == args.backups, built
        del catalog  # one catalog alive at a time, as in the console
        rows.append(("kconsole", "build_catalog, cold (no manifest cache)", t, f"{built} backups"))
        t, catalog = timed(lambda: asyncio.run(build_catalog(site, stores, now=now)), args.repeat)
        rows.append(
            (
                "kconsole",
                "build_catalog, warm (manifest cache)",
                t,
                f"cache {cache.stat().st_size / 1e6:.0f} MB",
            )
        )
        del catalog

        def reparsed() -> Catalog:
            os.utime(cache)  # as if another process had rewritten it: parsed again
            return asyncio.run(build_catalog(site, stores, now=now))

        t, catalog = timed(reparsed, args.repeat)
        rows.append(
            (
                "kconsole",
                "build_catalog, warm, cache file parsed (new process)",
                t,
                f"{len(catalog.backups)} backups",
            )
        )

        def fresh_index() -> Catalog:
            c = Catalog(catalog.backups, catalog.as_of, catalog.errors, catalog.locations)
            c.groups()
            return c

        t, catalog = timed(fresh_index, args.repeat)
        rows.append(
            (
                "kconsole",
                "index (by id, by kind+node) built on first use",
                t,
                f"{len(catalog.groups())} groups",
            )
        )
        filters: list[tuple[str, Callable[[], Any]]] = [
            (f"select(kind={kind})", lambda: catalog.select(kind=kind)),
            (f"select(node={node})", lambda: catalog.select(node=node)),
            ("select(status=stale)", lambda: catalog.select(status="stale")),
            ("select(kind, node)", lambda: catalog.select(kind=kind, node=node)),
            (
                "find(id)",
                lambda: [
                    catalog.find(catalog.backups[i].id)
                    for i in range(0, len(catalog.backups), 1000)
                ],
            ),
            (
                "latest_good of every (kind, node)",
                lambda: [catalog.latest_good(k, n) for k, n in catalog.groups()],
            ),
            (
                "freshness(site) (tiers x kinds x nodes)",
                lambda: catalog.freshness(site, {}, expected=expected_nodes(site)),
            ),
            (f"rows(kind={kind}) (the --json lines)", lambda: catalog.rows(kind=kind)),
        ]
        for name, fn in filters:
            t, got = timed(fn, max(args.repeat, 5))
            rows.append(("kconsole", name, t, f"{len(got)} results"))

        print(
            f"\n{args.backups} backups, {NODES} nodes, {len(BACKUP_KINDS)} kinds, one local location "
            f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n"
        )
        print("| side | operation | wall (median) | result |")
        print("| --- | --- | ---: | --- |")
        for side, what, secs, note in rows:
            shown = f"{secs * 1000:.1f} ms" if secs < 1 else f"{secs:.2f} s"
            print(f"| {side} | {what} | {shown} | {note} |")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
