"""Widgets shared by the console's screens."""

from screens.widgets.fleet_table import FleetTable
from screens.widgets.rto_clock import RtoClock
from screens.widgets.tones import state_label, toned

__all__ = ["FleetTable", "RtoClock", "state_label", "toned"]
