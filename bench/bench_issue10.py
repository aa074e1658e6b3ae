"""Real sizes, real fleets: kconsole against the tools an operator already has, same run.

Usage (from the repository root):

    python bench/bench_issue10.py [--state-size 1G] [--fleets 60,200] [--repeat 3] [--repeat-big 1]
                                  [--only backup,recovery,status,version,crypto]

Each row runs kconsole and its peer side by side on the same lab, round robin, and the
table shows the best and median wall time of each and the ratio of the medians
(kconsole / peer: below 1.00x kconsole is faster):

- backup: a runbook that makes one backup of validator1's chain state (grown to
  --state-size with `python -m kconsole.lab grow`) into the lab's three locations and
  verifies it (backup.create + backup.verify as the shipped backup runbooks do), against
  the plan's pipeline `ssh NODE tar -czf - STATE | gzip | openssl enc -aes-256-cbc` into
  one local file, and against the same with `tar | zstd -1` on the node;
- recovery: the shipped recover-single-node runbook (--yes) from that backup, against
  the plan's manual restore (stop, `openssl enc -d | gunzip | ssh NODE tar -xzf -`, start);
- status: `kconsole status` on a lab of N nodes (health URLs first, SSH only where a
  node's health URL does not answer 200: in a healthy lab no node is reached over SSH),
  against `parallel-ssh -p 50` running `systemctl is-active` on every node (or
  `xargs -P 50 ssh` without it) and against `curl` of every health URL (xargs -P 50);
  and `kconsole status --ssh` (the service checked over SSH on every node, the health URL
  read alongside) against the same parallel-ssh;
- version: `kconsole --version` against `python -c pass`;
- crypto: `kconsole crypto encrypt` (the whole CLI; its output fsynced) against
  `openssl enc -aes-256-cbc` (not fsynced) on 512 MiB of random data.

Not a test: nothing here asserts a time. The machine may be shared: the table says
nothing about load, so note it beside any figure you publish.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kconsole.lablauncher import read_env_file  # noqa: E402

STATE = "var/lib/kaldrix/state"
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {
    "PYTHONPATH": str(REPO)
}
"""Bytecode is cached as in an installed package: otherwise every run compiles every module."""


@dataclass
class Row:
    """One row of the table: kconsole and its peer, timed in the same run."""

    what: str
    ours: str
    peer: str
    ours_s: list[float] = field(default_factory=list)
    peer_s: list[float] = field(default_factory=list)

    def line(self) -> str:
        mo, mp = statistics.median(self.ours_s), statistics.median(self.peer_s)
        return (
            f"| {self.what} | {self.ours} | {min(self.ours_s):.2f} / {mo:.2f} | {self.peer} "
            f"| {min(self.peer_s):.2f} / {mp:.2f} | {mo / mp:.2f}x |"
        )


def sh(cmd: str, env: dict[str, str] | None = None, check: bool = True) -> float:
    """Run `cmd` in bash (pipefail) and return its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        env=env or ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    took = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise SystemExit(f"bench: `{cmd[:200]}` failed ({proc.returncode}): {proc.stderr[-800:]}")
    if proc.returncode != 0:
        # A status run exits 1 when a node is down: timed all the same, but said, since a
        # fast failure is not a fast poll.
        print(
            f"bench: note: `{cmd[:120]}` exited {proc.returncode}: {proc.stderr.strip()[-300:]}",
            file=sys.stderr,
        )
    return took


@contextmanager
def lab(directory: Path, nodes: int) -> Iterator[dict[str, str]]:
    """`kconsole lab serve` in a child process; yields the environment of its lab.env."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kconsole.lab", "serve", "--dir", str(directory)]
        + ["--nodes", str(nodes)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"bench: the lab did not start ({line!r})")
        yield {**ENV, **read_env_file(directory / "lab.env")}
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def kconsole(directory: Path, *args: str) -> str:
    return " ".join(
        shlex.quote(a)
        for a in [sys.executable, "-m", "kconsole", "--site", str(directory / "site.toml"), *args]
    )


def key_file(directory: Path) -> Path:
    site = tomllib.loads((directory / "site.toml").read_text())
    keys = Path(site.get("keys", {}).get("dir", directory / "keys"))
    keys = keys if keys.is_absolute() else directory / keys
    return sorted(keys.glob("backup_*.key"))[-1]


def timed(repeat: int, row: Row, ours: Callable[[], float], peer: Callable[[], float]) -> Row:
    for _ in range(repeat):
        row.ours_s.append(ours())
        row.peer_s.append(peer())
    print(row.line(), flush=True)
    return row


BACKUP_RUNBOOK = """
[runbook]
id = "bench-backup"
title = "Back up validator1's chain state and verify it"
rto = "1h"

