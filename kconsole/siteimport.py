"""`kconsole site import`: a site.toml from the plan's INI configuration.

The plan keeps its settings in `/etc/backup/primary.conf`:

    [backup]      primary_location = /backup/primary
                  secondary_location = backup-dr:/backup/secondary
                  tertiary_location = s3://kaldrix-backups/
    [encryption]  algorithm, key_length, key_rotation_days
    [retention]   blockchain_state_hours, validator_keys_days, transaction_logs_days,
                  system_logs_days
    [monitoring]  metrics_enabled, metrics_port, alert_enabled, alert_webhook

The import maps what kconsole has a place for onto the plan's fleet, tiers, contacts and
escalation matrices (`kconsole.plan`), and says what it did not carry over and why. The
webhook URL is a secret: it is never copied into the site file or printed; the site reads
it from an environment variable, which the notes name.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from kconsole import plan
from kconsole.config.source import MAX_TOML_BYTES
from kconsole.errors import UsageError

WEBHOOK_ENV = "KCONSOLE_SLACK_WEBHOOK"
"""The environment variable the imported site reads the alert webhook URL from."""

_RETENTION = {
    # INI key: (backup kind, unit suffix)
    "blockchain_state_hours": ("blockchain-state", "h"),
    "validator_keys_days": ("validator-keys", "d"),
    "transaction_logs_days": ("transaction-logs", "d"),
    "system_logs_days": ("system-logs", "d"),
}
_KNOWN = {
    "backup": ("primary_location", "secondary_location", "tertiary_location"),
    "encryption": ("algorithm", "key_length", "key_rotation_days"),
    "retention": tuple(_RETENTION),
    "monitoring": ("metrics_enabled", "metrics_port", "alert_enabled", "alert_webhook"),
}
_SFTP = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9._-]+):(?P<path>/\S*)$")
_S3 = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>\S*))?$")


@dataclass
class Imported:
    """The site as TOML-ready data, and what the operator should know about it."""

    site: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def toml(self, source: Path) -> str:
        """The site file's text, headed by where it came from."""
        head = (
            f"# kconsole site imported from {source} by `kconsole site import`.\n"
            "# The fleet, tiers, contacts and escalation are the plan's; review them, then run\n"
            "# `kconsole validate` on this file. Secrets are not here (see [notify.slack]).\n\n"
        )
        return head + tomli_w.dumps(self.site)


