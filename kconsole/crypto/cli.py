"""What `kconsole crypto keygen|encrypt|decrypt` do; argument parsing lives in kconsole.cli.

Each command prints one line on stdout when it succeeds and returns the exit code;
failures are raised as `KconsoleError`s for the CLI boundary to print as one sentence.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kconsole.crypto.detect import detect_format
from kconsole.crypto.errors import NotKdxFileError
from kconsole.crypto.keys import Key, Keyring, keygen, read_key_file
from kconsole.crypto.legacy import LABEL, LegacyKdf, decrypt_legacy_file
from kconsole.crypto.stream import decrypt_file, encrypt_file
from kconsole.errors import EXIT_OK, UsageError
from kconsole.fsutil import refuse_overwriting_input


def cmd_keygen(out: Path) -> int:
    """Write a new key file (0600, never over an existing file) and print its key id."""
    key = keygen(out)
    print(f"wrote new key {out} (key id {key.key_id}, mode 0600)")
    return EXIT_OK


def cmd_encrypt(key_path: Path, in_path: Path, out_path: Path) -> int:
    """Encrypt IN to OUT in the native authenticated format with the key file (OUT may not be
    IN or the key file under any name: that would destroy it)."""
    refuse_overwriting_input(out_path, input=in_path, key_file=key_path)
    key = read_key_file(key_path)
    result = encrypt_file(key, in_path, out_path)
    print(
        f"encrypted {in_path} -> {out_path}: {result.plaintext_size} bytes, key id "
        f"{result.key_id}, ciphertext sha256 {result.ciphertext_sha256}"
    )
    return EXIT_OK


def _legacy_kdf(pbkdf2: bool, kdf: str | None, iterations: int | None) -> LegacyKdf | None:
    chosen: LegacyKdf | None
    if kdf is not None:
        try:
            chosen = LegacyKdf(kdf.lower())
        except ValueError:
            names = ", ".join(k.value for k in LegacyKdf)
            raise UsageError(f"unknown KDF {kdf!r}; use one of {names}") from None
        if pbkdf2 and chosen is not LegacyKdf.PBKDF2:
            raise UsageError(f"--pbkdf2 contradicts KDF {kdf}")
    else:
        chosen = LegacyKdf.PBKDF2 if pbkdf2 else None
    if iterations is not None:
        if iterations < 1:
            raise UsageError(f"the PBKDF2 iteration count must be positive, not {iterations}")
        if chosen not in (None, LegacyKdf.PBKDF2):
            raise UsageError("an iteration count applies only to PBKDF2")
    return chosen


def cmd_decrypt(
    in_path: Path,
    out_path: Path,
    key_path: Path | None = None,
    keyring_dir: Path | None = None,
    pbkdf2: bool = False,
    kdf: str | None = None,
    iterations: int | None = None,
) -> int:
    """Decrypt IN to OUT, native or legacy by its magic; OUT appears only if it all checks out.

    `pbkdf2`, `kdf` ("sha256", "md5", "pbkdf2") and `iterations` only matter for legacy
    files, and only when the plaintext is not gzip (otherwise the KDF is detected). OUT may
    not be IN or a key file under any name (symlink, hard link, another spelling).
    """
    refuse_overwriting_input(out_path, input=in_path, key_file=key_path)
    if keyring_dir is not None and os.path.isdir(keyring_dir):
        for entry in os.scandir(keyring_dir):
            refuse_overwriting_input(out_path, key_file=entry.path)
    legacy_kdf = _legacy_kdf(pbkdf2, kdf, iterations)
    keys: Key | Keyring
    if key_path is not None and keyring_dir is None:
        keys = read_key_file(key_path)
    elif keyring_dir is not None and key_path is None:
        keys = Keyring(keyring_dir)
    else:
        raise UsageError("give exactly one of --key KEYFILE or --keyring DIR")
    fmt = detect_format(in_path)
    if fmt == "kdxenc":
        result = decrypt_file(keys, in_path, out_path)
        print(
            f"decrypted {in_path} -> {out_path}: {result.plaintext_size} bytes, authenticated, "
            f"key id {result.key_id}, plaintext sha256 {result.plaintext_sha256}"
        )
        return EXIT_OK
    if fmt == "openssl-legacy":
        legacy = decrypt_legacy_file(keys, in_path, out_path, legacy_kdf, iterations)
        params = legacy.params
        print(
            f"warning: {in_path} is an openssl enc file ({LABEL}): a wrong key or damage "
            "can go unnoticed; verify the archive and its checksum before trusting it",
            file=sys.stderr,
        )
        if params.password_note:
            print(f"note: {params.password_note} from {params.key.name}", file=sys.stderr)
        print(
            f"decrypted {in_path} -> {out_path}: {legacy.plaintext_size} bytes, {LABEL}, "
            f"{params.describe()}, key id {legacy.key_id}, plaintext sha256 "
            f"{legacy.plaintext_sha256}"
        )
        return EXIT_OK
    raise NotKdxFileError(
        f"{in_path} is neither a kconsole encrypted file nor an openssl enc file with a salt"
    )
