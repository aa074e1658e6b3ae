"""The lab's `bin` directory and each node's fault `bin`: the programs a lab shell finds
first on its PATH.

`DIR/lab/bin` holds `sudo`, `systemctl` and the `labtool` commands (`kaldrix-node`,
`journalctl`, `ufw`, `certbot`, `kali-security-scan`). Each node also has
`DIR/lab/nodes/NAME/bin`, ahead of it on the PATH and empty until a fault puts a failing
command there (`fail=NODE:CMD`) or wraps the commands that write files (`diskfull=NODE`).
Real `tar`, `sha256sum`, `gzip` and the rest come from the host.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

LABTOOL_COMMANDS = ("kaldrix-node", "journalctl", "ufw", "certbot", "kali-security-scan")
"""Commands served by `labtool.py`."""

DISKFULL_COMMANDS = (
    "tar",
    "cp",
    "mv",
    "dd",
    "tee",
    "install",
    "mkdir",
    "touch",
    "ln",
    "gzip",
    "gunzip",
    "rsync",
    "truncate",
    "fallocate",
    "openssl",
)
"""Commands that write files and so fail on a node whose disk is full."""

_SUDO = """#!/bin/sh
# kconsole lab: sudo. Lab commands already run as the connecting user; this accepts the
# usual non-interactive forms (sudo -n [-u USER] CMD ...) and runs CMD.
while [ $# -gt 0 ]; do
  case "$1" in
    -n|-E|-H|-S|-k|-b|--non-interactive|--preserve-env|--preserve-env=*|--set-home) shift ;;
    -u|-g) shift 2 ;;
    -u*|-g*|--user=*|--group=*) shift ;;
    --) shift; break ;;
    -*) echo "sudo: invalid option '$1'" >&2; exit 1 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: sudo [-n] [-u user] command [arg ...]" >&2
  exit 1
fi
exec "$@"
"""

_SYSTEMCTL = """#!/bin/sh
# kconsole lab: systemctl for this node. The lab plays systemd: it runs the node's
# kaldrix-node service and keeps each unit's state in $KALDRIX_ROOT/run/systemd/UNIT.state.
# is-active and is-failed read that file (fast, for status polls); every other verb asks the lab.
verb=; quiet=; units=
for a in "$@"; do
  case "$a" in
    -q|--quiet) quiet=1 ;;
    -*) ;;
    *) if [ -z "$verb" ]; then verb=$a; else units="$units $a"; fi ;;
  esac
done
case "$verb" in
  is-active|is-failed)
    if [ -z "$units" ]; then echo "Too few arguments." >&2; exit 1; fi
    want=active; [ "$verb" = is-failed ] && want=failed
    found=
    for u in $units; do
      u=${u%.service}
      st=
      case "$u" in
        sshd|ssh) st=active ;;
        */*) st=inactive ;;
        *) if [ -r "$KALDRIX_ROOT/run/systemd/$u.state" ]; then
             read -r st < "$KALDRIX_ROOT/run/systemd/$u.state" || st=
           fi ;;
      esac
      [ -n "$st" ] || st=inactive
      [ -n "$quiet" ] || echo "$st"
      [ "$st" = "$want" ] && found=1
    done
    [ -n "$found" ] && exit 0
    [ "$verb" = is-active ] && exit 3
    exit 1 ;;
esac
exec @LABTOOL@ systemctl "$@"
"""


def labtool_command(bin_dir: Path, python: str | None = None) -> str:
    """The shell words that run `labtool.py` from `bin_dir`."""
    exe = python or sys.executable
    return f"{shlex.quote(exe)} -I -S {shlex.quote(str(bin_dir / 'labtool.py'))}"


def _write_exec(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def install_tools(bin_dir: Path, python: str | None = None) -> None:
    """Write the lab's programs into `bin_dir` (replacing older copies)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).with_name("labtool.py").read_text(encoding="utf-8")
    (bin_dir / "labtool.py").write_text(source, encoding="utf-8")
    run = labtool_command(bin_dir, python)
    for name in LABTOOL_COMMANDS:
        _write_exec(
            bin_dir / name,
            f'#!/bin/sh\n# kconsole lab: {name} (see labtool.py)\nexec {run} {name} "$@"\n',
        )
    _write_exec(bin_dir / "sudo", _SUDO)
    _write_exec(bin_dir / "systemctl", _SYSTEMCTL.replace("@LABTOOL@", run))


def failing_command(node: str, command: str) -> str:
    """The script standing in for `command` on `node` while `fail=NODE:COMMAND` is set."""
    return (
        "#!/bin/sh\n"
        f"# kconsole lab fault fail={node}:{command}: this command fails until the fault is cleared.\n"
        f"echo {shlex.quote(f'{command}: injected failure (kconsole lab: fault fail={node}:{command})')} >&2\n"
        "exit 1\n"
    )


def diskfull_command(command: str, bin_dir: Path, python: str | None = None) -> str:
    """The wrapper that makes `command` fail with ENOSPC when it would write a file."""
    return (
        "#!/bin/sh\n"
        f"# kconsole lab fault diskfull: {command} fails when it would write to the full disk.\n"
        f'exec {labtool_command(bin_dir, python)} __diskfull__ {command} "$@"\n'
    )


def sync_fault_bin(fault_bin: Path, wanted: dict[str, str]) -> None:
    """Make `fault_bin` hold exactly the scripts in `wanted` (command name -> script text)."""
    fault_bin.mkdir(parents=True, exist_ok=True)
    for existing in fault_bin.iterdir():
        if existing.name not in wanted:
            with contextlib.suppress(FileNotFoundError):
                existing.unlink()
    for name, text in wanted.items():
        path = fault_bin / name
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        _write_exec(path, text)
