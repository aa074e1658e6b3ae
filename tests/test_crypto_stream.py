"""The native KDXENC v1 format: round trips, and every way a file can be wrong."""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kconsole.crypto import (
    Decryptor,
    Encryptor,
    HeaderTamperedError,
    Key,
    Keyring,
    NotKdxFileError,
    PlaintextReader,
    ReorderedChunkError,
    TamperedError,
    TrailingDataError,
    TruncatedError,
    UnknownKeyError,
    UnsupportedFormatError,
    WrongKeyError,
    check_gzip_layers_and_tar,
    decrypt_file,
    decrypt_stream,
    encrypt_file,
    encrypt_stream,
    read_header,
)
from kconsole.crypto.errors import DecryptionFailed
from kconsole.crypto.stream import PREAMBLE_LEN, TAG_LEN
from kconsole.errors import OperationFailed, UsageError

KEY = Key.from_bytes(b"11" * 32 + b"\n")
OTHER_KEY = Key.from_bytes(b"22" * 32 + b"\n")
CHUNK = 1 << 16
SMALL_LOG2 = 12
"""Tamper cases use 4 KiB chunks: many chunks from little data, cheap diagnosis."""
SMALL = 1 << SMALL_LOG2
CT_SMALL = SMALL + TAG_LEN


def encrypt(data: bytes, key: Key = KEY, chunk_log2: int = 16) -> bytes:
    """Encrypt in memory with `encrypt_stream`."""
    out = io.BytesIO()
    encrypt_stream(key, io.BytesIO(data), out, chunk_log2)
    return out.getvalue()


def decrypt_whole(keys: Key | Keyring, blob: bytes) -> bytes:
    """Decrypt with `decrypt_stream`."""
    out = io.BytesIO()
    decrypt_stream(keys, io.BytesIO(blob), out, name="backup.kdx")
    return out.getvalue()


def decrypt_pieces(keys: Key | Keyring, blob: bytes) -> bytes:
    """Decrypt with `Decryptor`, fed in uneven pieces as an SSH channel would."""
    rng = random.Random(len(blob))
    dec = Decryptor(keys, name="backup.kdx")
    out, pos = [], 0
    while pos < len(blob):
        step = rng.choice([1, 7, 111, 5000, 70000])
        out.append(dec.update(blob[pos : pos + step]))
        pos += step
    out.append(dec.finalize())
    return b"".join(out)


DECRYPTORS = pytest.mark.parametrize("decrypt", [decrypt_whole, decrypt_pieces], ids=["stream", "pieces"])  # fmt: skip
Decrypt = Callable[[Key | Keyring, bytes], bytes]


