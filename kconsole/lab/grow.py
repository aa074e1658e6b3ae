"""Chain state at real size: `python -m kconsole.lab grow --dir DIR NODE SIZE`.

A lab node's chain (snapshot plus block files) is a few hundred KB, which hides every cost
that grows with the data. `grow_state` adds block bodies under the state directory until
it holds SIZE more bytes, laid out as a node keeps them: `bodies/NNNNNNNN.dat` segments of
BODY_SEGMENT bytes, each made of transaction records (text: addresses, amounts, memos,
which compress) and witness blobs (signatures and proofs: random bytes, which do not),
about COMPRESSIBLE of the bytes being text. `bodies/sizes.json` lists every segment and
its size, which `verify-state` checks, so a truncated or missing body fails the check.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from kconsole.errors import UsageError
from kconsole.fsutil import atomic_write
from kconsole.lab.labtool import BODY_DIR, body_sizes

BODY_SEGMENT = 16 << 20
"""Bytes per body segment: real nodes keep segments of tens of MB."""

COMPRESSIBLE = 0.5
"""Share of the bytes that is transaction text (gzip reaches about 3x on it)."""

_RECORD = 64 << 10
"""Each segment alternates text and witness runs of about this size."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """`1G`, `512M`, `1GiB`, `300K` or a byte count, as bytes (binary units); UsageError else."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"size {text!r} is not a size such as 1G, 512M or 300K.")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _text_pool(rng: random.Random, node: str, n: int = 2048) -> list[bytes]:
    """Distinct transaction lines to draw from: realistic fields, repeated vocabulary."""
    memos = ("transfer", "stake", "unstake", "reward", "fee", "swap", "bridge-in", "bridge-out")
    lines = []
    for i in range(n):
        lines.append(
            (
                f'{{"tx":"{rng.randbytes(16).hex()}","from":"kdx1{rng.randbytes(10).hex()}",'
                f'"to":"kdx1{rng.randbytes(10).hex()}","amount":{rng.randint(1, 10**9)},'
                f'"fee":{rng.randint(100, 5000)},"nonce":{i},"memo":"{rng.choice(memos)}",'
                f'"node":"{node}"}}\n'
            ).encode()
        )
    return lines


def _segment(rng: random.Random, pool: list[bytes], size: int) -> bytes:
    """One body segment of exactly `size` bytes: text and witness runs interleaved."""
    parts: list[bytes] = []
    have = 0
    avg = sum(len(p) for p in pool) // len(pool)
    while have < size:
        text = b"".join(rng.choices(pool, k=max(1, int(_RECORD * COMPRESSIBLE) // avg)))
        blob = rng.randbytes(int(_RECORD * (1 - COMPRESSIBLE)))
        parts += (text, blob)
        have += len(text) + len(blob)
    return b"".join(parts)[:size]


def grow_state(state: Path, size: int, node: str, seed: str | None = None) -> int:
    """Add about `size` bytes of block bodies to the chain state at `state`; return bytes added.

    Each segment is written to a temporary name, fsynced and renamed, and the size list is
    rewritten the same way after every segment, so an interrupted grow leaves a state that
    still verifies.
    """
    if size <= 0:
        raise UsageError("the size to grow by must be more than 0 bytes.")
    if not (state / "index.json").is_file():
        raise UsageError(f"{state} holds no chain state (no index.json).")
    bodies = state / BODY_DIR
    bodies.mkdir(exist_ok=True)
    sizes = body_sizes(state)
    rng = random.Random(f"{seed or node}:{len(sizes)}")
    pool = _text_pool(rng, node)
    added = 0
    n = len(sizes)
    while added < size:
        chunk = min(BODY_SEGMENT, size - added)
        name = f"{n:08d}.dat"
        atomic_write(bodies / name, _segment(rng, pool, chunk), 0o644)
        sizes[name] = chunk
        atomic_write(bodies / "sizes.json", (json.dumps(sizes, indent=1) + "\n").encode(), 0o644)
        added += chunk
        n += 1
    return added
