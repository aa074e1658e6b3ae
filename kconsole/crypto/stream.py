"""KDXENC v1: kconsole's chunked, authenticated encryption for backups (STREAM over AES-256-GCM).

Layout (docs/encryption.md has the full table): an 80-byte header (magic, version,
algorithm, chunk size, key id, salt), a 32-byte HMAC of it, then chunks of
`2**chunk_log2` plaintext bytes, each sealed with AES-256-GCM under a per-file key and the
nonce `counter (11 bytes, big-endian) || last-chunk flag`. So any flipped bit, cut,
reordering, appended byte or wrong key shows, and memory use does not grow with the file.

Decrypted chunks are authentic one by one, but the *file* is only complete once the final
chunk verifies: `decrypt_file` writes to a temporary file and renames it only then.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kconsole.crypto.errors import (
    HeaderTamperedError,
    NotKdxFileError,
    ReorderedChunkError,
    TamperedError,
    TrailingDataError,
    TruncatedError,
    UnknownKeyError,
    UnsupportedFormatError,
    WrongKeyError,
    os_errors_as_failure,
)
from kconsole.crypto.keys import Key, Keyring
from kconsole.errors import UsageError
from kconsole.fsutil import atomic_writer

MAGIC = b"KDXENC\x00"
"""The first 7 bytes of every KDXENC file."""
VERSION = 1
"""The format version this module writes and reads (byte 7)."""
ALG_AES_256_GCM = 1
"""Algorithm byte for AES-256-GCM, the only one written."""
DEFAULT_CHUNK_LOG2 = 16
"""64 KiB chunks: AES-GCM runs at full speed from 64 KiB up, and a lost chunk costs little."""
MIN_CHUNK_LOG2 = 12
"""4 KiB: smaller chunks only add per-chunk overhead."""
MAX_CHUNK_LOG2 = 22
"""4 MiB: larger chunks run slower (cache) and a hostile header could make us allocate more."""

HEADER_LEN = 80
MAC_LEN = 32
PREAMBLE_LEN = HEADER_LEN + MAC_LEN
"""Header plus its MAC: the first chunk starts at byte 112."""
TAG_LEN = 16
SALT_LEN = 32

_HEADER = struct.Struct(">7sBBBH16s32s20x")
_HEADER_INFO = b"kdx/v1 header"
_PAYLOAD_INFO = b"kdx/v1 payload"

# How much AEAD work the failure diagnosis may spend (bytes fed to GCM), so that naming a
# reordered chunk or appended bytes costs well under a second and never hangs a run.
_DIAGNOSIS_BUDGET = 1 << 31
_REORDER_REACH = 4096
"""How many chunks before and after its place a misplaced chunk is looked for."""
_PREFIX_SEARCH_LIMIT = (1 << 16) + 16
"""Largest chunk in which an early end (appended junk) is searched for: the default size."""


@dataclass(frozen=True)
class Header:
    """The KDXENC header as read from a file; authenticated only once a key checks its MAC."""

    version: int
    alg: int
    chunk_log2: int
    reserved: int
    key_id: str
    """The id of the key the file needs, 32 hex characters."""
    salt: bytes = field(repr=False)
    raw: bytes = field(repr=False)
    """The 80 header bytes the MAC covers."""
    mac: bytes = field(repr=False)

    @property
    def chunk_size(self) -> int:
        """Plaintext bytes per chunk."""
        return 1 << self.chunk_log2


@dataclass(frozen=True)
class EncryptResult:
    """What an encryption produced: sizes and SHA-256 of both sides, for the catalog."""

    plaintext_sha256: str
    ciphertext_sha256: str
    plaintext_size: int
    ciphertext_size: int
    key_id: str


@dataclass(frozen=True)
class DecryptResult:
    """What a verified decryption produced: sizes and SHA-256 of both sides."""

    plaintext_sha256: str
    ciphertext_sha256: str
    plaintext_size: int
    ciphertext_size: int
    key_id: str


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _hkdf(master: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(master)


def _header_mac(master: bytes, salt: bytes, raw_header: bytes) -> bytes:
    return hmac.new(_hkdf(master, salt, _HEADER_INFO), raw_header, hashlib.sha256).digest()


def _check_chunk_log2(chunk_log2: int) -> None:
    if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
        raise UsageError(
            f"chunk size 2**{chunk_log2} is outside 2**{MIN_CHUNK_LOG2}..2**{MAX_CHUNK_LOG2}"
        )


def parse_header(data: bytes, name: str = "input") -> Header:
    """Parse the first 112 bytes of a KDXENC file (fewer if the file is shorter)."""
    if not data:
        raise NotKdxFileError(f"{name} is empty, not a kconsole encrypted file")
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise NotKdxFileError(f"{name} is not a kconsole encrypted file (no KDXENC header)")
    if len(data) < PREAMBLE_LEN:
        raise TruncatedError(
            f"{name} ends inside its {PREAMBLE_LEN}-byte header after {len(data)} bytes"
        )
    _, version, alg, chunk_log2, reserved, key_id, salt = _HEADER.unpack(data[:HEADER_LEN])
    if version != VERSION:
        raise UnsupportedFormatError(
            f"{name} is KDXENC version {version}; this kconsole reads version {VERSION}"
        )
    return Header(
        version=version,
        alg=alg,
        chunk_log2=chunk_log2,
        reserved=reserved,
        key_id=key_id.hex(),
        salt=salt,
        raw=bytes(data[:HEADER_LEN]),
        mac=bytes(data[HEADER_LEN:PREAMBLE_LEN]),
    )


def read_header(src: BinaryIO | str | os.PathLike[str], name: str | None = None) -> Header:
    """Read a file's header (from a stream or a path) to learn its key id; no key needed."""
    if isinstance(src, str | os.PathLike):
        with open_input(src) as fh:
            return parse_header(read_exact(fh, PREAMBLE_LEN), name or str(src))
    return parse_header(read_exact(src, PREAMBLE_LEN), name or "input")


