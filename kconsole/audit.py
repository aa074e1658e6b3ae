"""The audit log: append-only, hash-chained JSON Lines with an HMAC on every entry.

Each entry carries `seq`, the previous entry's hash, its own hash over its canonical
content, and an HMAC of that hash under a key kept beside the log (mode 0600). An edit,
deletion, reordering or insertion breaks the chain at the first affected entry. A torn
last line is a crash artefact (the entry was never committed) and is reported as such.

Secrets are never written: callers pass key ids, digests and names, not values.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kconsole.errors import UsageError
from kconsole.fsutil import atomic_write, locked

GENESIS = "0" * 64


def canonical(obj: dict[str, Any]) -> bytes:
    """Canonical serialisation: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def entry_hash(body: dict[str, Any]) -> str:
    """SHA-256 over 0x00 || canonical(entry without hash and mac)."""
    return hashlib.sha256(b"\x00" + canonical(body)).hexdigest()


class AuditLog:
    """The site's audit log under `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "audit.jsonl"
        self.key_path = state_dir / "audit.key"
        self.id_path = state_dir / "console.id"

    def console_id(self, create: bool = False) -> str | None:
        """This console's id (made on first use, kept beside the log): off-host checkpoints
        are filed under it, so consoles sharing backup locations each anchor their own log."""
        if not self.id_path.exists():
            if not create:
                return None
            with locked(self.id_path.with_name(".console.id.lock")):
                if not self.id_path.exists():
                    atomic_write(self.id_path, (secrets.token_hex(8) + "\n").encode(), 0o644)
        value = self.id_path.read_text().strip()
        if not value or not all(c in "0123456789abcdef" for c in value):
            raise UsageError(
                f"console id file {self.id_path} is not a hex id; the log cannot be anchored."
            )
        return value

    def _key(self, create: bool) -> bytes:
        if not self.key_path.exists():
            if not create:
                raise UsageError(
                    f"audit key {self.key_path} is missing; the log cannot be verified."
                )
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
        mode = self.key_path.stat().st_mode & 0o077
        if mode:
            raise UsageError(
                f"audit key {self.key_path} is readable by others (mode {oct(self.key_path.stat().st_mode & 0o777)}); "
                f"run chmod 600 {self.key_path}."
            )
        return bytes.fromhex(self.key_path.read_text().strip())

    def key(self) -> bytes:
        """The HMAC key (must exist and be private)."""
        return self._key(create=False)

    def append(
        self, actor: str, action: str, target: str = "", result: str = "ok", **detail: Any
    ) -> dict[str, Any]:
        """Append one entry under an exclusive lock; durable before returning."""
        key = self._key(create=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                prev_seq, prev_hash = self._tail(fh)
                body = {
                    "seq": prev_seq + 1,
                    "ts": datetime.now(UTC)
                    .isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
                    "actor": actor,
                    "action": action,
                    "target": target,
                    "result": result,
                    "detail": detail,
                    "prev": prev_hash,
                }
                digest = entry_hash(body)
                entry = {
                    **body,
                    "hash": digest,
                    "mac": hmac.new(key, digest.encode(), hashlib.sha256).hexdigest(),
                }
                fh.write(canonical(entry) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return entry

    @staticmethod
    def _tail(fh: Any) -> tuple[int, str]:
        """seq and hash of the last complete entry (a torn tail is cut off first)."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return 0, GENESIS
        window = min(size, 65536)
        while True:
            fh.seek(size - window)
            data = fh.read(window)
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n")
                if cut < 0 and window < size:
                    window = min(size, window * 2)
                    continue
                fh.truncate(size - window + cut + 1)
                size = size - window + cut + 1
                if size == 0:
                    return 0, GENESIS
                window = min(size, 65536)
                continue
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) < 2 and window < size:
                window = min(size, window * 2)
                continue
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])

    def read(self) -> list[dict[str, Any]]:
        """Every complete entry (for display; use verify() to trust them)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_bytes().split(b"\n"):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def verify(self) -> VerifyResult:
        """Check the whole chain; the first bad entry is named."""
        if not self.path.exists():
            return VerifyResult(True, 0, "the audit log is empty")
        key = self._key(create=False)
        raw = self.path.read_bytes()
        torn = bool(raw) and not raw.endswith(b"\n")
        lines = raw.split(b"\n")
        if torn or lines and lines[-1] == b"":
            lines = lines[:-1]
        prev_hash = GENESIS
        expected_seq = 1
        for lineno, line in enumerate(lines, start=1):
            where = f"entry {expected_seq} (line {lineno})"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                return VerifyResult(False, lineno, f"{where} is not valid JSON: the log was edited")
            if not isinstance(entry, dict) or canonical(entry) != line:
                return VerifyResult(
                    False, lineno, f"{where} is not in canonical form: the log was edited"
                )
            seq = entry.get("seq")
            if seq != expected_seq:
                what = (
                    "missing or reordered"
                    if isinstance(seq, int) and seq > expected_seq
                    else "duplicated, reordered or inserted"
                )
                return VerifyResult(
                    False, lineno, f"{where} has seq {seq}, expected {expected_seq}: entries {what}"
                )
            if entry.get("prev") != prev_hash:
                return VerifyResult(
                    False,
                    lineno,
                    f"{where} does not chain to the entry before it: "
                    "an entry was deleted, inserted or reordered",
                )
            body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
            digest = entry_hash(body)
            if entry.get("hash") != digest:
                return VerifyResult(
                    False, lineno, f"{where} does not match its hash: its content was edited"
                )
            mac = hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(str(entry.get("mac", "")), mac):
                return VerifyResult(
                    False, lineno, f"{where} has a bad HMAC: it was forged or the audit key changed"
                )
            prev_hash = digest
            expected_seq += 1
        count = expected_seq - 1
        if torn:
            return VerifyResult(
                True,
                count,
                f"{count} entries intact; the last line is torn "
                "(an entry interrupted by a crash, never committed)",
                torn=True,
            )
        return VerifyResult(True, count, f"{count} entries intact")


@dataclass
class VerifyResult:
    """Outcome of `audit verify`."""

    ok: bool
    position: int
    message: str
    torn: bool = False
