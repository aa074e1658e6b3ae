"""The plan's backup metrics in the Prometheus text format, for node_exporter's textfile
collector (`kconsole metrics -o /var/lib/node_exporter/textfile/kconsole.prom` from cron).

The plan's four metrics keep its names and its units (the success rate is a percentage,
as its `< 95` alert expects), each with `kind`, `node` and `location` labels:

- `backup_success_rate`: `source="runs"` is the share of the last `WINDOW` backup.create
  attempts per kind and node in the run journal that finished; `source="catalog"` is,
  per location, the share of the catalog's backups of that kind and node that are there
  and not failed verification (replication and integrity, whoever made the backups).
- `backup_size_bytes`, `backup_duration_seconds`, `backup_timestamp_seconds`: of the
  newest good backup in each location (duration from its manifest).

Added so the plan's alerts can be right: `backup_rpo_seconds` per kind (BackupAgeHigh
compares each backup's age with its own tier's RPO, not 24 h for everything),
`backup_timestamp_seconds` of 0 for a node the runbooks back up that has no good backup
(so "never backed up" alerts too), `backup_location_up`, `backup_catalog_backups` by
status, `backup_chain_height`, and the time these metrics were made
(`backup_metrics_generated_timestamp_seconds`), since a textfile outlives its writer.
No sample carries a timestamp: the textfile collector refuses them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from kconsole.backups.attempts import Attempt
from kconsole.backups.catalog import Backup, Catalog
from kconsole.backups.rotation import KeyRotation
from kconsole.fsutil import atomic_write
from kconsole.site import Site

WINDOW = 20
"""backup.create attempts per kind and node that `source="runs"` success rates look back over."""

METRICS: dict[str, tuple[str, str]] = {
    "backup_success_rate": (
        "gauge",
        "Percent of backups that succeeded: source=runs over the last 20 backup.create attempts "
        "per kind and node in the run journal; source=catalog over the catalog's backups of the kind "
        "and node that should be in the location and are there, not failed verification.",
    ),
    "backup_size_bytes": ("gauge", "Encrypted size of the newest good backup in the location."),
    "backup_duration_seconds": (
        "gauge",
        "Seconds the newest good backup in the location took to make "
        "(capture, encrypt, store; from its manifest).",
    ),
    "backup_timestamp_seconds": (
        "gauge",
        "Unix time the newest good backup in the location was made; 0 for "
        "a node the backup runbooks cover that has no good backup anywhere.",
    ),
    "backup_rpo_seconds": ("gauge", "Recovery point objective of the tier that holds the kind."),
    "backup_chain_height": (
        "gauge",
        "Chain height recorded in the newest good backup in the location.",
    ),
    "backup_catalog_backups": ("gauge", "Backups in the catalog by kind, node and status."),
    "backup_location_up": ("gauge", "1 if the backup location could be listed, 0 if not."),
    "backup_metrics_generated_timestamp_seconds": (
        "gauge",
        "Unix time of the catalog listing these metrics were made from.",
    ),
    "backup_encryption_key_age_seconds": (
        "gauge",
        "Age of the key new backups are encrypted with (since its key file was written).",
    ),
    "backup_encryption_key_rotate_after_seconds": (
        "gauge",
        "How long a key may stay current: the site's [keys] rotate_after.",
    ),
    # The plan's "Recovery Monitoring" (success rate, recovery time, data integrity, system
    # availability after recovery), per recovery scenario and drill or not, from run reports.
    "recovery_success_rate": (
        "gauge",
        "Percent of the last 20 finished recovery runs of the scenario that succeeded.",
    ),
    "recovery_last_succeeded": (
        "gauge",
        "1 if the newest finished recovery run of the scenario succeeded, 0 if it did not.",
    ),
    "recovery_time_seconds": (
        "gauge",
        "Seconds from detection to the recovery verified, of the newest successful recovery.",
    ),
    "recovery_rto_seconds": ("gauge", "Recovery time objective of the scenario's runbook."),
    "recovery_data_verified": (
        "gauge",
        "1 if the newest successful recovery's nodes were checked within a few blocks of "
        "their peers, 0 if the check found them behind or none ran.",
    ),
    "recovery_availability_ratio": (
        "gauge",
        "Share of the newest successful recovery's nodes that answered active with a chain "
        "height at the check after the recovery (only where a check ran).",
    ),
    "recovery_last_timestamp_seconds": (
        "gauge",
        "Unix time the newest finished recovery run of the scenario ended.",
    ),
}

RECOVERY_SCENARIOS = ("single-node", "multiple-nodes", "complete-network", "security-incident")
"""Runbook scenarios that are recoveries (their runs feed the recovery metrics)."""


@dataclass(frozen=True)
class Sample:
    """One line of the exposition: a metric, its labels, its value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