def _mac_ok(master: bytes, header: Header, raw: bytes) -> bool:
    return hmac.compare_digest(_header_mac(master, header.salt, raw), header.mac)


def _with_key_id(header: Header, key: Key) -> bytes:
    return header.raw[:12] + key.key_id_bytes + header.raw[28:]


def _unlock(header: Header, keys: Key | Keyring, name: str) -> tuple[Key, AESGCM]:
    """Find the key, check the header MAC and the fields it covers; return the payload AEAD."""
    candidates = [keys] if isinstance(keys, Key) else list(keys)
    key = keys.find(header.key_id) if isinstance(keys, Keyring) else keys
    if key is None or key.key_id != header.key_id:
        # If some key authenticates the header once its own id is put back, the key is
        # right and only the key-id field was edited: that is tampering, not a wrong key.
        for other in candidates:
            if _mac_ok(other.master, header, _with_key_id(header, other)):
                raise HeaderTamperedError(
                    f"the key id in the header of {name} was edited (the file was made with "
                    f"key {other.key_id})"
                )
        if isinstance(keys, Key):
            raise WrongKeyError(
                f"wrong key: {name} needs key id {header.key_id}, but {keys.name} has key id "
                f"{keys.key_id}"
            )
        raise UnknownKeyError(
            f"{name} needs key id {header.key_id}, which is not in {keys.name} "
            f"(it holds {', '.join(keys.key_ids)})"
        )
    if not _mac_ok(key.master, header, header.raw):
        raise HeaderTamperedError(
            f"the header of {name} fails its MAC under its own key {key.key_id}: it was edited"
        )
    # Only now are these fields trustworthy; a file from a newer kconsole may use them.
    if header.alg != ALG_AES_256_GCM:
        raise UnsupportedFormatError(
            f"{name} uses algorithm {header.alg}, which this kconsole lacks"
        )
    if not MIN_CHUNK_LOG2 <= header.chunk_log2 <= MAX_CHUNK_LOG2:
        raise UnsupportedFormatError(f"{name} uses chunk size 2**{header.chunk_log2}")
    if header.reserved or any(header.raw[60:]):
        raise UnsupportedFormatError(f"{name} sets header fields this kconsole does not know")
    return key, AESGCM(_hkdf(key.master, header.salt, _PAYLOAD_INFO))


