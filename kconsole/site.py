"""The site file (`site.toml`): the fleet, SSH settings, backup locations, keys, tiers,
contacts, escalation, notification targets and who may do what.

Paths in the file are relative to the file's own directory. Secrets are never written in
it: a webhook URL is named by the environment variable that holds it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

from kconsole.config import Problem, ProblemList, SourceFile, load_toml
from kconsole.config.problems import did_you_mean
from kconsole.config.schema import check_keys, expect_duration, expect_type
from kconsole.config.source import KeyPath, TomlFileError
from kconsole.errors import AccessDenied, KconsoleError, UsageError

BACKUP_KINDS = (
    "blockchain-state",
    "validator-keys",
    "transaction-logs",
    "system-logs",
    "full-system",
    "archive",
)
"""The kinds of backup the plan makes, one per backup runbook."""

Role = Literal["admin", "operator", "auditor"]
ROLES: tuple[Role, ...] = ("admin", "operator", "auditor")


@dataclass(frozen=True)
class Node:
    """One host of the fleet."""

    name: str
    host: str
    port: int = 22
    groups: tuple[str, ...] = ()
    root: str = "/"
    health_url: str = ""
    user: str = ""
    service: str = "kaldrix-node"

    def path(self, absolute: str) -> str:
        """`absolute` (a path on a real node) inside this node's root."""
        if self.root in ("", "/"):
            return absolute
        return self.root.rstrip("/") + "/" + absolute.lstrip("/")


@dataclass(frozen=True)
class SshSettings:
    """How to reach the nodes."""

    user: str = ""
    identity: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: float = 10.0
    keepalive: float = 15.0
    command_timeout: float = 900.0
    jump_host: str = ""
    config: Path | None = None
    max_channels: int = 8


@dataclass(frozen=True)
class Location:
    """Where backups are stored: a local directory, an SFTP host, or an S3 bucket."""

    name: str
    type: Literal["local", "sftp", "s3"]
    path: str = ""
    host: str = ""
    port: int = 22
    node: str = ""
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"
    object_lock: bool = False
    transport: str = "asyncssh"
    role: str = ""
    credentials_file: str = ""
    profile: str = ""
    retention_days: int = 0


@dataclass(frozen=True)
class Tier:
    """A class of data with its recovery objectives and retention."""

    name: str
    rpo: float
    rto: float
    kinds: tuple[str, ...] = ()
    retention: float = 0.0
    schedule: str = ""
    title: str = ""
    retention_by_kind: tuple[tuple[str, float], ...] = ()
    """Per-kind retention, when `retention` is a table (`{ validator-keys = "90d", ... }`)."""

    def retention_for(self, kind: str) -> float | None:
        """The retention set for `kind` in its own entry of a retention table, or None."""
        return next((secs for k, secs in self.retention_by_kind if k == kind), None)


@dataclass(frozen=True)
class Contact:
    """A person to call."""

    name: str
    role: str
    email: str = ""
    phone: str = ""
    on_call: str = "24/7"


@dataclass(frozen=True)
class EscalationLevel:
    """One rung of an escalation matrix: who, and how long to wait before the next."""

    level: int
    role: str
    wait: float


@dataclass(frozen=True)
class EscalationMatrix:
    """The ladder for one kind of incident (backup, recovery, security)."""

    name: str
    title: str
    levels: tuple[EscalationLevel, ...]


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
"""PagerDuty's Events API v2 endpoint (a `[notify.*]` table of kind pagerduty may name another)."""


@dataclass(frozen=True)
class NotifyTarget:
    """Where notifications go: a Slack-style webhook (its URL read from an environment
    variable at send time) or PagerDuty's Events API v2 (its routing key likewise)."""

    name: str
    webhook_env: str
    kind: Literal["slack", "pagerduty"] = "slack"
    routing_key_env: str = ""
    events_url: str = PAGERDUTY_EVENTS_URL

    def url(self) -> str | None:
        """The webhook URL (slack) or events endpoint (pagerduty); None when a secret is unset."""
        if self.kind == "pagerduty":
            return self.events_url if self.routing_key() else None
        return os.environ.get(self.webhook_env) or None

    def routing_key(self) -> str | None:
        """The PagerDuty routing key, or None when its variable is unset."""
        return os.environ.get(self.routing_key_env) or None if self.routing_key_env else None

    @property
    def secret_env(self) -> str:
        """The environment variable holding this target's secret."""
        return self.routing_key_env if self.kind == "pagerduty" else self.webhook_env


