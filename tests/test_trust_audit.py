"""Trust boundary: the audit log on the console host. Someone holding the host empties,
deletes or cuts the log; the off-host checkpoints in the lab's DR host (SFTP) and S3
bucket say entries existed. A second console sharing the locations never makes the first
one's verify fail: each files and checks its own checkpoint."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from kconsole.anchor import check, checkpoint_key, publish
from kconsole.audit import AuditLog
from kconsole.lab import Lab
from kconsole.services import Services
from kconsole.site import Site, load_site
from tests.labfixture import running_lab

on_the_lab = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Consoles:
    """The lab, and a console site file per state_dir on its locations."""

    lab: Lab
    root: Path

    def site_file(self, name: str) -> Path:
        """A copy of the lab's site whose state_dir is `name` (a console of its own)."""
        path = self.root / f"{name}.toml"
        if not path.exists():
            text = self.lab.site_path.read_text().replace(
                'state_dir = "state"', f'state_dir = "{name}"'
            )
            path.write_text(text)
        return path

    def log(self, name: str) -> AuditLog:
        return AuditLog(self.root / name)

    async def anchor(self, name: str, entries: int) -> Site:
        """`entries` new audit entries in console `name`, then its checkpoint published."""
        site = load_site(self.site_file(name))
        log = self.log(name)
        for i in range(entries):
            log.append("alice", "gate.confirm", f"{name}/{i}")
        services = Services.for_site(site)
        try:
            assert await publish(log, services.backups(site).stores()) == []
        finally:
            await services.close()
        return site

    async def verify(self, name: str) -> tuple[int, str, str]:
        """`kconsole audit verify` of console `name`, in a subprocess."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kconsole",
            "--site",
            str(self.site_file(name)),
            "audit",
            "verify",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.lab.environ()},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        return proc.returncode or 0, out.decode(), err.decode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def consoles(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Consoles]:
    async with running_lab(tmp_path_factory.mktemp("lab"), nodes=3) as lab:
        yield Consoles(lab, lab.site_path.parent)


@on_the_lab
async def test_an_intact_anchored_log_verifies(consoles: Consoles) -> None:
    await consoles.anchor("intact", 3)
    code, out, err = await consoles.verify("intact")
    assert code == 0, err
    assert "3 entries intact" in out
    assert "off-host checkpoint in dr: matches the checkpoint at entry 3" in out
    assert "off-host checkpoint in cloud: matches the checkpoint at entry 3" in out
    assert err == ""


@on_the_lab
@pytest.mark.parametrize("attack", ["emptied", "deleted", "deleted-with-key", "cut"])
async def test_a_log_shorter_than_its_checkpoint_is_tampering(
    consoles: Consoles, attack: str
) -> None:
    name = f"attack-{attack}"
    await consoles.anchor(name, 4)
    log = consoles.log(name)
    if attack == "emptied":
        log.path.write_bytes(b"")
    elif attack == "deleted":
        log.path.unlink()
    elif attack == "deleted-with-key":
        log.path.unlink()
        log.key_path.unlink()
    else:
        log.path.write_bytes(b"".join(log.path.read_bytes().splitlines(keepends=True)[:2]))
    code, _, err = await consoles.verify(name)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 2  # one sentence per location that contradicts the log
    for line in lines:
        assert line.startswith("kconsole: off-host checkpoint in ")
        assert "saw entry 4" in line
        assert "the log was deleted" in line or "entries were cut off" in line
        assert "Traceback" not in line


@on_the_lab
async def test_a_second_console_on_the_same_locations_never_fails_the_first(
    consoles: Consoles,
) -> None:
    first = await consoles.anchor("first", 2)
    await consoles.anchor("second", 5)  # a longer log, its own key, the same locations
    await consoles.anchor("first", 1)
    await consoles.anchor("second", 1)
    code, out, err = await consoles.verify("first")
    assert code == 0, err
    assert "matches the checkpoint at entry 3" in out
    code, out, err = await consoles.verify("second")
    assert code == 0, err
    assert "matches the checkpoint at entry 6" in out
    ids = {consoles.log(n).console_id() for n in ("first", "second")}
    assert len(ids) == 2 and None not in ids
    # Each console's checkpoint is its own object in the shared location.
    services = Services.for_site(first)
    try:
        stores = services.backups(first).stores()
        for name in ("first", "second"):
            cid = consoles.log(name).console_id()
            assert cid is not None
            raw = await stores["dr"].read_bytes(checkpoint_key(cid))
            assert f'"console":"{cid}"'.encode() in raw
        (mine, _) = await check(consoles.log("first"), stores)
        assert mine.ok
    finally:
        await services.close()


@on_the_lab
async def test_a_console_that_never_anchored_is_warned(consoles: Consoles) -> None:
    consoles.log("fresh").append("alice", "gate.confirm", "fresh/1")
    code, out, err = await consoles.verify("fresh")
    assert code == 0
    assert "1 entries intact" in out
    assert err.strip() == (
        "kconsole: warning: no off-host location holds a checkpoint of this console's audit "
        "log, so a cut-off or deleted log cannot be detected."
    )


def test_a_local_only_site_is_warned_that_truncation_cannot_be_detected(
    cli, site_path: Path, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path / "state")
    log.append("alice", "gate.confirm", "r/1")
    log.append("alice", "gate.confirm", "r/2")
    log.path.write_bytes(log.path.read_bytes().splitlines(keepends=True)[0])
    code, out, err = cli("--site", site_path, "audit", "verify")
    assert code == 0 and "1 entries intact" in out
    assert err.strip() == (
        "kconsole: warning: this site has no off-host backup location to keep audit "
        "checkpoints in, so a cut-off or deleted audit log cannot be detected."
    )
    shutil.rmtree(tmp_path / "state")
    code, out, err = cli("--site", site_path, "audit", "verify")
    assert code == 0 and "empty" in out and "cannot be detected" in err
