"""Issue 9, class 1: a manifest is written by whoever can write to a backup location. Each
test forges one the way an attacker would (paths out of the node, another node or kind, a
swapped or replayed manifest, lying sizes, a changed signed manifest) and shows it is refused
at verification, naming the field, and that a restore touches nothing: on the real OpenSSH
sshd of the tests, and on the lab through the recovery runbook, where the service is still
running after the refusal. A restore that fails half-way through its swap puts back
everything it moved and leaves no staging directory."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kconsole.backups.catalog import build_catalog
from kconsole.backups.create import CreateRequest, create_backup
from kconsole.backups.manifest import (
    Manifest,
    ManifestRejected,
    authenticate_manifest,
    backup_id,
    check_manifest,
    iso,
    sign_manifest,
)
from kconsole.backups.restore import restore_backup
from kconsole.backups.stores import open_stores
from kconsole.backups.verify import verify_backup
from kconsole.crypto import Keyring, keygen
from kconsole.errors import OperationFailed
from kconsole.site import Location, Site
from kconsole.transport.ssh import SshTransport
from tests.sshd import Sshd, sshd_server  # noqa: F401 - fixture

STATE = "var/lib/kaldrix/state"
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
MASTER = bytes(range(32))


def sample(**changes: Any) -> Manifest:
    """A well-formed manifest of a blockchain-state backup of validator1, signed."""
    created = NOW - timedelta(hours=1)
    m = Manifest(
        id=backup_id("validator1", "blockchain-state", created),
        kind="blockchain-state",
        node="validator1",
        created=iso(created),
        paths=["/var/lib/kaldrix/state"],
        key_id="0" * 32,
        ciphertext_size=112 + 1000 + 16,
        ciphertext_sha256="a" * 64,
        plaintext_size=1000,
        plaintext_sha256="b" * 64,
    )
    return sign_manifest(dataclasses.replace(m, **changes), MASTER)


FORGED: dict[str, tuple[dict[str, Any], str]] = {
    "climbs out with ..": ({"paths": ["../../etc"]}, "paths"),
    "absolute /etc": ({"paths": ["/etc"]}, "paths"),
    "climbs out of the kind's dir": ({"paths": ["var/lib/kaldrix/state/../../../../etc"]}, "paths"),
    "the node root itself": ({"paths": ["/"]}, "paths"),
    "another kind's files": ({"paths": ["/etc/kaldrix/validator_keys.json"]}, "paths"),
    "a NUL byte": ({"paths": ["var/lib/kaldrix/state\x00/etc"]}, "paths"),
    "paths not a list": ({"paths": "/var/lib/kaldrix/state"}, "paths"),
    "no paths": ({"paths": []}, "paths"),
    "unknown node": ({"node": "ghost"}, "node"),
    "unknown kind": ({"kind": "everything"}, "kind"),
    "node differs from the id": ({"node": "validator2"}, "id"),
    "created differs from the id": ({"created": "2020-01-01T00:00:00Z"}, "created"),
    "created not a time": ({"created": "yesterday"}, "created"),
    "huge ciphertext": ({"ciphertext_size": 1 << 60}, "ciphertext_size"),
    "negative size": ({"plaintext_size": -1}, "plaintext_size"),
    "size as text": ({"plaintext_size": "1000"}, "plaintext_size"),
    "sizes that cannot belong together": ({"plaintext_size": 10_000_000}, "ciphertext_size"),
    "key id not hex": ({"key_id": "../../keys/evil"}, "key_id"),
    "checksum not hex": ({"ciphertext_sha256": "z" * 64}, "ciphertext_sha256"),
    "no encryption": ({"encryption": "none"}, "encryption"),
    "another codec": ({"compression": "xz"}, "compression"),  # gzip and zstd are written
    "content a script": ({"content": "sh"}, "content"),
    "negative chain height": ({"chain_height": -5}, "chain_height"),
    "a command in a file archive": ({"extra": {"command": "rm -rf /"}}, "extra"),
}


@pytest.mark.parametrize("attack", list(FORGED))
def test_a_forged_field_is_refused_naming_it(attack: str) -> None:
    changes, field = FORGED[attack]
    m = dataclasses.replace(sample(), **changes)
    with pytest.raises(ManifestRejected) as caught:
        check_manifest(m, {"validator1", "validator2"}, now=NOW)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"the manifest of {m.id[:120]} is refused: {field} ")


def test_a_well_formed_manifest_passes_and_its_mac_holds() -> None:
    m = sample()
    check_manifest(m, {"validator1"}, stored_at=[m.manifest_key()], sizes=[1128], now=NOW)
    assert authenticate_manifest(m, lambda _kid: MASTER) is True
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    ("where", "kwargs", "field"),
    [
        ("stored under another backup's name", {"stored_at": ["x/y/other.kdx.json"]}, "id"),
        ("a copy of another size", {"sizes": [1128, 9_999_999]}, "ciphertext_size"),
        ("made in the future", {"now": NOW - timedelta(days=3)}, "created"),
    ],
)
def test_a_manifest_that_disagrees_with_its_location_is_refused(
    where: str, kwargs: dict[str, Any], field: str
) -> None:
    m = sample()
    with pytest.raises(ManifestRejected) as caught:
        check_manifest(m, {"validator1"}, **{"now": NOW, **kwargs})
    assert caught.value.field == field, where


def test_a_signed_manifest_changed_without_the_key_is_refused() -> None:
    m = sample()
    for changes in (
        {"paths": ["/var/lib/kaldrix"]},  # still a path the kind allows: only the MAC can tell
        {"chain_height": 999_999},
        {"ciphertext_sha256": "c" * 64},
    ):
        with pytest.raises(ManifestRejected, match="changed or forged") as caught:
            authenticate_manifest(dataclasses.replace(m, **changes), lambda _kid: MASTER)
        assert caught.value.field == "mac"
    with pytest.raises(ManifestRejected, match="not in the keyring"):
        authenticate_manifest(m, lambda _kid: None)
    assert authenticate_manifest(dataclasses.replace(m, mac=""), lambda _kid: MASTER) is False


# -- against the real sshd ---------------------------------------------------------------


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (and target of every symlink) under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def node_site(sshd_server: Sshd, tmp_path: Path) -> Iterator[Site]:  # noqa: F811
    """A node (state, keys, TLS files) behind the test sshd, and a local backup location."""
    root = tmp_path / "node1"
    (root / STATE).mkdir(parents=True)
    (root / STATE / "height").write_text("1234\n")
    (root / STATE / "block").write_bytes(os.urandom(5000))
    (root / "etc/kaldrix/tls").mkdir(parents=True)
    (root / "etc/kaldrix/validator_keys.json").write_text('{"secret": 1}\n')
    (root / "etc/kaldrix/tls/node.crt").write_text("cert\n")
    (root / "etc/passwd").write_text("root:x:0:0\n")
    keygen(tmp_path / "keys" / "backup.key")
    base = sshd_server.site()
    nodes = {
        "node1": dataclasses.replace(base.nodes["node1"], root=str(root)),
        "node2": dataclasses.replace(base.nodes["node1"], name="node2", root=str(root)),
    }
    yield dataclasses.replace(
        base,
        state_dir=tmp_path / "state",
        nodes=nodes,
        keys_dir=tmp_path / "keys",
        locations={"primary": Location("primary", "local", path=str(tmp_path / "backups"))},
    )


async def quiet(stream: str, text: str) -> None:
    pass


class Node:
    """The node's site, an SSH transport to it, its stores and keyring."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.transport = SshTransport(site, use_ssh_config=False)
        self.stores = open_stores(site, self.transport)
        self.keyring = Keyring(site.keys_dir)  # type: ignore[arg-type]
        self.root = Path(site.nodes["node1"].root)
        self.backups = Path(site.locations["primary"].path)

    async def backup(self, kind: str, paths: list[str]) -> Manifest:
        req = CreateRequest(self.site.nodes["node1"], kind, paths, sudo=False, run_id="make")
        return await create_backup(
            self.site,
            req,
            transport=self.transport,
            stores=self.stores,
            key=self.keyring.current(),
            emit=quiet,
        )

    def rewrite(self, m: Manifest, **changes: Any) -> None:
        """Overwrite the stored manifest of `m` as someone without the key would."""
        data = json.loads((self.backups / m.manifest_key()).read_text())
        data.update(changes)
        (self.backups / m.manifest_key()).write_text(json.dumps(data))

    async def verify(self, bid: str) -> list[str]:
        backup = (await build_catalog(self.site, self.stores)).find(bid)
        outcome = await verify_backup(self.site, backup, self.stores, self.keyring, quiet)
        assert not outcome.ok and not outcome.restorable
        assert (await build_catalog(self.site, self.stores)).find(bid).status == "failed-verify"
        return outcome.problems

    async def restore(self, bid: str, run_id: str = "r") -> None:
        backup = (await build_catalog(self.site, self.stores)).find(bid)
        await restore_backup(
            self.site,
            self.site.nodes["node1"],
            backup,
            transport=self.transport,
            stores=self.stores,
            keyring=self.keyring,
            run_id=run_id,
            emit=quiet,
            sudo=False,
            require_stopped=False,
        )