class TestRoundTrip:
    """Whatever goes in comes out, with matching digests on both sides."""

    @settings(max_examples=25, deadline=None)
    @given(
        size=st.one_of(
            st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * 2**20 + 5]),
            st.integers(0, 4 * 2**20),
        ),
        seed=st.integers(0, 2**32),
    )
    def test_stream_round_trip(self, size: int, seed: int) -> None:
        data = random.Random(seed).randbytes(size)
        out = io.BytesIO()
        enc = encrypt_stream(KEY, io.BytesIO(data), out)
        blob = out.getvalue()
        n_chunks = max(1, -(-size // CHUNK))
        assert len(blob) == PREAMBLE_LEN + size + TAG_LEN * n_chunks == enc.ciphertext_size
        assert enc.plaintext_sha256 == hashlib.sha256(data).hexdigest()
        assert enc.ciphertext_sha256 == hashlib.sha256(blob).hexdigest()
        plain = io.BytesIO()
        dec = decrypt_stream(KEY, io.BytesIO(blob), plain)
        assert plain.getvalue() == data
        assert (dec.plaintext_sha256, dec.ciphertext_sha256) == (
            enc.plaintext_sha256,
            enc.ciphertext_sha256,
        )
        assert dec.plaintext_size == size and dec.key_id == KEY.key_id

    @settings(max_examples=25, deadline=None)
    @given(
        size=st.sampled_from([0, 1, SMALL - 1, SMALL, SMALL + 1, 5 * SMALL, 70000]),
        cuts=st.lists(st.integers(0, 70000), max_size=6),
    )
    def test_incremental_matches_streaming(self, size: int, cuts: list[int]) -> None:
        data = os.urandom(size)
        enc = Encryptor(KEY, SMALL_LOG2)
        pieces, pos = [], 0
        for cut in sorted(c for c in cuts if c <= size):
            pieces.append(enc.update(data[pos:cut]))
            pos = cut
        pieces.append(enc.update(memoryview(data)[pos:]))
        pieces.append(enc.finalize())
        blob = b"".join(pieces)
        assert enc.result is not None
        assert enc.result.ciphertext_sha256 == hashlib.sha256(blob).hexdigest()
        assert enc.result.plaintext_size == size
        assert decrypt_whole(KEY, blob) == data
        assert decrypt_pieces(KEY, blob) == data
        # Same plaintext, same layout as encrypt_stream (only salt and tags differ).
        assert len(blob) == len(encrypt(data, chunk_log2=SMALL_LOG2))

    def test_encryptor_header_comes_out_even_for_empty_input(self) -> None:
        enc = Encryptor(KEY)
        blob = enc.update(b"") + enc.finalize()
        assert len(blob) == PREAMBLE_LEN + TAG_LEN
        assert decrypt_whole(KEY, blob) == b""
        with pytest.raises(ValueError):
            enc.finalize()

    def test_every_file_gets_a_fresh_salt(self) -> None:
        assert encrypt(b"same") != encrypt(b"same")

    def test_read_header_needs_no_key(self, tmp_path: Path) -> None:
        path = tmp_path / "b.kdx"
        path.write_bytes(encrypt(b"x", chunk_log2=SMALL_LOG2))
        header = read_header(path)
        assert header.key_id == KEY.key_id
        assert header.chunk_size == SMALL and header.version == 1 and header.alg == 1
        with path.open("rb") as fh:
            assert read_header(fh).key_id == KEY.key_id

    def test_chunk_size_outside_the_range_is_refused(self) -> None:
        with pytest.raises(UsageError, match="outside"):
            encrypt(b"x", chunk_log2=30)


@pytest.fixture(scope="module")
def blob() -> bytes:
    """Five full 4 KiB chunks and a short final one."""
    return encrypt(random.Random(7).randbytes(5 * SMALL + 1000), chunk_log2=SMALL_LOG2)


def chunk_at(blob: bytes, i: int) -> slice:
    """Where chunk `i` sits in a small-chunk file."""
    start = PREAMBLE_LEN + i * CT_SMALL
    return slice(start, start + CT_SMALL)


def flip(data: bytes, offset: int) -> bytes:
    """`data` with one bit flipped at `offset`."""
    out = bytearray(data)
    out[offset] ^= 0x04
    return bytes(out)


def expect(decrypt: Decrypt, blob: bytes, error: type[Exception], match: str = "") -> str:
    """Decrypting `blob` raises exactly `error`; return its message."""
    with pytest.raises(DecryptionFailed, match=match or None) as err:
        decrypt(KEY, blob)
    assert type(err.value) is error, f"{type(err.value).__name__}: {err.value}"
    assert isinstance(err.value, OperationFailed) and err.value.exit_code == 1
    message = str(err.value)
    assert "\n" not in message and "backup.kdx" in message
    return message


@DECRYPTORS
class TestTampering:
    """Each way a file can be damaged is detected, with its own error class."""

    def test_intact_file_decrypts(self, decrypt: Decrypt, blob: bytes) -> None:
        assert len(decrypt(KEY, blob)) == 5 * SMALL + 1000

    @pytest.mark.parametrize("where", [0, 100, CT_SMALL - 1])
    def test_flipped_bit_in_a_chunk(self, decrypt: Decrypt, blob: bytes, where: int) -> None:
        damaged = flip(blob, chunk_at(blob, 2).start + where)
        assert "chunk 2" in expect(decrypt, damaged, TamperedError)

    def test_flipped_bit_in_a_full_final_chunk(self, decrypt: Decrypt) -> None:
        whole = encrypt(os.urandom(3 * SMALL), chunk_log2=SMALL_LOG2)
        expect(decrypt, flip(whole, len(whole) - 20), TamperedError, "chunk 2")

    def test_chunk_from_another_file_with_the_same_key(self, decrypt: Decrypt, blob: bytes) -> None:
        other = encrypt(os.urandom(5 * SMALL), chunk_log2=SMALL_LOG2)
        spliced = blob[: chunk_at(blob, 1).start] + other[chunk_at(other, 1)] + blob[chunk_at(blob, 2).start :]  # fmt: skip
        expect(decrypt, spliced, TamperedError, "chunk 1")

    @pytest.mark.parametrize("cut", [1, 500, CT_SMALL + 17])
    def test_truncated_inside_a_chunk(self, decrypt: Decrypt, blob: bytes, cut: int) -> None:
        expect(decrypt, blob[:-cut], TruncatedError)

    def test_truncated_at_a_chunk_boundary(self, decrypt: Decrypt, blob: bytes) -> None:
        expect(decrypt, blob[: chunk_at(blob, 3).start], TruncatedError, "after chunk 2")

    def test_dropped_final_chunk(self, decrypt: Decrypt, blob: bytes) -> None:
        expect(decrypt, blob[: chunk_at(blob, 5).start], TruncatedError, "not its final chunk")

    def test_dropped_full_final_chunk(self, decrypt: Decrypt) -> None:
        whole = encrypt(os.urandom(3 * SMALL), chunk_log2=SMALL_LOG2)
        expect(decrypt, whole[:-CT_SMALL], TruncatedError, "after chunk 1")

    def test_header_only_and_cut_header(self, decrypt: Decrypt, blob: bytes) -> None:
        expect(decrypt, blob[:PREAMBLE_LEN], TruncatedError, "header but no chunks")
        expect(decrypt, blob[:50], TruncatedError, "inside its 112-byte header")

    def test_reordered_chunks(self, decrypt: Decrypt, blob: bytes) -> None:
        one, two = blob[chunk_at(blob, 1)], blob[chunk_at(blob, 2)]
        swapped = blob[: chunk_at(blob, 1).start] + two + one + blob[chunk_at(blob, 3).start :]
        expect(decrypt, swapped, ReorderedChunkError, "chunk 1 .* authenticates as chunk 2")

    def test_duplicated_chunk(self, decrypt: Decrypt, blob: bytes) -> None:
        dup = blob[: chunk_at(blob, 3).start] + blob[chunk_at(blob, 2)] + blob[chunk_at(blob, 3).start :]  # fmt: skip
        expect(decrypt, dup, ReorderedChunkError, "chunk 3 .* authenticates as chunk 2")

    @pytest.mark.parametrize("extra", [1, 100, 3 * CT_SMALL])
    def test_appended_after_a_short_final_chunk(
        self, decrypt: Decrypt, blob: bytes, extra: int
    ) -> None:
        expect(decrypt, blob + os.urandom(extra), TrailingDataError, "appended")

    def test_appended_with_default_chunks(self, decrypt: Decrypt) -> None:
        whole = encrypt(os.urandom(CHUNK + 5000))
        expect(decrypt, whole + os.urandom(CHUNK), TrailingDataError, "appended")

    def test_appended_after_a_full_final_chunk(self, decrypt: Decrypt) -> None:
        whole = encrypt(os.urandom(3 * SMALL), chunk_log2=SMALL_LOG2)
        expect(decrypt, whole + b"\0" * 10, TrailingDataError, "final chunk 2")
        expect(decrypt, whole + whole[-CT_SMALL:], TrailingDataError, "final chunk 2")

    @pytest.mark.parametrize(
        ("offset", "field"),
        [(8, "alg"), (9, "chunk_log2"), (10, "reserved"), (20, "key id"), (40, "salt"), (70, "pad"), (90, "mac")],
    )  # fmt: skip
    def test_header_edits(self, decrypt: Decrypt, blob: bytes, offset: int, field: str) -> None:
        expect(decrypt, flip(blob, offset), HeaderTamperedError, "header")

    def test_version_and_magic_edits(self, decrypt: Decrypt, blob: bytes) -> None:
        expect(decrypt, flip(blob, 7), UnsupportedFormatError, "version 5")
        expect(decrypt, flip(blob, 0), NotKdxFileError, "not a kconsole encrypted file")

    def test_not_a_kdx_file(self, decrypt: Decrypt) -> None:
        expect(decrypt, b"", NotKdxFileError, "empty")
        expect(decrypt, os.urandom(500), NotKdxFileError, "no KDXENC header")
        expect(decrypt, b"Salted__" + os.urandom(100), NotKdxFileError)


@DECRYPTORS
class TestKeys:
    """Wrong and unknown keys say which key the file needs."""

    def test_wrong_key(self, decrypt: Decrypt, blob: bytes) -> None:
        with pytest.raises(WrongKeyError) as err:
            decrypt(OTHER_KEY, blob)
        assert KEY.key_id in str(err.value) and OTHER_KEY.key_id in str(err.value)

    def test_unknown_key_in_keyring(self, decrypt: Decrypt, blob: bytes) -> None:
        with pytest.raises(UnknownKeyError) as err:
            decrypt(Keyring.from_keys([OTHER_KEY]), blob)
        assert KEY.key_id in str(err.value) and OTHER_KEY.key_id in str(err.value)

    def test_keyring_picks_the_right_key(self, decrypt: Decrypt, blob: bytes) -> None:
        assert len(decrypt(Keyring.from_keys([OTHER_KEY, KEY]), blob)) == 5 * SMALL + 1000


class TestFiles:
    """decrypt_file / encrypt_file publish their output only when it is whole."""

    def test_round_trip_on_disk(self, tmp_path: Path) -> None:
        plain = tmp_path / "plain"
        plain.write_bytes(os.urandom(200_000))
        enc = encrypt_file(KEY, plain, tmp_path / "b.kdx")
        assert os.stat(tmp_path / "b.kdx").st_mode & 0o777 == 0o600
        dec = decrypt_file(KEY, tmp_path / "b.kdx", tmp_path / "out" / "restored")
        assert (tmp_path / "out" / "restored").read_bytes() == plain.read_bytes()
        assert dec.ciphertext_sha256 == enc.ciphertext_sha256
        assert dec.ciphertext_size == os.path.getsize(tmp_path / "b.kdx")

    @pytest.mark.parametrize(
        "damage",
        [
            lambda b: b[:-5],
            lambda b: flip(b, len(b) // 2),
            lambda b: b + b"junk",
        ],
        ids=["truncated", "flipped", "appended"],
    )
    def test_failed_decrypt_leaves_no_output(
        self, tmp_path: Path, damage: Callable[[bytes], bytes]
    ) -> None:
        src = tmp_path / "in"
        src.mkdir()
        backup = src / "b.kdx"
        backup.write_bytes(damage(encrypt(os.urandom(300_000))))
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        with pytest.raises(DecryptionFailed):
            decrypt_file(KEY, backup, out_dir / "restored")
        assert list(out_dir.iterdir()) == []

    def test_failed_decrypt_keeps_an_existing_output_as_it_was(self, tmp_path: Path) -> None:
        backup = tmp_path / "b.kdx"
        backup.write_bytes(encrypt(os.urandom(1000))[:-1])
        out = tmp_path / "restored"
        out.write_bytes(b"previous")
        with pytest.raises(TruncatedError):
            decrypt_file(KEY, backup, out)
        assert out.read_bytes() == b"previous"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b.kdx", "restored"]

    def test_missing_input_and_special_output_are_usage_errors(self, tmp_path: Path) -> None:
        with pytest.raises(UsageError, match="does not exist"):
            decrypt_file(KEY, tmp_path / "nope", tmp_path / "out")
        with pytest.raises(UsageError, match="is a directory"):
            encrypt_file(KEY, tmp_path, tmp_path / "out")
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
        with pytest.raises(UsageError, match="not a regular file"):
            encrypt_file(KEY, plain, os.devnull)
        assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)


def test_plaintext_reader_verifies_an_archive_without_writing_plaintext(tmp_path: Path) -> None:
    import gzip
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"state/{i}.ldb")
            payload = os.urandom(10_000)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    blob = encrypt(gzip.compress(raw.getvalue()), chunk_log2=SMALL_LOG2)
    check = check_gzip_layers_and_tar(PlaintextReader(Decryptor(KEY), io.BytesIO(blob)))
    assert (check.gzip_layers, check.members) == (1, 3)
    assert check.names == ["state/0.ldb", "state/1.ldb", "state/2.ldb"]
    with pytest.raises(TruncatedError):
        check_gzip_layers_and_tar(PlaintextReader(Decryptor(KEY), io.BytesIO(blob[:-1])))
