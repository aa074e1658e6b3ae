"""Key files, key ids, keygen and keyrings (kconsole.crypto.keys)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kconsole.crypto import Keyring, decrypt_file, encrypt_file, keygen, read_key_file
from kconsole.crypto.keys import Key, key_id_of
from kconsole.errors import UsageError

HEX_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl binary")


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    """A key file with exact bytes and mode."""
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


class TestKeyFile:
    """Reading the plan's `openssl rand -hex 32` key files."""

    def test_hex_key_decodes_to_32_bytes_and_keeps_the_openssl_password(
        self, tmp_path: Path
    ) -> None:
        key = read_key_file(write_key(tmp_path / "k.key", HEX_KEY.encode() + b"\n"))
        assert key.master == bytes.fromhex(HEX_KEY)
        assert key.openssl_password == HEX_KEY.encode()
        assert re.fullmatch(r"[0-9a-f]{32}", key.key_id)
        assert key.key_id == key_id_of(bytes.fromhex(HEX_KEY))

    def test_crlf_key_has_the_same_master_but_openssl_keeps_the_cr(self, tmp_path: Path) -> None:
        lf = read_key_file(write_key(tmp_path / "lf.key", HEX_KEY.encode() + b"\n"))
        crlf = read_key_file(write_key(tmp_path / "crlf.key", HEX_KEY.encode() + b"\r\n"))
        assert crlf.master == lf.master and crlf.key_id == lf.key_id
        assert crlf.openssl_password == HEX_KEY.encode() + b"\r"
        candidates = crlf.legacy_password_candidates()
        assert [c.password for c in candidates] == [HEX_KEY.encode() + b"\r", HEX_KEY.encode()]
        assert candidates[0].note == "" and "carriage return" in candidates[1].note
        assert len(lf.legacy_password_candidates()) == 1

    def test_openssl_password_reads_only_the_first_1023_bytes_of_the_first_line(
        self, tmp_path: Path
    ) -> None:
        long_line = b"p" * 2000
        key = read_key_file(write_key(tmp_path / "long.key", long_line + b"\nsecond line\n"))
        assert key.openssl_password == b"p" * 1023
        two = read_key_file(write_key(tmp_path / "two.key", b"first\nsecond\n"))
        assert two.openssl_password == b"first" and two.master == b"first"
        no_newline = read_key_file(write_key(tmp_path / "nonl.key", HEX_KEY.encode()))
        assert no_newline.openssl_password == HEX_KEY.encode()

    def test_non_hex_key_uses_the_stripped_line(self, tmp_path: Path) -> None:
        key = read_key_file(write_key(tmp_path / "pw.key", b"  a passphrase  \r\n"))
        assert key.master == b"a passphrase"
        assert key.openssl_password == b"  a passphrase  \r"

    @pytest.mark.parametrize(("mode", "word"), [(0o644, "readable"), (0o640, "readable"), (0o604, "readable"), (0o620, "writable")])  # fmt: skip
    def test_key_open_to_others_is_refused_naming_file_and_mode(
        self, tmp_path: Path, mode: int, word: str
    ) -> None:
        path = write_key(tmp_path / "k.key", HEX_KEY.encode() + b"\n", mode)
        with pytest.raises(UsageError) as err:
            read_key_file(path)
        assert str(err.value) == (
            f"key file {path} is {word} by others (mode {mode:04o}); run chmod 600 {path}"
        )
        assert err.value.exit_code == 2

    def test_0400_is_private_enough(self, tmp_path: Path) -> None:
        read_key_file(write_key(tmp_path / "k.key", HEX_KEY.encode() + b"\n", 0o400))

    def test_missing_empty_and_directory_keys_are_usage_errors(self, tmp_path: Path) -> None:
        with pytest.raises(UsageError, match="does not exist"):
            read_key_file(tmp_path / "nope.key")
        with pytest.raises(UsageError, match="is empty"):
            read_key_file(write_key(tmp_path / "empty.key", b""))
        with pytest.raises(UsageError, match="is empty"):
            read_key_file(write_key(tmp_path / "blank.key", b"\r\n"))
        (tmp_path / "dir.key").mkdir(mode=0o700)
        with pytest.raises(UsageError, match="not a regular file"):
            read_key_file(tmp_path / "dir.key")

    def test_repr_never_shows_the_secret(self) -> None:
        key = Key.from_bytes(HEX_KEY.encode() + b"\n")
        assert HEX_KEY not in repr(key) and "master" not in repr(key)