@dataclass(frozen=True)
class Access:
    """Who is admin, operator or auditor. With no [access] table everyone is admin."""

    admin: tuple[str, ...] = ()
    operator: tuple[str, ...] = ()
    auditor: tuple[str, ...] = ()
    configured: bool = False
    audit_dir: Path | None = field(default=None, compare=False)
    """The state_dir whose audit log records every refusal (None: not recorded)."""

    def role_of(self, user: str) -> Role | None:
        """The user's role, or None if the site grants them nothing."""
        if not self.configured:
            return "admin"
        for role in ROLES:
            if user in getattr(self, role):
                return role
        return None

    def require_operate(self, user: str, what: str) -> Role:
        """Raise AccessDenied unless `user` may change things (admin or operator)."""
        role = self.role_of(user)
        if role in ("admin", "operator"):
            return role
        if role == "auditor":
            self._refuse(
                user,
                what,
                f"{user} is an auditor and may not {what}; auditors can look, not change.",
            )
        self._refuse(
            user, what, f"{user} has no role in this site's [access] table and may not {what}."
        )

    def require_admin(self, user: str, what: str) -> None:
        """Raise AccessDenied unless `user` is an admin."""
        if self.role_of(user) != "admin":
            self._refuse(user, what, f"{user} is not a backup admin and may not {what}.")

    def _refuse(self, user: str, what: str, why: str) -> NoReturn:
        """Record the refusal in the audit log (who, what, why), then raise it. A log that
        cannot be written does not turn a refusal into a permission."""
        if self.audit_dir is not None:
            from kconsole.audit import AuditLog

            with contextlib.suppress(OSError, KconsoleError):
                AuditLog(self.audit_dir).append(
                    user,
                    "access-denied",
                    what,
                    result="refused",
                    role=self.role_of(user) or "none",
                    reason=why,
                )
        raise AccessDenied(why)


