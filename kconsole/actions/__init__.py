"""The action registry: runbook `action = "family.verb"` names to Action classes.

One module per family: `ssh.exec` lives in `kconsole/actions/ssh.py`.
"""

from __future__ import annotations

from kconsole.actions.backup import BackupCreate, BackupPrune, BackupRestore, BackupVerify
from kconsole.actions.base import Action, ActionResult, Field, StepContext
from kconsole.actions.crypto import CryptoDecrypt, CryptoEncrypt, CryptoKeygen, CryptoRekey
from kconsole.actions.gate import GateAction
from kconsole.actions.http import HttpCheck
from kconsole.actions.incident import IncidentEscalate
from kconsole.actions.notify import Notify
from kconsole.actions.shell import Shell
from kconsole.actions.ssh import SshCapture, SshExec, SshStream
from kconsole.actions.transfer import TransferCopy
from kconsole.actions.wait import WaitUntil

REGISTRY: dict[str, type[Action]] = {
    cls.name: cls
    for cls in (
        Shell,
        SshExec,
        SshStream,
        SshCapture,
        BackupCreate,
        BackupRestore,
        BackupVerify,
        BackupPrune,
        TransferCopy,
        CryptoEncrypt,
        CryptoDecrypt,
        CryptoRekey,
        CryptoKeygen,
        HttpCheck,
        WaitUntil,
        Notify,
        GateAction,
        IncidentEscalate,
    )
}


__all__ = ["REGISTRY", "Action", "ActionResult", "Field", "StepContext"]
