"""Key files, key ids and keyrings.

A key file is what the plan makes with `openssl rand -hex 32 > KEY`: 64 hex characters
and a newline. The same file serves two formats that read it differently:

* the native KDXENC format hex-decodes it into 32 key bytes (`Key.master`);
* the plan's legacy `openssl enc -pass file:KEY` uses the first line, as ASCII, as a
  password (`Key.openssl_password`), with openssl's exact quirks.

A key id names a key without revealing it, so a file can say which key it needs and a
keyring can find that key after rotation.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kconsole.errors import UsageError
from kconsole.fsutil import fsync_dir

KEY_ID_INFO = b"kdx key-id v1"
"""The HMAC message that turns a master key into its key id."""

KEY_ID_BYTES = 16
"""A key id is the first 16 bytes of the HMAC, shown as 32 hex characters."""

OPENSSL_PASS_MAX = 1023
"""openssl's `app_get_pass` reads with `BIO_gets(…, 1024)`: at most 1023 bytes."""

_MAX_KEY_FILE = 64 * 1024
"""Anything larger is not a key file; refusing it avoids reading a backup by mistake."""


def key_id_of(master: bytes) -> str:
    """The key id of a master key, as 32 lowercase hex characters."""
    return hmac.new(master, KEY_ID_INFO, hashlib.sha256).digest()[:KEY_ID_BYTES].hex()


class LegacyPassword(NamedTuple):
    """One password to try on a legacy openssl file, and how it was derived from the key file."""

    password: bytes
    note: str
    """Empty for openssl's exact reading; otherwise what was changed, for the operator."""


@dataclass(frozen=True)
class Key:
    """A loaded key file: the secret in both readings, its key id and where it came from."""

    master: bytes = field(repr=False)
    """Key bytes for the native format: 32 hex-decoded bytes, or the stripped first line."""
    openssl_password: bytes = field(repr=False)
    """Exactly the bytes `openssl enc -pass file:KEY` uses as the password."""
    key_id: str
    """HMAC-SHA256(master, "kdx key-id v1")[:16] as 32 hex characters."""
    path: Path | None = None
    """The key file, or None for a key built in memory."""
    mtime: float = 0.0
    """The key file's modification time: the newest key in a keyring is the current one."""

    @classmethod
    def from_bytes(cls, data: bytes, path: Path | None = None, mtime: float = 0.0) -> Key:
        """Parse the contents of a key file; `path` only names it in messages."""
        where = f"key file {path}" if path is not None else "key"
        first_line = data.split(b"\n", 1)[0]
        stripped = first_line.strip()
        if not stripped:
            raise UsageError(f"{where} is empty; make one with `kconsole crypto keygen -o FILE`")
        master = stripped
        if len(stripped) == 64:
            # A 64-hex-character line is the plan's `openssl rand -hex 32` key: use the 32
            # random bytes it spells, not the 64 ASCII characters.
            with contextlib.suppress(ValueError):
                master = bytes.fromhex(stripped.decode("ascii"))
        # openssl: BIO_gets(1024) then cut at the first "\n"; the result is a C string, so
        # a NUL ends it too. A "\r" before the "\n" is kept, which is why CRLF keys fail.
        password = data[:OPENSSL_PASS_MAX].split(b"\n", 1)[0].split(b"\0", 1)[0]
        return cls(
            master=master,
            openssl_password=password,
            key_id=key_id_of(master),
            path=path,
            mtime=mtime,
        )

    @property
    def key_id_bytes(self) -> bytes:
        """The key id as the 16 bytes stored in a KDXENC header."""
        return bytes.fromhex(self.key_id)

    @property
    def name(self) -> str:
        """How to name this key to the operator: its file, or its key id."""
        return str(self.path) if self.path is not None else f"key {self.key_id}"

    def legacy_password_candidates(self) -> list[LegacyPassword]:
        """Passwords to try on a legacy file: openssl's exact reading, then without a "\\r".

        A key file edited on Windows ends its line in "\\r\\n"; openssl keeps the "\\r" in
        the password, so a backup made before the edit needs it removed.
        """
        candidates = [LegacyPassword(self.openssl_password, "")]
        without_cr = self.openssl_password.rstrip(b"\r")
        if without_cr != self.openssl_password and without_cr:
            candidates.append(
                LegacyPassword(without_cr, "the key file's trailing carriage return was removed")
            )
        return candidates


