"""Verifying backups end to end: ciphertext SHA-256 against the manifest in every location,
authenticated decrypt (or the legacy checks), every gzip layer, a full tar walk with
every member confined, plaintext SHA-256 — streamed, nothing written in plaintext."""

from __future__ import annotations

import asyncio
import gzip
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from kconsole.backups.archive import decrypting_reader, verify_file
from kconsole.backups.catalog import Backup, content_verified, record_verification
from kconsole.backups.manifest import recorded_copy
from kconsole.backups.restore import backup_paths, checked_copy
from kconsole.backups.stores import LocalStore, Store
from kconsole.backups.trust import check_backup
from kconsole.crypto import Keyring
from kconsole.errors import OperationFailed
from kconsole.site import Site

Emit = Callable[[str, str], Awaitable[None]]


@dataclass
class VerifyOutcome:
    """The verdict on one backup."""

    id: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    members: int = 0
    legacy: bool = False
    missing: list[str] = field(default_factory=list)
    """Listed locations that hold no copy (the content may still be fine)."""
    unchecked: list[str] = field(default_factory=list)
    """Locations that could not be listed, so their copy was not checked."""
    damaged: dict[str, str] = field(default_factory=dict)
    """Location -> why its copy is bad (checksum, unreadable)."""
    restorable: bool = False
    """Whether at least one copy and the content verified (a restore can use it)."""
    skipped: list[str] = field(default_factory=list)
    """Copies not read because an earlier one was good (`first_good`)."""
    content_from_record: bool = False
    """The content check was skipped: it passed before for this ciphertext (`content = "once"`)."""
    methods: dict[str, str] = field(default_factory=dict)
    """Location -> how its copy's SHA-256 was checked (at rest by the store, or read back)."""

    @property
    def complete(self) -> bool:
        """Content verified and every location holds a checked copy."""
        return self.ok and not self.missing and not self.unchecked


def _verify_stream_file(path: Path, keyring: Keyring, where: str) -> int:
    """A log-stream backup: decrypt and inflate to the end; returns plaintext bytes."""
    with path.open("rb") as fh:
        reader, _ = decrypting_reader(fh, keyring, False, where)
        inflated = cast(
            BinaryIO,
            io.BufferedReader(cast(io.RawIOBase, gzip.GzipFile(fileobj=reader, mode="rb"))),
        )
        total = 0
        try:
            while chunk := inflated.read(1 << 20):
                total += len(chunk)
        except (OSError, EOFError) as exc:
            raise OperationFailed(f"{where}: the log stream is damaged ({exc}).") from None
        return total


