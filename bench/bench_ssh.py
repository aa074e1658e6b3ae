"""Benchmark: 200 short commands, 50 at a time, against a real OpenSSH sshd on loopback.

kconsole's SshTransport (one shared connection, channels capped per connection) against
OpenSSH-based fan-out in the same run: `parallel-ssh` (apt package `pssh`) if installed,
`xargs -P 50 ssh` over a ControlMaster connection, and `xargs -P 50 ssh` with a full
handshake per command. Prints a Markdown table; run from the repository root:

    python bench/bench_ssh.py [--commands 200] [--parallel 50] [--repeat 3]

Not a test: nothing here asserts a time. sshd's MaxStartups and MaxSessions are raised
for the run so that fan-out tools which open many connections are not throttled by
sshd's defaults (10 unauthenticated connections, 10 sessions per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kconsole.transport.ssh import SshTransport  # noqa: E402
from tests.sshd import SSHD, Sshd, start_sshd  # noqa: E402

COMMAND = "echo ok"


@dataclass
class Row:
    """One tool's measurement."""

    tool: str
    how: str
    times: list[float]
    failures: int = 0

    @property
    def wall(self) -> float:
        return statistics.median(self.times)


def _ssh_options(server: Sshd) -> list[str]:
    return [
        "-F", "/dev/null",
        "-i", str(server.client_key_path),
        "-o", f"UserKnownHostsFile={server.known_hosts_path}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "LogLevel=ERROR",
        "-p", str(server.port),
    ]  # fmt: skip


def bench_kconsole(server: Sshd, commands: int, parallel: int, channels: int) -> tuple[float, int]:
    """Wall time for `commands` runs through one SshTransport (fresh, so the handshake counts)."""
    site = server.site()
    site = replace(site, ssh=replace(site.ssh, max_channels=channels))

    async def main() -> tuple[float, int]:
        transport = SshTransport(site, use_ssh_config=False)
        node = site.nodes["node1"]
        gate = asyncio.Semaphore(parallel)

        async def one() -> bool | str:
            async with gate:
                result = await transport.run(node, COMMAND, timeout=60)
                return result.ok and result.stdout == b"ok\n" or repr(result)

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one() for _ in range(commands)), return_exceptions=True)
        wall = time.perf_counter() - started
        await transport.close()
        failed = [o for o in outcomes if o is not True]
        if failed:
            print(f"    kconsole failures, the first: {failed[0]!r}", file=sys.stderr)
        return wall, len(failed)

    return asyncio.run(main())


def bench_pssh(
    server: Sshd, commands: int, parallel: int, exe: str, workdir: Path
) -> tuple[float, int]:
    """Wall time for parallel-ssh with one host line per command (it connects once per line)."""
    hosts = workdir / "hosts"
    hosts.write_text(f"{server.user}@127.0.0.1:{server.port}\n" * commands)
    argv = [exe, "-h", str(hosts), "-p", str(parallel), "-t", "60", "-o", str(workdir / "out")]
    for option in _ssh_options(server)[:-2]:  # the port is in the host line
        argv += ["-X", option]
    argv.append(COMMAND)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - started
    failures = sum(1 for line in proc.stdout.splitlines() if "[SUCCESS]" not in line)
    return wall, failures if proc.returncode == 0 else max(failures, 1)


def bench_xargs(
    server: Sshd, commands: int, parallel: int, workdir: Path, master: bool
) -> tuple[float, int]:
    """Wall time for `xargs -P N ssh`, multiplexed over a ControlMaster or not."""
    options = _ssh_options(server)
    control = workdir / "cm.sock"
    master_proc: subprocess.Popen[bytes] | None = None
    if master:
        options += ["-o", f"ControlPath={control}", "-o", "ControlMaster=no"]
        # A foreground master (-N, no -f): a backgrounded or ControlPersist master of
        # OpenSSH 9.2 answered every session request with "Permission denied" here.
        master_proc = subprocess.Popen(
            ["ssh", *_ssh_options(server), "-o", f"ControlPath={control}", "-o", "ControlMaster=yes",
             "-N", f"{server.user}@127.0.0.1"],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        check = ["ssh", "-o", f"ControlPath={control}", "-O", "check", "127.0.0.1"]
        for _ in range(200):
            if subprocess.run(check, capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
    script = " ".join(
        shlex.quote(x) for x in ["ssh", *options, f"{server.user}@127.0.0.1", COMMAND]
    )
    argv = ["xargs", "-P", str(parallel), "-I{}", "sh", "-c", script]
    started = time.perf_counter()
    proc = subprocess.run(argv, input="x\n" * commands, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if master_proc is not None:
        master_proc.terminate()
        master_proc.wait(timeout=10)
    refused = proc.stderr.count("Master refused")
    if refused:
        print(f"    {refused} commands bypassed the ControlMaster", file=sys.stderr)
    failures = commands - proc.stdout.count("ok\n")
    return wall, failures


def measure(name: str, how: str, repeat: int, fn: Callable[[], tuple[float, int]]) -> Row:
    row = Row(name, how, [])
    for _ in range(repeat):
        wall, failures = fn()
        row.times.append(wall)
        row.failures += failures
    print(f"  {name} ({how}): {', '.join(f'{t:.2f}' for t in row.times)} s", file=sys.stderr)
    return row


def table(rows: list[Row], commands: int, parallel: int, repeat: int) -> str:
    base = rows[0].wall
    out = [
        f"{commands} × `{COMMAND}`, {parallel} at a time, OpenSSH sshd on loopback, "
        f"median of {repeat} runs ({os.cpu_count()} CPUs)",
        "",
        "| tool | how | wall time (s) | commands/s | failures | time vs kconsole |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        out.append(
            f"| {row.tool} | {row.how} | {row.wall:.2f} | {commands / row.wall:.0f} | "
            f"{row.failures} | {row.wall / base:.2f}× |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not SSHD.exists():
        print(f"{SSHD} is not installed (apt-get install openssh-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        workdir = Path(tmp)
        server = start_sshd(
            workdir / "sshd",
            extra={"MaxStartups": "200", "MaxSessions": "64", "LogLevel": "ERROR"},
        )
        try:
            n, p, r = args.commands, args.parallel, args.repeat
            rows = [
                measure("kconsole SshTransport", "1 connection, 8 channels (default)", r,
                        lambda: bench_kconsole(server, n, p, 8)),
                measure("kconsole SshTransport", f"1 connection, {min(p, 64)} channels", r,
                        lambda: bench_kconsole(server, n, p, min(p, 64))),
            ]  # fmt: skip
            pssh = shutil.which("parallel-ssh") or shutil.which("pssh")
            if pssh:
                rows.append(
                    measure("parallel-ssh", f"-p {p}, a connection per command", r,
                            lambda: bench_pssh(server, n, p, pssh, workdir))
                )  # fmt: skip
            else:
                print(
                    "parallel-ssh not installed (apt-get install pssh); skipping it",
                    file=sys.stderr,
                )
            rows.append(
                measure("OpenSSH ssh", f"xargs -P {p}, ControlMaster", r,
                        lambda: bench_xargs(server, n, p, workdir, master=True))
            )  # fmt: skip
            rows.append(
                measure("OpenSSH ssh", f"xargs -P {p}, a connection per command", r,
                        lambda: bench_xargs(server, n, p, workdir, master=False))
            )  # fmt: skip
        finally:
            server.stop()
    print(table(rows, args.commands, args.parallel, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
