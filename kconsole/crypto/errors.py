"""Why a decryption failed, one class per diagnosis the operator acts on differently.

Every class is an `OperationFailed` (exit 1): the input was read and found wanting. The
message is one sentence that names the file and, where it helps, the chunk or key id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kconsole.errors import OperationFailed


class DecryptionFailed(OperationFailed):
    """An encrypted file could not be decrypted; the subclasses say why."""


class NotKdxFileError(DecryptionFailed):
    """The file is not in a format kconsole decrypts (no KDXENC or openssl magic)."""


class UnsupportedFormatError(DecryptionFailed):
    """A KDXENC file of a version, algorithm or chunk size this kconsole does not read."""


class UnknownKeyError(DecryptionFailed):
    """The key id the file needs is not in the keyring."""


class WrongKeyError(DecryptionFailed):
    """The key given is not the key the file was encrypted with."""


class TamperedError(DecryptionFailed):
    """A chunk failed authentication: the bytes were modified or corrupted."""


class HeaderTamperedError(TamperedError):
    """The header's MAC does not match under the right key: the header was edited."""


class ReorderedChunkError(TamperedError):
    """A chunk authenticates, but at another position: chunks were reordered or duplicated."""


class TrailingDataError(TamperedError):
    """Bytes follow the final chunk: something was appended to the file."""


class TruncatedError(DecryptionFailed):
    """The file ends before its final chunk: an interrupted copy or a cut file."""


class LegacyDecryptError(DecryptionFailed):
    """A legacy openssl file did not decrypt (one opaque reason, to give no padding oracle)."""


class ArchiveError(OperationFailed):
    """Decrypted data is not a sound gzip / tar archive."""


@contextlib.contextmanager
def os_errors_as_failure(what: str) -> Iterator[None]:
    """Turn an OSError inside the block into one sentence: "could not WHAT: REASON"."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OperationFailed(f"could not {what}: {reason}") from None
