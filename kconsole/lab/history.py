"""A backup history for the lab: several days of backups of every kind at the plan's
cadence, so the catalog, RPO ages, retention previews and verification have real
material the moment the lab is up.

Cadence (the plan's crontab; nodes as the shipped backup runbooks choose them):

    blockchain-state   every 5 min    bootstrap, validator, api   /var/lib/kaldrix/state
    validator-keys     every 15 min   validator                   /etc/kaldrix/validator_keys.json, /etc/kaldrix/tls
    transaction-logs   hourly         validator, api              /var/log/kaldrix/transactions
    system-logs        daily 02:00    all                         journalctl output (a stream, not a tar)
    full-system        Sunday 03:00   all                         /etc/kaldrix, /var/lib/kaldrix, /var/log/kaldrix
    archive            1st, 04:00     all                         same as full-system

Each kind goes back `days`, but never further than its tier's retention (what a prune
would remove is not written), and weekly and monthly kinds always get their latest run.

Assumptions about the console's backup format (kconsole/backups/manifest.py as of this
writing): objects at `<kind>/<node>/<id>.kdx`, KDXENC v1 with the site's current key,
manifest beside it at `<id>.kdx.json` (format kconsole-backup/1); a tar backup's
plaintext is the gzip stream of `tar -czf - <paths without leading />`, a command
backup's plaintext is its output gzipped once. History objects are marked
`run = "lab-history"` and `extra.synthetic = true`. Their payloads are small archives
(a few KB), not copies of the node: a chain state is a consistent one (a 1 KiB snapshot
and 20 linked blocks ending at the height the node had then), so a node restored from
history starts and advances, with less history behind it than the live node had.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kconsole.backups.manifest import (
    Manifest,
    backup_id,
    iso,
    manifest_key,
    object_key,
    sign_manifest,
)
from kconsole.crypto import Encryptor, Key, read_key_file
from kconsole.errors import UsageError
from kconsole.lab import labtool
from kconsole.site import Site

HISTORY_RUN = "lab-history"
STATE_PATHS = ("/var/lib/kaldrix/state",)
KEY_PATHS = ("/etc/kaldrix/validator_keys.json", "/etc/kaldrix/tls")
TX_PATHS = ("/var/log/kaldrix/transactions",)
FULL_PATHS = ("/etc/kaldrix", "/var/lib/kaldrix", "/var/log/kaldrix")
ALL_GROUPS = ("bootstrap", "validator", "api")
HISTORY_BLOCKS = 20
"""Blocks after the snapshot in a history backup's chain state."""
HISTORY_SNAPSHOT_BYTES = 1024
"""Size of a history backup's account snapshot (the live nodes' is 256 KiB)."""


@dataclass(frozen=True)
class Cadence:
    """When one kind of backup is made, of which nodes, of what."""

    kind: str
    groups: tuple[str, ...]
    paths: tuple[str, ...]
    every: int = 0
    """Seconds between runs (aligned to the epoch), or 0 for the calendar ones below."""
    daily_at: int | None = None
    weekly: bool = False
    monthly: bool = False
    command: str = ""


PLAN_CADENCE: tuple[Cadence, ...] = (
    Cadence("blockchain-state", ALL_GROUPS, STATE_PATHS, every=300),
    Cadence("validator-keys", ("validator",), KEY_PATHS, every=900),
    Cadence("transaction-logs", ("validator", "api"), TX_PATHS, every=3600),
    Cadence(
        "system-logs",
        ALL_GROUPS,
        ("/var/log/journal",),
        daily_at=2,
        command="journalctl --since '1 day ago'",
    ),
    Cadence("full-system", ALL_GROUPS, FULL_PATHS, daily_at=3, weekly=True),
    Cadence("archive", ALL_GROUPS, FULL_PATHS, daily_at=4, monthly=True),
)


@dataclass
class HistorySummary:
    """What `write_history` wrote: backups per kind, and where."""

    counts: dict[str, int]
    locations: tuple[str, ...]

    @property
    def total(self) -> int:
        """Backups written (each stored once per location)."""
        return sum(self.counts.values())


def run_times(c: Cadence, now: datetime, span: float) -> list[datetime]:
    """The times the plan's crontab would have run `c` in the `span` seconds before `now`."""
    start = now - timedelta(seconds=span)
    out: list[datetime] = []
    if c.every:
        t = int(now.timestamp()) // c.every * c.every
        while t >= start.timestamp():
            out.append(datetime.fromtimestamp(t, UTC))
            t -= c.every
        return sorted(out)
    day = now.replace(hour=c.daily_at or 0, minute=0, second=0, microsecond=0)
    if day > now:
        day -= timedelta(days=1)
    latest_only = c.weekly or c.monthly
    while day >= start or (latest_only and not out):
        if (not c.weekly or day.weekday() == 6) and (not c.monthly or day.day == 1):
            out.append(day)
        day -= timedelta(days=1)
        if day < now - timedelta(days=400):
            break
    return sorted(out)


