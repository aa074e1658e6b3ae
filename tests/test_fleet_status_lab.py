"""`kconsole status` against a real lab: health URLs first, SSH only where it must.

A node is "contacted over SSH" when the lab's sshd for it logged an accepted login in that
node's /var/log/auth.log; the tests count those lines before and after a poll.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kconsole.lab import labtool
from tests.lablive import LiveLab, live_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    with live_lab(tmp_path_factory.mktemp("statuslab")) as running:
        yield running


@pytest.fixture(autouse=True)
def clean(lab: LiveLab, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    yield
    lab.fault("clear")


def start_service(cli, lab: LiveLab, tmp_path: Path, node: str) -> None:
    """Start a crashed node's kaldrix-node again (a crash fault leaves the unit failed)."""
    rb = tmp_path / "start.toml"
    rb.write_text(
        '[runbook]\nid = "start"\ntitle = "Start"\nrto = "5m"\n\n[[steps]]\nid = "start"\n'
        f'action = "ssh.exec"\nnode = "{node}"\ncommand = "systemctl start kaldrix-node"\n'
        "sudo = true\n"
    )
    code, out, err = cli("--site", lab.site, "run", rb, "--yes")
    assert code == 0, out + err


def logins(lab: LiveLab) -> dict[str, int]:
    """Accepted SSH logins per node so far, from each node's auth.log."""
    out = {}
    for node in (lab.dir / "nodes").iterdir():
        try:
            text = (node / labtool.AUTH_LOG).read_text()
        except FileNotFoundError:
            text = ""
        out[node.name] = text.count("Accepted publickey")
    return out


def contacted(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {n for n, count in after.items() if count > before.get(n, 0)}


def status(cli, site: Path, *args: str) -> dict[str, dict]:
    code, out, err = cli("--site", site, "status", "--json", *args)
    assert code == 0, err
    return {s["name"]: s for s in map(json.loads, out.splitlines())}


def test_healthy_nodes_are_not_contacted_over_ssh(cli, lab: LiveLab) -> None:
    before = logins(lab)
    nodes = status(cli, lab.site)
    assert contacted(before, logins(lab)) == set()
    for s in nodes.values():
        assert s["state"] == "active"
        assert s["checked"] == ["health"] and s["latency_of"] == "health"
        assert s["detail"] == "health 200, service not checked over SSH"
        assert s["latency_ms"] is not None
        # The contract's fields are all still there.
        assert {"name", "host", "state", "detail", "latency_ms"} <= set(s)
    assert nodes["validator1"]["height"] > 0


def test_a_node_whose_health_says_unhealthy_is_checked_over_ssh(
    cli, lab: LiveLab, tmp_path: Path
) -> None:
    lab.fault("set", "crash=validator3")
    before = logins(lab)
    nodes = status(cli, lab.site)
    after = logins(lab)
    lab.fault("clear")
    start_service(cli, lab, tmp_path, "validator3")
    assert contacted(before, after) == {"validator3"}
    v3 = nodes["validator3"]
    assert v3["state"] == "inactive"
    assert v3["checked"] == ["health", "ssh"] and v3["latency_of"] == "ssh"
    assert re.fullmatch(r"kaldrix-node (failed|inactive), health 503", v3["detail"]), v3
    assert nodes["validator1"]["checked"] == ["health"]


def test_a_node_whose_health_url_fails_is_checked_over_ssh(cli, lab: LiveLab) -> None:
    lab.fault("set", "down=validator2")
    nodes = status(cli, lab.site)
    v2 = nodes["validator2"]
    assert v2["state"] == "unreachable"
    assert v2["checked"] == ["health", "ssh"] and v2["latency_ms"] is None
    assert "health URL unreachable" in v2["detail"]
    assert nodes["validator1"]["state"] == "active"


def test_ssh_flag_checks_every_node(cli, lab: LiveLab) -> None:
    before = logins(lab)
    nodes = status(cli, lab.site, "--ssh")
    assert contacted(before, logins(lab)) == set(nodes)
    for s in nodes.values():
        assert s["state"] == "active"
        assert s["checked"] == ["health", "ssh"] and s["latency_of"] == "ssh"
        assert re.fullmatch(r"(kaldrix-node|sshd) active, health 200", s["detail"]), s


def test_a_node_without_health_url_is_checked_over_ssh(cli, lab: LiveLab) -> None:
    blocks = lab.site.read_text().split("\n[[nodes]]\n")
    blocks = [
        re.sub(r'(?m)^health_url = "[^"]*"\n', "", b) if 'name = "api1"\n' in b else b
        for b in blocks
    ]
    edited = "\n[[nodes]]\n".join(blocks)
    assert edited.count("health_url") == lab.site.read_text().count("health_url") - 1
    site = lab.dir / "site-api1-no-health.toml"
    site.write_text(edited)
    before = logins(lab)
    nodes = status(cli, site)
    assert contacted(before, logins(lab)) == {"api1"}
    api1 = nodes["api1"]
    assert api1["state"] == "active" and api1["detail"] == "kaldrix-node active"
    assert api1["checked"] == ["ssh"] and api1["latency_of"] == "ssh"
    assert api1["height"] is None


def test_the_table_says_what_the_latency_measured(cli, lab: LiveLab, tmp_path: Path) -> None:
    lab.fault("set", "crash=api2")
    code, out, err = cli("--site", lab.site, "status")
    lab.fault("clear")
    start_service(cli, lab, tmp_path, "api2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "HOST", "STATE", "LATENCY", "HEIGHT", "DETAIL"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert re.search(
        r" \d+ ms health +\d+ health 200, service not checked over SSH$", rows["validator1"]
    )
    assert re.search(r" inactive +\d+ ms ssh ", rows["api2"])
    assert re.fullmatch(
        rf"{len(rows) - 1}/{len(rows)} active, polled in \d+\.\d\ds \(1 of {len(rows)} checked over SSH\)",
        lines[-1],
    )
