"""The site file (`site.toml`): the fleet, SSH settings, backup locations, keys, tiers,
contacts, escalation, notification targets and who may do what.

Paths in the file are relative to the file's own directory. Secrets are never written in
it: a webhook URL is named by the environment variable that holds it.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kconsole.config import Problem, ProblemList, SourceFile, load_toml
from kconsole.config.problems import did_you_mean
from kconsole.config.schema import check_keys, expect_duration, expect_type
from kconsole.config.source import TomlFileError
from kconsole.errors import AccessDenied, UsageError

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


@dataclass(frozen=True)
class NotifyTarget:
    """A Slack-style webhook, its URL read from an environment variable at send time."""

    name: str
    webhook_env: str

    def url(self) -> str | None:
        """The webhook URL, or None when the variable is unset."""
        return os.environ.get(self.webhook_env) or None


@dataclass(frozen=True)
class Access:
    """Who is admin, operator or auditor. With no [access] table everyone is admin."""

    admin: tuple[str, ...] = ()
    operator: tuple[str, ...] = ()
    auditor: tuple[str, ...] = ()
    configured: bool = False

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
            raise AccessDenied(
                f"{user} is an auditor and may not {what}; auditors can look, not change."
            )
        raise AccessDenied(f"{user} has no role in this site's [access] table and may not {what}.")

    def require_admin(self, user: str, what: str) -> None:
        """Raise AccessDenied unless `user` is an admin."""
        if self.role_of(user) != "admin":
            raise AccessDenied(f"{user} is not a backup admin and may not {what}.")


def current_user() -> str:
    """The operator's login name, as recorded in journal and audit."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return f"uid{os.getuid()}"


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
)
_SITE_KEYS = ("name", "state_dir", "description", "health_url", "shared", "lease")
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

    ssh_t = data.get("ssh", {})
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
        kp = ("nodes", i)
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
            groups=tuple(str(g) for g in n.get("groups", [])),
            root=str(rel(root)) if root not in ("", "/") and not root.startswith("/") else root,
            health_url=n.get("health_url", ""),
            user=str(n.get("user", "")),
            service=str(n.get("service", "kaldrix-node")),
        )

    locations: dict[str, Location] = {}
    for name, loc in (data.get("locations") or {}).items():
        kp = ("locations", name)
        if not isinstance(loc, dict):
            problems.append(src.problem(kp, f"[locations.{name}] must be a table"))
            continue
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

    keys_t = data.get("keys", {})
    check_keys(src, keys_t, ("keys",), ("dir", "current", "rotate_after"), (), "[keys]", problems)
    rotate_after = expect_duration(src, keys_t, ("keys",), "rotate_after", problems)

    tiers: dict[str, Tier] = {}
    for name, t in (data.get("tiers") or {}).items():
        kp = ("tiers", name)
        if not isinstance(t, dict):
            problems.append(src.problem(kp, f"[tiers.{name}] must be a table"))
            continue
        check_keys(src, t, kp, _TIER_KEYS, ("rpo", "rto"), f"[tiers.{name}]", problems)
        for kind in t.get("kinds", []):
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
                if kind not in t.get("kinds", []):
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
            kinds=tuple(t.get("kinds", [])),
            retention=0.0
            if isinstance(retention_t, dict)
            else expect_duration(src, t, kp, "retention", problems) or 0.0,
            retention_by_kind=tuple(by_kind),
            schedule=str(t.get("schedule", "")),
            title=str(t.get("title", name)),
        )

    contacts: list[Contact] = []
    for i, c in enumerate(data.get("contacts") or []):
        kp = ("contacts", i)
        check_keys(src, c, kp, _CONTACT_KEYS, ("name", "role"), "[[contacts]]", problems)
        contacts.append(Contact(**{k: str(v) for k, v in c.items() if k in _CONTACT_KEYS}))

    escalation: dict[str, EscalationMatrix] = {}
    for name, e in (data.get("escalation") or {}).items():
        kp = ("escalation", name)
        check_keys(src, e, kp, ("title", "levels"), ("levels",), f"[escalation.{name}]", problems)
        levels = []
        for i, lvl in enumerate(e.get("levels", [])):
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
    for name, t in (data.get("notify") or {}).items():
        kp = ("notify", name)
        check_keys(src, t, kp, ("webhook_env",), ("webhook_env",), f"[notify.{name}]", problems)
        if "url" in t or "webhook_url" in t:
            problems.append(
                src.problem(
                    kp,
                    f"[notify.{name}] must not hold the webhook URL; name its environment variable with webhook_env",
                )
            )
        notify[name] = NotifyTarget(name, str(t.get("webhook_env", "")))

    access_t = data.get("access")
    access = Access()
    if access_t is not None:
        check_keys(src, access_t, ("access",), ROLES, (), "[access]", problems)
        access = Access(
            admin=tuple(access_t.get("admin", [])),
            operator=tuple(access_t.get("operator", [])),
            auditor=tuple(access_t.get("auditor", [])),
            configured=True,
        )

    shared = site_t.get("shared", "")
    if expect_type(src, site_t, ("site",), "shared", str, "a location name", problems) and shared:
        loc = locations.get(shared.split("/", 1)[0])
        if loc is None or loc.type != "s3":
            s3 = sorted(n for n, loc_ in locations.items() if loc_.type == "s3")
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
        state_dir=rel(site_t.get("state_dir", "state")),
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
        shared=shared if isinstance(shared, str) else "",
        lease=lease if lease is not None and lease >= 1 else 60.0,
    )