def _tar_gz(files: dict[str, bytes], when: float) -> bytes:
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=int(when), compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(when)
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, int(when)
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def _payload(
    c: Cadence, node: str, role: str, when: datetime, height: int, rng: random.Random
) -> bytes:
    """The plaintext of one synthetic backup (gzip of a tar, or of a command's output)."""
    t = when.timestamp()
    stamp = labtool.now_iso(t)
    if c.command:
        lines = [
            f"{time.strftime('%b %d %H:%M:%S', time.gmtime(t - 86400 + i * 900))} {node} "
            f"kaldrix-node[{rng.randint(300, 9000)}]: imported block #{height - 172800 + i * 1800}"
            for i in range(96)
        ]
        return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=int(t))
    files: dict[str, bytes] = {}
    if c.kind in ("blockchain-state", "full-system", "archive"):
        # A small but consistent chain state (snapshot, linked blocks, index): it verifies
        # with `kaldrix-node verify-state`, and a node restored from it starts and advances.
        state, _ = labtool.state_files(
            t,
            seed=f"{labtool.NETWORK}|{int(t)}",
            base_height=height - HISTORY_BLOCKS,
            blocks=HISTORY_BLOCKS,
            snapshot_bytes=HISTORY_SNAPSHOT_BYTES,
            extra={"synthetic": True},
        )
        files.update({f"{labtool.STATE_DIR}/{name}": data for name, data in state.items()})
    if c.kind in ("validator-keys", "full-system", "archive"):
        keys = labtool.new_validator_keys(node, role)
        keys["created"] = stamp
        files["etc/kaldrix/validator_keys.json"] = json.dumps(keys, indent=2).encode()
        files["etc/kaldrix/tls/node.crt"] = (
            f"# synthetic certificate of {node} as of {stamp}\n".encode()
        )
    if c.kind in ("transaction-logs", "full-system", "archive"):
        day = time.strftime("%Y%m%d", time.gmtime(t))
        files[f"var/log/kaldrix/transactions/tx-{day}.log"] = "".join(
            labtool.tx_lines(node, height - i, t - i, 1, rng)[0] for i in range(30, 0, -1)
        ).encode()
    if c.kind in ("full-system", "archive"):
        files["etc/kaldrix/node.toml"] = f'name = "{node}"\nrole = "{role}"\n'.encode()
    return _tar_gz(files, t)


def _current_key(site: Site) -> Key:
    if site.keys_dir is None:
        raise UsageError(f"{site.path} has no [keys] dir; the history needs the site's backup key.")
    if site.current_key:
        return read_key_file(site.keys_dir / site.current_key)
    keys = sorted(site.keys_dir.glob("*.key"))
    if not keys:
        raise UsageError(f"no *.key file in {site.keys_dir}.")
    return read_key_file(keys[-1])


class _Sink:
    """Writes objects and manifests into one location (local paths or the bucket)."""

    def __init__(self, site: Site, name: str) -> None:
        loc = site.locations.get(name)
        if loc is None:
            raise UsageError(f'the site has no location "{name}".')
        self.name = name
        self.base: Path | None = None
        self.s3: Any = None
        self.bucket = loc.bucket
        self.prefix = loc.prefix.strip("/")
        self.lock_days = (loc.retention_days or 30) if loc.object_lock else 0
        if loc.type == "local":
            self.base = Path(loc.path)
        elif loc.type == "sftp":
            node = site.nodes.get(loc.node)
            if node is None or node.root in ("", "/"):
                raise UsageError(
                    f"location {name} is not a lab sandbox; history writes only to the lab's DR host."
                )
            self.base = Path(node.path(loc.path))
        else:
            import configparser

            import boto3

            creds: dict[str, str] = {}
            if loc.credentials_file:
                ini = configparser.ConfigParser()
                ini.read(loc.credentials_file)
                section = ini[loc.profile or "default"]
                creds = {
                    "aws_access_key_id": section["aws_access_key_id"],
                    "aws_secret_access_key": section["aws_secret_access_key"],
                }
            self.s3 = boto3.session.Session().client(
                "s3", endpoint_url=loc.endpoint_url or None, region_name=loc.region, **creds
            )

    def put(self, key: str, data: bytes, when: float) -> None:
        if self.base is not None:
            path = self.base / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.utime(tmp, (when, when))
            os.replace(tmp, path)
        else:
            full = f"{self.prefix}/{key}" if self.prefix else key
            extra: dict[str, Any] = {}
            if self.lock_days:
                # As the console stores them: immutable where the site requires it.
                extra = {
                    "ObjectLockMode": "COMPLIANCE",
                    "ChecksumAlgorithm": "SHA256",
                    "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=self.lock_days),
                }
            self.s3.put_object(Bucket=self.bucket, Key=full, Body=data, **extra)