async def verify_backup(
    site: Site,
    backup: Backup,
    stores: dict[str, Store],
    keyring: Keyring,
    emit: Emit,
    record: bool = True,
    unreachable: dict[str, str] | None = None,
    content: str = "always",
    first_good: bool = False,
) -> VerifyOutcome:
    """Check every replica's ciphertext (the locations at once), then the content once;
    remember the verdict.

    With `content = "once"` the content check (authenticated decrypt, archive walk,
    plaintext SHA-256) is skipped when it already passed for a ciphertext with the
    manifest's SHA-256 (the backup's creation records that): each copy's size and SHA-256
    at rest is then the whole check.

    With `first_good` (a recovery's `require = "one"`) the copies are read one at a time in
    the locations' order (fastest first) and reading stops at the first good one: the rest
    are listed in `skipped`, neither checked nor called damaged.

    A location in `stores` that holds no copy is reported as a missing replica, and one in
    `unreachable` (the catalog's listing errors) as not checked; neither makes the content
    bad (the catalog keeps the backup restorable), but neither is a complete verification.
    """
    outcome = VerifyOutcome(backup.id, True, legacy=backup.legacy)
    try:
        signed = check_backup(site, backup, keyring)
    except OperationFailed as exc:
        # Nothing of a refused manifest is used: no copy is fetched, nothing decrypted.
        outcome.ok = False
        outcome.problems.append(str(exc).rstrip("."))
        if record:
            record_verification(site, backup.id, False, outcome.problems[0])
        await emit("stderr", f"{backup.id}: FAILED: {outcome.problems[0]}")
        return outcome
    if backup.manifest is not None and not signed:
        await emit(
            "stderr",
            f"{backup.id}: its manifest is unsigned (written before manifests were signed); "
            "its fields were checked against the site, its origin cannot be",
        )
    good_copy: Path | None = None
    temps: list[Path] = []
    held = [(n, s) for n, s in stores.items() if n in backup.replicas]
    skip_content = (
        content == "once"
        and backup.manifest is not None
        and content_verified(site, backup.id, backup.manifest.ciphertext_sha256)
    )
    # The content check needs one copy here: a local one, else the first location's is read
    # back; every other copy is checked where it lies when its store can (no bytes moved).
    reader = None
    if not skip_content and not any(isinstance(s, LocalStore) for _, s in held) and held:
        reader = held[0][0]

    async def read_back(name: str, store: Store) -> Path:
        path, temporary = await checked_copy(site, backup, name, store, "verify")
        if temporary:
            temps.append(path)
        outcome.methods[name] = (
            "SHA-256 of the local file" if isinstance(store, LocalStore) else "read back"
        )
        return path

    async def check(name: str, store: Store) -> Path | str | BaseException:
        try:
            if backup.manifest is not None and name != reader:
                how = await store.check_at_rest(
                    backup.replicas[name].key,
                    backup.manifest.ciphertext_sha256,
                    backup.manifest.ciphertext_size,
                    recorded_copy(backup.manifest, name),
                )
                if how is not None:
                    outcome.methods[name] = how
                    return how
            return await read_back(name, store)
        except (OperationFailed, OSError) as exc:
            return exc

    try:
        if first_good:
            copies: list[Path | str | BaseException] = []
            for name, store in held:
                if copies and not isinstance(copies[-1], BaseException):
                    outcome.skipped.append(name)
                    continue
                copies.append(await check(name, store))
        else:
            copies = list(await asyncio.gather(*(check(n, s) for n, s in held)))
        for (name, _), got in zip(held, copies, strict=False):
            if isinstance(got, BaseException):
                outcome.ok = False
                outcome.damaged[name] = str(got).rstrip(".")
                outcome.problems.append(f"{name}: {outcome.damaged[name]}")
            else:
                outcome.checked.append(name)
                if good_copy is None and isinstance(got, Path):
                    good_copy = got  # the first good copy read here, in the locations' order
        if good_copy is None and outcome.checked and not skip_content:
            # Every copy read here was bad but one checked at rest is good: the content
            # check reads that one back.
            first = outcome.checked[0]
            try:
                good_copy = await read_back(first, stores[first])
            except (OperationFailed, OSError) as exc:
                outcome.ok = False
                outcome.problems.append(f"{first}: {str(exc).rstrip('.')}")
        checked_somewhere = bool(outcome.checked)
        restorable = good_copy is not None or (skip_content and checked_somewhere)
        if not restorable:
            outcome.ok = False
            if not outcome.problems:
                outcome.problems.append("no replica could be read")
        elif skip_content:
            outcome.content_from_record = True
        elif good_copy is not None:
            try:
                if backup.manifest is not None and backup.manifest.content == "stream":
                    await asyncio.to_thread(_verify_stream_file, good_copy, keyring, backup.id)
                else:
                    report = await asyncio.to_thread(
                        verify_file,
                        good_copy,
                        keyring,
                        backup.legacy,
                        backup_paths(backup),
                        backup.id,
                    )
                    outcome.members = report.members
                    if (
                        backup.manifest
                        and report.plaintext_sha256 != backup.manifest.plaintext_sha256
                    ):
                        raise OperationFailed("the plaintext SHA-256 does not match the manifest")
            except OperationFailed as exc:
                outcome.ok = False
                restorable = False
                outcome.problems.append(str(exc).rstrip("."))
        content_problems = list(outcome.problems)
        unreachable = unreachable or {}
        for name in stores:
            if name in backup.replicas:
                continue
            if name in unreachable:
                outcome.unchecked.append(name)
                outcome.problems.append(
                    f"{name}: not checked, the location could not be listed ({unreachable[name]})"
                )
            elif not backup.legacy:
                outcome.missing.append(name)
                outcome.problems.append(f"{name}: replica missing")
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    outcome.restorable = restorable
    if record:
        # A damaged copy beside a good one leaves the backup restorable (restore skips the bad
        # copy); the catalog shows it as missing that replica, not as failed.
        record_verification(
            site,
            backup.id,
            restorable,
            "; ".join(content_problems if not outcome.ok else outcome.problems),
            damaged=outcome.damaged if restorable else None,
            content_sha256=backup.manifest.ciphertext_sha256 if backup.manifest else None,
        )
    if outcome.complete:
        verdict = "ok"
        # Say what was checked now and what was not: no overstated verdict.
        how = "; ".join(f"{n}: {outcome.methods[n]}" for n in outcome.checked)
        if outcome.content_from_record:
            verdict += (
                f" (each copy's size and SHA-256 checked: {how}; "
                "content verified when it was written)"
            )
        else:
            verdict += f" (each copy's SHA-256 checked: {how}; content decrypted and walked)"
        if outcome.skipped:
            verdict += (
                f"; copy in {', '.join(outcome.checked)} good, {', '.join(outcome.skipped)} "
                "not read (one good copy is enough before a restore)"
            )
    elif outcome.ok:
        verdict = "content ok, INCOMPLETE: " + "; ".join(outcome.problems)
    elif restorable:  # as the catalog says: restorable, missing the damaged replica(s)
        verdict = "restorable, DAMAGED REPLICA: " + "; ".join(outcome.problems)
    else:
        verdict = "FAILED: " + "; ".join(outcome.problems)
    label = " (legacy, unauthenticated)" if backup.legacy else ""
    await emit("stdout" if outcome.complete else "stderr", f"{backup.id}{label}: {verdict}")
    return outcome


def verify_failure(
    bad: list[str],
    incomplete: list[str],
    total: int,
    limit: int | None = 5,
    why: dict[str, str] | None = None,
) -> str:
    """One sentence naming the backups that failed verification or miss a replica
    (the first `limit` of each; all with None). With `why` (id -> its first problem) and a
    single failed backup, the sentence says why it failed."""

    def names(ids: list[str]) -> str:
        shown = ids if limit is None else ids[:limit]
        return ", ".join(shown) + (" ..." if len(shown) < len(ids) else "")

    parts = []
    if bad:
        reason = (why or {}).get(bad[0], "") if len(bad) == 1 else ""
        parts.append(
            f"{len(bad)} of {total} backups failed verification: {names(bad)}"
            + (f" ({reason})" if reason else "")
        )
    if incomplete:
        parts.append(
            f"{len(incomplete)} of {total} backups have a missing or damaged replica or could not "
            f"be checked everywhere: {names(incomplete)}"
        )
    return "; ".join(parts)