@pytest.fixture
async def node(node_site: Site) -> Any:
    n = Node(node_site)
    try:
        yield n
    finally:
        await n.transport.close()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"paths": ["/etc"], "mac": ""}, "paths"),
        ({"paths": ["../../etc"], "mac": ""}, "paths"),
        ({"paths": ["var/lib/kaldrix/state/../../../../etc"], "mac": ""}, "paths"),
        ({"paths": ["/var/lib/kaldrix"]}, "mac"),  # allowed path, but the signature says no
        ({"ciphertext_size": 1 << 55, "mac": ""}, "ciphertext_size"),
        ({"key_id": "f" * 32}, "mac"),
    ],
)
async def test_sshd_a_forged_manifest_is_refused_and_the_node_untouched(
    node: Node, changes: dict[str, Any], field: str
) -> None:
    m = await node.backup("blockchain-state", ["/" + STATE])
    node.rewrite(m, **changes)
    problems = await node.verify(m.id)
    assert problems == [problems[0]] and f"refused: {field} " in problems[0]
    before = tree(node.root)
    with pytest.raises(OperationFailed, match=f"refused: {field} "):
        await node.restore(m.id)
    assert tree(node.root) == before
    assert not list(node.root.glob(".kconsole-restore-*"))


async def test_sshd_a_manifest_replayed_under_a_newer_name_is_refused(node: Node) -> None:
    """An old backup's object and manifest copied under a newer id (to make "latest" restore
    old state): the manifest names another id than the name it is stored under."""
    m = await node.backup("blockchain-state", ["/" + STATE])
    newer = backup_id("node1", "blockchain-state", m.created_at + timedelta(hours=5))
    d = node.backups / "blockchain-state" / "node1"
    (d / f"{newer}.kdx").write_bytes((d / f"{m.id}.kdx").read_bytes())
    (d / f"{newer}.kdx.json").write_bytes((d / f"{m.id}.kdx.json").read_bytes())
    problems = await node.verify(m.id)
    assert "refused: id " in problems[0]