def _sample(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, tuple(sorted(labels.items())), value)


def runs_success(
    attempts: Iterable[Attempt], window: int = WINDOW
) -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, node) -> (finished, attempts) over the newest `window` attempts of each."""
    seen: dict[tuple[str, str], list[bool]] = {}
    for a in sorted(attempts, key=lambda a: a.finished, reverse=True):
        got = seen.setdefault((a.kind, a.node), [])
        if len(got) < window:
            got.append(a.ok)
    return {k: (sum(v), len(v)) for k, v in seen.items()}


def collect(
    site: Site,
    catalog: Catalog,
    attempts: Iterable[Attempt],
    *,
    expected: dict[str, list[str]],
    rotation: KeyRotation | None = None,
) -> list[Sample]:
    """Every sample, from the catalog (as of its listing), the journal's attempts and the
    current key's age against the site's rotation period; `expected` is the nodes the site's
    backup runbooks back up (`kconsole.runbook.coverage.expected_nodes`)."""
    s = site.name
    out: list[Sample] = [
        _sample("backup_metrics_generated_timestamp_seconds", catalog.as_of.timestamp(), site=s)
    ]
    if rotation is not None:
        out.append(
            _sample(
                "backup_encryption_key_age_seconds",
                round(rotation.age_s),
                site=s,
                key_id=rotation.key_id,
            )
        )
        out.append(
            _sample("backup_encryption_key_rotate_after_seconds", rotation.rotate_after_s, site=s)
        )
    for loc in catalog.locations:
        out.append(
            _sample(
                "backup_location_up", 0.0 if loc in catalog.errors else 1.0, site=s, location=loc
            )
        )
    for tier in site.tiers.values():
        for kind in tier.kinds:
            if tier.rpo:
                out.append(
                    _sample("backup_rpo_seconds", tier.rpo, site=s, kind=kind, tier=tier.name)
                )
    for (kind, node), (ok, total) in sorted(runs_success(attempts).items()):
        out.append(
            _sample(
                "backup_success_rate",
                round(100.0 * ok / total, 3),
                site=s,
                kind=kind,
                node=node,
                source="runs",
            )
        )
    reachable = [n for n in catalog.locations if n not in catalog.errors]
    groups = set(catalog.groups())
    for kind, node in sorted(groups):
        backups = catalog.select(kind, node)
        statuses = Counter(b.status for b in backups)
        for status, n in sorted(statuses.items()):
            out.append(
                _sample("backup_catalog_backups", n, site=s, kind=kind, node=node, status=status)
            )
        for loc in reachable:
            should = [b for b in backups if not b.legacy or loc in b.replicas]
            if not should:
                continue
            there = sum(1 for b in should if loc in b.replicas and b.good)
            out.append(
                _sample(
                    "backup_success_rate",
                    round(100.0 * there / len(should), 3),
                    site=s,
                    kind=kind,
                    node=node,
                    location=loc,
                    source="catalog",
                )
            )
            newest = _newest_good_in(backups, loc)
            if newest is None:
                continue
            labels = {"site": s, "kind": kind, "node": node, "location": loc}
            out.append(_sample("backup_timestamp_seconds", newest.created.timestamp(), **labels))
            out.append(_sample("backup_size_bytes", newest.replicas[loc].size, **labels))
            if newest.manifest is not None:
                out.append(_sample("backup_duration_seconds", newest.manifest.duration_s, **labels))
                if newest.chain_height is not None:
                    out.append(_sample("backup_chain_height", newest.chain_height, **labels))
    for kind, nodes in sorted(expected.items()):
        if site.tier_for_kind(kind) is None:
            continue
        for node in nodes:
            if catalog.latest_good(kind, node) is None:
                # No good backup anywhere: a timestamp of 0 makes the age alert fire ("never").
                out.append(
                    _sample(
                        "backup_timestamp_seconds", 0.0, site=s, kind=kind, node=node, location=""
                    )
                )
    return out


def recovery_samples(site: Site, reports: Iterable[dict[str, Any]]) -> list[Sample]:
    """The recovery metrics from run reports (`kconsole.reports.build_report` dicts) of
    finished runs, newest first; unfinished and non-recovery runs are ignored."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in reports:
        if rep.get("scenario") not in RECOVERY_SCENARIOS or not rep.get("finished"):
            continue
        key = (str(rep["scenario"]), "true" if rep.get("drill") else "false")
        groups.setdefault(key, []).append(rep)
    out: list[Sample] = []
    for (scenario, drill), reps in sorted(groups.items()):
        labels = {"site": site.name, "scenario": scenario, "drill": drill}
        recent = reps[:WINDOW]
        ok = [r for r in recent if r.get("status") == "succeeded"]
        out.append(_sample("recovery_success_rate", 100.0 * len(ok) / len(recent), **labels))
        out.append(
            _sample(
                "recovery_last_succeeded", float(recent[0].get("status") == "succeeded"), **labels
            )
        )
        ended = _epoch(recent[0].get("finished"))
        if ended is not None:
            out.append(_sample("recovery_last_timestamp_seconds", ended, **labels))
        if recent[0].get("rto_s"):
            out.append(_sample("recovery_rto_seconds", float(recent[0]["rto_s"]), **labels))
        if not ok:
            continue
        last = ok[0]
        if last.get("recovery_s") is not None:
            out.append(_sample("recovery_time_seconds", float(last["recovery_s"]), **labels))
        verified = bool((last.get("data_consistency") or {}).get("verified"))
        out.append(_sample("recovery_data_verified", float(verified), **labels))
        checked = ((last.get("consistency") or {}).get("nodes")) or []
        if checked:
            up = sum(1 for n in checked if n.get("height") is not None)
            out.append(_sample("recovery_availability_ratio", up / len(checked), **labels))
    return out


