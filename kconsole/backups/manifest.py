"""The manifest written beside every backup object, and the names both are stored under.

Layout in every location (keys are relative to the location's root)::

    <kind>/<node>/<id>.kdx              the encrypted backup (KDXENC v1)
    <kind>/<node>/<id>.kdx.json         its manifest

with `id = <node>_<kind>_<YYYYmmdd>T<HHMMSS>Z`. The plan's own files
(`blockchain_validator1_20241201_143000.tar.gz.enc`, legacy openssl format) are
recognised by name wherever they are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
import posixpath
import re
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kconsole.crypto.stream import MIN_CHUNK_LOG2, PREAMBLE_LEN, TAG_LEN
from kconsole.site import BACKUP_KINDS

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
    mac: str = ""
    """HMAC-SHA256 over every other field, keyed from the backup key (`sign_manifest`); empty
    in manifests written before manifests were signed."""

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


# -- trusting a manifest ------------------------------------------------------------------
#
# Anyone who can write to a backup location can write a manifest, without any key. Nothing a
# manifest says is used before `check_manifest` has held every field against what the site
# and the backup kind allow, and `authenticate_manifest` has checked its MAC.

KIND_PATHS: dict[str, tuple[str, ...]] = {
    "blockchain-state": ("var/lib/kaldrix",),
    "validator-keys": ("etc/kaldrix",),
    "transaction-logs": ("var/log/kaldrix",),
    "system-logs": ("var/log",),
    "full-system": ("etc/kaldrix", "var/lib/kaldrix", "var/log/kaldrix"),
    "archive": ("etc/kaldrix", "var/lib/kaldrix", "var/log/kaldrix"),
}
"""Where on a node each kind of backup may hold files (relative to the node's root): a
manifest path outside these is refused, at creation and at verification."""

ENCRYPTIONS = ("kdxenc-v1",)
COMPRESSIONS = ("gzip", "zstd")
CONTENTS = ("tar", "stream")
MAX_SIZE = 1 << 50
"""1 PiB: a size beyond it is not a backup of a node, it is a manifest lying."""
FUTURE_SKEW_S = 86_400.0
"""How far in the future `created` may be (a node's clock ahead of the console's)."""
_MAC_INFO = b"kconsole manifest v1"
_HEX = re.compile(r"^[0-9a-f]+$")


class ManifestRejected(ValueError):
    """A manifest that disagrees with the site, its kind, its location or its MAC; the message
    is one sentence naming the field."""

    def __init__(self, bid: str, field_name: str, why: str) -> None:
        super().__init__(f"the manifest of {bid} is refused: {field_name} {why}")
        self.field = field_name


def path_allowed(kind: str, path: str) -> str | None:
    """Why `path` may not be in a `kind` backup, or None when it may (relative, normalised,
    no `..`, inside the kind's directories)."""
    if not isinstance(path, str) or not path.strip("/"):
        return f"{path!r} is not a path"
    if any(c in path for c in "\x00\n\r"):
        return f"{path!r} holds a control character"
    rel = path.lstrip("/")
    if posixpath.normpath(rel) != rel.rstrip("/") or rel.startswith("..") or "/../" in rel:
        return f"{path!r} is not a plain path (it holds '..', '.' or '//')"
    allowed = KIND_PATHS.get(kind, ())
    if not any(rel == a or rel.startswith(a + "/") for a in allowed):
        return f"{path!r} is outside what a {kind} backup may hold ({', '.join('/' + a for a in allowed)})"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_manifest(
    m: Manifest,
    nodes: Collection[str],
    *,
    stored_at: Collection[str] = (),
    sizes: Collection[int] = (),
    now: datetime | None = None,
) -> None:
    """Raise ManifestRejected naming the first field of `m` the site does not allow.

    `nodes` are the site's node names; `stored_at` the keys the manifest was read from (each
    must be where a manifest of this id lives, so one can't be swapped in for another backup);
    `sizes` the listed sizes of its objects (each must be `ciphertext_size`); `now` the clock
    `created` is held against.
    """

    def bad(name: str, why: str) -> ManifestRejected:
        return ManifestRejected(str(m.id)[:120], name, why)

    parsed = parse_id(m.id) if isinstance(m.id, str) else None
    if parsed is None:
        raise bad("id", f"{str(m.id)[:80]!r} is not a backup id (node_kind_YYYYmmddTHHMMSSZ)")
    if m.kind not in BACKUP_KINDS:
        raise bad("kind", f"{str(m.kind)[:40]!r} is not a backup kind")
    if m.node not in nodes:
        raise bad("node", f"{str(m.node)[:40]!r} is not a node of this site")
    id_node, id_kind, id_created = parsed
    if (id_node, id_kind) != (m.node, m.kind):
        raise bad("id", f"names {id_node} {id_kind}, the manifest says {m.node} {m.kind}")
    try:
        created = parse_iso(m.created) if isinstance(m.created, str) else None
    except ValueError:
        created = None
    if created is None or created.tzinfo is None:
        raise bad("created", f"{str(m.created)[:40]!r} is not an RFC 3339 time")
    if created != id_created:
        raise bad("created", f"{m.created} is not the time in the id ({iso(id_created)})")
    if now is not None and (created - now).total_seconds() > FUTURE_SKEW_S:
        raise bad("created", f"{m.created} is in the future")
    for key in stored_at:
        if key != m.manifest_key():
            raise bad("id", f"belongs at {m.manifest_key()}, but the manifest was read from {key}")
    if m.encryption not in ENCRYPTIONS:
        raise bad("encryption", f"{str(m.encryption)[:40]!r} is not one kconsole writes")
    if m.compression not in COMPRESSIONS:
        raise bad("compression", f"{str(m.compression)[:40]!r} is not one kconsole writes")
    if m.content not in CONTENTS:
        raise bad("content", f"{str(m.content)[:40]!r} is neither tar nor stream")
    if not isinstance(m.key_id, str) or len(m.key_id) != 32 or not _HEX.match(m.key_id):
        raise bad("key_id", "is not 32 lowercase hex digits")
    for name in ("ciphertext_sha256", "plaintext_sha256"):
        value = getattr(m, name)
        if not isinstance(value, str) or len(value) != 64 or not _HEX.match(value):
            raise bad(name, "is not 64 lowercase hex digits")
    for name in ("ciphertext_size", "plaintext_size"):
        value = getattr(m, name)
        if not _is_int(value) or not 0 <= value <= MAX_SIZE:
            raise bad(name, f"{str(value)[:40]} is not a size between 0 and 1 PiB")
    overhead = m.ciphertext_size - m.plaintext_size
    most = PREAMBLE_LEN + TAG_LEN * (m.plaintext_size // (1 << MIN_CHUNK_LOG2) + 2)
    if not PREAMBLE_LEN <= overhead <= most:
        raise bad(
            "ciphertext_size",
            f"{m.ciphertext_size} cannot hold {m.plaintext_size} bytes of plaintext in KDXENC v1",
        )
    for size in sizes:
        if size != m.ciphertext_size:
            raise bad("ciphertext_size", f"{m.ciphertext_size} but a stored copy is {size} bytes")
    if not isinstance(m.paths, list) or (m.content == "tar" and not m.paths):
        raise bad("paths", "is not a list of the paths the backup holds")
    for p in m.paths:
        why = path_allowed(m.kind, p)
        if why is not None:
            raise bad("paths", why)
    if m.chain_height is not None and (not _is_int(m.chain_height) or m.chain_height < 0):
        raise bad("chain_height", f"{str(m.chain_height)[:40]} is not a block height")
    if not isinstance(m.extra, dict):
        raise bad("extra", "is not a table")
    if m.content == "tar" and "command" in m.extra:
        raise bad("extra", "names a command for a file archive")
    for name in ("run", "tool", "mac"):
        if not isinstance(getattr(m, name), str):
            raise bad(name, "is not text")
    if not _is_int(m.duration_s) and not isinstance(m.duration_s, float):
        raise bad("duration_s", "is not a number")


def _mac_body(m: Manifest) -> bytes:
    data = m.to_dict()
    data.pop("mac", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_mac(m: Manifest, master: bytes) -> str:
    """HMAC-SHA256 over every field but `mac`, keyed by HKDF from the backup key: only a holder
    of the key can write a manifest that passes, and it binds id, node, kind, paths and sizes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_INFO).derive(master)
    return hmac.new(mac_key, _mac_body(m), hashlib.sha256).hexdigest()


def recorded_copy(m: Manifest, location: str) -> dict[str, str]:
    """What `m` recorded about its copy in `location` as it was written (`extra.copies`: an
    S3 composite checksum); empty when it recorded nothing or something malformed."""
    copies = m.extra.get("copies")
    entry = copies.get(location) if isinstance(copies, dict) else None
    if not isinstance(entry, dict):
        return {}
    return {k: v for k, v in entry.items() if isinstance(k, str) and isinstance(v, str)}


def sign_manifest(m: Manifest, master: bytes) -> Manifest:
    """`m` with its `mac` set from the key it was encrypted with (the key's master bytes)."""
    return replace(m, mac=manifest_mac(m, master))


def authenticate_manifest(m: Manifest, find_master: Callable[[str], bytes | None]) -> bool:
    """True when `m` carries a MAC that its key confirms; False for an unsigned manifest (made
    before manifests were signed: trusted only as far as `check_manifest` goes). Raises
    ManifestRejected when the MAC is wrong or its key is not in the keyring."""
    if not m.mac:
        return False
    master = find_master(m.key_id)
    if master is None:
        raise ManifestRejected(
            m.id, "mac", f"cannot be checked: key {m.key_id} is not in the keyring"
        )
    if not hmac.compare_digest(m.mac, manifest_mac(m, master)):
        raise ManifestRejected(
            m.id, "mac", "does not match its fields: the manifest was changed or forged"
        )
    return True
