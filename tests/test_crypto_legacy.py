"""Legacy `openssl enc -aes-256-cbc` files, checked against the real openssl binary."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from kconsole.crypto import (
    ArchiveError,
    Key,
    Keyring,
    LegacyDecryptError,
    LegacyDecryptor,
    LegacyKdf,
    NotKdxFileError,
    PlaintextReader,
    WrongKeyError,
    check_gzip_layers_and_tar,
    decrypt_legacy_file,
    decrypt_legacy_stream,
    read_key_file,
)
from kconsole.crypto.legacy import derive_key_iv
from kconsole.errors import UsageError

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl binary")

HEX = b"0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"


def key_file(path: Path, data: bytes) -> Path:
    """A private key file with exactly these bytes."""
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def openssl_enc(key: Path, src: Path, dst: Path, *args: str) -> None:
    """Encrypt the way the plan's scripts do."""
    assert OPENSSL is not None
    subprocess.run(
        [OPENSSL, "enc", "-aes-256-cbc", "-salt", "-pass", f"file:{key}", "-in", str(src), "-out", str(dst), *args],
        check=True,
        capture_output=True,
    )  # fmt: skip


def tar_gz_gz(tmp_path: Path, members: int = 4) -> Path:
    """A state directory archived the plan's way: `tar -czf - … | gzip > f.tar.gz`."""
    state = tmp_path / "state"
    state.mkdir()
    for i in range(members):
        (state / f"block-{i}.ldb").write_bytes(os.urandom(3000 + i))
    out = tmp_path / "backup.tar.gz"
    subprocess.run(
        f"tar -czf - -C {state} . | gzip > {out}", shell=True, check=True, executable="/bin/bash"
    )
    return out


@pytest.fixture
def lf_key(tmp_path: Path) -> Path:
    """The plan's key: 64 hex characters and a newline."""
    return key_file(tmp_path / "backup.key", HEX + b"\n")


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    """A gzip(gzip(tar)) backup of a small state directory."""
    return tar_gz_gz(tmp_path)


@pytest.mark.parametrize(
    ("args", "kdf", "iterations"),
    [
        ((), LegacyKdf.SHA256, 0),
        (("-md", "md5"), LegacyKdf.MD5, 0),
        (("-pbkdf2",), LegacyKdf.PBKDF2, 10000),
        (("-pbkdf2", "-iter", "20000"), LegacyKdf.PBKDF2, 20000),
    ],
    ids=["sha256", "md5", "pbkdf2", "pbkdf2-iter20000"],
)
def test_openssl_files_decrypt_byte_exact(
    tmp_path: Path,
    lf_key: Path,
    backup: Path,
    args: tuple[str, ...],
    kdf: LegacyKdf,
    iterations: int,
) -> None:
    enc = tmp_path / "backup.tar.gz.enc"
    openssl_enc(lf_key, backup, enc, *args)
    key = read_key_file(lf_key)
    out = tmp_path / "restored.tar.gz"
    # Only a non-default iteration count has to be named; the rest is detected.
    result = decrypt_legacy_file(
        key, enc, out, iterations=iterations if iterations > 10000 else None
    )
    assert out.read_bytes() == backup.read_bytes()
    assert (result.params.kdf, result.params.iterations) == (kdf, iterations)
    assert result.params.gzip_verified and result.params.password_note == ""
    assert result.label == "legacy, unauthenticated" and result.authenticated is False
    assert result.plaintext_sha256 == hashlib.sha256(backup.read_bytes()).hexdigest()
    assert result.ciphertext_sha256 == hashlib.sha256(enc.read_bytes()).hexdigest()
    assert result.key_id == key.key_id
    check = check_gzip_layers_and_tar(out.open("rb"))
    assert check.gzip_layers == 2 and check.members == 5  # "." and four files


@pytest.mark.parametrize("md", ["sha256", "md5"])
def test_key_and_iv_match_openssl_print(lf_key: Path, md: str) -> None:
    assert OPENSSL is not None
    salt = bytes.fromhex("0102030405060708")
    for extra, kdf in (([], LegacyKdf(md)), (["-pbkdf2"], LegacyKdf.PBKDF2)):
        if extra and md != "sha256":
            continue
        printed = subprocess.run(
            [OPENSSL, "enc", "-aes-256-cbc", "-P", "-md", md, "-S", salt.hex(), "-pass", f"file:{lf_key}", *extra],
            check=True,
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
        pairs = (line.split("=", 1) for line in printed.splitlines() if "=" in line)
        fields = {name.strip(): value.strip() for name, value in pairs}
        key, iv = derive_key_iv(HEX, salt, kdf)
        assert fields["key"] == key.hex().upper() and fields["iv"] == iv.hex().upper()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100_000])
