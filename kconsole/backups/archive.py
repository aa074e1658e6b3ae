"""Reading a backup's plaintext without writing it anywhere, and checking its archive.

`inspect_archive` inflates every gzip layer (the plan's backups have two) or the zstd
layer (kconsole's captures where the node has zstd), walks every
tar member, and refuses any member that would land outside the backup's own paths:
absolute or `..` names, links whose target leaves the prefix, devices and FIFOs. It is
the pre-flight check before a restore lets remote `tar` extract anything, and the heart
of `kconsole verify`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from kconsole.crypto import Key, Keyring
from kconsole.crypto.legacy import LegacyDecryptor
from kconsole.crypto.stream import Decryptor, PlaintextReader
from kconsole.errors import OperationFailed

MAX_LAYERS = 8
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class UnsafeArchive(OperationFailed):
    """A member of the archive would be written outside the backup's paths."""


class BadArchive(OperationFailed):
    """The plaintext is not a sound gzip/tar archive (or is empty)."""


@dataclass
class ArchiveReport:
    """What a full walk of a backup's plaintext found."""

    gzip_layers: int
    members: int
    tar_bytes: int
    plaintext_sha256: str
    plaintext_size: int
    key_id: str


class _Counting(io.RawIOBase):
    """Pass-through reader that counts what is read (the tar's size, for the report) and,
    with `hashed`, hashes it too (a ciphertext file checked against its manifest)."""

    def __init__(self, src: BinaryIO, hashed: bool = False) -> None:
        super().__init__()
        self.src = src
        self.size = 0
        self.digest = hashlib.sha256() if hashed else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.src.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.size += n
        if self.digest is not None:
            self.digest.update(data)
        return n


def decrypting_reader(
    ciphertext: BinaryIO, keys: Key | Keyring, legacy: bool, name: str
) -> tuple[BinaryIO, Decryptor | LegacyDecryptor]:
    """A file-like reader of the plaintext of `ciphertext`, verified as it goes."""
    decryptor: Decryptor | LegacyDecryptor = (
        LegacyDecryptor(keys, name=name) if legacy else Decryptor(keys, name=name)
    )
    reader = io.BufferedReader(PlaintextReader(decryptor, ciphertext, 1 << 18), 1 << 18)
    return cast(BinaryIO, reader), decryptor


def _allowed(name: str, prefixes: list[str]) -> bool:
    return not prefixes or any(name == p or name.startswith(p + "/") for p in prefixes)


def check_member(member: tarfile.TarInfo, prefixes: list[str], where: str) -> None:
    """Refuse a member that is absolute, escapes, is special, or leaves `prefixes`."""
    name = member.name
    norm = posixpath.normpath(name.lstrip("./") or ".")
    if name.startswith("/") or norm.startswith("..") or "/../" in f"/{name}/":
        raise UnsafeArchive(
            f"{where}: member {name!r} escapes the restore directory; refusing to restore."
        )
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"{where}: member {name!r} is a device or FIFO; refusing to restore.")
    if (
        norm != "."
        and not _allowed(norm, prefixes)
        and not any(p.startswith(norm + "/") for p in prefixes)
    ):
        raise UnsafeArchive(
            f"{where}: member {name!r} is outside the backed-up paths "
            f"({', '.join(prefixes)}); refusing to restore."
        )
    if member.issym() or member.islnk():
        target = member.linkname
        if member.issym():
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(norm), target))
        else:
            resolved = posixpath.normpath(target)
        if target.startswith("/") or resolved.startswith("..") or not _allowed(resolved, prefixes):
            raise UnsafeArchive(
                f"{where}: link {name!r} -> {target!r} points outside the backed-up paths; "
                "refusing to restore."
            )


def _unzstd(stream: BinaryIO) -> BinaryIO:
    """A buffered reader of the decompressed zstd `stream` (frame checksums checked)."""
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(
        stream, read_across_frames=True, closefd=False
    )
    return cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, reader), 1 << 18))


def decompressed(plaintext: BinaryIO, where: str) -> tuple[BinaryIO, int]:
    """The tar inside `plaintext`: every gzip layer inflated, or the zstd layer; (stream,
    compression layers)."""
    layers = 0
    stream: BinaryIO = plaintext
    if _peek(stream, 4) == ZSTD_MAGIC:
        return _unzstd(stream), 1
    head = _peek(stream)
    while head[:2] == b"\x1f\x8b":
        layers += 1
        if layers > MAX_LAYERS:
            raise BadArchive(f"{where} has more than {MAX_LAYERS} gzip layers.")
        stream = cast(
            BinaryIO,
            io.BufferedReader(
                cast(io.RawIOBase, gzip.GzipFile(fileobj=stream, mode="rb")), 1 << 18
            ),
        )
        try:
            head = _peek(stream)
        except (OSError, EOFError) as exc:
            raise BadArchive(f"{where}: gzip layer {layers} is damaged ({exc}).") from None
    return stream, layers


