"""A backup over S3's 64 MiB multipart threshold into a site that requires Object Lock."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kconsole.backups.stores import S3Store
from kconsole.site import load_site
from tests.lablive import LiveLab, live_lab

STATE = "var/lib/kaldrix/state"


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@contextmanager
def grown_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: str) -> Iterator[LiveLab]:
    """A two-node lab whose validator1 holds `size` of chain state, its variables set."""
    with live_lab(tmp_path / "lab", nodes=2) as lab:
        for key, value in lab.env().items():
            monkeypatch.setenv(key, value)
        subprocess.run(
            [sys.executable, "-m", "kconsole.lab", "grow", "--dir", str(lab.dir)]
            + ["validator1", size],
            check=True,
            capture_output=True,
        )
        yield lab


def test_a_state_over_64_mib_backs_up_locked_to_s3_and_restores_byte_exact(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with grown_lab(tmp_path, monkeypatch, "120M") as lab:
        site = load_site(lab.site)
        assert site.locations["cloud"].object_lock, "the lab's S3 location must require a lock"
        rb = tmp_path / "backup.toml"
        rb.write_text(
            textwrap.dedent("""
            [runbook]
            id = "big-backup"
            title = "Back up a big state"
            rto = "30m"

            [[steps]]
            id = "stop"
            action = "ssh.exec"
            node = "validator1"
            command = "systemctl stop kaldrix-node"
            sudo = true

            [[steps]]
            id = "backup"
            action = "backup.create"
            node = "validator1"
            kind = "blockchain-state"
            paths = ["/var/lib/kaldrix/state"]
            needs = ["stop"]
        """)
        )
        code, out, err = cli("--site", lab.site, "run", str(rb), "--yes")
        assert code == 0, out + err
        state = lab.root("validator1") / STATE
        before = tree(state)
        assert sum(p.stat().st_size for p in state.rglob("*") if p.is_file()) > 120 << 20

        # The copy in the bucket is over the multipart threshold and locked.
        store = S3Store(site.locations["cloud"])
        s3 = store.client()
        objects = s3.list_objects_v2(Bucket=site.locations["cloud"].bucket)["Contents"]
        big = [o for o in objects if o["Key"].endswith(".kdx") and o["Size"] > 64 << 20]
        assert len(big) == 1 and "blockchain-state/validator1/" in big[0]["Key"]
        head = s3.head_object(
            Bucket=site.locations["cloud"].bucket, Key=big[0]["Key"], ChecksumMode="ENABLED"
        )
        assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"]
        # It was streamed as it was captured, in parts whose SHA-256s S3 checked on arrival;
        # the signed manifest records the composite S3 computed from them, and no upload is
        # left open.
        manifest = json.loads((lab.dir / "backups" / (big[0]["Key"] + ".json")).read_bytes())
        composite = manifest["extra"]["copies"]["cloud"]["s3_sha256"]
        total, parts = composite.split("-")
        assert int(parts) > 1 and head["ChecksumSHA256"].split("-")[0] == total
        bucket = site.locations["cloud"].bucket
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        code, out, err = cli("--site", lab.site, "verify", manifest["id"])
        assert code == 0, out + err
        assert f"S3's composite checksum of {parts} parts matched" in out + err
        assert "dr: SHA-256 computed on the host by sha256sum" in out + err

        for f in list((state / "bodies").glob("*.dat"))[:2]:
            f.write_bytes(b"garbage")
        (state / "intruder").write_text("x")
        rb2 = tmp_path / "restore.toml"
        rb2.write_text(
            textwrap.dedent("""
            [runbook]
            id = "restore-from-cloud"
            title = "Restore from the bucket"
            rto = "30m"

            [[steps]]
            id = "restore"
            action = "backup.restore"
            node = "validator1"
            kind = "blockchain-state"
            location = "cloud"
            gate = "type:{node}"
        """)
        )
        code, out, err = cli("--site", lab.site, "run", str(rb2), "--yes")
        assert code == 0, out + err
        assert tree(state) == before


def test_a_location_failing_mid_stream_stops_the_capture_and_leaves_nothing(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket refuses once the backup has filled its first part: the capture stops there
    (it does not run to the end first), the run fails naming the location, and no copy
    or staging file is left in the primary, on the DR host or in the bucket."""
    with grown_lab(tmp_path, monkeypatch, "160M") as lab:
        site = load_site(lab.site)
        rb = tmp_path / "backup.toml"
        rb.write_text(
            textwrap.dedent("""
            [runbook]
            id = "big-backup"
            title = "Back up a big state"
            rto = "30m"

            [[steps]]
            id = "backup"
            action = "backup.create"
            node = "validator1"
            kind = "blockchain-state"
            paths = ["/var/lib/kaldrix/state"]
        """)
        )
        lab.fault("set", "s3=down")
        code, out, err = cli("--site", lab.site, "run", str(rb), "--yes", "--json")
        lab.fault("clear")
        assert code == 1, out + err
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        reason = next(e["reason"] for e in events if e.get("event") == "failed")
        assert "not in every location: cloud:" in reason, reason
        said = [e.get("text", "") for e in events]
        assert not any(t.startswith("captured ") for t in said), "the capture ran to its end"
        bid = next(t for t in said if t.startswith("capturing ")).rsplit(" as ", 1)[1]
        leftovers = [
            p
            for where in (lab.dir / "backups", lab.root("backup-dr"), lab.dir / "state")
            for p in where.rglob("*")
            if p.is_file() and bid in p.name
        ]
        assert leftovers == []
        s3 = S3Store(site.locations["cloud"]).client()
        bucket = site.locations["cloud"].bucket
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert not any(bid in k for k in keys)