def current_user() -> str:
    """The operator's OS account (the effective uid's passwd entry), as recorded in journal
    and audit and checked against [access]. Never $USER or $LOGNAME: anyone can set those."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (some containers): the uid itself is the identity
        return f"uid{uid}"


@dataclass
class Site:
    """A loaded, validated site file."""

    path: Path
    name: str
    state_dir: Path
    ssh: SshSettings
    nodes: dict[str, Node]
    locations: dict[str, Location] = field(default_factory=dict)
    keys_dir: Path | None = None
    current_key: str = ""
    key_rotate_after: float | None = None
    """Seconds a key may be current before it is due for rotation (`[keys] rotate_after`)."""
    tiers: dict[str, Tier] = field(default_factory=dict)
    contacts: list[Contact] = field(default_factory=list)
    escalation: dict[str, EscalationMatrix] = field(default_factory=dict)
    notify: dict[str, NotifyTarget] = field(default_factory=dict)
    access: Access = field(default_factory=Access)
    raw: dict[str, Any] = field(default_factory=dict)
    health_url: str = ""
    """The network's public health URL (the API behind its load balancer), for end checks."""
    alertmanager_url: str = ""
    """Alertmanager's base URL (`[alertmanager] url`): the console reads firing alerts there."""
    shared: str = ""
    """The S3 location runs are shared through (`[site] shared`: a location name, optionally
    followed by `/prefix`), or "" for this console only."""
    lease: float = 60.0
    """Seconds a run's lease lasts without renewal before another console may take it over."""

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the file are resolved against."""
        return self.path.parent

    def groups(self) -> dict[str, list[str]]:
        """Group name -> node names, in file order."""
        out: dict[str, list[str]] = {}
        for node in self.nodes.values():
            for g in node.groups:
                out.setdefault(g, []).append(node.name)
        return out

    def node(self, name: str) -> Node:
        """The node called `name`; UsageError naming the known ones if there is none."""
        try:
            return self.nodes[name]
        except KeyError:
            raise UsageError(
                f'unknown node "{name}"{did_you_mean(name, self.nodes)}; '
                f"this site has: {', '.join(self.nodes)}."
            ) from None

    def check_state_dir(self) -> None:
        """UsageError (one sentence) unless state_dir is a directory or can be one. Whether
        it is writable is left to the first write: an auditor may read a state_dir it cannot
        write."""
        d = self.state_dir
        if d.exists() and not d.is_dir():
            raise UsageError(
                f"state_dir {d} is a file, not a directory; point [site] state_dir in "
                f"{self.path} at a directory."
            )
        blocker = next((p for p in d.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UsageError(f"state_dir {d} cannot be made: {blocker} is a file, not a directory.")

    def tier_for_kind(self, kind: str) -> Tier | None:
        """The tier that holds backups of `kind`."""
        for tier in self.tiers.values():
            if kind in tier.kinds:
                return tier
        return None


def find_site_path(explicit: str | None) -> Path:
    """`--site`, else `$KCONSOLE_SITE`, else `./site.toml`."""
    chosen = explicit or os.environ.get("KCONSOLE_SITE") or "site.toml"
    return Path(chosen)


def load_site(path: str | Path) -> Site:
    """Load and validate a site file; UsageError listing every problem if it is bad."""
    p = Path(path)
    if not p.exists():
        raise UsageError(
            f"site file {p} not found; pass --site FILE, set KCONSOLE_SITE, "
            "or run `kconsole lab` for the embedded lab."
        )
    try:
        src = load_toml(p)
    except TomlFileError as exc:
        raise UsageError(str(exc.problem)) from None
    problems = ProblemList()
    site = build_site(src, problems)
    problems.raise_if_any()
    assert site is not None
    return site


def validate_site(src: SourceFile) -> list[Problem]:
    """Every problem of a parsed site file."""
    problems = ProblemList()
    build_site(src, problems)
    return problems


_TOP = (
    "site",
    "ssh",
    "nodes",
    "locations",
    "keys",
    "tiers",
    "contacts",
    "escalation",
    "notify",
    "access",
    "alertmanager",
)
_SITE_KEYS = ("name", "state_dir", "description", "health_url", "staging", "shared", "lease")
_SSH_KEYS = (
    "user",
    "identity",
    "known_hosts",
    "connect_timeout",
    "keepalive",
    "command_timeout",
    "jump_host",
    "config",
    "max_channels",
)
_NODE_KEYS = ("name", "host", "port", "groups", "root", "health_url", "user", "service")
_LOCATION_KEYS = {
    "local": ("type", "path", "role"),
    "sftp": ("type", "path", "host", "port", "node", "transport", "role"),
    "s3": (
        "type",
        "bucket",
        "prefix",
        "endpoint_url",
        "region",
        "object_lock",
        "role",
        "credentials_file",
        "profile",
        "retention_days",
    ),
}
_TIER_KEYS = ("rpo", "rto", "kinds", "retention", "schedule", "title")
_CONTACT_KEYS = ("name", "role", "email", "phone", "on_call")


def _table(
    src: SourceFile,
    parent: dict[str, Any],
    kp: KeyPath,
    key: str,
    what: str,
    problems: list[Problem],
) -> dict[str, Any]:
    """`parent[key]` if it is a table (absent: an empty one); else a problem and {}."""
    value = parent.get(key, {})
    if isinstance(value, dict):
        return value
    problems.append(src.problem((*kp, key), f"{what} must be a table"))
    return {}


def _tables(
    src: SourceFile, parent: dict[str, Any], key: str, problems: list[Problem]
) -> dict[str, dict[str, Any]]:
    """The sub-tables of table `key` (`[key.NAME]`); anything else is a problem, skipped."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in _table(src, parent, (), key, f"[{key}]", problems).items():
        if isinstance(value, dict):
            out[name] = value
        else:
            problems.append(src.problem((key, name), f"[{key}.{name}] must be a table"))
    return out


def _names(
    src: SourceFile, table: dict[str, Any], kp: KeyPath, key: str, problems: list[Problem]
) -> list[str]:
    """`table[key]` as a list of strings (a lone string is not a list of names)."""
    value = table.get(key, [])
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    problems.append(src.problem((*kp, key), f'"{key}" must be a list of strings'))
    return []