async def test_sshd_a_backup_relabelled_as_another_node_is_refused(node: Node) -> None:
    """node1's backup presented as node2's (restoring it would put node1's identity on node2):
    every name consistent, only the signature binds the node."""
    m = await node.backup("blockchain-state", ["/" + STATE])
    bid = backup_id("node2", "blockchain-state", m.created_at)
    src = node.backups / m.object_key()
    dst = node.backups / "blockchain-state" / "node2"
    dst.mkdir(parents=True)
    (dst / f"{bid}.kdx").write_bytes(src.read_bytes())
    relabelled = dataclasses.replace(m, id=bid, node="node2")  # keeps node1's MAC
    (dst / f"{bid}.kdx.json").write_bytes(relabelled.to_json())
    problems = await node.verify(bid)
    assert "refused: mac " in problems[0]


async def test_sshd_unsigned_legacy_manifests_stay_readable_and_are_flagged(node: Node) -> None:
    m = await node.backup("blockchain-state", ["/" + STATE])
    node.rewrite(m, mac="")  # as kconsole wrote them before manifests were signed
    backup = (await build_catalog(node.site, node.stores)).find(m.id)
    lines: list[str] = []

    async def emit(stream: str, text: str) -> None:
        lines.append(f"{stream}: {text}")

    outcome = await verify_backup(node.site, backup, node.stores, node.keyring, emit)
    assert outcome.ok, outcome.problems
    assert any("manifest is unsigned" in line for line in lines)


async def test_sshd_a_site_requiring_signed_manifests_refuses_an_unsigned_one(
    node: Node,
) -> None:
    """With `[keys] require_signed_manifests = true` an unsigned manifest, every other field
    in order, is refused at verification naming `mac`, and restore touches nothing; a
    signed one still verifies."""
    node.site = dataclasses.replace(node.site, require_signed_manifests=True)
    signed = await node.backup("blockchain-state", ["/" + STATE])
    backup = (await build_catalog(node.site, node.stores)).find(signed.id)
    assert (await verify_backup(node.site, backup, node.stores, node.keyring, quiet)).ok
    m = await node.backup("blockchain-state", ["/" + STATE])
    node.rewrite(m, mac="")  # as someone without the key, or an old kconsole, would write it
    problems = await node.verify(m.id)
    assert problems == [problems[0]] and "refused: mac is missing" in problems[0]
    assert "require_signed_manifests" in problems[0]
    before = tree(node.root)
    with pytest.raises(OperationFailed, match="refused: mac is missing"):
        await node.restore(m.id)
    assert tree(node.root) == before
    assert not list(node.root.glob(".kconsole-restore-*"))


