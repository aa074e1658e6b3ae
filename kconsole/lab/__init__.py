"""The lab: the plan's fleet (bootstrap1-3, validator1-3, api1-3) and a DR backup host as
loopback SSH servers with sandboxed roots and a real kaldrix-node service each, a local
primary location, SFTP on the DR host, an S3 endpoint, and injectable faults.

    lab = await Lab.start(Path("/tmp/lab"), nodes=9, faults="slow=api1:0.5")
    ...   # point kconsole at lab.site_path
    await lab.set_fault("down=validator2")
    await lab.clear_fault("down=validator2")
    await lab.stop()

`serve()` runs it headless (`kconsole lab serve`, `python -m kconsole.lab serve`).
"""

from kconsole.lab.faults import FAULT_KINDS, Fault, FaultSpecError, parse_faults
from kconsole.lab.lab import DR_NODE, Lab, LabError, fleet
from kconsole.lab.serve import serve

__all__ = [
    "DR_NODE",
    "FAULT_KINDS",
    "Fault",
    "FaultSpecError",
    "Lab",
    "LabError",
    "fleet",
    "parse_faults",
    "serve",
]