def build_site(src: SourceFile, problems: list[Problem]) -> Site | None:
    """Build a Site from `src`, appending every problem found; None if unusable."""
    data = src.data
    check_keys(src, data, (), _TOP, ("site", "nodes"), "the site file", problems)
    base = Path(src.path).resolve().parent

    def rel(value: str) -> Path:
        return (base / os.path.expanduser(value)).resolve()

    site_t = data.get("site", {})
    if not isinstance(site_t, dict):
        problems.append(src.problem(("site",), "[site] must be a table"))
        site_t = {}
    check_keys(src, site_t, ("site",), _SITE_KEYS, ("name",), "[site]", problems)
    expect_type(src, site_t, ("site",), "name", str, "a string", problems)
    expect_type(src, site_t, ("site",), "state_dir", str, "a path string", problems)
    expect_type(src, site_t, ("site",), "staging", bool, "true or false", problems)

    ssh_t = _table(src, data, (), "ssh", "[ssh]", problems)
    check_keys(src, ssh_t, ("ssh",), _SSH_KEYS, (), "[ssh]", problems)
    for key in ("user", "identity", "known_hosts", "jump_host", "config"):
        expect_type(src, ssh_t, ("ssh",), key, str, "a string", problems)
    ssh = SshSettings(
        user=str(ssh_t.get("user", "")),
        identity=rel(ssh_t["identity"]) if isinstance(ssh_t.get("identity"), str) else None,
        known_hosts=rel(ssh_t["known_hosts"])
        if isinstance(ssh_t.get("known_hosts"), str)
        else None,
        connect_timeout=expect_duration(src, ssh_t, ("ssh",), "connect_timeout", problems) or 10.0,
        keepalive=expect_duration(src, ssh_t, ("ssh",), "keepalive", problems) or 15.0,
        command_timeout=expect_duration(src, ssh_t, ("ssh",), "command_timeout", problems) or 900.0,
        jump_host=str(ssh_t.get("jump_host", "")),
        config=rel(ssh_t["config"])
        if isinstance(ssh_t.get("config"), str) and ssh_t["config"]
        else None,
        max_channels=int(ssh_t.get("max_channels", 8))
        if expect_type(src, ssh_t, ("ssh",), "max_channels", int, "an integer", problems)
        else 8,
    )

    nodes: dict[str, Node] = {}
    nodes_t = data.get("nodes", [])
    if not isinstance(nodes_t, list):
        problems.append(src.problem(("nodes",), "nodes must be an array of tables: [[nodes]]"))
        nodes_t = []
    for i, n in enumerate(nodes_t):
        kp: KeyPath = ("nodes", i)
        if not isinstance(n, dict):
            problems.append(src.problem(kp, "each [[nodes]] entry must be a table"))
            continue
        check_keys(src, n, kp, _NODE_KEYS, ("name", "host"), "[[nodes]]", problems)
        ok = all(
            [
                expect_type(src, n, kp, "name", str, "a string", problems),
                expect_type(src, n, kp, "host", str, "a string", problems),
                expect_type(src, n, kp, "port", int, "an integer", problems),
                expect_type(src, n, kp, "groups", list, "a list of group names", problems),
                expect_type(src, n, kp, "root", str, "a path string", problems),
                expect_type(src, n, kp, "health_url", str, "a URL string", problems),
            ]
        )
        if not ok or "name" not in n or "host" not in n:
            continue
        if n["name"] in nodes:
            problems.append(src.problem((*kp, "name"), f'duplicate node name "{n["name"]}"'))
            continue
        root = n.get("root", "/")
        nodes[n["name"]] = Node(
            name=n["name"],
            host=n["host"],
            port=n.get("port", 22),
            groups=tuple(_names(src, n, kp, "groups", problems)),
            root=str(rel(root)) if root not in ("", "/") and not root.startswith("/") else root,
            health_url=n.get("health_url", ""),
            user=str(n.get("user", "")),
            service=str(n.get("service", "kaldrix-node")),
        )

    locations: dict[str, Location] = {}
    for name, loc in _tables(src, data, "locations", problems).items():
        kp = ("locations", name)
        kind = loc.get("type")
        if kind not in _LOCATION_KEYS:
            problems.append(
                src.problem(
                    (*kp, "type") if "type" in loc else kp,
                    f'[locations.{name}] needs type = "local", "sftp" or "s3"',
                )
            )
            continue
        required = {"local": ("path",), "sftp": ("path",), "s3": ("bucket",)}[kind]
        check_keys(src, loc, kp, _LOCATION_KEYS[kind], required, f"[locations.{name}]", problems)
        if kind == "sftp" and not (loc.get("host") or loc.get("node")):
            problems.append(src.problem(kp, f"[locations.{name}] needs host or node"))
        if not all(
            [
                expect_type(src, loc, kp, "port", int, "an integer", problems),
                expect_type(src, loc, kp, "retention_days", int, "an integer", problems),
                expect_type(src, loc, kp, "path", str, "a path string", problems),
                expect_type(src, loc, kp, "credentials_file", str, "a path string", problems),
            ]
        ):
            continue
        path = str(loc.get("path", ""))
        if kind == "local" and path:
            path = str(rel(path))
        locations[name] = Location(
            name=name,
            type=kind,
            path=path,
            host=str(loc.get("host", "")),
            port=int(loc.get("port", 22)),
            node=str(loc.get("node", "")),
            bucket=str(loc.get("bucket", "")),
            prefix=str(loc.get("prefix", "")),
            endpoint_url=str(loc.get("endpoint_url", "")),
            region=str(loc.get("region", "us-east-1")),
            object_lock=bool(loc.get("object_lock", False)),
            transport=str(loc.get("transport", "asyncssh")),
            role=str(loc.get("role", "")),
            credentials_file=str(rel(loc["credentials_file"]))
            if loc.get("credentials_file")
            else "",
            profile=str(loc.get("profile", "")),
            retention_days=int(loc.get("retention_days", 0)),
        )

    keys_t = _table(src, data, (), "keys", "[keys]", problems)
    check_keys(src, keys_t, ("keys",), ("dir", "current", "rotate_after"), (), "[keys]", problems)
    rotate_after = expect_duration(src, keys_t, ("keys",), "rotate_after", problems)

    tiers: dict[str, Tier] = {}
    for name, t in _tables(src, data, "tiers", problems).items():
        kp = ("tiers", name)
        check_keys(src, t, kp, _TIER_KEYS, ("rpo", "rto"), f"[tiers.{name}]", problems)
        tier_kinds = _names(src, t, kp, "kinds", problems)
        for kind in tier_kinds:
            if kind not in BACKUP_KINDS:
                problems.append(
                    src.problem(
                        (*kp, "kinds"),
                        f'unknown backup kind "{kind}"{did_you_mean(kind, BACKUP_KINDS)}',
                    )
                )
        # retention is one duration for the tier, or a table of durations per kind (the plan
        # keeps tier 1's chain state 24 h but its validator keys 90 d).
        by_kind: list[tuple[str, float]] = []
        retention_t = t.get("retention")
        if isinstance(retention_t, dict):
            for kind in retention_t:
                if kind not in tier_kinds:
                    problems.append(
                        src.problem(
                            (*kp, "retention", kind),
                            f'retention names kind "{kind}", which [tiers.{name}] does not hold',
                        )
                    )
                    continue
                secs = expect_duration(src, retention_t, (*kp, "retention"), kind, problems)
                if secs is not None:
                    by_kind.append((kind, secs))
        tiers[name] = Tier(
            name=name,
            rpo=expect_duration(src, t, kp, "rpo", problems) or 0.0,
            rto=expect_duration(src, t, kp, "rto", problems) or 0.0,
            kinds=tuple(tier_kinds),
            retention=0.0
            if isinstance(retention_t, dict)
            else expect_duration(src, t, kp, "retention", problems) or 0.0,
            retention_by_kind=tuple(by_kind),
            schedule=str(t.get("schedule", "")),
            title=str(t.get("title", name)),
        )

    contacts: list[Contact] = []
    contacts_t = data.get("contacts") or []
    if not isinstance(contacts_t, list):
        problems.append(src.problem(("contacts",), "contacts must be an array of tables"))
        contacts_t = []
    for i, c in enumerate(contacts_t):
        kp = ("contacts", i)
        if not isinstance(c, dict):
            problems.append(src.problem(kp, "each [[contacts]] entry must be a table"))
            continue
        check_keys(src, c, kp, _CONTACT_KEYS, ("name", "role"), "[[contacts]]", problems)
        if "name" not in c or "role" not in c:
            continue
        contacts.append(Contact(**{k: str(v) for k, v in c.items() if k in _CONTACT_KEYS}))

    escalation: dict[str, EscalationMatrix] = {}
    for name, e in _tables(src, data, "escalation", problems).items():
        kp = ("escalation", name)
        check_keys(src, e, kp, ("title", "levels"), ("levels",), f"[escalation.{name}]", problems)
        levels = []
        levels_t = e.get("levels", [])
        if not isinstance(levels_t, list):
            problems.append(src.problem((*kp, "levels"), '"levels" must be a list of tables'))
            levels_t = []
        for i, lvl in enumerate(levels_t):
            lkp = (*kp, "levels", i)
            if not isinstance(lvl, dict):
                problems.append(
                    src.problem(
                        (*kp, "levels"), "each escalation level must be { role = ..., wait = ... }"
                    )
                )
                continue
            check_keys(src, lvl, lkp, ("role", "wait"), ("role",), "an escalation level", problems)
            levels.append(
                EscalationLevel(
                    i + 1,
                    str(lvl.get("role", "")),
                    expect_duration(src, lvl, lkp, "wait", problems) or 0.0,
                )
            )
        escalation[name] = EscalationMatrix(name, str(e.get("title", name)), tuple(levels))

    notify: dict[str, NotifyTarget] = {}
    for name, t in _tables(src, data, "notify", problems).items():
        kp = ("notify", name)
        kind = t.get("kind", "slack")
        if kind not in ("slack", "pagerduty"):
            problems.append(
                src.problem((*kp, "kind"), f'[notify.{name}] kind must be "slack" or "pagerduty"')
            )
            continue
        if kind == "pagerduty":
            check_keys(
                src,
                t,
                kp,
                ("kind", "routing_key_env", "events_url"),
                ("routing_key_env",),
                f"[notify.{name}]",
                problems,
            )
            if "routing_key" in t:
                problems.append(
                    src.problem(
                        kp,
                        f"[notify.{name}] must not hold the routing key; name its environment variable with routing_key_env",
                    )
                )
            notify[name] = NotifyTarget(
                name,
                "",
                kind="pagerduty",
                routing_key_env=str(t.get("routing_key_env", "")),
                events_url=str(t.get("events_url") or PAGERDUTY_EVENTS_URL),
            )
            continue
        check_keys(
            src, t, kp, ("kind", "webhook_env"), ("webhook_env",), f"[notify.{name}]", problems
        )
        if "url" in t or "webhook_url" in t:
            problems.append(
                src.problem(
                    kp,
                    f"[notify.{name}] must not hold the webhook URL; name its environment variable with webhook_env",
                )
            )
        notify[name] = NotifyTarget(name, str(t.get("webhook_env", "")))

    am_t = data.get("alertmanager")
    if isinstance(am_t, dict):
        check_keys(src, am_t, ("alertmanager",), ("url",), ("url",), "[alertmanager]", problems)
        expect_type(src, am_t, ("alertmanager",), "url", str, "a URL string", problems)
    elif am_t is not None:
        problems.append(src.problem(("alertmanager",), "[alertmanager] must be a table"))

    access = Access()
    if "access" in data:
        # A lone string is refused, not read as a list of one-letter users.
        access_t = _table(src, data, (), "access", "[access]", problems)
        check_keys(src, access_t, ("access",), ROLES, (), "[access]", problems)
        access = Access(
            admin=tuple(_names(src, access_t, ("access",), "admin", problems)),
            operator=tuple(_names(src, access_t, ("access",), "operator", problems)),
            auditor=tuple(_names(src, access_t, ("access",), "auditor", problems)),
            configured=True,
        )
    state_value = site_t.get("state_dir", "state")
    state_dir = rel(state_value if isinstance(state_value, str) else "state")
    access = replace(access, audit_dir=state_dir)

    shared = site_t.get("shared", "")
    if expect_type(src, site_t, ("site",), "shared", str, "a location name", problems) and shared:
        shared_loc = locations.get(shared.split("/", 1)[0])
        if shared_loc is None or shared_loc.type != "s3":
            s3 = sorted(n for n, other in locations.items() if other.type == "s3")
            problems.append(
                src.problem(
                    ("site", "shared"),
                    f"[site] shared must name an s3 location ({', '.join(s3) or 'none defined'}), "
                    f"not {shared!r}",
                )
            )
    lease = expect_duration(src, site_t, ("site",), "lease", problems)
    if lease is not None and lease < 1:
        problems.append(src.problem(("site", "lease"), "[site] lease must be at least 1s"))

    if not isinstance(site_t.get("name"), str):
        return None
    return Site(
        path=Path(src.path).resolve(),
        name=site_t["name"],
        state_dir=state_dir,
        ssh=ssh,
        nodes=nodes,
        locations=locations,
        keys_dir=rel(keys_t["dir"]) if isinstance(keys_t.get("dir"), str) else None,
        current_key=str(keys_t.get("current", "")),
        key_rotate_after=rotate_after,
        tiers=tiers,
        contacts=contacts,
        escalation=escalation,
        notify=notify,
        access=access,
        raw=data,
        health_url=str(site_t.get("health_url", "")),
        alertmanager_url=str(am_t.get("url", "")).rstrip("/") if isinstance(am_t, dict) else "",
        shared=shared if isinstance(shared, str) else "",
        lease=lease if lease is not None and lease >= 1 else 60.0,
    )