async def test_sshd_create_refuses_paths_its_kind_may_not_hold(node: Node) -> None:
    with pytest.raises(OperationFailed, match="outside what a blockchain-state backup may hold"):
        await node.backup("blockchain-state", ["/etc"])
    assert not list(node.backups.rglob("*.kdx*"))


async def test_sshd_a_restore_failing_mid_swap_puts_back_everything(node: Node) -> None:
    """Two paths; the second cannot be moved aside (its `.pre-restore` name is longer than a
    file name may be, which stops root too), so the first, already swapped, must be put back."""
    long = "t" * 250
    (node.root / "etc/kaldrix" / long).mkdir()
    (node.root / "etc/kaldrix" / long / "f").write_text("x\n")
    m = await node.backup(
        "validator-keys", ["/etc/kaldrix/validator_keys.json", f"/etc/kaldrix/{long}"]
    )
    (node.root / "etc/kaldrix/validator_keys.json").write_text('{"secret": 2}\n')
    before = tree(node.root)
    with pytest.raises(OperationFailed, match="everything it had moved is back in place") as e:
        await node.restore(m.id, run_id="midswap")
    assert f"cannot move /etc/kaldrix/{long} aside" in str(e.value)
    assert tree(node.root) == before
    assert (node.root / "etc/kaldrix/validator_keys.json").read_text() == '{"secret": 2}\n'
    assert not (node.root / "etc/kaldrix/validator_keys.json.pre-restore").exists()
    assert not list(node.root.glob(".kconsole-restore-*"))


async def test_sshd_a_symlink_out_of_the_root_is_not_followed(node: Node, tmp_path: Path) -> None:
    """The node's /var/lib/kaldrix replaced by a symlink to a directory outside its root: the
    swap resolves it on the node and refuses, and the outside directory is untouched."""
    m = await node.backup("blockchain-state", ["/" + STATE])
    outside = tmp_path / "outside"
    (outside / "state").mkdir(parents=True)
    (outside / "state" / "precious").write_text("keep me\n")
    kaldrix = node.root / "var/lib/kaldrix"
    (node.root / STATE / "height").unlink()
    (node.root / STATE / "block").unlink()
    (node.root / STATE).rmdir()
    kaldrix.rmdir()
    kaldrix.symlink_to(outside)
    with pytest.raises(OperationFailed, match="resolves outside the node root"):
        await node.restore(m.id, run_id="symlink")
    assert tree(outside) == {"state/precious": hashlib.sha256(b"keep me\n").hexdigest()}
    assert not list(node.root.glob(".kconsole-restore-*"))


@pytest.mark.parametrize("moment", ["fails", "is cancelled"])
async def test_sshd_a_restore_stopped_after_staging_leaves_no_staging_directory(
    node: Node, moment: str
) -> None:
    """The restore stops right after it created the staging directory on the node (an error,
    or the step's task cancelled): the directory is removed before the error goes up."""
    m = await node.backup("blockchain-state", ["/" + STATE])
    backup = (await build_catalog(node.site, node.stores)).find(m.id)
    before = tree(node.root)

    async def emit(stream: str, text: str) -> None:
        if text.startswith("streaming into"):
            assert list(node.root.glob(".kconsole-restore-*"))  # it was there
            if moment == "fails":
                raise OperationFailed("the operator's terminal went away.")
            task = asyncio.current_task()
            assert task is not None
            task.cancel()

    expected = OperationFailed if moment == "fails" else asyncio.CancelledError
    with pytest.raises(expected):
        await restore_backup(
            node.site,
            node.site.nodes["node1"],
            backup,
            transport=node.transport,
            stores=node.stores,
            keyring=node.keyring,
            run_id="stopped",
            emit=emit,
            sudo=False,
            require_stopped=False,
        )
    assert not list(node.root.glob(".kconsole-restore-*"))
    assert tree(node.root) == before


@pytest.mark.parametrize(
    "body",
    [
        b'{"format": "kconsole-backup/1", "id": ["x"], "kind": "blockchain-state"}',
        json.dumps({**sample().to_dict(), "created": 5}).encode(),
        json.dumps({**sample().to_dict(), "created": "2026-11-26T10:00:00"}).encode(),
        json.dumps({**sample().to_dict(), "id": {"a": 1}}).encode(),
        b"\xff\xfe not json",
    ],
)
async def test_a_malformed_manifest_does_not_break_the_catalog(
    node_site: Site, body: bytes
) -> None:
    """Types a forger picks (a list for the id, a number or a naive time for `created`): the
    catalog leaves that manifest out, and its object is not called an orphan either (a
    manifest is there; prune must not delete what someone may still read by hand)."""
    store = open_stores(node_site, None)["primary"]
    m = sample(node="node1", id=backup_id("node1", "blockchain-state", NOW - timedelta(hours=1)))
    await store.write_bytes(m.object_key(), b"x" * 64)
    await store.write_bytes(m.manifest_key(), body)
    catalog = await build_catalog(node_site, {"primary": store}, now=NOW + timedelta(days=1))
    assert catalog.backups == [] and catalog.orphans == []


