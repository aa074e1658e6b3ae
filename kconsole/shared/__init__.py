"""Runs and incidents shared between consoles through the site's S3 location.

`SharedStore.append(stream, records, batch)` is the small API records go through: runs use
it through `kconsole.shared.runs`, incidents through `kconsole.incidents.sharing` (one
stream per incident and console, `incidents/<id>/<console-key>`).
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
