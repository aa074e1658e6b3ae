"""Widgets shared by the console's screens."""

from screens.widgets.fleet_table import FleetTable
from screens.widgets.labels import plain, short_duration, state_label, toned
from screens.widgets.rto_clock import RtoClock
from screens.widgets.tick_box import TickBox

__all__ = ["FleetTable", "RtoClock", "TickBox", "plain", "short_duration", "state_label", "toned"]
