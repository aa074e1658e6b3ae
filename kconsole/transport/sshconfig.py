"""The OpenSSH client config, read and tokenized once per process.

asyncssh reads and `shlex`-splits every config file again for every connection, in a
worker thread: with a Host block per node (the lab's `ssh_config` has 611 lines for 60
nodes) a fleet poll costs nodes x lines. The per-host evaluation (Host and Match blocks,
first value wins, `%` tokens) has to stay per connection, so only the reading and splitting
is cached here, keyed by path, size and mtime: an edited file is read again. The same
asyncssh handlers then apply the cached lines, so the result is the one asyncssh would
build itself, and it is handed to `asyncssh.connect` as already-loaded options.

Two shortcuts keep a fleet's config (a block per node) from costing N x lines per poll of
N nodes (2 ms a connection at 500 nodes): the evaluation jumps from a `Host`/`Match` line
that does not apply straight to the next one (the lines between are the ones asyncssh
would skip one by one), and a `Host` line of plain names (no wildcard, no negation) is
matched by set membership, which is what asyncssh's case-sensitive `fnmatch` amounts to
for such names, instead of building its pattern objects again for every connection.
"""

from __future__ import annotations

import getpass
import os
import shlex
import threading
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.config import SSHClientConfig

_Lines = list[tuple[int, str, str, list[str]]]
"""(line number, raw line, lower-cased option, arguments) per meaningful line."""

_Parsed = tuple[_Lines, list[int], list[frozenset[str] | None]]
"""The lines; for each the index of the next conditional (Host, Match) line after it (the
number of lines if there is none); and for each `Host` line of plain names, those names."""

_WILD = frozenset("*?[]!")

_cache: dict[tuple[str, int, int], _Parsed] = {}
_lock = threading.Lock()
reads = 0
"""How many times a config file was read and tokenized in this process (for tests)."""


def _tokenize(path: Path, conditionals: set[str]) -> _Lines:
    """The file's lines split the way `asyncssh.config.SSHConfig.parse` splits them."""
    out: _Lines = []
    with open(path) as file:
        for line_no, raw in enumerate(file, 1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            try:
                split_args = shlex.split(line)
            except ValueError as exc:
                raise asyncssh.config.ConfigParseError(f"{path} line {line_no}: {exc}") from None
            args: list[str] = []
            loption = ""
            allow_equal = True
            for i, arg in enumerate(split_args, 1):
                if arg.startswith("="):
                    if len(arg) > 1:
                        args.append(arg[1:])
                elif not allow_equal:
                    args.extend(split_args[i - 1 :])
                    break
                elif arg.endswith("="):
                    args.append(arg[:-1])
                elif "=" in arg:
                    key, val = arg.split("=", 1)
                    args += (key, val)
                else:
                    args.append(arg)
                if i == 1:
                    loption = args.pop(0).lower()
                    allow_equal = loption in conditionals
            out.append((line_no, line, loption, args))
    return out


def _next_conditional(lines: _Lines, conditionals: set[str]) -> list[int]:
    out = [len(lines)] * len(lines)
    following = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        out[i] = following
        if lines[i][2] in conditionals:
            following = i
    return out


def _plain_hosts(lines: _Lines) -> list[frozenset[str] | None]:
    out: list[frozenset[str] | None] = []
    for _, _, loption, args in lines:
        names = ",".join(args).split(",") if loption == "host" and args else []
        plain = bool(names) and all(n and not _WILD.intersection(n) for n in names)
        out.append(frozenset(names) if plain else None)
    return out


def _lines(path: Path, conditionals: set[str]) -> _Parsed:
    global reads
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        cached = _cache.get(key)
    if cached is None:
        lines = _tokenize(path, conditionals)
        cached = (lines, _next_conditional(lines, conditionals), _plain_hosts(lines))
        with _lock:
            _cache[key] = cached
            reads += 1
    return cached


class _CachedClientConfig(SSHClientConfig):  # type: ignore[misc]
    """asyncssh's client config, fed from the per-process token cache."""

    def parse(self, path: Path) -> None:
        self._path = path
        self._line_no = 0
        self._matching = True
        self._tokens = {"%": "%"}
        lines, next_conditional, plain_hosts = _lines(Path(path), self._conditionals)
        i = 0
        while i < len(lines):
            line_no, line, loption, cached_args = lines[i]
            if not self._matching and loption not in self._conditionals:
                # Every line up to the next Host or Match would be skipped as well.
                i = next_conditional[i]
                continue
            names = plain_hosts[i]
            i += 1
            self._line_no = line_no
            if names is not None:
                self._matching = self._orig_host in names
                continue
            args = list(cached_args)
            if loption in self._no_split:
                args = [line[len(loption) :].strip()]
            try:
                option, handler = self._handlers[loption]
            except KeyError:
                continue
            if not args:
                self._error(f"Missing {option} value")
            handler(self, option, args)
            if args:
                self._error(f"Extra data at end: {' '.join(args)}")
        self._set_tokens()
        for option in self._percent_expand:
            value = self._options.get(option)
            if isinstance(value, list):
                self._options[option] = [self._expand_val(item) for item in value]
            elif isinstance(value, str):
                self._options[option] = self._expand_val(value)


def preloaded_options(
    paths: list[str], host: str, port: int, username: str | None
) -> asyncssh.SSHClientConnectionOptions:
    """Options for `asyncssh.connect(..., options=...)` carrying the config for this target,
    evaluated from the cached lines (so `config=` must not be passed as well)."""
    config = _CachedClientConfig.load(
        None,
        paths,
        False,
        False,
        False,
        getpass.getuser(),
        username if username is not None else (),
        host,
        port,
    )
    # asyncssh takes a base Options object's `config` as the already-loaded config; only
    # that attribute and `kwargs` are read from it, so no other preparation is needed.
    options: Any = object.__new__(asyncssh.SSHClientConnectionOptions)
    options.kwargs = {}
    options.config = config
    return options  # type: ignore[no-any-return]
