"""A lab host's sandbox root: the directory that stands for `/` on that machine.

Fleet nodes get the plan's paths: chain state under /var/lib/kaldrix/state, validator
keys in /etc/kaldrix/validator_keys.json, a TLS pair in /etc/kaldrix/tls, transaction logs
under /var/log/kaldrix/transactions. The DR host gets /backup. Only what is missing is
created, so a lab restarted on the same directory keeps its chains and backups.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kconsole.lab import labtool

DR_BACKUP_DIR = "backup"
"""Where the DR host keeps backups, inside its root (the SFTP location's `/backup`)."""


def _tls_pair(name: str, days: int = 90) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.kaldrix.lab")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"{name}.kaldrix.lab")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def build_sandbox(
    root: Path, name: str, groups: tuple[str, ...], peers: list[str], created: float
) -> None:
    """Create whatever is missing of host `name`'s sandbox at `root`."""
    role = groups[0] if groups else "node"
    for rel, mode in (
        ("etc", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("var/log", 0o755),
    ):
        (root / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(root / rel, mode)
    hostname = root / "etc" / "hostname"
    if not hostname.exists():
        _write(hostname, f"{name}\n")
    if role == "dr":
        backup = root / DR_BACKUP_DIR
        backup.mkdir(exist_ok=True)
        os.chmod(backup, 0o750)
        return
    if (
        not (root / labtool.STATE_DIR / "index.json").exists()
        and not (root / labtool.STATE_DIR).exists()
    ):
        labtool.init_state(root, created)
    keys = root / labtool.KEYS_FILE
    if not keys.exists():
        _write(keys, json.dumps(labtool.new_validator_keys(name, role), indent=2) + "\n", 0o600)
    tls = root / labtool.TLS_DIR
    if not (tls / "node.crt").exists():
        cert, key = _tls_pair(name)
        _write(tls / "node.key", key, 0o600)
        _write(tls / "node.crt", cert)
    config = root / "etc" / "kaldrix" / "node.toml"
    if not config.exists():
        peer_list = ", ".join(f'"{p}.kaldrix.lab:30303"' for p in peers if p != name)
        _write(
            config,
            (
                f"# /etc/kaldrix/node.toml on {name}\n"
                f'name = "{name}"\nrole = "{role}"\nnetwork = "{labtool.NETWORK}"\n'
                f'data_dir = "/{labtool.STATE_DIR}"\nkeys = "/{labtool.KEYS_FILE}"\n'
                f'tls_cert = "/{labtool.TLS_DIR}/node.crt"\ntls_key = "/{labtool.TLS_DIR}/node.key"\n'
                f'p2p_listen = "0.0.0.0:30303"\npeers = [{peer_list}]\n'
            ),
        )
    tx = root / labtool.TX_DIR
    if not tx.is_dir() or not any(tx.iterdir()):
        labtool.init_tx_logs(root, name, created)
