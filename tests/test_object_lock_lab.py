"""A backup over S3's 64 MiB multipart threshold into a site that requires Object Lock."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kconsole.backups.stores import S3Store
from kconsole.site import load_site
from tests.lablive import live_lab

STATE = "var/lib/kaldrix/state"


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_state_over_64_mib_backs_up_locked_to_s3_and_restores_byte_exact(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with live_lab(tmp_path / "lab", nodes=2) as lab:
        for key, value in lab.env().items():
            monkeypatch.setenv(key, value)
        site = load_site(lab.site)
        assert site.locations["cloud"].object_lock, "the lab's S3 location must require a lock"
        subprocess.run(
            [sys.executable, "-m", "kconsole.lab", "grow", "--dir", str(lab.dir)]
            + ["validator1", "120M"],
            check=True,
            capture_output=True,
        )
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
        head = s3.head_object(Bucket=site.locations["cloud"].bucket, Key=big[0]["Key"])
        assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"]

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
