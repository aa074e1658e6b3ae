"""The lab: the plan's fleet and its backup locations, running inside one process.

`await Lab.start(DIR)` lays out DIR, starts a loopback SSH server per node (plus the DR
host), the nodes' kaldrix-node services, their health endpoints, an S3 endpoint and a
webhook sink, then writes DIR/site.toml for the console. Faults are injected with
`set_fault()` / `clear_fault()` or by editing DIR/faults.toml, which the lab re-reads.

DIR layout::

    site.toml  known_hosts  ssh_config  faults.toml  lab.env  s3-credentials  s3-config
    keys/       lab_client_ed25519(.pub), backup_YYYYMMDD.key        (0700 / 0600)
    backups/    the primary location
    state/      the console's journal, audit log and reports
    nodes/NAME/ each host's sandbox root (what / is on that host)
    lab/        the lab's own: bin/, hostkeys/, nodes/NAME/ (fault bin, flags), events.log
    notifications.jsonl   what the console posted to the Slack webhook
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import string
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import asyncssh

from kconsole.config.problems import did_you_mean
from kconsole.crypto.keys import keygen
from kconsole.errors import OperationFailed, UsageError
from kconsole.fsutil import atomic_write
from kconsole.lab import corrupt, labtool, sitefile, toolbox
from kconsole.lab.faults import (
    Fault,
    FaultSpecError,
    parse_fault,
    parse_faults,
    read_fault_file,
    split_spec,
    write_fault_file,
)
from kconsole.lab.host import LabContext, LabHost
from kconsole.lab.httpd import HttpServer, Request, Response
from kconsole.lab.s3 import BUCKET, S3Endpoint
from kconsole.lab.sandbox import DR_BACKUP_DIR, build_sandbox
from kconsole.lab.service import Init, Service
from kconsole.site import current_user

log = logging.getLogger("kconsole.lab")

BASE_FLEET: tuple[tuple[str, str], ...] = (
    ("bootstrap1", "bootstrap"),
    ("bootstrap2", "bootstrap"),
    ("bootstrap3", "bootstrap"),
    ("validator1", "validator"),
    ("validator2", "validator"),
    ("validator3", "validator"),
    ("api1", "api"),
    ("api2", "api"),
    ("api3", "api"),
)
"""The plan's nine nodes."""

DR_NODE = "backup-dr"
MAX_NODES = 1000
FAULT_POLL = 0.5
ONE_SHOT = ("crash", "wipe")
"""Faults that act once, when set: listed until the node's service is active again."""
WEBHOOK_PATH = "/services/KCONSOLE/LAB/WEBHOOK"


class LabError(OperationFailed):
    """The lab could not start or do what was asked."""