class TestKeygen:
    """`kconsole crypto keygen`: a new private key, never over an old one."""

    def test_keygen_writes_a_0600_openssl_style_key(self, tmp_path: Path) -> None:
        path = tmp_path / "keys" / "new.key"
        key = keygen(path)
        assert os.stat(path).st_mode & 0o777 == 0o600
        text = path.read_bytes()
        assert re.fullmatch(rb"[0-9a-f]{64}\n", text)
        assert key == read_key_file(path)
        assert [p.name for p in path.parent.iterdir()] == ["new.key"]  # no temp file left

    def test_keygen_refuses_to_overwrite(self, tmp_path: Path) -> None:
        path = keygen(tmp_path / "k.key").path
        assert path is not None
        before = path.read_bytes()
        with pytest.raises(UsageError, match="already exists"):
            keygen(path)
        assert path.read_bytes() == before

    def test_two_keygens_make_different_keys(self, tmp_path: Path) -> None:
        assert keygen(tmp_path / "a.key").master != keygen(tmp_path / "b.key").master

    @needs_openssl
    def test_openssl_reads_a_keygen_key(self, tmp_path: Path) -> None:
        key_path = tmp_path / "k.key"
        keygen(key_path)
        plain = tmp_path / "plain"
        plain.write_bytes(b"kaldrix" * 1000)
        enc, dec = tmp_path / "plain.enc", tmp_path / "plain.dec"
        for args in (["-salt", "-in", plain, "-out", enc], ["-d", "-in", enc, "-out", dec]):
            subprocess.run(
                [OPENSSL, "enc", "-aes-256-cbc", "-pass", f"file:{key_path}", *map(str, args)],
                check=True,
                capture_output=True,
            )
        assert dec.read_bytes() == plain.read_bytes()


class TestKeyring:
    """Finding the right key after rotation."""

    def test_keyring_finds_an_older_key_by_id_after_rotation(self, tmp_path: Path) -> None:
        ring_dir = tmp_path / "keys"
        old = keygen(ring_dir / "2024-01.key")
        assert old.path is not None
        os.utime(old.path, (1_700_000_000, 1_700_000_000))
        backup = tmp_path / "old-backup.kdx"
        plain = tmp_path / "plain"
        plain.write_bytes(os.urandom(5000))
        encrypt_file(old, plain, backup)

        new = keygen(ring_dir / "2024-02.key")
        ring = Keyring(ring_dir)
        assert ring.current().key_id == new.key_id
        assert len(ring) == 2 and old.key_id in ring and new.key_id in ring
        assert ring.key_ids == [new.key_id, old.key_id]
        found = ring.find(old.key_id)
        assert found is not None and found.path == old.path

        out = tmp_path / "restored"
        result = decrypt_file(ring, backup, out)
        assert result.key_id == old.key_id
        assert out.read_bytes() == plain.read_bytes()

    def test_current_breaks_mtime_ties_by_name(self, tmp_path: Path) -> None:
        for name in ("a.key", "c.key", "b.key"):
            key = keygen(tmp_path / name)
            assert key.path is not None
            os.utime(key.path, (1_700_000_000, 1_700_000_000))
        assert Keyring(tmp_path).current().name.endswith("c.key")

    def test_keyring_refuses_a_public_key_file_and_empty_dirs(self, tmp_path: Path) -> None:
        with pytest.raises(UsageError, match="no \\*.key files"):
            Keyring(tmp_path)
        with pytest.raises(UsageError, match="not a directory"):
            Keyring(tmp_path / "missing")
        keygen(tmp_path / "ok.key")
        write_key(tmp_path / "loose.key", HEX_KEY.encode() + b"\n", 0o644)
        with pytest.raises(UsageError, match="loose.key is readable by others"):
            Keyring(tmp_path)

    def test_keyring_ignores_other_files_and_collapses_copies(self, tmp_path: Path) -> None:
        key = keygen(tmp_path / "a.key")
        assert key.path is not None
        shutil.copy2(key.path, tmp_path / "copy.key")
        (tmp_path / "README").write_text("not a key")
        ring = Keyring(tmp_path)
        assert len(ring) == 1
        assert ring.find(key.key_id_bytes) == ring.find(key.key_id.upper())