def write_history(
    site: Site,
    days: float = 3,
    locations: Iterable[str] = ("primary", "dr"),
    kinds: Iterable[str] | None = None,
    now: datetime | None = None,
    seed: int = 0,
    max_per_series: int | None = None,
    stale: dict[str, float] | None = None,
) -> HistorySummary:
    """Write `days` of backups per kind at the plan's cadence into `locations` of the lab site.

    `max_per_series` keeps only the newest N runs of each (kind, node); `stale` maps a kind
    to seconds by which its newest backup is pushed back, so that tier is past its RPO.

    Blocking (file and S3 I/O): call it in a thread from async code. Re-running writes the
    same ids again (same times), replacing them.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    key = _current_key(site)
    chosen = set(kinds) if kinds is not None else None
    sinks = [_Sink(site, n) for n in locations]
    groups = site.groups()
    counts: dict[str, int] = {}
    rng = random.Random(seed)
    for c in PLAN_CADENCE:
        if chosen is not None and c.kind not in chosen:
            continue
        tier = site.tier_for_kind(c.kind)
        span = days * 86400
        if tier is not None and tier.retention:
            span = min(span, tier.retention)
        lag = timedelta(seconds=(stale or {}).get(c.kind, 0.0))
        times = run_times(c, now - lag, span)
        if max_per_series is not None:
            times = sorted(times, reverse=True)[:max_per_series]
        nodes = [n for g in c.groups for n in groups.get(g, [])]
        for node_name in nodes:
            node = site.nodes[node_name]
            role = node.groups[0] if node.groups else ""
            current = _height(node.root)
            for when in times:
                height = current - int((now - when).total_seconds() / labtool.BLOCK_INTERVAL)
                plain = _payload(c, node_name, role, when, height, rng)
                enc = Encryptor(key)
                cipher = enc.update(plain) + enc.finalize()
                result = enc.result
                assert result is not None
                bid = backup_id(node_name, c.kind, when)
                manifest = Manifest(
                    id=bid,
                    kind=c.kind,
                    node=node_name,
                    created=iso(when),
                    paths=list(c.paths),
                    key_id=result.key_id,
                    ciphertext_size=result.ciphertext_size,
                    ciphertext_sha256=result.ciphertext_sha256,
                    plaintext_size=result.plaintext_size,
                    plaintext_sha256=result.plaintext_sha256,
                    content="stream" if c.command else "tar",
                    chain_height=height if c.kind != "system-logs" else None,
                    run=HISTORY_RUN,
                    duration_s=round(rng.uniform(0.5, 4.0), 3),
                    tool="kconsole lab history",
                    extra={"synthetic": True, **({"command": c.command} if c.command else {})},
                )
                manifest = sign_manifest(manifest, key.master)
                t = when.timestamp()
                for sink in sinks:
                    sink.put(object_key(c.kind, node_name, bid), cipher, t)
                    sink.put(manifest_key(c.kind, node_name, bid), manifest.to_json(), t)
                counts[c.kind] = counts.get(c.kind, 0) + 1
    return HistorySummary(counts, tuple(s.name for s in sinks))


def _height(root: str) -> int:
    try:
        return int(labtool.read_index(Path(root))["height"])
    except (labtool.StateError, ValueError, TypeError):
        return labtool.BASE_HEIGHT + labtool.INITIAL_BLOCKS


def mirror_history(site: Site, source: str = "primary", dest: str = "cloud") -> int:
    """Copy the history objects of a local location to another (the same bytes, so every
    replica of a backup matches its manifest); returns how many files were copied."""
    loc = site.locations.get(source)
    if loc is None or loc.type != "local":
        raise UsageError(f"location {source} is not a local location to mirror from.")
    sink = _Sink(site, dest)
    base = Path(loc.path)
    copied = 0
    for path in sorted(base.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if not path.name.endswith((".kdx", ".kdx.json")):
            continue
        sink.put(path.relative_to(base).as_posix(), path.read_bytes(), path.stat().st_mtime)
        copied += 1
    return copied