# -- on the lab, through the recovery runbook ------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.lablive import live_lab

    with live_lab(tmp_path_factory.mktemp("manifestlab")) as running:
        yield running


def test_lab_a_forged_newest_manifest_stops_the_recovery_before_the_service(
    cli: Any, lab: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone with write access to the backup locations (no key) rewrites the newest
    blockchain-state manifest of validator1 in every location to restore over /etc. The
    recovery runbook fails at its verification step naming the field; the service was never
    stopped and nothing on the node moved."""
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    code, out, err = cli("--site", lab.site, "catalog", "--json", "--node", "validator1")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    newest = max(
        (r for r in rows if r.get("type") == "backup" and r["kind"] == "blockchain-state"),
        key=lambda r: r["id"],
    )
    forged = 0
    for manifest in lab.dir.rglob(f"{newest['id']}.kdx.json"):
        data = json.loads(manifest.read_text())
        data.update(paths=["/etc"], mac="")
        manifest.write_text(json.dumps(data))
        forged += 1
    assert forged >= 2  # the primary and the DR host's copy (S3 keeps its own: see below)
    root = lab.root("validator1")
    before = tree(root / "etc")
    code, out, err = cli(
        "--site",
        lab.site,
        "run",
        "recover-single-node",
        "--param",
        "node=validator1",
        "--param",
        f"backup={newest['id']}",
        "--yes",
        "--json",
    )
    assert code == 1, out + err
    events = [json.loads(line) for line in out.splitlines()]
    failed = [e for e in events if e.get("event") == "failed"]
    assert failed[0]["step"] == "check-backup"
    reason = failed[0]["reason"]
    assert reason.startswith(f"1 of 1 backups failed verification: {newest['id']} (the manifest")
    assert (
        "refused: paths '/etc' is outside what a blockchain-state backup may hold" in reason
        or "refused: id is claimed by another, different manifest" in reason  # S3's differs
    )
    assert not any(e.get("step") == "stop-service" and e.get("event") == "started" for e in events)
    code, out, _ = cli("--site", lab.site, "status", "--json")
    state = {s["name"]: s for s in map(json.loads, out.splitlines())}["validator1"]["state"]
    assert state == "active"
    assert tree(root / "etc") == before
    assert not list(root.glob(".kconsole-restore-*"))


def test_a_hang_up_during_the_swap_does_not_leave_it_half_done(tmp_path: Path) -> None:
    """The SSH session dropping (SIGHUP to the script's process group) right after the live
    state was moved aside does not stop the swap half-way: the restored state is moved in,
    the previous one kept as `.pre-restore`. The hang-up is sent by an `mv` on the PATH that
    does the real move first (once), so it lands at exactly that point."""
    import signal
    import subprocess

    from kconsole.backups.restore import swap_script

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mark = tmp_path / "hung-up"
    real_mv = subprocess.run(["sh", "-c", "command -v mv"], capture_output=True, text=True)
    wrapper = bin_dir / "mv"
    wrapper.write_text(
        "#!/bin/sh\n"
        "trap '' HUP\n"
        f'{real_mv.stdout.strip()} "$@"; rc=$?\n'
        f"if [ ! -e {mark} ]; then : > {mark}; kill -HUP 0; fi\n"
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    root = tmp_path / "root"
    live = root / "var/lib/kaldrix/state"
    live.mkdir(parents=True)
    (live / "old").write_text("old")
    staging = root / ".kconsole-restore-r1"
    (staging / "var/lib/kaldrix/state").mkdir(parents=True)
    (staging / "var/lib/kaldrix/state/new").write_text("new")
    script = swap_script(str(root), str(staging), ["var/lib/kaldrix/state"])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", script], env=env, start_new_session=True, timeout=60)
    assert mark.exists()  # the hang-up was sent after the first move
    assert proc.returncode in (0, -signal.SIGHUP)
    assert (live / "new").read_text() == "new"
    assert (root / "var/lib/kaldrix/state.pre-restore/old").read_text() == "old"
    assert not staging.exists()
