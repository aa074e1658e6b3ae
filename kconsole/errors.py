"""The exceptions that reach the operator, each carrying its CLI exit code.

Anything raised to the CLI boundary as a `KconsoleError` is printed as one sentence on
stderr and turned into its exit code; anything else is a bug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3


class KconsoleError(Exception):
    """An error meant for the operator: one clear sentence and an exit code."""

    exit_code = EXIT_FAILED


class UsageError(KconsoleError):
    """Bad input or usage: a file, a parameter, a flag. Exit 2."""

    exit_code = EXIT_USAGE


class OperationFailed(KconsoleError):
    """The operation ran and failed (a step, a verification, tampering found). Exit 1."""

    exit_code = EXIT_FAILED


class AccessDenied(UsageError):
    """The operator's role does not allow this action (an auditor changing something)."""
