"""kconsole: backup and disaster recovery console for a node fleet (the engine)."""

import warnings

# asyncssh's modules name cryptography's DSA classes, which cryptography deprecates: the
# warning comes from importing asyncssh, not from any key in use, and would otherwise end
# up on the stderr of every command that uses SSH.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\b")

__version__ = "0.1.0"
