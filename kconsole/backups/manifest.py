"""The manifest written beside every backup object, and the names both are stored under.

Layout in every location (keys are relative to the location's root)::

    <kind>/<node>/<id>.kdx              the encrypted backup (KDXENC v1)
    <kind>/<node>/<id>.kdx.json         its manifest

with `id = <node>_<kind>_<YYYYmmdd>T<HHMMSS>Z`. The plan's own files
(`blockchain_validator1_20241201_143000.tar.gz.enc`, legacy openssl format) are
recognised by name wherever they are.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

FORMAT = "kconsole-backup/1"
OBJECT_SUFFIX = ".kdx"
MANIFEST_SUFFIX = ".kdx.json"

_ID = re.compile(r"^(?P<node>[A-Za-z0-9._-]+?)_(?P<kind>[a-z-]+)_(?P<ts>\d{8}T\d{6}Z)$")
LEGACY_PREFIXES = {
    "blockchain": "blockchain-state",
    "validator_keys": "validator-keys",
    "transactions": "transaction-logs",
    "system_logs": "system-logs",
    "full_system": "full-system",
    "archive": "archive",
}
_LEGACY = re.compile(
    r"^(?P<prefix>blockchain|validator_keys|transactions|system_logs|full_system|archive)_"
    r"(?P<node>[A-Za-z0-9.-]+)_(?P<ts>\d{8}_\d{6})\.tar\.gz\.enc$"
)


def backup_id(node: str, kind: str, created: datetime) -> str:
    """The id of a backup: `validator1_blockchain-state_20261126T031500Z`."""
    return f"{node}_{kind}_{created.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def object_key(kind: str, node: str, bid: str) -> str:
    """Where the encrypted object lives inside a location."""
    return f"{kind}/{node}/{bid}{OBJECT_SUFFIX}"


def manifest_key(kind: str, node: str, bid: str) -> str:
    """Where the manifest lives inside a location."""
    return f"{kind}/{node}/{bid}{MANIFEST_SUFFIX}"


def parse_id(bid: str) -> tuple[str, str, datetime] | None:
    """(node, kind, created) of a native id, or None."""
    m = _ID.match(bid)
    if not m:
        return None
    return m["node"], m["kind"], datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def parse_legacy_name(name: str) -> tuple[str, str, datetime] | None:
    """(node, kind, created) of a plan-made file name, or None."""
    m = _LEGACY.match(name)
    if not m:
        return None
    created = datetime.strptime(m["ts"], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    return m["node"], LEGACY_PREFIXES[m["prefix"]], created


def iso(t: datetime) -> str:
    """RFC 3339 UTC, seconds."""
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Inverse of iso()."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Manifest:
    """What a backup is, written when it was made; the catalog and verify trust it."""

    id: str
    kind: str
    node: str
    created: str
    paths: list[str]
    key_id: str
    ciphertext_size: int
    ciphertext_sha256: str
    plaintext_size: int
    plaintext_sha256: str
    encryption: str = "kdxenc-v1"
    compression: str = "gzip"
    content: str = "tar"
    chain_height: int | None = None
    run: str = ""
    duration_s: float = 0.0
    tool: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def created_at(self) -> datetime:
        """`created` as a datetime."""
        return parse_iso(self.created)

    def object_key(self) -> str:
        """The object's key inside a location."""
        return object_key(self.kind, self.node, self.id)

    def manifest_key(self) -> str:
        """The manifest's key inside a location."""
        return manifest_key(self.kind, self.node, self.id)

    def to_json(self) -> bytes:
        """Serialised form (stable key order)."""
        data = {"format": FORMAT, **asdict(self)}
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """The manifest as the JSON object it is stored as (with its `format`)."""
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse; ValueError with a reason when it is not a kconsole manifest."""
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build from a parsed manifest object; ValueError when it is not a kconsole manifest."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a kconsole backup manifest")
        if data.keys() == _KEYS:
            # Every field and nothing else, as `to_json` writes it: passed by position, which
            # costs a third of matching 18 keywords (the catalog reads 100,000 of these).
            return cls(*_field_values(data))
        try:
            return cls(**{k: v for k, v in data.items() if k in _FIELDS})
        except TypeError as exc:
            raise ValueError(f"incomplete manifest ({exc})") from None


_FIELDS = frozenset(Manifest.__dataclass_fields__)
_KEYS = _FIELDS | {"format"}
"""The keys of a complete manifest as stored."""
_field_values = operator.itemgetter(*Manifest.__dataclass_fields__)
"""A stored manifest's values in field order."""
