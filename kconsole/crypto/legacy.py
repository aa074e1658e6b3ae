"""Reading the plan's legacy backups: `openssl enc -aes-256-cbc -salt -pass file:KEY`.

Decrypt only: kconsole never writes this format. The files carry no authentication, so a
wrong key, a flipped bit or a cut at a block boundary can all "decrypt"; kconsole labels
every such result "legacy, unauthenticated" and leans on the gzip layers inside (CRC and
length) and the tar walk (`check_gzip_layers_and_tar`) for whatever assurance there is.

Layout: "Salted__" (8 bytes) || salt (8 bytes) || AES-256-CBC(PKCS#7-padded plaintext).
Key and IV come from the key file's first line used as a password, through
EVP_BytesToKey (SHA-256 since OpenSSL 1.1.0, MD5 before, one round) or, with `-pbkdf2`,
PBKDF2-HMAC-SHA256 (10000 iterations unless `-iter N`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import BinaryIO, cast

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from kconsole.crypto.errors import (
    ArchiveError,
    LegacyDecryptError,
    NotKdxFileError,
    WrongKeyError,
    os_errors_as_failure,
)
from kconsole.crypto.keys import Key, Keyring
from kconsole.crypto.stream import open_input, pump, read_exact, staged_output
from kconsole.errors import UsageError

SALTED = b"Salted__"
"""The magic of an openssl file made with a password and a salt."""
GZIP_MAGIC = b"\x1f\x8b\x08"
"""gzip id bytes and the deflate method: what the plan's backups start with."""
PBKDF2_DEFAULT_ITERATIONS = 10000
"""What `openssl enc -pbkdf2` uses without `-iter`."""
LABEL = "legacy, unauthenticated"
"""How every legacy result is described to the operator."""

_BLOCK = 16
_DETECT_BYTES = 8 + 16 + _BLOCK
"""Enough for the first ciphertext block even with a 16-byte salt (`-saltlen 16`)."""
_MAX_GZIP_LAYERS = 8
_PIECE = 1 << 20
"""Ciphertext decrypted per step of `decrypt_legacy_stream`: 1 MiB, whole AES blocks."""


class LegacyKdf(StrEnum):
    """How openssl turned the password into key and IV."""

    SHA256 = "sha256"
    """EVP_BytesToKey with SHA-256, one round: the default since OpenSSL 1.1.0."""
    MD5 = "md5"
    """EVP_BytesToKey with MD5: OpenSSL before 1.1.0, or `-md md5`."""
    PBKDF2 = "pbkdf2"
    """PBKDF2-HMAC-SHA256: `-pbkdf2` and/or `-iter N`."""


def derive_key_iv(
    password: bytes, salt: bytes, kdf: LegacyKdf, iterations: int = PBKDF2_DEFAULT_ITERATIONS
) -> tuple[bytes, bytes]:
    """The AES-256 key and CBC IV `openssl enc` derives from a password and salt."""
    if kdf is LegacyKdf.PBKDF2:
        # One 48-byte output split in two, as openssl does, not two separate derivations.
        out = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, 48)
        return out[:32], out[32:]
    # EVP_BytesToKey, count 1: D_i = H(D_{i-1} || password || salt), concatenated.
    material, block = b"", b""
    while len(material) < 48:
        block = hashlib.new(kdf.value, block + password + salt).digest()
        material += block
    return material[:32], material[32:48]


@dataclass(frozen=True)
class LegacyParams:
    """The key, password reading and KDF that decrypt a legacy file."""

    key: Key
    password: bytes = field(repr=False)
    """The password bytes that worked (see `Key.legacy_password_candidates`)."""
    password_note: str
    """Empty when the password is openssl's exact reading of the key file."""
    kdf: LegacyKdf
    iterations: int
    salt_len: int
    gzip_verified: bool
    """True when chosen because the first block decrypts to gzip magic (wrong key ruled out)."""

    def describe(self) -> str:
        """The KDF in the operator's words, e.g. "PBKDF2-SHA256, 20000 iterations"."""
        if self.kdf is LegacyKdf.PBKDF2:
            salt = "" if self.salt_len == 8 else f", {self.salt_len}-byte salt"
            return f"PBKDF2-SHA256, {self.iterations} iterations{salt}"
        return f"EVP_BytesToKey-{self.kdf.value.upper()}"


@dataclass(frozen=True)
class LegacyResult:
    """What a legacy decryption produced. Never authenticated: see `label`."""

    params: LegacyParams = field(repr=False)
    plaintext_sha256: str
    ciphertext_sha256: str
    plaintext_size: int
    ciphertext_size: int
    key_id: str
    """The id of the key file that worked (legacy files do not record one)."""
    label: str = LABEL
    authenticated: bool = False


