"""Widgets shared by the console's screens."""

from screens.widgets.fleet_table import FleetTable
from screens.widgets.labels import plain, short_duration, state_label, toned
from screens.widgets.rto_clock import RtoClock

__all__ = ["FleetTable", "RtoClock", "plain", "short_duration", "state_label", "toned"]
