"""FleetTable: every node, grouped bootstrap / validator / api / dr, with its last poll."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.widgets import DataTable

from kconsole.fleet import NodeStatus
from kconsole.site import Node, Site
from screens.widgets.labels import plain, state_label

GROUP_ORDER = ("bootstrap", "validator", "api", "dr")
"""The order groups are shown in; any other group follows, then nodes in no group."""

COLUMNS = (
    ("Group", "group", 9),
    ("Node", "node", 14),
    ("State", "state", 14),
    ("Latency", "latency", 8),
    ("Height", "height", 9),
    ("Detail", "detail", 40),
)


def primary_group(node: Node) -> str:
    """The group a node is listed under."""
    for group in GROUP_ORDER:
        if group in node.groups:
            return group
    return node.groups[0] if node.groups else "-"


def fleet_order(site: Site) -> list[Node]:
    """Nodes sorted by group (in GROUP_ORDER), then in site-file order."""
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    nodes = list(site.nodes.values())
    return sorted(nodes, key=lambda n: (rank.get(primary_group(n), len(rank)), primary_group(n)))


class FleetTable(DataTable[Text | str]):
    """A row per node; cells updated by key as polls come in."""

    DEFAULT_CSS = """
    FleetTable { height: 1fr; }
    """

    def __init__(self, site: Site, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.site = site
        """The site whose nodes are listed."""
        self._shown: dict[str, tuple[tuple[str, str], str, str, str]] = {}
        """What each polled node's cells show: (state, theme), latency, height, detail."""

    def on_mount(self) -> None:
        """Columns with explicit widths, then one row per node in a single add."""
        for label, key, width in COLUMNS:
            self.add_column(label, key=key, width=width)
        last_group = None
        for node in fleet_order(self.site):
            group = primary_group(node)
            self.add_row(
                plain(group if group != last_group else ""),
                plain(node.name),
                state_label(self.app, "polling"),
                "",
                "",
                plain(f"{node.host}:{node.port}"),
                key=node.name,
            )
            last_group = group

    def show_statuses(self, statuses: Iterable[NodeStatus]) -> None:
        """Update each polled node's cells in place, only those that change.

        Every `update_cell` repaints the table, so a poll in which nothing moved (and
        the redraw when the dashboard comes back) costs a comparison per node, not 4 x 500
        cell updates.
        """
        theme = self.app.theme
        for status in statuses:
            if status.name not in self.site.nodes:
                continue
            latency = f"{status.latency_ms:.0f} ms" if status.latency_ms is not None else "-"
            height = str(status.height) if status.height is not None else "-"
            new = ((status.state, theme), latency, height, status.detail)
            old = self._shown.get(status.name)
            if new == old:
                continue
            if old is None or new[0] != old[0]:
                self.update_cell(status.name, "state", state_label(self.app, status.state))
            if old is None or latency != old[1]:
                self.update_cell(status.name, "latency", latency)
            if old is None or height != old[2]:
                self.update_cell(status.name, "height", height)
            if old is None or status.detail != old[3]:
                self.update_cell(status.name, "detail", plain(status.detail))
            self._shown[status.name] = new

    @property
    def selected_node(self) -> str | None:
        """The node under the cursor."""
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return str(key.value) if key.value is not None else None
