"""Which encrypted format a file is in: the native KDXENC or the plan's openssl files."""

from __future__ import annotations

import os
from typing import Literal

from kconsole.crypto.legacy import SALTED
from kconsole.crypto.stream import MAGIC, open_input

Format = Literal["kdxenc", "openssl-legacy"]


def detect_format(path: str | os.PathLike[str]) -> Format | None:
    """Which encrypted format a file is in, by its magic bytes (None if neither)."""
    with open_input(path) as fh:
        head = fh.read(len(SALTED))
    if head.startswith(MAGIC):
        return "kdxenc"
    if head == SALTED:
        return "openssl-legacy"
    return None