def fleet(nodes: int) -> list[tuple[str, str]]:
    """(name, group) of the fleet's nodes: the plan's nine, then validator4, validator5, ...

    Fewer than nine takes one of each role in turn (bootstrap1, validator1, api1, bootstrap2, ...).
    """
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}.")
    if nodes >= len(BASE_FLEET):
        return list(BASE_FLEET) + [
            (f"validator{i}", "validator") for i in range(4, nodes - len(BASE_FLEET) + 4)
        ]
    order = [BASE_FLEET[r * 3 + i] for i in range(3) for r in range(3)]
    chosen = set(order[:nodes])
    return [n for n in BASE_FLEET if n in chosen]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lab:
    """A running lab. Create with `await Lab.start(dir)`; end with `await lab.stop()`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.hosts: dict[str, LabHost] = {}
        self.s3: S3Endpoint | None = None
        self.faults: tuple[Fault, ...] = ()
        """The faults in force, in the order they were set."""
        self.damage: dict[tuple[str, ...], corrupt.Damage] = {}
        self._struck: dict[tuple[str, ...], int | None] = {}
        """One-shot faults applied: the pid of the service process they killed (or None)."""
        """Backups corrupted by `corrupt` faults, by fault identity."""
        self._corrupting: set[tuple[str, ...]] = set()
        self._init: Init | None = None
        self._webhook: HttpServer | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._fault_text: str | None = None
        self._stopped = False
        self._owns_pidfile = False
        self.started_in = 0.0
        """Seconds `start()` took."""
        self._shared_token = secrets.token_hex(4)

    # ------------------------------------------------------------------ paths

    @property
    def site_path(self) -> Path:
        """DIR/site.toml."""
        return self.dir / "site.toml"

    @property
    def known_hosts_path(self) -> Path:
        """DIR/known_hosts."""
        return self.dir / "known_hosts"

    @property
    def client_key_path(self) -> Path:
        """The SSH identity every node accepts (0600)."""
        return self.dir / "keys" / "lab_client_ed25519"

    @property
    def credentials_path(self) -> Path:
        """AWS shared-credentials file for the S3 endpoint (0600)."""
        return self.dir / "s3-credentials"

    @property
    def fault_file(self) -> Path:
        """DIR/faults.toml, the control file the running lab re-reads."""
        return self.dir / "faults.toml"

    @property
    def env_path(self) -> Path:
        """DIR/lab.env: `export` lines for a shell that runs kconsole against the lab."""
        return self.dir / "lab.env"

    @property
    def notifications_path(self) -> Path:
        """Where webhook posts are recorded, one JSON object per line."""
        return self.dir / "notifications.jsonl"

    @property
    def webhook_url(self) -> str:
        """The lab's Slack-style webhook sink."""
        port = self._webhook.port if self._webhook else 0
        return f"http://127.0.0.1:{port}{WEBHOOK_PATH}"

    def host(self, name: str) -> LabHost:
        """The host called `name`."""
        try:
            return self.hosts[name]
        except KeyError:
            raise UsageError(
                f'the lab has no node "{name}"{did_you_mean(name, self.hosts)}.'
            ) from None

    def environ(self) -> dict[str, str]:
        """Environment for a process that uses this lab (`kconsole` run from another shell)."""
        return {
            "KCONSOLE_SITE": str(self.site_path),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_path),
            "AWS_CONFIG_FILE": str(self.dir / "s3-config"),
            "AWS_PROFILE": "default",
            "AWS_EC2_METADATA_DISABLED": "true",
            "KCONSOLE_SLACK_WEBHOOK": self.webhook_url,
        }

    # ------------------------------------------------------------------ start / stop

    @classmethod
    async def start(cls, dir: Path | str, nodes: int = 9, faults: str = "") -> Lab:
        """Start a lab in `dir` (created if needed; an earlier lab's state is kept)."""
        lab = cls(Path(dir))
        t0 = time.monotonic()
        try:
            await lab._start(nodes, faults)
        except BaseException:
            await lab.stop()
            raise
        lab.started_in = time.monotonic() - t0
        lab._event(
            f"lab started in {lab.started_in:.2f}s: {len(lab.hosts)} hosts, site {lab.site_path}"
        )
        return lab

    async def __aenter__(self) -> Lab:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self, nodes: int, faults: str) -> None:
        wanted = parse_faults(faults)
        members = fleet(nodes)
        names = [n for n, _ in members] + [DR_NODE]
        for f in wanted:
            self._check_node(f, names)
        d = self.dir
        (d / "lab").mkdir(parents=True, exist_ok=True)
        self._claim()
        for sub, mode in (("keys", 0o700), ("backups", 0o750), ("state", 0o700), ("nodes", 0o755)):
            (d / sub).mkdir(exist_ok=True)
            os.chmod(d / sub, mode)
        client_key = self._client_key()
        self._backup_key()
        access_key, secret_key = self._credentials()
        self.s3 = S3Endpoint(access_key, secret_key)
        s3_started = asyncio.create_task(self.s3.start())
        try:
            bin_dir = d / "lab" / "bin"
            toolbox.install_tools(bin_dir)
            token = secrets.token_hex(16)
            self._init = Init(token, self._lookup_service)
            init_port = await self._init.start()
            self._webhook = HttpServer(self._webhook_request)
            await self._webhook.start()
            ctx = LabContext(
                dir=d,
                bin_dir=bin_dir,
                python=sys.executable,
                init_port=init_port,
                token=token,
                client_keys=asyncssh.import_authorized_keys(
                    client_key.export_public_key().decode()
                ),
            )
            created = time.time()
            peers = [n for n, _ in members]
            for name, group in [*members, (DR_NODE, "dr")]:
                root = d / "nodes" / name
                build_sandbox(root, name, (group,), peers, created)
                self.hosts[name] = LabHost(ctx, name, (group,), root, self._host_key(name))
            await asyncio.gather(*(h.start() for h in self.hosts.values()))
            results = await asyncio.gather(
                *(h.service.start() for h in self.hosts.values() if h.service)
            )
            failed = [r.stderr for r in results if r.rc]
            if failed:
                log.warning("%d kaldrix-node service(s) failed to start at boot", len(failed))
        finally:
            await s3_started
        self._write_client_files()
        await self._apply(wanted)
        self._fault_text = write_fault_file(self.fault_file, self.faults)
        self._watch = asyncio.create_task(self._watch_faults())

    def _claim(self) -> None:
        pid_file = self.dir / "lab" / "lab.pid"
        try:
            other = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            other = 0
        if other and other != os.getpid() and _pid_alive(other):
            raise LabError(f"a lab is already running in {self.dir} (pid {other}); stop it first.")
        pid_file.write_text(f"{os.getpid()}\n")
        self._owns_pidfile = True

    def _client_key(self) -> asyncssh.SSHKey:
        path = self.client_key_path
        if path.exists():
            try:
                return asyncssh.read_private_key(path)
            except (OSError, asyncssh.KeyImportError):
                log.warning("replacing unreadable lab client key %s", path)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="kconsole-lab")
        atomic_write(path, key.export_private_key("openssh"), mode=0o600)
        atomic_write(path.with_name(path.name + ".pub"), key.export_public_key(), mode=0o644)
        return key

    def _host_key(self, name: str) -> asyncssh.SSHKey:
        path = self.dir / "lab" / "hostkeys" / name
        if path.exists():
            with contextlib.suppress(OSError, asyncssh.KeyImportError):
                return asyncssh.read_private_key(path)
        key = asyncssh.generate_private_key("ssh-ed25519", comment=name)
        atomic_write(path, key.export_private_key("openssh"), mode=0o600)
        return key

    def _backup_key(self) -> str:
        keys = self.dir / "keys"
        existing = sorted(keys.glob("backup_*.key"))
        if existing:
            return existing[-1].name
        name = f"backup_{time.strftime('%Y%m%d', time.gmtime())}.key"
        keygen(keys / name)  # `openssl rand -hex 32` semantics, 0600, never overwrites
        return name

    def _credentials(self) -> tuple[str, str]:
        found = sitefile.read_credentials(self.credentials_path)
        if found:
            return found
        alphabet = string.ascii_uppercase + string.digits
        access = "AKIALAB" + "".join(secrets.choice(alphabet) for _ in range(13))
        secret = secrets.token_urlsafe(30)[:40]
        sitefile.write_text(
            self.credentials_path, sitefile.render_credentials(access, secret), mode=0o600
        )
        return access, secret

    def _write_client_files(self) -> None:
        assert self.s3 is not None
        d = self.dir
        user = current_user()
        fleet_hosts = list(self.hosts.values())
        sitefile.write_text(
            self.known_hosts_path,
            sitefile.render_known_hosts(
                (h.name, h.ssh_port, h.host_key.export_public_key().decode()) for h in fleet_hosts
            ),
        )
        sitefile.write_text(
            d / "ssh_config",
            sitefile.render_ssh_config(
                ((h.name, h.ssh_port) for h in fleet_hosts),
                user,
                self.client_key_path,
                self.known_hosts_path,
            ),
        )
        sitefile.write_text(d / "s3-config", "[default]\nregion = us-east-1\n")
        sitefile.write_text(self.env_path, sitefile.render_env(self.environ()), mode=0o600)
        dr = self.hosts[DR_NODE]
        text = sitefile.render_site(
            nodes=[
                sitefile.NodeEntry(
                    h.name,
                    h.groups,
                    h.ssh_port,
                    h.root,
                    h.health_url,
                    "sshd" if h.service is None else "kaldrix-node",
                )
                for h in fleet_hosts
            ],
            user=user,
            dr_node=dr.name,
            dr_port=dr.ssh_port,
            s3_endpoint=self.s3.endpoint_url,
            bucket=BUCKET,
            object_lock=self.s3.object_lock,
            current_key=self._current_key(),
            admins=[user],
            generated=labtool.now_iso(),
            # Labs in one process share moto's memory: each gets its own shared prefix.
            shared_prefix=f"kconsole-shared/{self._shared_token}",
        )
        sitefile.write_text(self.site_path, text)

    def _current_key(self) -> str:
        existing = sorted((self.dir / "keys").glob("backup_*.key"))
        return existing[-1].name if existing else ""

    async def stop(self) -> None:
        """Stop everything the lab started: services, commands, servers, moto. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.gather(*(h.close() for h in self.hosts.values()), return_exceptions=True)
        for server in (self._init, self._webhook):
            if server is not None:
                await server.close()
        if self.s3 is not None:
            with contextlib.suppress(Exception):
                await self.s3.close()
        if self._owns_pidfile:
            with contextlib.suppress(OSError):
                (self.dir / "lab" / "lab.pid").unlink()
        if self.hosts:
            self._event("lab stopped")

    # ------------------------------------------------------------------ services, webhook

    def _lookup_service(self, node: str) -> tuple[bool, Service | None]:
        host = self.hosts.get(node)
        return (host is not None, host.service if host else None)

    async def _webhook_request(self, req: Request) -> Response:
        if req.method != "POST":
            return Response(405, b"method not allowed\n", "text/plain")
        try:
            body: object = json.loads(req.body)
        except ValueError:
            body = req.body.decode("utf-8", "replace")
        record = {"time": labtool.now_iso(), "path": req.path, "body": body}
        with open(self.notifications_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return Response(200, b"ok", "text/plain")

    # ------------------------------------------------------------------ faults

    async def set_fault(self, spec: str | Fault | Iterable[str]) -> tuple[Fault, ...]:
        """Add faults (a spec such as "down=validator2,slow=api1:0.5"); returns those in force."""
        new = [spec] if isinstance(spec, Fault) else parse_faults(spec)
        for f in new:
            self._check_node(f, list(self.hosts))
        ids = {f.identity for f in new}
        await self._apply([f for f in self.faults if f.identity not in ids] + new, write=True)
        return self.faults

    async def clear_fault(self, spec: str | Fault | None = None) -> tuple[Fault, ...]:
        """Remove the faults matching `spec` ("down=validator2", "slow", ...) or, with None, all."""
        if spec is None:
            keep: list[Fault] = []
        else:
            patterns = (
                [spec]
                if isinstance(spec, Fault)
                else [parse_fault(p, pattern=True) for p in split_spec(spec)]
            )
            keep = [f for f in self.faults if not any(p.covers(f) for p in patterns)]
        await self._apply(keep, write=True)
        return self.faults

    def _check_node(self, fault: Fault, names: list[str]) -> None:
        node = fault.node
        if node and node not in names:
            raise FaultSpecError(
                f'fault "{fault}" names node "{node}"{did_you_mean(node, names)}, '
                f"which is not in this lab."
            )
        if fault.kind in ("fail", "diskfull") or not node:
            return
        if node == DR_NODE and fault.kind in ("crash", "wipe", "compromise"):
            raise FaultSpecError(f'fault "{fault}": {DR_NODE} runs no kaldrix-node.')

    async def _apply(self, wanted: list[Fault], write: bool = False) -> None:
        async with self._lock:
            old = {f.identity: f for f in self.faults}
            new = {f.identity: f for f in wanted}
            removed = [f for k, f in old.items() if new.get(k) != f]
            added = [f for k, f in new.items() if old.get(k) != f]
            self.faults = tuple(wanted)
            for f in removed:
                await self._undo(f)
            self._refresh()
            for f in added:
                await self._do(f)
            for f in removed:
                self._event(f"fault cleared: {f}")
            for f in added:
                self._event(f"fault set: {f}")
            if write:
                self._fault_text = write_fault_file(self.fault_file, self.faults)

    def _refresh(self) -> None:
        """Bring every link, disk flag and fault bin in line with the faults in force."""
        python = sys.executable
        for host in self.hosts.values():
            mine = [f for f in self.faults if f.node == host.name]
            was_closed = host.link.closed
            host.link.closed = any(f.kind in ("down", "partition") for f in mine)
            host.link.delay = max((f.seconds for f in mine if f.kind == "slow"), default=0.0)
            host.link.drop_after = min((f.bytes for f in mine if f.kind == "flaky"), default=None)
            if host.link.closed and not was_closed:
                host.drop_connections()
            host.disk_full = any(f.kind == "diskfull" for f in mine)
            flag = host.control / "diskfull"
            if host.disk_full:
                flag.touch()
            else:
                with contextlib.suppress(FileNotFoundError):
                    flag.unlink()
            scripts: dict[str, str] = {}
            if host.disk_full:
                for cmd in toolbox.DISKFULL_COMMANDS:
                    scripts[cmd] = toolbox.diskfull_command(cmd, host.ctx.bin_dir, python)
            for f in mine:
                if f.kind == "fail":
                    scripts[f.arg] = toolbox.failing_command(host.name, f.arg)
            toolbox.sync_fault_bin(host.fault_bin, scripts)
        if self.s3 is not None:
            s3f = next((f for f in self.faults if f.kind == "s3"), None)
            link = self.s3.link
            before = (link.closed, link.http_error, link.delay)
            link.closed = s3f is not None and s3f.target == "down"
            link.http_error = s3f is not None and s3f.target == "error"
            link.delay = s3f.seconds if s3f is not None and s3f.target == "slow" else 0.0
            if (link.closed, link.http_error, link.delay) != before:
                self.s3.drop_connections()

    async def _do(self, f: Fault) -> None:
        host = self.hosts.get(f.node)
        if f.kind in ONE_SHOT and host and host.service:
            self._struck[f.identity] = host.service.main_pid
        if f.kind in ("down", "crash") and host and host.service:
            host.service.crash()
        elif f.kind == "wipe" and host and host.service:
            host.service.crash()
            state = host.root / labtool.STATE_DIR
            for child in list(state.iterdir()) if state.is_dir() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        child.unlink()
        elif f.kind == "compromise" and host:
            _plant(host.root)
        elif f.kind == "corrupt":
            await self._try_corrupt(f)

    async def _undo(self, f: Fault) -> None:
        host = self.hosts.get(f.node)
        self._struck.pop(f.identity, None)
        if f.kind == "down" and host and host.service and host.service.enabled:
            reply = await host.service.start()  # the host boots; its service starts if it can
            if reply.rc:
                self._event(f"{host.name} booted but kaldrix-node failed to start")
        elif f.kind == "compromise" and host:
            _unplant(host.root)
        elif f.kind == "corrupt":
            damage = self.damage.pop(f.identity, None)
            if damage is not None:
                mended = await self._mend(damage)
                self._event(f"{'mended' if mended else 'could not mend'} {damage.describe()}")

    async def _try_corrupt(self, f: Fault) -> None:
        # The fault watcher retries pending corruptions while set_fault() may still be applying
        # this one in its thread: a second flip of the same byte would silently undo the first.
        if f.identity in self.damage or f.identity in self._corrupting:
            return
        self._corrupting.add(f.identity)
        try:
            damage = await asyncio.to_thread(self._corrupt_now, f)
        except Exception as exc:  # noqa: BLE001 - a lab fault must never take the lab down
            log.warning("fault %s: %s", f, exc)
            return
        finally:
            self._corrupting.discard(f.identity)
        if damage is not None:
            self.damage[f.identity] = damage
            self._event(f"fault {f}: {damage.describe()}")

    def _corrupt_now(self, f: Fault) -> corrupt.Damage | None:
        if f.arg == "cloud":
            assert self.s3 is not None
            client = self.s3.client(internal=True)
            key = corrupt.newest_object(client, BUCKET, f.target)
            return corrupt.flip_object(client, BUCKET, key) if key else None
        base = (
            self.dir / "backups" if f.arg == "primary" else self.hosts[DR_NODE].root / DR_BACKUP_DIR
        )
        path = corrupt.newest_file(base, f.target)
        return corrupt.flip_file(f.arg, path) if path else None

    async def _mend(self, damage: corrupt.Damage) -> bool:
        if damage.location == "cloud":
            assert self.s3 is not None
            s3 = self.s3
            return await asyncio.to_thread(
                lambda: corrupt.undo_object(s3.client(internal=True), BUCKET, damage)
            )
        return corrupt.undo_file(damage)

    async def _watch_faults(self) -> None:
        """Re-read DIR/faults.toml; retry corruptions still waiting for a backup to appear."""
        while True:
            await asyncio.sleep(FAULT_POLL)
            try:
                text: str | None = self.fault_file.read_text(encoding="utf-8")
            except OSError:
                text = None
            if text is not None and text != self._fault_text:
                self._fault_text = text
                try:
                    wanted = read_fault_file(self.fault_file)
                    for f in wanted:
                        self._check_node(f, list(self.hosts))
                    await self._apply(wanted)
                except UsageError as exc:
                    self._event(f"ignored {self.fault_file.name}: {exc}", logging.WARNING)
            for f in self.faults:
                if f.kind == "corrupt" and f.identity not in self.damage:
                    await self._try_corrupt(f)
            await self._retire_recovered()

    async def _retire_recovered(self) -> None:
        """Drop a one-shot fault (crash, wipe) once its node's kaldrix-node is active again
        in a process started after the fault: it did its damage when set, the node has been
        recovered, and `fault list` must no longer say otherwise."""
        async with self._lock:
            over = []
            for f in self.faults:
                host = self.hosts.get(f.node)
                service = host.service if host is not None else None
                if (
                    f.identity in self._struck
                    and service is not None
                    and service.state == "active"
                    and service.main_pid not in (None, self._struck[f.identity])
                ):
                    over.append(f)
            if not over:
                return
            for f in over:
                self._struck.pop(f.identity, None)
            self.faults = tuple(f for f in self.faults if f not in over)
            self._fault_text = write_fault_file(self.fault_file, self.faults)
        for f in over:
            self._event(f"fault over: {f} ({f.node}'s kaldrix-node is active again)")

    def _event(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, message)
        with (
            contextlib.suppress(OSError),
            open(self.dir / "lab" / "events.log", "a", encoding="utf-8") as fh,
        ):
            fh.write(f"{labtool.now_iso()} {message}\n")


def _plant(root: Path) -> None:
    """The `compromise` fault: an implant in the state directory and a foreign validator key."""
    implant = root / labtool.BACKDOOR
    implant.parent.mkdir(parents=True, exist_ok=True)
    implant.write_text(
        "#!/bin/sh\n# kconsole lab fault compromise: a planted implant\nexec sleep 3600\n"
    )
    os.chmod(implant, 0o755)
    path = root / labtool.KEYS_FILE
    with contextlib.suppress(OSError, ValueError):
        keys = json.loads(path.read_text())
        pub = secrets.token_hex(32)
        keys.setdefault("keys", []).append(
            {
                "id": f"kdxval1{pub[:20]}",
                "public": pub,
                "private": secrets.token_hex(64),
                "origin": "unknown",
            }
        )
        atomic_write(path, (json.dumps(keys, indent=2) + "\n").encode(), mode=0o600)


def _unplant(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root / labtool.BACKDOOR).unlink()
    path = root / labtool.KEYS_FILE
    with contextlib.suppress(OSError, ValueError):
        keys = json.loads(path.read_text())
        clean = [k for k in keys.get("keys", []) if k.get("origin") != "unknown"]
        if len(clean) != len(keys.get("keys", [])):
            keys["keys"] = clean
            atomic_write(path, (json.dumps(keys, indent=2) + "\n").encode(), mode=0o600)
