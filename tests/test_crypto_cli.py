"""`kconsole crypto keygen|encrypt|decrypt` as the CLI calls them (kconsole.crypto.cli)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kconsole.crypto import NotKdxFileError, TamperedError, WrongKeyError, detect_format, keygen
from kconsole.crypto.cli import cmd_decrypt, cmd_encrypt, cmd_keygen
from kconsole.errors import UsageError

OPENSSL = shutil.which("openssl")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    """A fresh private key file."""
    path = tmp_path / "backup.key"
    keygen(path)
    return path


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """Some data to protect: a gzip stream, like a real backup."""
    path = tmp_path / "state.tar.gz"
    path.write_bytes(gzip.compress(os.urandom(150_000)))
    return path


def test_keygen_prints_the_key_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_keygen(tmp_path / "new.key") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote new key {tmp_path / 'new.key'} (key id ") and out.count("\n") == 1
    with pytest.raises(UsageError):
        cmd_keygen(tmp_path / "new.key")


def test_encrypt_then_decrypt(
    tmp_path: Path, key: Path, plain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enc, out = tmp_path / "state.kdx", tmp_path / "restored.tar.gz"
    assert cmd_encrypt(key, plain, enc) == 0
    assert detect_format(enc) == "kdxenc"
    assert cmd_decrypt(enc, out, key_path=key) == 0
    assert out.read_bytes() == plain.read_bytes()
    lines = capsys.readouterr()
    assert lines.err == ""
    encrypted, decrypted = lines.out.splitlines()
    assert encrypted.startswith(f"encrypted {plain} -> {enc}: 150")
    assert "authenticated" in decrypted and "unauthenticated" not in decrypted


def test_decrypt_with_a_keyring_after_rotation(tmp_path: Path, key: Path, plain: Path) -> None:
    ring = tmp_path / "keys"
    ring.mkdir()
    enc = tmp_path / "state.kdx"
    cmd_encrypt(key, plain, enc)
    shutil.move(key, ring / "old.key")
    keygen(ring / "new.key")
    assert cmd_decrypt(enc, tmp_path / "out", keyring_dir=ring) == 0
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()


def test_decrypt_needs_exactly_one_key_source(tmp_path: Path, key: Path, plain: Path) -> None:
    with pytest.raises(UsageError, match="exactly one of --key KEYFILE or --keyring DIR"):
        cmd_decrypt(plain, tmp_path / "out")
    with pytest.raises(UsageError, match="exactly one"):
        cmd_decrypt(plain, tmp_path / "out", key_path=key, keyring_dir=tmp_path)


def test_errors_carry_exit_codes(tmp_path: Path, key: Path, plain: Path) -> None:
    with pytest.raises(NotKdxFileError) as not_kdx:
        cmd_decrypt(plain, tmp_path / "out", key_path=key)
    assert not_kdx.value.exit_code == 1
    enc = tmp_path / "state.kdx"
    cmd_encrypt(key, plain, enc)
    other = tmp_path / "other.key"
    keygen(other)
    with pytest.raises(WrongKeyError):
        cmd_decrypt(enc, tmp_path / "out", key_path=other)
    blob = bytearray(enc.read_bytes())
    blob[1000] ^= 1
    enc.write_bytes(bytes(blob))
    with pytest.raises(TamperedError):
        cmd_decrypt(enc, tmp_path / "out", key_path=key)
    assert not (tmp_path / "out").exists()
    os.chmod(key, 0o644)
    with pytest.raises(UsageError) as loose:
        cmd_encrypt(key, plain, tmp_path / "x.kdx")
    assert loose.value.exit_code == 2 and "chmod 600" in str(loose.value)
    with pytest.raises(UsageError, match="unknown KDF"):
        cmd_decrypt(enc, tmp_path / "out", key_path=key, kdf="sha1")
    with pytest.raises(UsageError, match="only to PBKDF2"):
        cmd_decrypt(enc, tmp_path / "out", key_path=key, kdf="md5", iterations=5)


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl binary")
def test_legacy_decrypt_warns_on_stderr(
    tmp_path: Path, key: Path, plain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert OPENSSL is not None
    enc = tmp_path / "state.tar.gz.enc"
    subprocess.run(
        [OPENSSL, "enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-pass", f"file:{key}", "-in", str(plain), "-out", str(enc)],
        check=True,
    )  # fmt: skip
    assert detect_format(enc) == "openssl-legacy"
    capsys.readouterr()
    assert cmd_decrypt(enc, tmp_path / "out", key_path=key, pbkdf2=True) == 0
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "legacy, unauthenticated" in captured.err
    assert "legacy, unauthenticated, PBKDF2-SHA256, 10000 iterations" in captured.out
