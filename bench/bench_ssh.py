"""Benchmark: kconsole's SSH transport against OpenSSH fan-out tools, real sshd on loopback.

Two cases, each tool timed in the same run, printed as Markdown tables:

- one host: 200 short commands, 50 at a time, to ONE OpenSSH sshd. kconsole's
  SshTransport (one shared connection, channels capped per connection) against
  `parallel-ssh` (apt package `pssh`) if installed, `xargs -P 50 ssh` over a ControlMaster
  connection, and `xargs -P 50 ssh` with a full handshake per command.
- the fleet (`--fleet N`): one command to each of N hosts, 50 at a time. The N hosts are
  N separate OpenSSH sshd processes on loopback ports (each with its own host key, one
  known_hosts file for all, one client key), so every tool makes N connections and N
  handshakes: kconsole's SshTransport (a fresh one, in this process: no interpreter start
  counted), `parallel-ssh -p 50`, and `xargs -P 50 ssh` (a connection per host; a
  ControlMaster makes no sense for one command per host).

Run from the repository root:

    python bench/bench_ssh.py [--commands 200] [--parallel 50] [--repeat 3] [--fleet 60,200]

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

import asyncssh  # noqa: E402

from kconsole.site import Node, Site, SshSettings  # noqa: E402
from kconsole.transport.ssh import SshTransport  # noqa: E402
from tests.sshd import (  # noqa: E402
    SSHD,
    Sshd,
    _wait_for_banner,
    free_port,
    known_hosts_line,
    local_user,
    sshd_config,
    start_sshd,
    write_private_key,
)

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


# -- the fleet: one command to each of N hosts ---------------------------------------


@dataclass
class Fleet:
    """N OpenSSH sshd processes on loopback, one client key and one known_hosts for all."""

    directory: Path
    ports: list[int]
    procs: list[subprocess.Popen[bytes]]
    client_key_path: Path
    known_hosts_path: Path
    user: str

    def site(self) -> Site:
        settings = SshSettings(
            user=self.user,
            identity=self.client_key_path,
            known_hosts=self.known_hosts_path,
            connect_timeout=30.0,
            keepalive=15.0,
            command_timeout=60.0,
        )
        nodes = {
            f"host{i + 1}": Node(name=f"host{i + 1}", host="127.0.0.1", port=port)
            for i, port in enumerate(self.ports)
        }
        return Site(
            path=self.directory / "site.toml",
            name="bench-fleet",
            state_dir=self.directory / "state",
            ssh=settings,
            nodes=nodes,
        )

    def options(self) -> list[str]:
        return [
            "-F", "/dev/null",
            "-i", str(self.client_key_path),
            "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def start_fleet(directory: Path, hosts: int) -> Fleet:
    """Start `hosts` sshd processes, each with its own host key and port."""
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = write_private_key(client_key, directory / "id_ed25519")
    authorized = directory / "authorized_keys"
    authorized.write_bytes(client_key.export_public_key())
    authorized.chmod(0o600)
    fleet = Fleet(directory, [], [], client_key_path, directory / "known_hosts", local_user())
    lines = []
    try:
        for i in range(hosts):
            d = directory / f"host{i + 1}"
            d.mkdir()
            host_key = asyncssh.generate_private_key("ssh-ed25519")
            write_private_key(host_key, d / "ssh_host_ed25519_key")
            (d / "authorized_keys").symlink_to(authorized)
            port = free_port()
            (d / "sshd_config").write_text(sshd_config(d, port, {"LogLevel": "ERROR"}))
            fleet.procs.append(
                subprocess.Popen(
                    [str(SSHD), "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
            fleet.ports.append(port)
            lines.append(known_hosts_line("127.0.0.1", port, host_key))
        fleet.known_hosts_path.write_text("".join(lines))
        deadline = time.monotonic() + 60
        for proc, port in zip(fleet.procs, fleet.ports, strict=True):
            if not _wait_for_banner(proc, port, deadline=deadline):
                raise SystemExit(f"bench: sshd on port {port} did not start")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def fleet_kconsole(fleet: Fleet, parallel: int) -> tuple[float, int]:
    """One command to each host through one fresh SshTransport, `parallel` at a time."""
    site = fleet.site()

    async def main() -> tuple[float, int]:
        transport = SshTransport(site, use_ssh_config=False)
        gate = asyncio.Semaphore(parallel)

        async def one(node: Node) -> bool | str:
            async with gate:
                _, result = await transport.timed_run(node, COMMAND, timeout=60)
                return result.ok and result.stdout == b"ok\n" or repr(result)

        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(one(n) for n in site.nodes.values()), return_exceptions=True
        )
        wall = time.perf_counter() - started
        await transport.close()
        failed = [o for o in outcomes if o is not True]
        if failed:
            print(f"    kconsole failures, the first: {failed[0]!r}", file=sys.stderr)
        return wall, len(failed)

    return asyncio.run(main())


def fleet_pssh(fleet: Fleet, parallel: int, exe: str, workdir: Path) -> tuple[float, int]:
    hosts = workdir / "fleet-hosts"
    hosts.write_text("".join(f"{fleet.user}@127.0.0.1:{port}\n" for port in fleet.ports))
    argv = [exe, "-h", str(hosts), "-p", str(parallel), "-t", "60"]
    for option in fleet.options():
        argv += ["-X", option]
    argv.append(COMMAND)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - started
    failures = sum(1 for line in proc.stdout.splitlines() if "[SUCCESS]" not in line)
    return wall, failures if proc.returncode == 0 else max(failures, 1)


def fleet_xargs(fleet: Fleet, parallel: int) -> tuple[float, int]:
    script = " ".join(shlex.quote(x) for x in ["ssh", *fleet.options()])
    script += f' -p "$1" {shlex.quote(fleet.user)}@127.0.0.1 {shlex.quote(COMMAND)}'
    argv = ["xargs", "-P", str(parallel), "-I{}", "sh", "-c", script, "_", "{}"]
    started = time.perf_counter()
    proc = subprocess.run(
        argv, input="".join(f"{p}\n" for p in fleet.ports), capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    return wall, len(fleet.ports) - proc.stdout.count("ok\n")


def fleet_table(rows: list[Row], hosts: int, parallel: int, repeat: int) -> str:
    base = rows[0].wall
    out = [
        f"one `{COMMAND}` to each of {hosts} hosts ({hosts} OpenSSH sshd processes on loopback "
        f"ports), {parallel} at a time, median of {repeat} runs ({os.cpu_count()} CPUs); "
        "kconsole timed inside this process (no interpreter start), the others as commands",
        "",
        "| tool | how | wall time (s) | hosts/s | failures | time vs kconsole |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        out.append(
            f"| {row.tool} | {row.how} | {row.wall:.2f} | {hosts / row.wall:.0f} | "
            f"{row.failures} | {row.wall / base:.2f}× |"
        )
    return "\n".join(out)


def bench_fleet(workdir: Path, hosts: int, parallel: int, repeat: int) -> str:
    fleet = start_fleet(workdir / f"fleet{hosts}", hosts)
    try:
        rows = [
            measure("kconsole SshTransport", f"a connection per host, {parallel} at a time",
                    repeat, lambda: fleet_kconsole(fleet, parallel)),
        ]  # fmt: skip
        pssh = shutil.which("parallel-ssh") or shutil.which("pssh")
        if pssh:
            rows.append(
                measure("parallel-ssh", f"-p {parallel}", repeat,
                        lambda: fleet_pssh(fleet, parallel, pssh, workdir))
            )  # fmt: skip
        rows.append(
            measure("OpenSSH ssh", f"xargs -P {parallel}, a connection per host", repeat,
                    lambda: fleet_xargs(fleet, parallel))
        )  # fmt: skip
    finally:
        fleet.stop()
    return fleet_table(rows, hosts, parallel, repeat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--fleet",
        default="60",
        metavar="N[,N...]",
        help="the fleet case's host counts (one command to each host); 0 skips it",
    )
    parser.add_argument("--only", choices=["one-host", "fleet"], help="run one case only")
    args = parser.parse_args()
    try:
        fleets = [int(n) for n in args.fleet.split(",") if n.strip() and int(n) > 0]
    except ValueError:
        parser.error("--fleet takes host counts, e.g. 60,200")
    if not SSHD.exists():
        print(f"{SSHD} is not installed (apt-get install openssh-server)", file=sys.stderr)
        return 2
    n, p, r = args.commands, args.parallel, args.repeat
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        workdir = Path(tmp)
        if args.only != "fleet":
            print(one_host(workdir, n, p, r), flush=True)
        if args.only != "one-host":
            for hosts in fleets:
                print(flush=True)
                print(bench_fleet(workdir, hosts, p, r), flush=True)
    return 0


def one_host(workdir: Path, n: int, p: int, r: int) -> str:
    """The one-host case: `n` commands to one sshd, `p` at a time, `r` runs per tool."""
    server = start_sshd(
        workdir / "sshd",
        extra={"MaxStartups": "200", "MaxSessions": "64", "LogLevel": "ERROR"},
    )
    try:
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
            print("parallel-ssh not installed (apt-get install pssh); skipping it", file=sys.stderr)
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
    return table(rows, n, p, r)


if __name__ == "__main__":
    raise SystemExit(main())
