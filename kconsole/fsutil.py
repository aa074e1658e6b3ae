"""Durable file writes (temp file in the same directory, fsync, rename, fsync the directory)
and a lock for small state files several processes update."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from kconsole.errors import UsageError


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new directory entry in `path` durable."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` only if the block finishes without error.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically and durably."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created 0600 if missing) for a read-modify-write of a
    small state file that several processes update (the console, a cron run, the CLI)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: the same path spelled differently (`./x`, `x`,
    `d/../x`), a symlink to it, or a hard link of it. A path that does not exist yet is
    compared by where it would be created (its directory resolved, symlinks followed)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        pass  # one of them does not exist (yet): compare where they resolve
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwriting_input(out: str | os.PathLike[str], **inputs: Any) -> None:
    """UsageError when the output path names one of the command's input files (given as
    `what=path`, None for an input not given), so a command never destroys its own input."""
    for what, path in inputs.items():
        if path is not None and same_file(out, path):
            raise UsageError(
                f"the output {out} is the {what.replace('_', ' ')} {path}; "
                "write to another file (the input would be destroyed)"
            )