def read_key_file(path: str | os.PathLike[str]) -> Key:
    """Load a key file, refusing one that anyone but its owner can read or write."""
    key_path = Path(path)
    try:
        fd = os.open(key_path, os.O_RDONLY)
    except FileNotFoundError:
        raise UsageError(f"key file {key_path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"key file {key_path} cannot be opened: {exc.strerror}") from None
    try:
        # Check the opened file, not the path, so a swap between check and read is harmless.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"key file {key_path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            how = "readable" if mode & 0o044 else "writable"
            raise UsageError(
                f"key file {key_path} is {how} by others (mode {mode:04o}); run chmod 600 {key_path}"
            )
        data = b""
        while len(data) <= _MAX_KEY_FILE and (more := os.read(fd, _MAX_KEY_FILE + 1)):
            data += more
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise UsageError(f"key file {key_path} is larger than 64 KiB, so it is not a key file")
    return Key.from_bytes(data, key_path, st.st_mtime)


def keygen(path: str | os.PathLike[str]) -> Key:
    """Write a new random key file (mode 0600, atomically) and return it; never overwrite."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        raise UsageError(f"key file {target} already exists; kconsole never overwrites a key")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (secrets.token_hex(32) + "\n").encode("ascii")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # link() fails if the name exists, unlike rename(): two keygens racing for one
        # name cannot silently replace a key that may already protect a backup.
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise UsageError(
                f"key file {target} already exists; kconsole never overwrites a key"
            ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(target.parent)
    return Key.from_bytes(data, target, target.stat().st_mtime)


class Keyring:
    """Every `*.key` file of a directory, found by key id; the newest is the current key."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """Load every `*.key` file in `directory`; each must be private (mode 0600)."""
        self.directory: Path | None = Path(directory)
        """Where the keys came from (None for a keyring built in memory)."""
        if not self.directory.is_dir():
            raise UsageError(f"keyring {self.directory} is not a directory")
        paths = sorted(p for p in self.directory.glob("*.key") if p.is_file())
        if not paths:
            raise UsageError(f"keyring {self.directory} has no *.key files")
        self._keys = self._index(read_key_file(p) for p in paths)

    @classmethod
    def from_keys(cls, keys: Iterable[Key]) -> Keyring:
        """A keyring of keys already loaded (tests, or keys from another store)."""
        ring = cls.__new__(cls)
        ring.directory = None
        ring._keys = cls._index(keys)
        if not ring._keys:
            raise UsageError("the keyring is empty")
        return ring

    @staticmethod
    def _index(keys: Iterable[Key]) -> dict[str, Key]:
        # Newest first, so iteration tries the current key first; a copy of the same key
        # under another name adds nothing.
        ordered = sorted(keys, key=lambda k: (k.mtime, k.name), reverse=True)
        index: dict[str, Key] = {}
        for key in ordered:
            index.setdefault(key.key_id, key)
        return index

    @property
    def name(self) -> str:
        """How to name this keyring to the operator."""
        return f"keyring {self.directory}" if self.directory is not None else "the keyring"

    def find(self, key_id: str | bytes) -> Key | None:
        """The key with this id (hex string or 16 bytes), or None."""
        wanted = key_id.hex() if isinstance(key_id, bytes) else key_id.lower()
        return self._keys.get(wanted)

    def current(self) -> Key:
        """The key new backups use: the newest file by mtime, then by name."""
        return next(iter(self._keys.values()))

    @property
    def key_ids(self) -> list[str]:
        """Every key id in the ring, current first."""
        return list(self._keys)

    def __iter__(self) -> Iterator[Key]:
        """The keys, current first."""
        return iter(self._keys.values())

    def __len__(self) -> int:
        """How many distinct keys the ring holds."""
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        """Whether a key id (hex string or bytes) is in the ring."""
        return isinstance(key_id, str | bytes) and self.find(key_id) is not None
