"""Damage to a stored backup: one byte flipped in the newest matching object, and mended
again when the fault is cleared.

The lab does not know the console's backup layout (the manifest format is the console's
business), so it picks objects by name: a backup object is any file that is not hidden,
not a temporary file and not a manifest or checksum (`.json`, `.toml`, `.sha256`, ...),
whose path names the node (as a whole word: `validator1` does not match `validator10`) and,
if given, the backup kind (`blockchain-state`, or the plan's `blockchain/state`, `blockchain_state`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOT_BACKUPS = (
    ".json",
    ".toml",
    ".manifest",
    ".sha256",
    ".sha256sum",
    ".sig",
    ".asc",
    ".txt",
    ".md",
    ".tmp",
    ".part",
    ".partial",
    ".lock",
    ".log",
)


@dataclass(frozen=True)
class Damage:
    """One flipped byte, enough to undo it."""

    location: str
    path: str
    """A file path (primary, dr) or an object key (cloud)."""
    offset: int
    original: int

    def describe(self) -> str:
        """One line for logs and status."""
        return f"{self.location}:{self.path} byte {self.offset} flipped"


def is_backup_object(rel: str) -> bool:
    """True for names that look like backup payloads rather than manifests or temp files."""
    parts = rel.replace("\\", "/").split("/")
    if any(p.startswith(".") for p in parts):
        return False
    return not parts[-1].lower().endswith(NOT_BACKUPS)


def matches(rel: str, node: str, kind: str) -> bool:
    """True if the object's path names `node` (a whole word) and `kind` (any spelling)."""
    if node and not re.search(rf"(?<![A-Za-z0-9]){re.escape(node)}(?![0-9])", rel):
        return False
    if kind:
        spellings = {kind, kind.replace("-", "/"), kind.replace("-", "_"), kind.replace("-", "")}
        if not any(s in rel for s in spellings):
            return False
    return True


def _selector(target: str) -> tuple[str, str]:
    node, _, kind = target.partition(":")
    return node, kind


def newest_file(base: Path, target: str) -> Path | None:
    """The newest non-empty backup file under `base` matching `NODE[:KIND]`."""
    node, kind = _selector(target)
    best: tuple[int, str] | None = None
    best_path: Path | None = None
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            path = Path(dirpath) / fn
            rel = path.relative_to(base).as_posix()
            if not is_backup_object(rel) or not matches(rel, node, kind):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if st.st_size == 0:
                continue
            key = (st.st_mtime_ns, rel)
            if best is None or key > best:
                best, best_path = key, path
    return best_path


def flip_file(location: str, path: Path) -> Damage:
    """Flip the middle byte of `path` in place (its mtime is kept, as silent rot would)."""
    st = path.stat()
    offset = st.st_size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        original = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([original ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return Damage(location, str(path), offset, original)


def undo_file(damage: Damage) -> bool:
    """Put the byte back if the file is still there and still damaged."""
    path = Path(damage.path)
    try:
        st = path.stat()
        with open(path, "r+b") as fh:
            fh.seek(damage.offset)
            current = fh.read(1)
            if not current or current[0] != damage.original ^ 0xFF:
                return False
            fh.seek(damage.offset)
            fh.write(bytes([damage.original]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return True
    except OSError:
        return False


def newest_object(s3: Any, bucket: str, target: str) -> str | None:
    """The key of the newest non-empty backup object in the bucket matching `NODE[:KIND]`."""
    node, kind = _selector(target)
    best: tuple[Any, str] | None = None
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if obj.get("Size", 0) == 0 or not is_backup_object(key) or not matches(key, node, kind):
                continue
            cand = (obj["LastModified"], key)
            if best is None or cand > best:
                best = cand
    return best[1] if best else None


def flip_object(s3: Any, bucket: str, key: str) -> Damage:
    """Rewrite `key` with its middle byte flipped (a new version in a versioned bucket)."""
    head = s3.head_object(Bucket=bucket, Key=key)
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    offset = len(data) // 2
    original = data[offset]
    data[offset] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=head.get("Metadata", {}))
    return Damage("cloud", key, offset, original)


def undo_object(s3: Any, bucket: str, damage: Damage) -> bool:
    """Write the object back with the byte restored (if it still carries the damage)."""
    try:
        head = s3.head_object(Bucket=bucket, Key=damage.path)
        data = bytearray(s3.get_object(Bucket=bucket, Key=damage.path)["Body"].read())
    except Exception:  # noqa: BLE001 - gone or unreachable: nothing to mend
        return False
    if len(data) <= damage.offset or data[damage.offset] != damage.original ^ 0xFF:
        return False
    data[damage.offset] = damage.original
    s3.put_object(
        Bucket=bucket, Key=damage.path, Body=bytes(data), Metadata=head.get("Metadata", {})
    )
    return True
