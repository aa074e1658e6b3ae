"""The lab: the fleet comes up on loopback, behaves like the plan's nodes, and breaks on demand.

Most tests share one lab (module scope); each fault test uses its own node and clears its
fault afterwards. Everything binds 127.0.0.1; nothing asserts on timings except through
generous client timeouts against much longer injected delays.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import boto3
import httpx
import pytest
import pytest_asyncio
from botocore.config import Config
from botocore.exceptions import ClientError

from kconsole.lab import Fault, FaultSpecError, Lab, fleet, parse_faults
from kconsole.lab.faults import read_fault_file
from kconsole.site import load_site
from tests.labfixture import (
    health,
    pid_alive,
    processes_of_lab,
    run_on,
    running_lab,
    ssh_to,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    async with running_lab(tmp_path_factory.mktemp("lab")) as lab:
        yield lab


@pytest_asyncio.fixture(loop_scope="module")
async def clean(lab: Lab) -> AsyncIterator[Lab]:
    """The shared lab, with every fault cleared after the test."""
    try:
        yield lab
    finally:
        await lab.clear_fault()


def s3_client(lab: Lab, **config: object) -> object:
    creds = lab.credentials_path.read_text()
    ak = re.search(r"aws_access_key_id = (\S+)", creds)
    sk = re.search(r"aws_secret_access_key = (\S+)", creds)
    assert ak and sk
    site = load_site(lab.site_path)
    loc = site.locations["cloud"]
    return boto3.session.Session().client(
        "s3",
        endpoint_url=loc.endpoint_url,
        region_name=loc.region,
        aws_access_key_id=ak.group(1),
        aws_secret_access_key=sk.group(1),
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10, **config),  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- fault specs


async def test_fault_specs_parse_and_print_back() -> None:
    spec = (
        "down=validator2,slow=api1:0.5,flaky=api2,fail=validator3:systemctl,diskfull=validator1,"
        "corrupt=latest:validator1,s3=error"
    )
    faults = parse_faults(spec)
    assert [str(f) for f in faults] == [
        "down=validator2",
        "slow=api1:0.5",
        "flaky=api2:65536",
        "fail=validator3:systemctl",
        "diskfull=validator1",
        "corrupt=latest:validator1",
        "s3=error",
    ]
    assert parse_faults("slow=api1:1,slow=api1:2") == [Fault("slow", "api1", "2")]
    assert (
        str(parse_faults("corrupt=latest:validator1:blockchain-state@dr")[0])
        == "corrupt=latest:validator1:blockchain-state@dr"
    )
    for bad in (
        "explode=api1",
        "slow=api1:fast",
        "fail=api1",
        "corrupt=first:api1",
        "s3=maybe",
        "down=",
    ):
        with pytest.raises(FaultSpecError):
            parse_faults(bad)


async def test_fleet_sizes() -> None:
    assert [n for n, _ in fleet(9)] == [
        "bootstrap1",
        "bootstrap2",
        "bootstrap3",
        "validator1",
        "validator2",
        "validator3",
        "api1",
        "api2",
        "api3",
    ]
    assert [n for n, _ in fleet(11)][-2:] == ["validator4", "validator5"]
    assert [n for n, _ in fleet(3)] == ["bootstrap1", "validator1", "api1"]


# --------------------------------------------------------------------------- the site


async def test_site_file_describes_the_lab(lab: Lab) -> None:
    site = load_site(lab.site_path)
    assert site.name == "kaldrix-lab"
    assert site.state_dir == lab.dir / "state"
    assert site.groups() == {
        "bootstrap": ["bootstrap1", "bootstrap2", "bootstrap3"],
        "validator": ["validator1", "validator2", "validator3"],
        "api": ["api1", "api2", "api3"],
        "dr": ["backup-dr"],
    }
    for node in site.nodes.values():
        assert node.host == "127.0.0.1"
        assert Path(node.root).is_absolute() and Path(node.root).is_dir()
        assert node.health_url.startswith("http://127.0.0.1:")
    assert Path(site.nodes["validator1"].path("/var/lib/kaldrix/state/index.json")).is_file()
    assert site.ssh.identity == lab.client_key_path
    assert site.ssh.known_hosts == lab.known_hosts_path
    primary, dr, cloud = (site.locations[n] for n in ("primary", "dr", "cloud"))
    assert primary.type == "local" and Path(primary.path) == lab.dir / "backups"
    assert (dr.type, dr.node, dr.path, dr.port) == (
        "sftp",
        "backup-dr",
        "/backup",
        site.nodes["backup-dr"].port,
    )
    assert (cloud.type, cloud.bucket) == ("s3", "kaldrix-backups")
    assert cloud.endpoint_url.startswith("http://127.0.0.1:")
    assert {n: t.kinds for n, t in site.tiers.items()} == {
        "critical": ("blockchain-state", "validator-keys"),
        "important": ("transaction-logs",),
        "standard": ("system-logs",),
        "full": ("full-system",),
        "archive": ("archive",),
    }
    assert (site.tiers["critical"].rpo, site.tiers["critical"].rto) == (900, 3600)
    assert len(site.contacts) == 6
    assert [lvl.role for lvl in site.escalation["security"].levels] == [
        "Security Engineer",
        "Security Lead",
        "CTO",
        "CEO",
    ]
    assert [lvl.wait for lvl in site.escalation["backup"].levels] == [900, 1800, 3600, 0]
    assert site.notify["slack"].webhook_env == "KCONSOLE_SLACK_WEBHOOK"
    assert site.access.role_of(os.environ.get("USER") or __import__("getpass").getuser()) == "admin"

    text = lab.site_path.read_text()
    secret = re.search(r"aws_secret_access_key = (\S+)", lab.credentials_path.read_text())
    assert secret and secret.group(1) not in text
    assert "hooks.slack.com" not in text and lab.webhook_url not in text


async def test_key_files_are_private(lab: Lab) -> None:
    for path in (lab.client_key_path, lab.credentials_path, *lab.dir.glob("keys/backup_*.key")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    (key,) = lab.dir.glob("keys/backup_*.key")
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
    lines = [ln for ln in lab.known_hosts_path.read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == 10
    assert all(re.match(r"^\[127\.0\.0\.1\]:\d+ ssh-ed25519 ", ln) for ln in lines)


# --------------------------------------------------------------------------- ssh, service, health


async def test_ssh_with_lab_key_runs_systemctl(lab: Lab) -> None:
    async with ssh_to(lab, "validator1") as conn:
        res = await conn.run("systemctl is-active kaldrix-node", check=False)
        assert (res.exit_status, res.stdout) == (0, "active\n")
        res = await conn.run('echo "$KALDRIX_NODE $KALDRIX_ROOT" && pwd', check=False)
        assert res.stdout.split() == [
            "validator1",
            str(lab.host("validator1").root),
            str(lab.host("validator1").root),
        ]


async def test_host_key_is_verified(lab: Lab) -> None:
    wrong = lab.dir / "wrong_known_hosts"
    other = lab.host("api1").host_key.export_public_key().decode().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{lab.host('validator1').ssh_port} {' '.join(other)}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with ssh_to(lab, "validator1", known_hosts=str(wrong)):
            pass


async def test_the_site_ssh_config_parses(lab: Lab) -> None:
    async with ssh_to(lab, "api1", config=[str(lab.dir / "ssh_config")]) as conn:
        assert (
            await conn.run("hostname -f >/dev/null; cat etc/hostname", check=False)
        ).stdout == "api1\n"


async def test_stop_start_changes_health_and_height_grows(lab: Lab) -> None:
    status, body = await health(lab, "validator2")
    assert status == 200 and body["state"] == "active" and body["node"] == "validator2"
    start_height = body["height"]

    async def higher() -> bool:
        return (await health(lab, "validator2"))[1]["height"] > start_height

    await wait_until(higher, what="the chain height to grow")

    res = await run_on(
        lab, "validator2", "sudo -n systemctl stop kaldrix-node && systemctl is-active kaldrix-node"
    )
    assert (res.exit_status, res.stdout) == (3, "inactive\n")
    status, body = await health(lab, "validator2")
    assert (status, body["state"]) == (503, "inactive")
    stopped_at = body["height"]
    await asyncio.sleep(1.2)
    assert (await health(lab, "validator2"))[1]["height"] == stopped_at

    res = await run_on(
        lab, "validator2", "sudo -n systemctl start kaldrix-node; systemctl is-active kaldrix-node"
    )
    assert res.stdout == "active\n", res.stderr
    assert (await health(lab, "validator2"))[0] == 200

    async def resumed() -> bool:
        return (await health(lab, "validator2"))[1]["height"] > stopped_at

    await wait_until(resumed, what="the chain height to grow again")
    res = await run_on(lab, "validator2", "kaldrix-node verify-state")
    assert res.exit_status == 0, res.stdout


@pytest.mark.parametrize("torn", ["index-behind", "index-ahead"])
async def test_a_state_copied_live_starts_after_recovery(clean: Lab, torn: str) -> None:
    """A live tar can catch the index a block behind or ahead of the block files; the node recovers."""
    lab, node = clean, "api3"
    res = await run_on(lab, node, "sudo -n systemctl stop kaldrix-node")
    assert res.exit_status == 0, res.stderr
    state = lab.host(node).root / "var/lib/kaldrix/state"
    index = json.loads((state / "index.json").read_text())
    seg = state / "blocks" / f"{index['height'] // 100:08d}.seg"
    lines = seg.read_text().splitlines(keepends=True)
    if torn == "index-behind":  # the block file was read after the node added a block
        behind = {**index, "height": index["height"] - 1}
        (state / "index.json").write_text(json.dumps(behind))
    else:  # the index was read after the node added a block the copy does not hold
        seg.write_text("".join(lines[:-1]) + '{"h":')
    res = await run_on(
        lab, node, "sudo -n systemctl start kaldrix-node; systemctl is-active kaldrix-node"
    )
    assert res.stdout == "active\n", res.stderr
    res = await run_on(lab, node, "journalctl -u kaldrix-node -n 20")
    assert "recovered" in res.stdout
    res = await run_on(
        lab, node, "sudo -n systemctl stop kaldrix-node && kaldrix-node verify-state"
    )
    assert res.exit_status == 0, res.stdout
    await run_on(lab, node, "sudo -n systemctl start kaldrix-node")


async def test_openssh_client_runs_a_command(lab: Lab) -> None:
    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    if not os.path.exists(ssh):
        pytest.skip("no OpenSSH client")
    proc = await asyncio.create_subprocess_exec(
        ssh,
        "-F",
        "/dev/null",
        "-i",
        str(lab.client_key_path),
        "-o",
        f"UserKnownHostsFile={lab.known_hosts_path}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-p",
        str(lab.host("bootstrap1").ssh_port),
        "127.0.0.1",
        "systemctl is-active kaldrix-node",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, out) == (0, b"active\n"), err.decode()


# --------------------------------------------------------------------------- locations


async def test_sftp_on_backup_dr_is_confined_to_its_root(lab: Lab) -> None:
    dr_root = lab.host("backup-dr").root
    outside = lab.dir / "outside.txt"
    outside.write_text("not for sftp\n")
    (dr_root / "backup" / "escape").symlink_to(lab.dir)
    payload = os.urandom(100_000)
    async with ssh_to(lab, "backup-dr") as conn, conn.start_sftp_client() as sftp:
        await sftp.makedirs("/backup/blockchain-state", exist_ok=True)
        async with sftp.open("/backup/blockchain-state/x.kdx", "wb") as fh:
            await fh.write(payload)
        assert (dr_root / "backup/blockchain-state/x.kdx").read_bytes() == payload
        async with sftp.open("/backup/blockchain-state/x.kdx", "rb") as fh:
            assert await fh.read() == payload
        async with sftp.open("/../../../../escaped.txt", "wb") as fh:
            await fh.write(b"still inside\n")
        assert (dr_root / "escaped.txt").read_bytes() == b"still inside\n"
        with pytest.raises(asyncssh.SFTPError):
            await sftp.stat("/../outside.txt")
        with pytest.raises(asyncssh.SFTPError):
            async with sftp.open("/backup/escape/outside.txt", "rb") as fh:
                await fh.read()
    assert outside.read_text() == "not for sftp\n"


async def test_s3_endpoint_lists_the_bucket(lab: Lab) -> None:
    s3 = s3_client(lab)

    def work() -> list[str]:
        assert "kaldrix-backups" in [b["Name"] for b in s3.list_buckets()["Buckets"]]  # type: ignore[attr-defined]
        s3.put_object(Bucket="kaldrix-backups", Key="probe/test.txt", Body=b"hello")  # type: ignore[attr-defined]
        assert s3.get_bucket_versioning(Bucket="kaldrix-backups")["Status"] == "Enabled"  # type: ignore[attr-defined]
        page = s3.list_objects_v2(Bucket="kaldrix-backups", Prefix="probe/")  # type: ignore[attr-defined]
        return [o["Key"] for o in page.get("Contents", [])]

    assert await asyncio.to_thread(work) == ["probe/test.txt"]


# --------------------------------------------------------------------------- faults


async def test_down_closes_ssh_and_health_until_cleared(clean: Lab) -> None:
    lab = clean
    await lab.set_fault("down=api3")
    with pytest.raises((OSError, asyncssh.Error)):
        await run_on(lab, "api3", "true")
    with pytest.raises(httpx.HTTPError):
        await health(lab, "api3")
    await lab.clear_fault("down=api3")
    res = await run_on(lab, "api3", "systemctl is-active kaldrix-node")
    assert res.stdout == "active\n"
    assert (await health(lab, "api3"))[0] == 200


async def test_slow_link_delays_ssh_and_health(clean: Lab) -> None:
    lab = clean
    await lab.set_fault("slow=api1:3")
    with pytest.raises((asyncio.TimeoutError, asyncssh.Error, OSError)):
        async with ssh_to(lab, "api1", connect_timeout=0.5):
            pass
    with pytest.raises(httpx.TimeoutException):
        await health(lab, "api1", timeout=0.5)


async def test_flaky_link_drops_a_long_stream(clean: Lab) -> None:
    lab = clean
    await lab.set_fault("flaky=api2:32k")
    async with ssh_to(lab, "api2") as conn:
        assert (await conn.run("echo ok", check=False)).stdout == "ok\n"
        try:
            res = await conn.run(
                "head -c 2000000 /dev/zero", check=False, encoding=None, timeout=20
            )
        except (asyncssh.Error, OSError):
            pass  # the connection was lost mid-stream
        else:
            assert res.exit_status is None and len(res.stdout) < 2_000_000
        with pytest.raises((asyncssh.Error, OSError)):
            await conn.run("echo still there?", check=False)


async def test_failing_command(clean: Lab) -> None:
    lab = clean
    await lab.set_fault("fail=validator3:systemctl")
    res = await run_on(lab, "validator3", "sudo -n systemctl stop kaldrix-node")
    assert res.exit_status == 1
    assert "injected failure" in res.stderr and "fail=validator3:systemctl" in res.stderr
    assert (await health(lab, "validator3"))[1]["state"] == "active"
    await lab.clear_fault("fail=validator3")
    res = await run_on(lab, "validator3", "systemctl is-active kaldrix-node")
    assert res.exit_status == 0


async def test_disk_full(clean: Lab) -> None:
    lab = clean
    await lab.set_fault("diskfull=bootstrap1")
    async with ssh_to(lab, "bootstrap1") as conn:
        archive = (
            await conn.run('tar -C "$KALDRIX_ROOT" -czf - etc/kaldrix', encoding=None, check=True)
        ).stdout
        assert archive[:2] == b"\x1f\x8b", "reading still works on a full disk"
        res = await conn.run("tar -C tmp -xzf -", input=archive, encoding=None, check=False)
        assert res.exit_status == 2 and b"No space left on device" in res.stderr
        res = await conn.run("cp etc/hostname tmp/copy", check=False)
        assert (res.exit_status, res.stderr) == (
            1,
            "cp: cannot create regular file 'tmp/copy': No space left on device\n",
        )

    async def crashed() -> bool:
        return (await health(lab, "bootstrap1"))[1]["service"] == "failed"

    await wait_until(crashed, what="kaldrix-node to fail on the full disk")
    res = await run_on(lab, "bootstrap1", "sudo -n systemctl start kaldrix-node")
    assert res.exit_status == 1 and "failed" in res.stderr
    await lab.clear_fault("diskfull=bootstrap1")
    res = await run_on(
        lab,
        "bootstrap1",
        "sudo -n systemctl start kaldrix-node && systemctl is-active kaldrix-node",
    )
    assert res.stdout == "active\n", res.stderr


async def test_sftp_write_fails_on_full_dr_disk(clean: Lab) -> None:
    lab = clean
    await lab.set_fault("diskfull=backup-dr")
    async with ssh_to(lab, "backup-dr") as conn, conn.start_sftp_client() as sftp:
        with pytest.raises(asyncssh.SFTPError, match="No space left"):
            async with sftp.open("/backup/full.kdx", "wb") as fh:
                await fh.write(b"x" * 1000)


async def test_corrupt_flips_one_byte_of_the_newest_backup_and_clear_mends_it(clean: Lab) -> None:
    lab = clean
    base = lab.dir / "backups" / "blockchain-state" / "validator1"
    base.mkdir(parents=True, exist_ok=True)
    old, new = (
        base / "validator1_blockchain-state_20261126T010000Z.kdx",
        base / "validator1_blockchain-state_20261126T020000Z.kdx",
    )
    manifest = base / "validator1_blockchain-state_20261126T020000Z.kdx.json"
    other = lab.dir / "backups" / "blockchain-state" / "validator10" / "validator10_x.kdx"
    other.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(4096)
    for i, p in enumerate((old, new, manifest, other)):
        p.write_bytes(data)
        os.utime(p, (1_800_000_000 + i, 1_800_000_000 + i))
    await lab.set_fault("corrupt=latest:validator1")
    changed = new.read_bytes()
    assert sum(a != b for a, b in zip(changed, data, strict=True)) == 1
    assert old.read_bytes() == data and manifest.read_bytes() == data and other.read_bytes() == data
    await lab.clear_fault("corrupt")
    assert new.read_bytes() == data


async def test_corrupt_waits_for_a_backup_to_appear(clean: Lab) -> None:
    lab = clean
    await lab.set_fault("corrupt=latest:api1:transaction-logs@dr")
    target = (
        lab.host("backup-dr").root
        / "backup"
        / "transaction-logs"
        / "api1"
        / "api1_transaction-logs_1.kdx"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\0" * 1000)
    await wait_until(lambda: target.read_bytes() != b"\0" * 1000, what="the pending corruption")


async def test_corrupt_in_the_cloud(clean: Lab) -> None:
    lab = clean
    s3 = s3_client(lab)
    key = "validator-keys/validator2/validator2_validator-keys_20261126T000000Z.kdx"
    body = os.urandom(2048)
    await asyncio.to_thread(s3.put_object, Bucket="kaldrix-backups", Key=key, Body=body)  # type: ignore[attr-defined]
    await lab.set_fault("corrupt=latest:validator2:validator-keys@cloud")

    def fetch() -> bytes:
        return s3.get_object(Bucket="kaldrix-backups", Key=key)["Body"].read()  # type: ignore[attr-defined, no-any-return]

    assert sum(a != b for a, b in zip(await asyncio.to_thread(fetch), body, strict=True)) == 1
    await lab.clear_fault("corrupt")
    assert await asyncio.to_thread(fetch) == body


async def test_s3_error_makes_requests_fail(clean: Lab) -> None:
    lab = clean
    s3 = s3_client(lab)
    await lab.set_fault("s3=error")
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(s3.list_objects_v2, Bucket="kaldrix-backups")  # type: ignore[attr-defined]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    await lab.clear_fault("s3")
    await asyncio.to_thread(s3.list_objects_v2, Bucket="kaldrix-backups")  # type: ignore[attr-defined]


async def test_s3_down_refuses_connections(clean: Lab) -> None:
    lab = clean
    s3 = s3_client(lab)
    await lab.set_fault("s3=down")
    with pytest.raises(Exception) as info:  # noqa: PT011 - botocore's connection errors have no common base
        await asyncio.to_thread(s3.list_objects_v2, Bucket="kaldrix-backups")  # type: ignore[attr-defined]
    assert "Connection" in type(info.value).__name__ or "connection" in str(info.value).lower()


async def test_crash_wipe_and_compromise(clean: Lab) -> None:
    lab = clean
    await lab.set_fault("crash=bootstrap2,wipe=bootstrap3,compromise=validator1")
    await wait_until(
        lambda: lab.host("bootstrap2").service.state == "failed",  # type: ignore[union-attr]
        what="bootstrap2 to crash",
    )
    res = await run_on(
        lab, "bootstrap2", "systemctl is-active kaldrix-node; sudo -n systemctl start kaldrix-node"
    )
    assert res.stdout == "failed\n" and res.exit_status == 0
    # A one-shot fault is over once its node is recovered: `fault list` stops listing it.
    await wait_until(
        lambda: (
            Fault("crash", "bootstrap2") not in lab.faults
            and "crash=bootstrap2" not in lab.fault_file.read_text()
        ),
        what="the crash fault to be retired",
    )
    res = await run_on(lab, "bootstrap3", "sudo -n systemctl start kaldrix-node")
    assert res.exit_status == 1
    assert Fault("wipe", "bootstrap3") in lab.faults  # not recovered yet: still listed
    res = await run_on(lab, "bootstrap3", "journalctl -u kaldrix-node -n 3")
    assert "chain state" in res.stdout and "unusable" in res.stdout
    res = await run_on(lab, "validator1", "sudo -n kali-security-scan")
    assert res.exit_status == 1 and "[FAIL]" in res.stdout and "implant" in res.stdout
    await lab.clear_fault("compromise")
    res = await run_on(lab, "validator1", "sudo -n kali-security-scan")
    assert res.exit_status == 0, res.stdout


async def test_faults_file_is_re_read(clean: Lab) -> None:
    lab = clean
    assert read_fault_file(lab.fault_file) == []
    text = lab.fault_file.read_text().replace("faults = [\n]", 'faults = [\n  "partition=api3",\n]')
    lab.fault_file.write_text(text)
    await wait_until(
        lambda: Fault("partition", "api3") in lab.faults, what="the lab to read faults.toml"
    )
    with pytest.raises((OSError, asyncssh.Error)):
        await run_on(lab, "api3", "true")
    lab.fault_file.write_text(lab.fault_file.read_text().replace('  "partition=api3",\n', ""))
    await wait_until(lambda: not lab.faults, what="the lab to clear the fault")
    assert (await run_on(lab, "api3", "true")).exit_status == 0
    await lab.set_fault("slow=api2:0.1")
    assert read_fault_file(lab.fault_file) == [Fault("slow", "api2", "0.1")]


async def test_node_tools(lab: Lab) -> None:
    res = await run_on(
        lab, "api1", "sudo -n journalctl --since '1 day ago' --no-pager | gzip | gunzip | wc -l"
    )
    assert int(res.stdout) > 100
    res = await run_on(lab, "validator3", "sudo -n kaldrix-node rotate-keys --emergency")
    assert res.exit_status == 0 and "emergency rotation" in res.stdout
    keys = json.loads((lab.host("validator3").root / "etc/kaldrix/validator_keys.json").read_text())
    assert keys["version"] == 2 and keys["revoked"][0]["reason"] == "emergency rotation"
    res = await run_on(
        lab, "api2", "sudo -n ufw default deny outgoing && sudo -n ufw status verbose"
    )
    assert "deny (outgoing)" in res.stdout
    await run_on(lab, "api2", "sudo -n ufw default allow outgoing")
    res = await run_on(lab, "api3", "sudo -n certbot renew --force-renewal")
    assert res.exit_status == 0 and "all renewals succeeded" in res.stdout
    res = await run_on(lab, "api3", "journalctl -xeu kaldrix-node.service -n 5")
    assert res.exit_status == 0 and "kaldrix-node[" in res.stdout


async def test_webhook_sink_records_posts(lab: Lab) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.post(lab.webhook_url, json={"text": "drill started"})
    assert (resp.status_code, resp.text) == (200, "ok")
    record = json.loads(lab.notifications_path.read_text().splitlines()[-1])
    assert record["body"] == {"text": "drill started"}
    assert lab.environ()["KCONSOLE_SLACK_WEBHOOK"] == lab.webhook_url


async def test_history_writes_backups_the_console_can_verify(lab: Lab) -> None:
    from datetime import UTC, datetime

    from kconsole.backups.archive import verify_file
    from kconsole.backups.manifest import Manifest
    from kconsole.crypto import read_key_file
    from kconsole.lab.history import write_history

    site = load_site(lab.site_path)
    now = datetime(2026, 11, 26, 12, 7, 30, tzinfo=UTC)
    summary = await asyncio.to_thread(
        write_history, site, 1, ("primary", "dr"), ("validator-keys", "system-logs"), now
    )
    assert summary.counts == {"validator-keys": 3 * 96, "system-logs": 9 * 1}
    base = lab.dir / "backups" / "validator-keys" / "validator2"
    newest = base / "validator2_validator-keys_20261126T120000Z.kdx"
    manifest = Manifest.from_json(newest.with_name(newest.name + ".json").read_bytes())
    assert (manifest.kind, manifest.node, manifest.run) == (
        "validator-keys",
        "validator2",
        "lab-history",
    )
    key = read_key_file(site.keys_dir / site.current_key)  # type: ignore[operator]
    report = await asyncio.to_thread(
        verify_file,
        newest,
        key,
        False,
        ["etc/kaldrix/validator_keys.json", "etc/kaldrix/tls"],
        manifest.id,
    )
    assert report.plaintext_sha256 == manifest.plaintext_sha256
    dr_copy = lab.host("backup-dr").root / "backup" / "validator-keys" / "validator2" / newest.name
    assert dr_copy.read_bytes() == newest.read_bytes()


# --------------------------------------------------------------------------- start / stop


async def test_api_stop_leaves_no_processes(tmp_path: Path) -> None:
    async with running_lab(tmp_path / "small", nodes=3) as small:
        pids = [h.service.main_pid for h in small.hosts.values() if h.service]
        assert len(pids) == 3 and all(pids)
        assert load_site(small.site_path).nodes.keys() == {
            "bootstrap1",
            "validator1",
            "api1",
            "backup-dr",
        }
    assert not any(pid_alive(p) for p in pids if p)
    assert not (tmp_path / "small" / "lab" / "lab.pid").exists()
    keys_before = {
        ln.split()[-1]: ln.split()[2] for ln in small.known_hosts_path.read_text().splitlines()[1:]
    }
    height_before = json.loads(
        (small.host("validator1").root / "var/lib/kaldrix/state/index.json").read_text()
    )["height"]
    async with running_lab(tmp_path / "small", nodes=3) as again:
        keys_after = {
            ln.split()[-1]: ln.split()[2]
            for ln in again.known_hosts_path.read_text().splitlines()[1:]
        }
        assert keys_after == keys_before, "a restarted lab keeps its host keys"
        assert (await health(again, "validator1"))[1]["height"] >= height_before, "and its chains"


async def test_a_second_lab_in_the_same_dir_is_refused(lab: Lab) -> None:
    from kconsole.lab import LabError

    with pytest.raises(LabError, match="already running"):
        # Same process, so fake another owner.
        pid_file = lab.dir / "lab" / "lab.pid"
        pid_file.write_text(f"{os.getppid()}\n")
        try:
            await Lab.start(lab.dir)
        finally:
            pid_file.write_text(f"{os.getpid()}\n")


async def test_serve_subprocess_ready_and_clean_exit(tmp_path: Path) -> None:
    d = tmp_path / "served"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kconsole.lab",
        "serve",
        "--dir",
        str(d),
        "--nodes",
        "3",
        "--faults",
        "slow=api1:0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.decode() == f"ready {d / 'site.toml'}\n"
        site = load_site(d / "site.toml")
        assert set(site.nodes) == {"bootstrap1", "validator1", "api1", "backup-dr"}
        assert read_fault_file(d / "faults.toml") == [Fault("slow", "api1", "0.1")]
        assert len(processes_of_lab(proc.pid)) == 3, "the three services run as children of the lab"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert b"Traceback" not in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await wait_until(
        lambda: not processes_of_lab(proc.pid), timeout=5, what="no process of the lab left"
    )


async def test_a_rewritten_audit_log_is_caught_by_the_earlier_checkpoints_in_s3(
    lab: Lab, tmp_path: Path
) -> None:
    """Someone holding the console host (and so the HMAC key) rewrites an old entry, re-chains
    the log and re-anchors its head: the chain verifies and the newest checkpoint matches, but
    the versions the Object Lock bucket kept from before say otherwise."""
    import dataclasses
    import hashlib
    import hmac

    from kconsole.anchor import check, publish
    from kconsole.audit import AuditLog, canonical, entry_hash
    from kconsole.backups.stores import S3Store

    site = load_site(lab.site_path)
    store = S3Store(dataclasses.replace(site.locations["cloud"], prefix="anchor-history-test"))
    log = AuditLog(tmp_path / "state")
    for i in range(3):
        log.append("alice", "prune.delete", f"backup-{i}")
        assert await publish(log, {"cloud": store}) == []
    (result,) = await check(log, {"cloud": store})
    assert result.ok and "all 2 earlier ones" in result.message, result.message

    key = log.key()
    forged, prev = [], None
    for entry in log.read():
        body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
        if body["seq"] == 1:
            body["actor"] = "mallory-hides-here"
        if prev is not None:
            body["prev"] = prev
        prev = entry_hash(body)
        forged.append(
            {**body, "hash": prev, "mac": hmac.new(key, prev.encode(), hashlib.sha256).hexdigest()}
        )
    log.path.write_bytes(b"".join(canonical(e) + b"\n" for e in forged))
    assert log.verify().ok  # the chain alone cannot tell
    assert await publish(log, {"cloud": store}) == []

    (result,) = await check(log, {"cloud": store})
    assert not result.ok
    assert "an earlier checkpoint" in result.message and "rewritten" in result.message