def inspect_archive(plaintext: BinaryIO, prefixes: list[str], where: str) -> tuple[int, int, int]:
    """Inflate all gzip layers (or the zstd one) and walk the tar; (layers, members, tar bytes)."""
    import zstandard

    stream, layers = decompressed(plaintext, where)
    members = 0
    counted = _Counting(stream)
    try:
        with tarfile.open(fileobj=cast(BinaryIO, counted), mode="r|") as tar:
            for member in tar:
                check_member(member, prefixes, where)
                members += 1
    except tarfile.ReadError as exc:
        raise BadArchive(f"{where} is not a readable tar archive ({exc}).") from None
    except (OSError, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise BadArchive(f"{where}: the archive is damaged ({exc}).") from None
    # Drain what tarfile left (zero blocks) so gzip checks its CRC and length trailer.
    try:
        while counted.read(1 << 20):
            pass
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise BadArchive(f"{where}: the archive is damaged ({exc}).") from None
    if members == 0:
        raise BadArchive(f"{where} holds no files; restoring it would restore nothing.")
    return layers, members, counted.size


def _peek(stream: BinaryIO, n: int = 2) -> bytes:
    peek = getattr(stream, "peek", None)
    if peek is None:
        raise TypeError("stream must be buffered")
    return bytes(peek(n)[:n])


def verify_file(
    path: Path, keys: Key | Keyring, legacy: bool, prefixes: list[str], where: str
) -> ArchiveReport:
    """Decrypt and walk a local ciphertext file end to end; nothing is written."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise OperationFailed(f"cannot read {path}: {exc.strerror}.") from None
    with fh:
        reader, decryptor = decrypting_reader(fh, keys, legacy, where)
        layers, members, tar_bytes = inspect_archive(reader, prefixes, where)
        while reader.read(1 << 20):  # anything after the archive still has to authenticate
            pass
    result = decryptor.result
    assert result is not None
    return ArchiveReport(
        layers, members, tar_bytes, result.plaintext_sha256, result.plaintext_size, result.key_id
    )


class _Recording(io.RawIOBase):
    """Pass-through reader that keeps what was read until `take()` hands it on."""

    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self.src = src
        self.kept = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.src.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.kept += data
        return n

    def take(self) -> bytes:
        out = bytes(self.kept)
        self.kept.clear()
        return out


def checked_tar_chunks(
    path: Path | Callable[[], BinaryIO],
    keys: Key | Keyring,
    legacy: bool,
    prefixes: list[str],
    where: str,
    plaintext_sha256: str | None = None,
    report: list[ArchiveReport] | None = None,
    ciphertext_sha256: str | None = None,
) -> Iterator[bytes]:
    """The plain tar of a backup, for a node's `tar -xf -`, decrypted, decompressed and
    checked in one pass: bytes are handed on only once the member they belong to has passed
    `check_member` (its header first, then its data as it is read, so memory stays bounded).

    The end of the stream is where authentication finishes: a damaged, truncated or
    substituted backup (or a plaintext SHA-256 other than `plaintext_sha256`, or a file whose
    SHA-256 is not `ciphertext_sha256`, hashed as it is read) raises there,
    after the node may have unpacked part of it, so the caller extracts into a staging
    directory and swaps it in only when this generator ends cleanly. `report` receives the
    walk's ArchiveReport.
    """
    import zstandard

    if isinstance(path, Path):
        try:
            fh: BinaryIO = path.open("rb")
        except OSError as exc:
            raise OperationFailed(f"cannot read {path}: {exc.strerror}.") from None
    else:
        fh = path()  # a stream (a remote copy as it arrives)
    with fh:
        hashed = _Counting(fh, hashed=True)
        assert hashed.digest is not None
        reader, decryptor = decrypting_reader(cast(BinaryIO, hashed), keys, legacy, where)
        stream, layers = decompressed(reader, where)
        rec = _Recording(stream)
        members = tar_bytes = 0
        try:
            with tarfile.open(fileobj=cast(BinaryIO, rec), mode="r|") as tar:
                for member in tar:
                    check_member(member, prefixes, where)
                    members += 1
                    chunk = rec.take()
                    tar_bytes += len(chunk)
                    yield chunk
                    if member.isfile() and member.size:
                        data = tar.extractfile(member)
                        assert data is not None
                        while data.read(1 << 20):
                            chunk = rec.take()
                            tar_bytes += len(chunk)
                            yield chunk
            while rec.read(1 << 20):  # the end-of-archive blocks, and gzip's trailer check
                pass
        except tarfile.ReadError as exc:
            raise BadArchive(f"{where} is not a readable tar archive ({exc}).") from None
        except (OSError, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
            raise BadArchive(f"{where}: the archive is damaged ({exc}).") from None
        chunk = rec.take()
        tar_bytes += len(chunk)
        if members == 0:
            raise BadArchive(f"{where} holds no files; restoring it would restore nothing.")
        while reader.read(1 << 20):  # anything after the archive still has to authenticate
            pass
        while hashed.read(1 << 20):  # the whole file counts, whatever the decryptor needed
            pass
        result = decryptor.result
        assert result is not None
        if ciphertext_sha256 and hashed.digest.hexdigest() != ciphertext_sha256:
            raise OperationFailed(
                f"{where} has SHA-256 {hashed.digest.hexdigest()[:12]}..., its manifest says "
                f"{ciphertext_sha256[:12]}...: the copy is corrupt."
            )
        if plaintext_sha256 and result.plaintext_sha256 != plaintext_sha256:
            raise OperationFailed(
                f"{where} decrypts to data whose SHA-256 differs from its manifest."
            )
        if report is not None:
            report.append(
                ArchiveReport(
                    layers,
                    members,
                    tar_bytes,
                    result.plaintext_sha256,
                    result.plaintext_size,
                    result.key_id,
                )
            )
        yield chunk
