"""Runs (and, later, incidents) shared between consoles through the site's S3 location.

`SharedStore.append(stream, records, batch)` is the small API other records go through
(an incident's changes as stream `incidents/<id>`, with a `StreamMirror` to batch them in
the background); runs use it through `kconsole.shared.runs`.
"""

from kconsole.shared.lease import Lease, LeaseHeld, read_lease
from kconsole.shared.mirror import StreamMirror
from kconsole.shared.store import SharedStore, StoreUnavailable, console_name

__all__ = [
    "Lease",
    "LeaseHeld",
    "SharedStore",
    "StoreUnavailable",
    "StreamMirror",
    "console_name",
    "read_lease",
]