def _kdf_candidates(
    kdf: LegacyKdf | None, iterations: int | None
) -> list[tuple[LegacyKdf, int, int]]:
    """(kdf, iterations, salt length) to try, most likely first."""
    rounds = iterations or PBKDF2_DEFAULT_ITERATIONS
    pbkdf2 = [(LegacyKdf.PBKDF2, rounds, 8), (LegacyKdf.PBKDF2, rounds, 16)]
    if kdf is LegacyKdf.PBKDF2 or (kdf is None and iterations is not None):
        return pbkdf2  # `-iter N` alone also means PBKDF2
    if kdf is not None:
        return [(kdf, 0, 8)]
    return [(LegacyKdf.SHA256, 0, 8), (LegacyKdf.MD5, 0, 8), *pbkdf2]


def _first_block(key: bytes, iv: bytes, block: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor().update(block)


def detect_params(
    head: bytes,
    keys: Key | Keyring | Iterable[Key],
    kdf: LegacyKdf | None = None,
    iterations: int | None = None,
    name: str = "input",
) -> LegacyParams:
    """Choose key, password and KDF from the first bytes of a legacy file.

    The right choice decrypts the first block to gzip magic (1f 8b 08); a wrong key or
    KDF does so with odds of about 2**-24, far better than the padding check's 1/256.
    Without gzip plaintext only an explicit `kdf` and a single key can proceed.
    """
    if head[: len(SALTED)] != SALTED[: len(head)] or not head:
        raise NotKdxFileError(f"{name} is not an openssl salted file (no Salted__ header)")
    if len(head) < len(SALTED) + 8 + _BLOCK:
        raise LegacyDecryptError(
            f"{name} is {len(head)} bytes, too short to hold a salt and one encrypted block"
        )
    key_list = [keys] if isinstance(keys, Key) else list(keys)
    candidates = _kdf_candidates(kdf, iterations)
    for key in key_list:
        for password, note in key.legacy_password_candidates():
            for cand_kdf, rounds, salt_len in candidates:
                start = len(SALTED) + salt_len
                block = head[start : start + _BLOCK]
                if len(block) < _BLOCK:
                    continue
                aes_key, iv = derive_key_iv(password, head[len(SALTED) : start], cand_kdf, rounds)
                if _first_block(aes_key, iv, block).startswith(GZIP_MAGIC):
                    return LegacyParams(key, password, note, cand_kdf, rounds, salt_len, True)
    tried = ", ".join(dict.fromkeys(c[0].value for c in candidates))
    ring = f"any key in {keys.name}" if isinstance(keys, Keyring) else "any key given"
    who = key_list[0].name if len(key_list) == 1 else ring
    if kdf is not None or iterations is not None:
        if len(key_list) == 1:
            # Not gzip inside: trust the operator's KDF and openssl's exact password; only
            # the padding check at the end can still object.
            only = key_list[0]
            cand_kdf, rounds, salt_len = candidates[0]
            return LegacyParams(only, only.openssl_password, "", cand_kdf, rounds, salt_len, False)
        raise UsageError(
            f"{name} does not decrypt to gzip with {who}, and legacy files name no key, so "
            "give the key itself with --key"
        )
    raise WrongKeyError(
        f"wrong key: {name} does not decrypt to gzip with {who} under any KDF tried ({tried}); "
        "if it is not a gzip backup, name its KDF (e.g. --pbkdf2), and if it was made with "
        "-pbkdf2 -iter N, pass --iter N"
    )


def _open_cipher(
    head: bytes,
    keys: Key | Keyring | Iterable[Key],
    kdf: LegacyKdf | None,
    iterations: int | None,
    name: str,
) -> tuple[LegacyParams, CipherContext, int]:
    """Choose the parameters from a file's first bytes (`detect_params`); return them, the
    CBC decryptor they give, and the offset at which the ciphertext starts."""
    params = detect_params(head, keys, kdf, iterations, name)
    start = len(SALTED) + params.salt_len
    aes_key, iv = derive_key_iv(
        params.password, head[len(SALTED) : start], params.kdf, params.iterations
    )
    return params, Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor(), start


def _bad_padding(name: str) -> LegacyDecryptError:
    # One message for bad length and bad padding alike: telling them apart is what a
    # padding oracle needs.
    return LegacyDecryptError(
        f"{name} does not end in valid padding: it is truncated or damaged, or "
        f"the key or KDF is wrong ({LABEL}, so kconsole cannot tell which)"
    )


class LegacyDecryptor:
    """Incremental legacy decryption: `update` with ciphertext, then `finalize`.

    The KDF (and key, from a keyring) is chosen once the first 40 bytes have arrived. The
    last block is held back until `finalize`, where its padding is checked.
    """

    def __init__(
        self,
        keys: Key | Keyring | Iterable[Key],
        kdf: LegacyKdf | None = None,
        iterations: int | None = None,
        name: str = "input",
    ) -> None:
        """Decrypt with `keys`; `kdf`/`iterations` as given to openssl, or None to detect."""
        self.params: LegacyParams | None = None
        """The choice made from the first bytes."""
        self.result: LegacyResult | None = None
        """Set by `finalize`."""
        self._keys = keys if isinstance(keys, Key | Keyring) else list(keys)
        self._kdf, self._iterations, self._name = kdf, iterations, name
        self._head = bytearray()
        self._cipher: CipherContext | None = None
        self._unpadder = padding.PKCS7(128).unpadder()
        self._pt_hash, self._ct_hash = hashlib.sha256(), hashlib.sha256()
        self._pt_size = self._ct_size = 0

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take more ciphertext; return the plaintext that is ready."""
        if self.result is not None:
            raise ValueError("this LegacyDecryptor is finalized")
        self._ct_hash.update(data)
        self._ct_size += len(data)
        if self._cipher is None:
            self._head += data
            if len(self._head) < _DETECT_BYTES:
                return b""
            return self._start()
        return self._count(self._unpadder.update(self._cipher.update(data)))

    def finalize(self) -> bytes:
        """Check the padding of the last block and return the rest of the plaintext."""
        if self.result is not None:
            raise ValueError("this LegacyDecryptor is finalized")
        out = self._start() if self._cipher is None else b""
        assert self._cipher is not None and self.params is not None
        try:
            out += self._unpadder.update(self._cipher.finalize())
            out += self._unpadder.finalize()
        except ValueError:
            raise _bad_padding(self._name) from None
        self._count(out)
        self.result = LegacyResult(
            params=self.params,
            plaintext_sha256=self._pt_hash.hexdigest(),
            ciphertext_sha256=self._ct_hash.hexdigest(),
            plaintext_size=self._pt_size,
            ciphertext_size=self._ct_size,
            key_id=self.params.key.key_id,
        )
        return out

    def _start(self) -> bytes:
        head = bytes(self._head)
        self._head.clear()
        self.params, self._cipher, start = _open_cipher(
            head, self._keys, self._kdf, self._iterations, self._name
        )
        return self._count(self._unpadder.update(self._cipher.update(head[start:])))

    def _count(self, pt: bytes) -> bytes:
        self._pt_hash.update(pt)
        self._pt_size += len(pt)
        return pt


class _Replayed(io.RawIOBase):
    """`src` with the bytes already read from it (to detect the KDF) put back in front.

    So `pump` sees the ciphertext from its first byte and every piece it decrypts,
    except the last, is a whole number of AES blocks.
    """

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._src = src

    def readable(self) -> bool:
        """Always: this is a reader."""
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """The replayed bytes first, then straight from `src` into `buffer`."""
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        readinto = getattr(self._src, "readinto", None)
        if readinto is not None:
            return int(readinto(buffer))
        data = self._src.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _CbcPieces:
    """The `transform` for `pump`: CBC-decrypt each piece in place, unpad the last one."""

    def __init__(self, cipher: CipherContext, name: str) -> None:
        self._cipher = cipher
        self._name = name

    def __call__(self, piece: memoryview, out: memoryview, last: bool) -> int:
        """Decrypt `piece` into `out` (a block longer than it); return the bytes written."""
        n = self._cipher.update_into(piece, out)
        if not last:
            return n
        try:
            self._cipher.finalize()  # raises if the ciphertext is not whole blocks
            return n - _padding_length(out[:n])
        except ValueError:
            raise _bad_padding(self._name) from None


def _padding_length(plaintext: memoryview) -> int:
    """How many PKCS#7 padding bytes end `plaintext`; ValueError if they are not valid."""
    if len(plaintext) < _BLOCK:
        raise ValueError("no whole block to hold the padding")
    # The library's unpadder on the last block alone: its checks, not a copy of them.
    unpadder = padding.PKCS7(128).unpadder()
    unpadded = unpadder.update(bytes(plaintext[-_BLOCK:])) + unpadder.finalize()
    return _BLOCK - len(unpadded)


def decrypt_legacy_stream(
    keys: Key | Keyring | Iterable[Key],
    src: BinaryIO,
    dst: BinaryIO,
    kdf: LegacyKdf | None = None,
    iterations: int | None = None,
    name: str = "input",
) -> LegacyResult:
    """Decrypt a legacy openssl stream byte-exact with `openssl enc -d`, in constant memory.

    The KDF and key are chosen from the first bytes before anything is written, so a
    wrong key writes nothing. The rest runs through `pump`, like KDXENC: buffers made
    once and decrypted into with `update_into`, the two SHA-256s and the writes on
    worker threads. (Going through `LegacyDecryptor` instead, fresh bytes for every piece
    read, decrypted and unpadded cost more in page faults than AES-CBC itself, and the
    hashing ran serially.) The padding is checked on the final piece; plaintext written
    before that is staging (`decrypt_legacy_file` renames it into place only on success).
    """
    head = read_exact(src, _DETECT_BYTES)
    params, cipher, start = _open_cipher(head, keys, kdf, iterations, name)
    ct_hash, pt_hash = hashlib.sha256(head[:start]), hashlib.sha256()
    ct_size, pt_size = pump(
        cast(BinaryIO, _Replayed(head[start:], src)),
        dst,
        _PIECE,
        _PIECE + _BLOCK,  # update_into wants room for a block more than it is given
        _CbcPieces(cipher, name),
        ct_hash,
        pt_hash,
    )
    return LegacyResult(
        params=params,
        plaintext_sha256=pt_hash.hexdigest(),
        ciphertext_sha256=ct_hash.hexdigest(),
        plaintext_size=pt_size,
        ciphertext_size=start + ct_size,
        key_id=params.key.key_id,
    )


def decrypt_legacy_file(
    keys: Key | Keyring | Iterable[Key],
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    kdf: LegacyKdf | None = None,
    iterations: int | None = None,
) -> LegacyResult:
    """Decrypt a legacy file; `out_path` appears only if decryption and padding succeed."""
    with (
        open_input(in_path) as src,
        os_errors_as_failure(f"decrypt {in_path} to {out_path}"),
        staged_output(out_path) as dst,
    ):
        return decrypt_legacy_stream(keys, src, dst, kdf, iterations, str(in_path))


@dataclass(frozen=True)
class ArchiveCheck:
    """What `check_gzip_layers_and_tar` found in a sound archive."""

    gzip_layers: int
    """How many gzip layers were inflated (the plan's backups have two)."""
    members: int
    """How many tar members the walk met."""
    names: list[str] = field(repr=False)
    """Member names in archive order (empty if not kept)."""


class _Sniffed:
    """A reader whose first two bytes were read ahead to tell gzip from tar."""

    def __init__(self, src: BinaryIO | gzip.GzipFile) -> None:
        self._src = src
        head = b""
        while len(head) < 2 and (more := src.read(2 - len(head))):
            head += more
        self.head = head

    def read(self, size: int = -1) -> bytes:
        """Read like a file: the two sniffed bytes first, then the rest."""
        if not self.head:
            return self._src.read(size)
        if size < 0:
            head, self.head = self.head, b""
            return head + self._src.read()
        head, self.head = self.head[:size], self.head[size:]
        return head + (self._src.read(size - len(head)) if size > len(head) else b"")

    def as_file(self) -> BinaryIO:
        """This reader, typed as the file gzip and tarfile take (they only call `read`)."""
        return cast(BinaryIO, self)


def check_gzip_layers_and_tar(
    stream: BinaryIO, name: str = "archive", keep_names: bool = True
) -> ArchiveCheck:
    """Inflate every gzip layer (checking CRC and length), then walk every tar member.

    The plan's backups are gzip(gzip(tar)): after each inflate the data is sniffed again
    for gzip magic. A tar with no members is refused, because restoring it restores
    nothing yet "succeeds". Works on any plaintext stream, legacy or native.
    """
    layers = 0
    reader = _Sniffed(stream)
    members, names = 0, []
    try:
        while reader.head == GZIP_MAGIC[:2]:
            layers += 1
            if layers > _MAX_GZIP_LAYERS:
                raise ArchiveError(f"{name} has more than {_MAX_GZIP_LAYERS} gzip layers")
            reader = _Sniffed(gzip.GzipFile(fileobj=reader.as_file(), mode="rb"))
        with tarfile.open(fileobj=reader.as_file(), mode="r|") as tar:
            for member in tar:
                members += 1
                if keep_names:
                    names.append(member.name)
        # tar stops at its end-of-archive blocks; read on so every gzip layer reaches its
        # trailer and checks CRC and length.
        while reader.read(1 << 20):
            pass
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        where = f" (inside {layers} gzip layer{'s' if layers != 1 else ''})" if layers else ""
        raise ArchiveError(f"{name} is not a sound archive{where}: {exc}") from None
    if members == 0:
        raise ArchiveError(
            f"{name} is a tar archive with no members; restoring it restores nothing"
        )
    return ArchiveCheck(layers, members, names)
