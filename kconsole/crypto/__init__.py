"""Backup encryption: key files and keyrings, the native KDXENC format, legacy openssl files.

New backups are written only in KDXENC v1 (chunked AES-256-GCM, `stream`); the plan's
`openssl enc -aes-256-cbc` files can be read (`legacy`) but never written. See
docs/encryption.md for the byte layout and what each error means.
"""

from kconsole.crypto.detect import Format, detect_format
from kconsole.crypto.errors import (
    ArchiveError,
    DecryptionFailed,
    HeaderTamperedError,
    LegacyDecryptError,
    NotKdxFileError,
    ReorderedChunkError,
    TamperedError,
    TrailingDataError,
    TruncatedError,
    UnknownKeyError,
    UnsupportedFormatError,
    WrongKeyError,
)
from kconsole.crypto.keys import Key, Keyring, keygen, read_key_file
from kconsole.crypto.legacy import (
    ArchiveCheck,
    LegacyDecryptor,
    LegacyKdf,
    LegacyResult,
    check_gzip_layers_and_tar,
    decrypt_legacy_file,
    decrypt_legacy_stream,
)
from kconsole.crypto.stream import (
    Decryptor,
    DecryptResult,
    Encryptor,
    EncryptResult,
    Header,
    PlaintextReader,
    decrypt_file,
    decrypt_stream,
    encrypt_file,
    encrypt_stream,
    read_header,
)

__all__ = [
    "Format",
    "detect_format",
    "ArchiveCheck",
    "ArchiveError",
    "DecryptResult",
    "DecryptionFailed",
    "Decryptor",
    "EncryptResult",
    "Encryptor",
    "Header",
    "HeaderTamperedError",
    "Key",
    "Keyring",
    "LegacyDecryptError",
    "LegacyDecryptor",
    "LegacyKdf",
    "LegacyResult",
    "NotKdxFileError",
    "PlaintextReader",
    "ReorderedChunkError",
    "TamperedError",
    "TrailingDataError",
    "TruncatedError",
    "UnknownKeyError",
    "UnsupportedFormatError",
    "WrongKeyError",
    "check_gzip_layers_and_tar",
    "decrypt_file",
    "decrypt_legacy_file",
    "decrypt_legacy_stream",
    "decrypt_stream",
    "encrypt_file",
    "encrypt_stream",
    "keygen",
    "read_header",
    "read_key_file",
]
