"""`crypto.encrypt`, `crypto.decrypt`, `crypto.rekey`, `crypto.keygen`."""

from __future__ import annotations

from typing import ClassVar

from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.errors import OperationFailed
from kconsole.site import BACKUP_KINDS


def _unavailable(name: str) -> OperationFailed:
    return OperationFailed(f"{name} is not available in this build of kconsole.")


class CryptoEncrypt(Action):
    """Encrypt a local file in the native authenticated format."""

    name = "crypto.encrypt"
    fields: ClassVar[dict[str, Field]] = {
        "input": Field("text", required=True),
        "output": Field("text", required=True),
        "key": Field("text", help="key file; default the site's current key"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Encrypt."""
        raise _unavailable(self.name)


class CryptoDecrypt(Action):
    """Decrypt a native or legacy file; the key is found by the file's key id."""

    name = "crypto.decrypt"
    fields: ClassVar[dict[str, Field]] = {
        "input": Field("text", required=True),
        "output": Field("text", required=True),
        "key": Field("text", help="key file; default: the site keyring, by key id"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Decrypt."""
        raise _unavailable(self.name)


class CryptoRekey(Action):
    """Re-encrypt backups to a new key (after a key compromise)."""

    name = "crypto.rekey"
    destructive = True
    fields: ClassVar[dict[str, Field]] = {
        "kind": Field("str", choices=BACKUP_KINDS),
        "to_key": Field("text", help="key file; default the site's current key"),
        "location": Field("str"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Re-encrypt."""
        raise _unavailable(self.name)


class CryptoKeygen(Action):
    """Generate a new backup key in the site keyring (0600) and make it current."""

    name = "crypto.keygen"
    fields: ClassVar[dict[str, Field]] = {
        "name": Field("text", help="file name in the keyring, default backup_{now:%Y%m%d_%H%M%S}.key"),
    }

    async def run(self, ctx: StepContext) -> ActionResult:
        """Generate."""
        raise _unavailable(self.name)