def read_plan_config(path: Path) -> configparser.ConfigParser:
    """The INI file, parsed as the plan's scripts would read it; UsageError (PATH:LINE) if not."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_TOML_BYTES + 1)
        if len(raw) > MAX_TOML_BYTES:
            raise UsageError(f"{path} is larger than {MAX_TOML_BYTES // 1024} KiB; not read.")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not the plan's INI file.") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a UTF-8 text file.") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}.") from None
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise UsageError(f"{path}:{exc.lineno}: a setting before any [section] header.") from None
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0]
        raise UsageError(f"{path}:{lineno}: cannot parse {line.strip()!r}.") from None
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as exc:
        raise UsageError(f"{path}:{exc.lineno}: {exc.message.split(': ', 1)[-1]}.") from None
    if not any(parser.has_section(s) for s in _KNOWN):
        raise UsageError(
            f"{path} has none of the plan's sections ([backup], [encryption], [retention], "
            "[monitoring]); is it the plan's primary.conf?"
        )
    return parser


def _number(ini: configparser.ConfigParser, section: str, key: str, path: Path) -> int | None:
    if not ini.has_option(section, key):
        return None
    raw = ini.get(section, key).strip()
    if not raw.isdigit() or int(raw) == 0:
        raise UsageError(f"{path}: [{section}] {key} must be a positive whole number, not {raw!r}.")
    return int(raw)


def _flag(ini: configparser.ConfigParser, section: str, key: str, path: Path) -> bool | None:
    if not ini.has_option(section, key):
        return None
    try:
        return ini.getboolean(section, key)
    except ValueError:
        raise UsageError(
            f"{path}: [{section}] {key} must be true or false, not {ini.get(section, key)!r}."
        ) from None


def _locations(ini: configparser.ConfigParser, path: Path, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not ini.has_section("backup"):
        notes.append(
            "no [backup] section: the site has no backup locations; add [locations.*] by hand."
        )
        return out
    primary = ini.get("backup", "primary_location", fallback="").strip()
    if primary:
        if not primary.startswith("/"):
            raise UsageError(
                f"{path}: [backup] primary_location must be an absolute path, not {primary!r}."
            )
        out["primary"] = {"type": "local", "path": primary, "role": "primary"}
    secondary = ini.get("backup", "secondary_location", fallback="").strip()
    if secondary:
        m = None if "://" in secondary else _SFTP.match(secondary)
        if m is None:
            raise UsageError(
                f"{path}: [backup] secondary_location must be HOST:/PATH (as rsync and scp "
                f"take it), not {secondary!r}."
            )
        out["dr"] = {"type": "sftp", "host": m["host"], "path": m["path"], "role": "secondary"}
        if m["user"]:
            notes.append(
                f"[locations.dr]: the login user {m['user']!r} comes from [ssh] user or "
                "~/.ssh/config, not from the location."
            )
        notes.append(
            f"[locations.dr]: add {m['host']}'s host key to the known_hosts file [ssh] names "
            "(kconsole refuses unknown hosts)."
        )
    tertiary = ini.get("backup", "tertiary_location", fallback="").strip()
    if tertiary:
        m = _S3.match(tertiary)
        if m is None:
            raise UsageError(
                f"{path}: [backup] tertiary_location must be s3://BUCKET/[PREFIX], not {tertiary!r}."
            )
        prefix = (m["prefix"] or "").strip("/")
        out["cloud"] = {
            "type": "s3",
            "bucket": m["bucket"],
            "prefix": f"{prefix}/" if prefix else "",
            "object_lock": True,
            "role": "tertiary",
        }
        notes.append(
            "[locations.cloud]: credentials come from the usual AWS chain (environment, "
            "~/.aws, instance role); object_lock = true makes prune check every object's "
            "lock, so enable Object Lock on the bucket or set it to false."
        )
    return out


def _tiers(ini: configparser.ConfigParser, path: Path) -> dict[str, Any]:
    retention: dict[str, str] = {}
    if ini.has_section("retention"):
        for key, (kind, unit) in _RETENTION.items():
            n = _number(ini, "retention", key, path)
            if n is not None:
                retention[kind] = f"{n}{unit}"
    tiers: dict[str, Any] = {}
    for t in plan.TIERS:
        kinds = [str(k) for k in t["kinds"]]  # type: ignore[attr-defined]
        table: dict[str, Any] = {
            "title": t["title"],
            "kinds": kinds,
            "rpo": t["rpo"],
            "rto": t["rto"],
            "schedule": t["schedule"],
        }
        keep = t["retention"]
        per_kind = dict(keep) if isinstance(keep, dict) else {k: str(keep) for k in kinds}
        per_kind.update({k: v for k, v in retention.items() if k in kinds})
        values = set(per_kind.values())
        table["retention"] = values.pop() if len(values) == 1 else per_kind
        tiers[str(t["name"])] = table
    return tiers


def import_plan_config(path: Path) -> Imported:
    """The site the plan's primary.conf describes; UsageError naming the file for bad input."""
    ini = read_plan_config(path)
    notes: list[str] = []
    for section in ini.sections():
        if section not in _KNOWN:
            notes.append(f"[{section}] is not one of the plan's sections; not imported.")
            continue
        for key in ini.options(section):
            if key not in _KNOWN[section]:
                notes.append(f"[{section}] {key} is not a setting kconsole knows; not imported.")

    keys: dict[str, Any] = {"dir": "/backup/keys"}
    if ini.has_section("encryption"):
        algorithm = ini.get("encryption", "algorithm", fallback="aes-256-cbc").strip().lower()
        if algorithm != "aes-256-cbc":
            notes.append(
                f"[encryption] algorithm {algorithm!r}: kconsole reads the plan's aes-256-cbc "
                "files only; other legacy files will not decrypt."
            )
        notes.append(
            "[encryption]: existing aes-256-cbc backups are read as legacy (unauthenticated); "
            "new backups use kconsole's authenticated AES-256-GCM format."
        )
        bits = _number(ini, "encryption", "key_length", path)
        if bits is not None and bits != 256:
            notes.append(f"[encryption] key_length {bits}: kconsole keys are always 256 bits.")
        days = _number(ini, "encryption", "key_rotation_days", path)
        if days is not None:
            keys["rotate_after"] = f"{days}d"
    else:
        keys["rotate_after"] = plan.KEY_ROTATION

    site: dict[str, Any] = {
        "site": {
            "name": "kaldrix",
            "state_dir": "/var/lib/kconsole",
            "description": f"KALDRIX validator network (imported from {path})",
        },
        "ssh": {"known_hosts": "~/.ssh/known_hosts", "connect_timeout": "10s", "keepalive": "15s"},
        "nodes": [
            {"name": name, "host": name, "groups": [group], "service": plan.SERVICE}
            for name, group in plan.NODES
        ],
        "locations": _locations(ini, path, notes),
        "keys": keys,
        "tiers": _tiers(ini, path),
        "contacts": [
            {"name": n, "role": r, "email": e, "phone": p, "on_call": o}
            for n, r, e, p, o in plan.CONTACTS
        ],
        "escalation": {
            key: {
                "title": title,
                "levels": [{"role": r, "wait": w} if w else {"role": r} for r, w in levels],
            }
            for key, title, levels in plan.ESCALATION
        },
        "access": {"admin": [], "operator": [], "auditor": []},
    }
    alerts = (
        _flag(ini, "monitoring", "alert_enabled", path) if ini.has_section("monitoring") else None
    )
    if alerts is not False:
        site["notify"] = {"slack": {"webhook_env": WEBHOOK_ENV}}
        if ini.has_option("monitoring", "alert_webhook"):
            notes.append(
                f"[monitoring] alert_webhook is a secret and was not copied: export {WEBHOOK_ENV} "
                "with its URL where kconsole runs."
            )
    if (
        ini.has_section("monitoring")
        and _flag(ini, "monitoring", "metrics_enabled", path) is not False
    ):
        port = ini.get("monitoring", "metrics_port", fallback="").strip()
        notes.append(
            f"[monitoring] metrics{' port ' + port if port else ''}: kconsole does not listen on a "
            "port; run `kconsole metrics -o /var/lib/node_exporter/textfile/kconsole.prom` "
            "from cron for node_exporter's textfile collector."
        )
    notes.append(
        "[[nodes]]: the plan's nine nodes, reached by name through ~/.ssh/config or DNS; "
        "set host, port, root and health_url for each."
    )
    notes.append(
        "[access]: empty; list who is admin, operator and auditor before others use the console."
    )
    return Imported(site, notes)