def _new_preamble(key: Key, chunk_log2: int) -> tuple[bytes, AESGCM]:
    _check_chunk_log2(chunk_log2)
    salt = os.urandom(SALT_LEN)
    raw = _HEADER.pack(MAGIC, VERSION, ALG_AES_256_GCM, chunk_log2, 0, key.key_id_bytes, salt)
    preamble = raw + _header_mac(key.master, salt, raw)
    return preamble, AESGCM(_hkdf(key.master, salt, _PAYLOAD_INFO))


class _ChunkSealer:
    """Seals chunks in order, counting them for the nonce."""

    def __init__(self, aead: AESGCM) -> None:
        self._aead = aead
        self.counter = 0

    def seal_into(self, pt: memoryview | bytes, out: memoryview, last: bool) -> int:
        n = len(pt) + TAG_LEN
        self._aead.encrypt_into(_nonce(self.counter, last), pt, None, out[:n])
        self.counter += 1
        return n

    def seal(self, pt: memoryview | bytes, last: bool) -> bytes:
        ct = self._aead.encrypt(_nonce(self.counter, last), pt, None)
        self.counter += 1
        return ct


class _ChunkOpener:
    """Opens chunks in order; when one fails, works out why before raising."""

    def __init__(self, aead: AESGCM, chunk_log2: int, name: str) -> None:
        self._aead = aead
        self._ct_chunk = (1 << chunk_log2) + TAG_LEN
        self._name = name
        self.counter = 0

    def open_into(self, ct: memoryview | bytes, out: memoryview, last: bool) -> int:
        n = len(ct) - TAG_LEN
        if n < 0 and not ct and self.counter == 0:
            raise TruncatedError(f"{self._name} has a header but no chunks: it was truncated")
        if n < 0:
            raise TruncatedError(
                f"{self._name} ends inside chunk {self.counter}, too short to hold its tag: "
                "it was truncated"
            )
        try:
            self._aead.decrypt_into(_nonce(self.counter, last), ct, None, out[:n])
        except InvalidTag:
            raise self._diagnose(bytes(ct), last) from None
        self.counter += 1
        return n

    def open(self, ct: memoryview | bytes, last: bool) -> bytes:
        out = bytearray(max(len(ct) - TAG_LEN, 0))
        n = self.open_into(ct, memoryview(out), last)
        return bytes(out[:n])

    def _opens(self, ct: bytes | memoryview, counter: int, last: bool) -> bool:
        try:
            self._aead.decrypt(_nonce(counter, last), ct, None)
        except InvalidTag:
            return False
        return True

    def _diagnose(self, ct: bytes, last: bool) -> Exception:
        """Why chunk `counter` failed: each answer is an exact re-authentication, not a guess."""
        i, name = self.counter, self._name
        if self._opens(ct, i, not last):
            if last:
                return TruncatedError(
                    f"{name} ends after chunk {i}, which is not its final chunk: it was truncated"
                )
            return TrailingDataError(f"{name} has data appended after its final chunk {i}")
        found = self._find_elsewhere(ct)
        if found is not None:
            return ReorderedChunkError(
                f"chunk {i} of {name} authenticates as chunk {found}: chunks were reordered "
                "or duplicated"
            )
        end = self._final_prefix(ct)
        if end is not None:
            return TrailingDataError(
                f"{name} has {len(ct) - end} bytes appended after its final chunk {i}"
            )
        if last and len(ct) < self._ct_chunk:
            return TruncatedError(
                f"{name} ends inside chunk {i}, which does not authenticate: it was truncated "
                "(or its last bytes were altered)"
            )
        return TamperedError(
            f"chunk {i} of {name} fails authentication: the file was modified or corrupted"
        )

    def _find_elsewhere(self, ct: bytes) -> int | None:
        """The counter this chunk really has, searching outward from where it was found."""
        # Four tries per distance (before and after, either flag); a chunk moved further
        # than the budget allows is reported as plain tampering.
        distances = min(_REORDER_REACH, _DIAGNOSIS_BUDGET // (4 * max(len(ct), 1)))
        i = self.counter
        for distance in range(1, distances + 1):
            for j in (i - distance, i + distance):
                if j >= 0 and (self._opens(ct, j, False) or self._opens(ct, j, True)):
                    return j
        return None

    def _final_prefix(self, ct: bytes) -> int | None:
        """The length at which a final chunk ends inside `ct`, if junk was appended to it."""
        # Trying every split costs about len(ct)**2 / 2 bytes of GCM (0.2 s for a 64 KiB
        # chunk); for larger chunks the failure is reported without this detail.
        if len(ct) > _PREFIX_SEARCH_LIMIT:
            return None
        view = memoryview(ct)
        for end in range(TAG_LEN, min(len(ct), self._ct_chunk + 1)):
            if self._opens(view[:end], self.counter, True):
                return end
        return None


def read_exact(src: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, fewer only at end of file (pipes return short reads)."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        part = src.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _fill(src: BinaryIO, buf: memoryview) -> int:
    """Fill `buf` from `src`; a count below len(buf) means end of file."""
    readinto = getattr(src, "readinto", None)
    got = 0
    while got < len(buf):
        if readinto is not None:
            n = readinto(buf[got:])
        else:
            part = src.read(len(buf) - got)
            n = len(part)
            buf[got : got + n] = part
        if not n:
            break
        got += n
    return got


_SLOTS = 3
"""Blocks in flight: one being filled, one being sealed, one being hashed and written."""
_BLOCK_BYTES = 1 << 20
"""Read and write about 1 MiB at a time: fewer system calls and thread hand-offs."""


def pump(
    src: BinaryIO,
    dst: BinaryIO,
    in_size: int,
    out_size: int,
    transform: Callable[[memoryview, memoryview, bool], int],
    in_hash: hashlib._Hash,
    out_hash: hashlib._Hash,
) -> tuple[int, int]:
    """Run `src` through `transform` chunk by chunk into `dst`; return (bytes in, bytes out).

    Input comes in blocks of whole chunks. A full block may end with the final chunk
    only if nothing follows it, so the loop reads one block ahead. Hashing the input and
    writing the output each cost several times the cipher itself, so each runs on its
    own worker thread (hashlib and file writes release the GIL) over a small ring of
    buffers, while this thread reads, runs `transform` and hashes the output. The
    buffers are allocated once: fresh ones per block would cost a page fault per 4 KiB.
    Shared by KDXENC (`encrypt_stream`, `decrypt_stream`) and legacy CBC decryption.
    """
    per_block = max(1, _BLOCK_BYTES // in_size)
    slots = [
        (memoryview(bytearray(in_size * per_block)), memoryview(bytearray(out_size * per_block)))
        for _ in range(_SLOTS)
    ]
    busy: list[list[Future[Any]]] = [[] for _ in range(_SLOTS)]
    total_in = total_out = 0

    def free_slot(k: int) -> tuple[memoryview, memoryview]:
        for job in busy[k % _SLOTS]:
            job.result()  # also raises a write error here, in order
        busy[k % _SLOTS].clear()
        return slots[k % _SLOTS]

    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdx-sha256") as hasher,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdx-write") as writer,
    ):
        k = 0
        block, out = free_slot(k)
        n_in = _fill(src, block)
        while True:
            n_next = _fill(src, free_slot(k + 1)[0]) if n_in == len(block) else 0
            busy[k % _SLOTS].append(hasher.submit(in_hash.update, block[:n_in]))
            n_out = 0
            # An empty input is still one (empty) chunk: the final one.
            for start in range(0, max(n_in, 1), in_size):
                last = n_next == 0 and start + in_size >= n_in
                piece = block[start : min(start + in_size, n_in)]
                n_out += transform(piece, out[n_out : n_out + out_size], last)
            busy[k % _SLOTS].append(writer.submit(_write_all, dst, out[:n_out]))
            out_hash.update(out[:n_out])
            total_in += n_in
            total_out += n_out
            if n_next == 0:
                break
            k += 1
            block, out = slots[k % _SLOTS]
            n_in = n_next
        for k in range(_SLOTS):
            free_slot(k)
    return total_in, total_out


def _write_all(dst: BinaryIO, data: memoryview) -> None:
    """Write all of `data`: an unbuffered file may take only part of it per call."""
    while data:
        written = dst.write(data)
        if written is None:  # a non-blocking raw file that is full; not a file we write
            raise BlockingIOError("the output would block")
        data = data[written:]


def encrypt_stream(
    key: Key, src: BinaryIO, dst: BinaryIO, chunk_log2: int = DEFAULT_CHUNK_LOG2
) -> EncryptResult:
    """Encrypt `src` to `dst` in KDXENC v1 with constant memory (a few chunks)."""
    preamble, aead = _new_preamble(key, chunk_log2)
    sealer = _ChunkSealer(aead)
    chunk = 1 << chunk_log2
    pt_hash, ct_hash = hashlib.sha256(), hashlib.sha256(preamble)
    dst.write(preamble)
    pt_size, ct_size = pump(src, dst, chunk, chunk + TAG_LEN, sealer.seal_into, pt_hash, ct_hash)
    return EncryptResult(
        pt_hash.hexdigest(), ct_hash.hexdigest(), pt_size, ct_size + PREAMBLE_LEN, key.key_id
    )


def decrypt_stream(
    keys: Key | Keyring, src: BinaryIO, dst: BinaryIO, name: str = "input"
) -> DecryptResult:
    """Decrypt KDXENC `src` to `dst`, raising on the first chunk that does not verify.

    Plaintext reaches `dst` chunk by chunk, before the end is verified: treat `dst` as
    staging until this returns (`decrypt_file` does).
    """
    preamble = read_exact(src, PREAMBLE_LEN)
    header = parse_header(preamble, name)
    key, aead = _unlock(header, keys, name)
    opener = _ChunkOpener(aead, header.chunk_log2, name)
    pt_hash, ct_hash = hashlib.sha256(), hashlib.sha256(preamble)
    ct_size, pt_size = pump(
        src,
        dst,
        header.chunk_size + TAG_LEN,
        header.chunk_size,
        opener.open_into,
        ct_hash,
        pt_hash,
    )
    return DecryptResult(
        pt_hash.hexdigest(), ct_hash.hexdigest(), pt_size, ct_size + PREAMBLE_LEN, key.key_id
    )


class Encryptor:
    """Incremental KDXENC encryption for pipelines: feed `update`, end with `finalize`.

    The output of all calls, concatenated, is the encrypted file. A full chunk is held back
    until more data arrives, because only the last chunk may carry the final flag.
    """

    def __init__(self, key: Key, chunk_log2: int = DEFAULT_CHUNK_LOG2) -> None:
        """Start a new file for `key`: fresh salt, fresh per-file key."""
        preamble, aead = _new_preamble(key, chunk_log2)
        self.key_id = key.key_id
        """The id of the key the file is encrypted with."""
        self.result: EncryptResult | None = None
        """Set by `finalize`."""
        self._sealer = _ChunkSealer(aead)
        self._chunk = 1 << chunk_log2
        self._pending = bytearray()
        self._out = bytearray(preamble)
        self._pt_hash, self._ct_hash = hashlib.sha256(), hashlib.sha256()
        self._pt_size = self._ct_size = 0

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take more plaintext; return the ciphertext that is ready (may be empty)."""
        if self.result is not None:
            raise ValueError("this Encryptor is finalized")
        self._pt_hash.update(data)
        self._pt_size += len(data)
        self._pending += data
        pos = 0
        # Strictly greater: a chunk with nothing after it yet may still be the last.
        while len(self._pending) - pos > self._chunk:
            self._out += self._sealer.seal(
                memoryview(self._pending)[pos : pos + self._chunk], False
            )
            pos += self._chunk
        del self._pending[:pos]
        return self._flush()

    def finalize(self) -> bytes:
        """Seal the final chunk (empty only if the whole payload is) and return the rest."""
        if self.result is not None:
            raise ValueError("this Encryptor is finalized")
        self._out += self._sealer.seal(bytes(self._pending), True)
        self._pending.clear()
        out = self._flush()
        self.result = EncryptResult(
            self._pt_hash.hexdigest(),
            self._ct_hash.hexdigest(),
            self._pt_size,
            self._ct_size,
            self.key_id,
        )
        return out

    def _flush(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self._ct_hash.update(out)
        self._ct_size += len(out)
        return out


class Decryptor:
    """Incremental KDXENC decryption for pipelines: feed `update`, end with `finalize`.

    Each returned piece has verified as its chunk, but the file is only whole once
    `finalize` returns: stage the plaintext until then.
    """

    def __init__(self, keys: Key | Keyring, name: str = "input") -> None:
        """Decrypt with `keys`; `name` names the input in error messages."""
        self.header: Header | None = None
        """The header, once 112 bytes have arrived."""
        self.key: Key | None = None
        """The key that unlocked the header."""
        self.result: DecryptResult | None = None
        """Set by `finalize`."""
        self._keys = keys
        self._name = name
        self._opener: _ChunkOpener | None = None
        self._ct_chunk = 0
        self._pending = bytearray()
        self._pt_hash, self._ct_hash = hashlib.sha256(), hashlib.sha256()
        self._pt_size = self._ct_size = 0

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take more ciphertext; return the plaintext of the chunks that verified."""
        if self.result is not None:
            raise ValueError("this Decryptor is finalized")
        self._ct_hash.update(data)
        self._ct_size += len(data)
        self._pending += data
        if self._opener is None:
            if len(self._pending) < PREAMBLE_LEN:
                if self._pending[: len(MAGIC)] != MAGIC[: len(self._pending)]:
                    # Say "not a KDXENC file" as soon as the magic is wrong, not at the end.
                    parse_header(bytes(self._pending), self._name)
                return b""
            self._start()
        assert self._opener is not None
        pos, parts = 0, []
        view = memoryview(self._pending)
        while len(self._pending) - pos > self._ct_chunk:
            parts.append(self._opener.open(view[pos : pos + self._ct_chunk], False))
            pos += self._ct_chunk
        view.release()
        del self._pending[:pos]
        return self._count(b"".join(parts))

    def finalize(self) -> bytes:
        """Verify the final chunk and return its plaintext; raise if the file is incomplete."""
        if self.result is not None:
            raise ValueError("this Decryptor is finalized")
        if self._opener is None:
            parse_header(bytes(self._pending), self._name)  # raises: too short or not KDXENC
            self._start()
        assert self._opener is not None and self.key is not None
        if not self._pending:
            raise TruncatedError(f"{self._name} has a header but no chunks: it was truncated")
        out = self._count(self._opener.open(bytes(self._pending), True))
        self._pending.clear()
        self.result = DecryptResult(
            self._pt_hash.hexdigest(),
            self._ct_hash.hexdigest(),
            self._pt_size,
            self._ct_size,
            self.key.key_id,
        )
        return out

    def _start(self) -> None:
        self.header = parse_header(bytes(self._pending[:PREAMBLE_LEN]), self._name)
        self.key, aead = _unlock(self.header, self._keys, self._name)
        self._opener = _ChunkOpener(aead, self.header.chunk_log2, self._name)
        self._ct_chunk = self.header.chunk_size + TAG_LEN
        del self._pending[:PREAMBLE_LEN]

    def _count(self, pt: bytes) -> bytes:
        self._pt_hash.update(pt)
        self._pt_size += len(pt)
        return pt


class Incremental(Protocol):
    """Anything with the `update` / `finalize` shape (Decryptor, LegacyDecryptor)."""

    def update(self, data: bytes, /) -> bytes:
        """Take more input, return the output that is ready."""
        ...

    def finalize(self) -> bytes:
        """Finish; return the rest of the output or raise."""
        ...


class PlaintextReader(io.RawIOBase):
    """A readable file of plaintext, decrypted from `src` as it is read; nothing on disk.

    Use it to verify a backup (`check_gzip_layers_and_tar(PlaintextReader(...))`) without
    writing plaintext anywhere. The end of the data raises if the last chunk fails.
    """

    def __init__(self, decryptor: Incremental, src: BinaryIO, read_size: int = 1 << 16) -> None:
        """Pull ciphertext from `src` in `read_size` pieces through `decryptor`."""
        super().__init__()
        self._decryptor = decryptor
        self._src = src
        self._read_size = read_size
        self._ready = b""
        self._pos = 0
        self._ended = False

    def readable(self) -> bool:
        """Always: this is a reader."""
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` with the next plaintext; 0 at the (verified) end."""
        while self._pos >= len(self._ready):
            if self._ended:
                return 0
            data = self._src.read(self._read_size)
            if data:
                self._ready = self._decryptor.update(data)
            else:
                self._ready, self._ended = self._decryptor.finalize(), True
            self._pos = 0
        n = min(len(buffer), len(self._ready) - self._pos)
        buffer[:n] = self._ready[self._pos : self._pos + n]
        self._pos += n
        return n


def open_input(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file to read, turning "missing" or "a directory" into one clear sentence."""
    p = Path(path)
    try:
        return open(p, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise UsageError(f"{p} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{p} is a directory, not a file") from None
    except OSError as exc:
        raise UsageError(f"{p} cannot be read: {exc.strerror}") from None


@contextlib.contextmanager
def staged_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A temporary file beside `path` that replaces it (0600, fsynced) only on success."""
    target = Path(path)
    if target.exists() and not target.is_file():
        # The temporary file is renamed over the target: never over /dev/null or a directory.
        raise UsageError(f"{target} exists and is not a regular file; choose another output")
    with atomic_writer(target) as fh:
        yield fh


def encrypt_file(
    key: Key,
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    chunk_log2: int = DEFAULT_CHUNK_LOG2,
) -> EncryptResult:
    """Encrypt a file; `out_path` appears (mode 0600, durably) only once it is complete."""
    with (
        open_input(in_path) as src,
        os_errors_as_failure(f"encrypt {in_path} to {out_path}"),
        staged_output(out_path) as dst,
    ):
        return encrypt_stream(key, src, dst, chunk_log2)


def decrypt_file(
    keys: Key | Keyring, in_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> DecryptResult:
    """Decrypt a file; `out_path` appears only after the final chunk verifies.

    On any failure no output file is left behind (an existing `out_path` is untouched).
    """
    with (
        open_input(in_path) as src,
        os_errors_as_failure(f"decrypt {in_path} to {out_path}"),
        staged_output(out_path) as dst,
    ):
        return decrypt_stream(keys, src, dst, str(in_path))