[[steps]]
id = "backup"
action = "backup.create"
node = "validator1"
kind = "blockchain-state"
paths = ["/var/lib/kaldrix/state"]
timeout = "1h"

[[steps]]
id = "verify"
action = "backup.verify"
needs = ["backup"]
node = "validator1"
backup = "latest"
kind = "blockchain-state"
content = "once"
timeout = "1h"
"""


def bench_backup_recovery(
    work: Path, size: str, repeat: int, rows: list[Row], only: set[str]
) -> None:
    d = work / "lab9"
    with lab(d, 9) as env:
        subprocess.run(
            [sys.executable, "-m", "kconsole.lab", "grow", "--dir", str(d), "validator1", size],
            env=ENV,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ssh = f"ssh -F {shlex.quote(str(d / 'ssh_config'))}"
        key = key_file(d)
        rb = work / "bench-backup.toml"
        rb.write_text(BACKUP_RUNBOOK)
        peer_file = work / "plan.tar.gz.enc"
        enc = f"openssl enc -aes-256-cbc -salt -pass file:{shlex.quote(str(key))}"
        plan = (
            f"{ssh} validator1 'tar -czf - {STATE}; [ $? -le 1 ]' | gzip | {enc} -out {peer_file}"
        )
        zstd = f"{ssh} validator1 'tar -cf - {STATE} | zstd -1 -q' | {enc} -out {work / 'z.enc'}"
        if "backup" in only:
            ours = kconsole(d, "run", str(rb), "--yes")
            timed(
                repeat,
                rows_add(
                    rows,
                    "backup, " + size + " chain state (create + verify)",
                    "runbook: create, verify",
                    "the plan's `ssh tar -czf | gzip | openssl enc`",
                ),
                lambda: sh(ours, env),
                lambda: sh(plan, env),
            )
            timed(
                repeat,
                rows_add(
                    rows, "same", "runbook: create, verify", "`ssh tar | zstd -1 | openssl enc`"
                ),
                lambda: sh(ours, env),
                lambda: sh(zstd, env),
            )
        if "recovery" in only:
            if not peer_file.exists():
                sh(plan, env)
            if "backup" not in only:
                sh(kconsole(d, "run", str(rb), "--yes"), env)
            ours = kconsole(
                d,
                "run",
                "recover-single-node",
                "--param",
                "node=validator1",
                "--param",
                "backup=latest",
                "--yes",
            )
            manual = (
                f"{ssh} validator1 'systemctl stop kaldrix-node' && "
                f"openssl enc -d -aes-256-cbc -pass file:{shlex.quote(str(key))} -in {peer_file} "
                f"| gunzip | {ssh} validator1 'rm -rf {STATE} && tar -xzf -' && "
                f"{ssh} validator1 'systemctl start kaldrix-node'"
            )
            timed(
                repeat,
                rows_add(
                    rows,
                    "recovery of that backup",
                    "recover-single-node runbook",
                    "the plan's manual restore (stop, decrypt, gunzip, ssh tar -xzf, start)",
                ),
                lambda: sh(ours, env),
                lambda: sh(manual, env),
            )


def rows_add(rows: list[Row], what: str, ours: str, peer: str) -> Row:
    rows.append(Row(what, ours, peer))
    return rows[-1]


def bench_status(work: Path, nodes: int, repeat: int, rows: list[Row]) -> None:
    d = work / f"lab{nodes}"
    with lab(d, nodes) as env:
        site = tomllib.loads((d / "site.toml").read_text())
        names = [n["name"] for n in site["nodes"]]
        urls = [n["health_url"] for n in site["nodes"] if n.get("health_url")]
        hosts = work / f"hosts{nodes}"
        hosts.write_text("".join(f"{n}\n" for n in names))
        cfg = shlex.quote(str(d / "ssh_config"))
        pssh = shutil.which("parallel-ssh")
        if pssh:
            peer = f"{pssh} -h {hosts} -p 50 -x '-F {cfg}' -t 60 'systemctl is-active kaldrix-node'"
            label = "parallel-ssh -p 50"
        else:
            peer = (
                f"xargs -P 50 -I{{}} ssh -F {cfg} {{}} systemctl is-active kaldrix-node < {hosts}"
            )
            label = "OpenSSH ssh, xargs -P 50 (parallel-ssh not installed)"
        ours = kconsole(d, "status")
        sh(ours, env, check=False)  # warm the page cache and the lab's first answers
        timed(
            repeat,
            rows_add(rows, f"status, {len(names)} nodes", "`kconsole status`", label),
            lambda: sh(ours, env, check=False),
            lambda: sh(peer, env, check=False),
        )
        ours_ssh = kconsole(d, "status", "--ssh")
        timed(
            repeat,
            rows_add(rows, "same", "`kconsole status --ssh`", label),
            lambda: sh(ours_ssh, env, check=False),
            lambda: sh(peer, env, check=False),
        )
        curls = work / f"urls{nodes}"
        curls.write_text("".join(f"{u}\n" for u in urls))
        curl = f"xargs -P 50 -n 1 curl -s -o /dev/null < {curls}"
        timed(
            repeat,
            rows_add(rows, "same", "`kconsole status`", "curl of every health URL, xargs -P 50"),
            lambda: sh(ours, env, check=False),
            lambda: sh(curl, env, check=False),
        )


def bench_version(repeat: int, rows: list[Row]) -> None:
    ours = f"{shlex.quote(sys.executable)} -m kconsole --version"
    peer = f"{shlex.quote(sys.executable)} -c pass"
    row = rows_add(
        rows, "`kconsole --version`", "`python -m kconsole --version`", "`python -c pass`"
    )
    for _ in range(max(repeat, 15)):
        row.ours_s.append(sh(ours))
        row.peer_s.append(sh(peer))
    print(
        row.line(),
        f"(difference of medians {1000 * (statistics.median(row.ours_s) - statistics.median(row.peer_s)):.0f} ms)",
        flush=True,
    )


def bench_crypto_cli(work: Path, repeat: int, rows: list[Row]) -> None:
    """`kconsole crypto encrypt` as an operator runs it (the whole CLI, output fsynced and
    renamed into place) against `openssl enc -aes-256-cbc` (no fsync), 512 MiB of random data."""
    data = work / "random-512m"
    with data.open("wb") as fh:
        for _ in range(512):
            fh.write(os.urandom(1 << 20))
    key = work / "crypto.key"
    sh(f"{shlex.quote(sys.executable)} -m kconsole crypto keygen -o {key}")
    ours = f"rm -f {work}/o1 && {shlex.quote(sys.executable)} -m kconsole crypto encrypt --key {key} {data} -o {work}/o1"
    peer = f"rm -f {work}/o2 && openssl enc -aes-256-cbc -salt -pass file:{key} -in {data} -out {work}/o2"
    row = rows_add(
        rows, "encrypt 512 MiB", "`kconsole crypto encrypt`", "`openssl enc -aes-256-cbc`"
    )
    timed(max(repeat, 4), row, lambda: sh(ours), lambda: sh(peer))


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--state-size", default="1G")
    p.add_argument("--fleets", default="60,200")
    p.add_argument("--repeat", type=int, default=3, help="runs per side for status and version")
    p.add_argument(
        "--repeat-big", type=int, default=1, help="runs per side for backup and recovery"
    )
    p.add_argument("--only", default="backup,recovery,status,version,crypto")
    p.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: a temporary one)"
    )
    args = p.parse_args()
    only = set(args.only.split(","))
    rows: list[Row] = []
    print("| row | kconsole | best / median (s) | peer | best / median (s) | kconsole / peer |")
    print("| --- | --- | ---: | --- | ---: | ---: |", flush=True)
    with tempfile.TemporaryDirectory(prefix="kconsole-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        if "version" in only:
            bench_version(args.repeat, rows)
        if "crypto" in only:
            bench_crypto_cli(work, args.repeat, rows)
        if only & {"backup", "recovery"}:
            bench_backup_recovery(work, args.state_size, args.repeat_big, rows, only)
        if "status" in only:
            for n in (int(x) for x in args.fleets.split(",") if x):
                bench_status(work, n, args.repeat, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
