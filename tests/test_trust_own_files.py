"""Issue 9, class 5: a command never destroys its own input. Every way of naming the input
as the output (the same path, `./x` against `x`, `d/../x`, a symlink, a hard link, the key
file) is refused with exit 2 and one sentence, through the real CLI, and the input is kept."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kconsole.crypto import keygen
from kconsole.crypto.cli import cmd_encrypt


def kconsole(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed CLI as an operator runs it, from `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "kconsole", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A key, a plaintext and its ciphertext in one directory."""
    keygen(tmp_path / "backup.key")
    (tmp_path / "plain.tar.gz").write_bytes(gzip.compress(os.urandom(20_000)))
    cmd_encrypt(tmp_path / "backup.key", tmp_path / "plain.tar.gz", tmp_path / "state.kdx")
    (tmp_path / "d").mkdir()
    return tmp_path


def _same(name: str) -> Callable[[Path], str]:
    return lambda _w: name


def _symlink(name: str) -> Callable[[Path], str]:
    def make(w: Path) -> str:
        (w / "link").symlink_to(w / name)
        return "link"

    return make


def _hardlink(name: str) -> Callable[[Path], str]:
    def make(w: Path) -> str:
        os.link(w / name, w / "hard")
        return "hard"

    return make


SPELLINGS = {
    "same path": _same,
    "./ prefix": lambda name: _same(f"./{name}"),
    "through ..": lambda name: _same(f"d/../{name}"),
    "absolute": lambda name: lambda w: str(w / name),
    "symlink": _symlink,
    "hard link": _hardlink,
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_decrypt_refuses_to_write_over_its_input(work: Path, spelling: str) -> None:
    before = (work / "state.kdx").read_bytes()
    out = SPELLINGS[spelling]("state.kdx")(work)
    r = kconsole("crypto", "decrypt", "--key", "backup.key", "state.kdx", "-o", out, cwd=work)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "is the input" in r.stderr
    assert (work / "state.kdx").read_bytes() == before


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_encrypt_refuses_to_write_over_its_input(work: Path, spelling: str) -> None:
    before = (work / "plain.tar.gz").read_bytes()
    out = SPELLINGS[spelling]("plain.tar.gz")(work)
    r = kconsole("crypto", "encrypt", "--key", "backup.key", "plain.tar.gz", "-o", out, cwd=work)
    assert r.returncode == 2, r.stderr
    assert "is the input" in r.stderr and "Traceback" not in r.stderr
    assert (work / "plain.tar.gz").read_bytes() == before


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_the_key_file_is_never_an_output(work: Path, command: str) -> None:
    key = (work / "backup.key").read_bytes()
    source = "plain.tar.gz" if command == "encrypt" else "state.kdx"
    r = kconsole("crypto", command, "--key", "backup.key", source, "-o", "./backup.key", cwd=work)
    assert r.returncode == 2 and "is the key file" in r.stderr, r.stderr
    assert (work / "backup.key").read_bytes() == key


def test_decrypt_refuses_a_key_of_its_keyring_as_output(work: Path) -> None:
    (work / "keys").mkdir()
    os.link(work / "backup.key", work / "keys" / "k1.key")
    r = kconsole(
        "crypto", "decrypt", "--keyring", "keys", "state.kdx", "-o", "backup.key", cwd=work
    )
    assert r.returncode == 2 and "is the key file" in r.stderr, r.stderr


def test_a_different_output_still_works(work: Path) -> None:
    r = kconsole("crypto", "decrypt", "--key", "backup.key", "state.kdx", "-o", "out", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "out").read_bytes() == (work / "plain.tar.gz").read_bytes()


def test_site_import_refuses_to_replace_the_plan_configuration(work: Path) -> None:
    conf = work / "primary.conf"
    conf.write_text("[backup]\nprimary_path = /backup/primary\n")
    r = kconsole("site", "import", "primary.conf", "-o", "./primary.conf", "--force", cwd=work)
    assert r.returncode == 2 and "is the plan configuration" in r.stderr, r.stderr
    assert conf.read_text() == "[backup]\nprimary_path = /backup/primary\n"