def test_non_gzip_needs_an_explicit_kdf_and_then_matches_openssl(
    tmp_path: Path, lf_key: Path, size: int
) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\x00" * size if size < 20 else os.urandom(size))
    enc = tmp_path / "plain.enc"
    openssl_enc(lf_key, plain, enc)
    assert enc.stat().st_size == 16 + size + 16 - size % 16
    key = read_key_file(lf_key)
    with pytest.raises(WrongKeyError, match="name its KDF"):
        decrypt_legacy_file(key, enc, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = decrypt_legacy_file(key, enc, tmp_path / "out", kdf=LegacyKdf.SHA256)
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    assert not result.params.gzip_verified


def test_crlf_key_still_decrypts_a_backup_made_with_the_lf_key(
    tmp_path: Path, lf_key: Path, backup: Path
) -> None:
    enc = tmp_path / "b.enc"
    openssl_enc(lf_key, backup, enc)
    crlf = read_key_file(key_file(tmp_path / "crlf.key", HEX + b"\r\n"))
    result = decrypt_legacy_file(crlf, enc, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == backup.read_bytes()
    assert "carriage return" in result.params.password_note


def test_backup_made_with_a_crlf_key_needs_the_cr(tmp_path: Path, backup: Path) -> None:
    crlf_path = key_file(tmp_path / "crlf.key", HEX + b"\r\n")
    enc = tmp_path / "b.enc"
    openssl_enc(crlf_path, backup, enc)
    result = decrypt_legacy_file(read_key_file(crlf_path), enc, tmp_path / "out")
    assert result.params.password_note == ""  # openssl's exact reading, \r included
    assert (tmp_path / "out").read_bytes() == backup.read_bytes()


def test_wrong_key_is_detected_and_leaves_no_output(
    tmp_path: Path, lf_key: Path, backup: Path
) -> None:
    for args in ((), ("-pbkdf2",)):
        enc = tmp_path / "b.enc"
        openssl_enc(lf_key, backup, enc, *args)
        wrong = Key.from_bytes(b"ab" * 32 + b"\n")
        with pytest.raises(WrongKeyError, match="wrong key"):
            decrypt_legacy_file(wrong, enc, tmp_path / "out")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["backup.key", "state", "backup.tar.gz", "b.enc"]
        )


def test_keyring_finds_the_legacy_key_by_trying_each(
    tmp_path: Path, lf_key: Path, backup: Path
) -> None:
    enc = tmp_path / "b.enc"
    openssl_enc(lf_key, backup, enc, "-md", "md5")
    ring = Keyring.from_keys([Key.from_bytes(b"cd" * 32), read_key_file(lf_key)])
    result = decrypt_legacy_file(ring, enc, tmp_path / "out")
    assert result.key_id == read_key_file(lf_key).key_id
    # Without gzip inside, a keyring cannot tell which key is right.
    plain = tmp_path / "p.bin"
    plain.write_bytes(os.urandom(1000))
    openssl_enc(lf_key, plain, enc)
    with pytest.raises(UsageError, match="--key"):
        decrypt_legacy_file(ring, enc, tmp_path / "out2", kdf=LegacyKdf.SHA256)


def test_damage_is_reported_opaquely(tmp_path: Path, lf_key: Path, backup: Path) -> None:
    enc = tmp_path / "b.enc"
    openssl_enc(lf_key, backup, enc)
    key = read_key_file(lf_key)
    blob = enc.read_bytes()
    for damaged in (blob[:-1], blob[:-16] + bytes(16)):
        with pytest.raises(LegacyDecryptError, match="truncated or damaged"):
            decrypt_legacy_stream(key, io.BytesIO(damaged), io.BytesIO())
    with pytest.raises(LegacyDecryptError, match="too short"):
        decrypt_legacy_stream(key, io.BytesIO(blob[:20]), io.BytesIO())
    with pytest.raises(NotKdxFileError):
        decrypt_legacy_stream(key, io.BytesIO(b"not salted data" * 4), io.BytesIO())


class ShortReads:
    """A pipe-like source: `read` only, at most 1000 bytes a call."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._src.read(min(size, 1000) if size >= 0 else 1000)


PIECE = 1 << 20  # what decrypt_legacy_stream decrypts per step


@pytest.mark.parametrize(
    "size", [PIECE - 17, PIECE - 1, PIECE, 2 * PIECE - 16, 2 * PIECE + 5], ids=str
)
def test_streaming_matches_openssl_and_the_incremental_decryptor_at_piece_edges(
    tmp_path: Path, lf_key: Path, size: int
) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(size))
    enc = tmp_path / "plain.enc"
    openssl_enc(lf_key, plain, enc)
    blob, key = enc.read_bytes(), read_key_file(lf_key)
    dec = LegacyDecryptor(key, LegacyKdf.SHA256)
    incremental = dec.update(blob) + dec.finalize()
    assert incremental == plain.read_bytes()
    for src in (io.BytesIO(blob), ShortReads(blob)):
        out = io.BytesIO()
        result = decrypt_legacy_stream(key, src, out, LegacyKdf.SHA256)  # type: ignore[arg-type]
        assert out.getvalue() == plain.read_bytes()
        assert result == dec.result
        assert (result.plaintext_size, result.ciphertext_size) == (size, len(blob))


@pytest.mark.parametrize("cut", [16, PIECE, PIECE + 16, PIECE + 24])
def test_a_cut_at_or_past_a_piece_edge_fails_the_padding_check(
    tmp_path: Path, lf_key: Path, cut: int
) -> None:
    # Zeros inside: a cut at a block boundary leaves a last block of zeros, which is never
    # valid padding, so the error is certain rather than 255 times in 256.
    plain = tmp_path / "zeros.bin"
    plain.write_bytes(bytes(2 * PIECE))
    enc = tmp_path / "zeros.enc"
    openssl_enc(lf_key, plain, enc)
    damaged = enc.read_bytes()[: 16 + cut]
    for src in (io.BytesIO(damaged), ShortReads(damaged)):
        with pytest.raises(LegacyDecryptError, match="truncated or damaged"):
            decrypt_legacy_stream(read_key_file(lf_key), src, io.BytesIO(), LegacyKdf.SHA256)  # type: ignore[arg-type]


def test_wrong_key_writes_nothing_to_the_stream(tmp_path: Path, lf_key: Path, backup: Path) -> None:
    enc = tmp_path / "b.enc"
    openssl_enc(lf_key, backup, enc)
    out = io.BytesIO()
    with enc.open("rb") as src, pytest.raises(WrongKeyError, match="wrong key"):
        decrypt_legacy_stream(Key.from_bytes(b"ab" * 32), src, out)
    assert out.getvalue() == b""


def test_unauthenticated_damage_is_caught_by_the_archive_check(
    tmp_path: Path, lf_key: Path, backup: Path
) -> None:
    enc = tmp_path / "b.enc"
    openssl_enc(lf_key, backup, enc)
    blob = bytearray(enc.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # CBC: garbles one block, flips a bit in the next
    out = io.BytesIO()
    decrypt_legacy_stream(read_key_file(lf_key), io.BytesIO(bytes(blob)), out)  # "succeeds"
    with pytest.raises(ArchiveError):
        check_gzip_layers_and_tar(io.BytesIO(out.getvalue()))


def test_incremental_decryptor_and_plaintext_reader(
    tmp_path: Path, lf_key: Path, backup: Path
) -> None:
    enc = tmp_path / "b.enc"
    openssl_enc(lf_key, backup, enc, "-pbkdf2")
    blob = enc.read_bytes()
    dec = LegacyDecryptor(read_key_file(lf_key), name="b.enc")
    pieces = [dec.update(blob[i : i + 7]) for i in range(0, len(blob), 7)]
    assert b"".join(pieces) + dec.finalize() == backup.read_bytes()
    assert dec.params is not None and dec.params.kdf is LegacyKdf.PBKDF2
    reader = PlaintextReader(LegacyDecryptor(read_key_file(lf_key)), io.BytesIO(blob))
    assert check_gzip_layers_and_tar(reader).gzip_layers == 2


class TestArchiveCheck:
    """check_gzip_layers_and_tar on plaintext of any origin."""

    @staticmethod
    def tar_bytes(n: int) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for i in range(n):
                info = tarfile.TarInfo(f"f{i}")
                info.size = 10
                tar.addfile(info, io.BytesIO(b"0123456789"))
        return raw.getvalue()

    def test_counts_layers_and_members(self) -> None:
        tar = self.tar_bytes(3)
        for layers in range(4):
            data = tar
            for _ in range(layers):
                data = gzip.compress(data)
            check = check_gzip_layers_and_tar(io.BytesIO(data))
            assert (check.gzip_layers, check.members, check.names) == (
                layers,
                3,
                ["f0", "f1", "f2"],
            )
        assert check_gzip_layers_and_tar(io.BytesIO(tar), keep_names=False).names == []

    def test_zero_members_is_refused(self) -> None:
        with pytest.raises(ArchiveError, match="no members"):
            check_gzip_layers_and_tar(io.BytesIO(gzip.compress(gzip.compress(self.tar_bytes(0)))))

    def test_bad_crc_in_the_outer_layer_is_found_after_the_tar_ends(self) -> None:
        data = bytearray(gzip.compress(gzip.compress(self.tar_bytes(2))))
        data[-6] ^= 0xFF  # the outer layer's CRC32
        with pytest.raises(ArchiveError, match="CRC"):
            check_gzip_layers_and_tar(io.BytesIO(bytes(data)))

    def test_truncated_gzip_and_garbage(self) -> None:
        data = gzip.compress(gzip.compress(self.tar_bytes(2)))
        with pytest.raises(ArchiveError, match="2 gzip layers|1 gzip layer"):
            check_gzip_layers_and_tar(io.BytesIO(data[: len(data) - 10]))
        with pytest.raises(ArchiveError):
            check_gzip_layers_and_tar(io.BytesIO(os.urandom(2000)))
        with pytest.raises(ArchiveError):
            check_gzip_layers_and_tar(io.BytesIO(b""))
