"""The operations plan's data the console starts from: its fleet, backup tiers, contacts
and escalation matrices (docs: the plan's sections 2, 9 and 10).

The lab's site file and `kconsole site import` both build on these; a real site overrides
any of it in its own site.toml.
"""

from __future__ import annotations

NODES: tuple[tuple[str, str], ...] = tuple(
    (f"{group}{i}", group) for group in ("bootstrap", "validator", "api") for i in (1, 2, 3)
)
"""The plan's nine nodes, by name and group, in recovery-wave order."""

SERVICE = "kaldrix-node"
"""The node service every runbook starts, stops and checks."""

KEY_ROTATION = "90d"
"""The plan's quarterly key rotation (its primary.conf: key_rotation_days = 90)."""

TIERS: tuple[dict[str, object], ...] = (
    {
        "name": "critical",
        "title": "Critical Tier 1 (real-time): chain state and validator keys",
        "kinds": ["blockchain-state", "validator-keys"],
        "rpo": "15m",
        "rto": "1h",
        "retention": {"blockchain-state": "24h", "validator-keys": "90d"},
        "schedule": "*/5 * * * *",
    },
    {
        "name": "important",
        "title": "Important Tier 2 (hourly): transaction logs",
        "kinds": ["transaction-logs"],
        "rpo": "1h",
        "rto": "4h",
        "retention": "30d",
        "schedule": "0 * * * *",
    },
    {
        "name": "standard",
        "title": "Standard Tier 3 (daily): system logs",
        "kinds": ["system-logs"],
        "rpo": "24h",
        "rto": "8h",
        "retention": "7d",
        "schedule": "0 2 * * *",
    },
    {
        "name": "full",
        "title": "Weekly full-system backup",
        "kinds": ["full-system"],
        "rpo": "7d",
        "rto": "8h",
        "retention": "28d",
        "schedule": "0 3 * * 0",
    },
    {
        "name": "archive",
        "title": "Monthly archive",
        "kinds": ["archive"],
        "rpo": "31d",
        "rto": "24h",
        "retention": "365d",
        "schedule": "0 4 1 * *",
    },
)
"""The plan's backup classes; `full` and `archive` follow its crontab (weekly, monthly)."""

CONTACTS: tuple[tuple[str, str, str, str, str], ...] = (
    ("John Smith", "Backup Administrator", "john.smith@kaldrix.com", "+1-555-0101", "24/7"),
    ("Jane Doe", "Backup Engineer", "jane.doe@kaldrix.com", "+1-555-0102", "24/7"),
    (
        "Mike Johnson",
        "Storage Specialist",
        "mike.johnson@kaldrix.com",
        "+1-555-0103",
        "Business Hours",
    ),
    ("Sarah Wilson", "Operations Lead", "sarah.wilson@kaldrix.com", "+1-555-0104", "24/7"),
    ("Tom Brown", "Security Engineer", "tom.brown@kaldrix.com", "+1-555-0105", "24/7"),
    (
        "Emily Davis",
        "System Administrator",
        "emily.davis@kaldrix.com",
        "+1-555-0106",
        "Business Hours",
    ),
)
"""The plan's primary and secondary backup team contacts."""

ESCALATION: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "backup",
        "Backup Issues",
        (("Backup Administrator", "15m"), ("Operations Lead", "30m"), ("CTO", "1h"), ("CEO", "")),
    ),
    (
        "recovery",
        "Recovery Issues",
        (("Backup Engineer", "5m"), ("Operations Lead", "15m"), ("CTO", "30m"), ("CEO", "")),
    ),
    (
        "security",
        "Security Incidents",
        (("Security Engineer", "5m"), ("Security Lead", "10m"), ("CTO", "15m"), ("CEO", "")),
    ),
)
"""The plan's escalation matrices: role, and how long to wait for a response before the next."""