def _epoch(text: Any) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _newest_good_in(backups: list[Backup], loc: str) -> Backup | None:
    for b in backups:  # newest first
        if b.good and loc in b.replicas:
            return b
    return None


class _Samples:
    """A prometheus_client collector over samples already made (the textfile is one snapshot)."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    def collect(self) -> Iterator[Metric]:
        by_name: dict[str, list[Sample]] = {}
        for smp in self.samples:
            if smp.name not in METRICS:
                raise ValueError(f"unknown metric {smp.name}")
            by_name.setdefault(smp.name, []).append(smp)
        for name, (mtype, help_text) in METRICS.items():
            found = by_name.get(name)
            if not found:
                continue
            metric = Metric(name, help_text, mtype)
            seen: set[tuple[tuple[str, str], ...]] = set()
            for smp in sorted(found, key=lambda x: x.labels):
                labels = tuple((k, v) for k, v in smp.labels if v != "")
                if labels in seen:  # one series once; the first (sorted) wins
                    continue
                seen.add(labels)
                metric.add_sample(name, dict(labels), smp.value)
            yield metric


def render(samples: Iterable[Sample]) -> str:
    """The Prometheus text exposition format (0.0.4), written by prometheus_client: HELP and
    TYPE once per metric, then its samples; labels with an empty value are left out, as
    Prometheus treats them. ValueError for a metric not in METRICS."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(samples))
    return generate_latest(registry).decode("utf-8")


def write_textfile(path: Path, text: str) -> None:
    """Write atomically (temp file in the same directory, then rename), world-readable for
    node_exporter: the collector never reads a half-written file."""
    atomic_write(path, text.encode("utf-8"), 0o644)
