"""The programs a lab node runs: `kaldrix-node`, `systemctl`, `journalctl`, `ufw`, `certbot`,
`kali-security-scan`, and the wrappers that make writes fail on a full disk.

One multi-call program, chosen by the name it is invoked as. `kconsole.lab.toolbox` copies
this file into the lab's `bin` directory with a shebang for the lab's Python and links
each command name to it. It runs with `python -I -S` inside a node's sandbox, so it uses
the standard library only and never imports kconsole. Every path it touches is under
`$KALDRIX_ROOT`, the node's sandbox root (what `/` is on a real node).

The chain-state helpers (`init_state`, `load_state`, `verify_state`) are also imported
by the lab itself to lay out a new sandbox.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

VERSION = "1.4.2-lab"
NETWORK = "kaldrix-lab"
CHAIN_ID = "kaldrix-lab-1"
BLOCK_INTERVAL = 0.5
SEGMENT_BLOCKS = 100
BASE_HEIGHT = 1_250_000
INITIAL_BLOCKS = 240
SNAPSHOT_BYTES = 256 * 1024

STATE_DIR = "var/lib/kaldrix/state"
STAGING_DIR = "run/kaldrix-node"
KEYS_FILE = "etc/kaldrix/validator_keys.json"
TLS_DIR = "etc/kaldrix/tls"
TX_DIR = "var/log/kaldrix/transactions"
NODE_LOG = "var/log/kaldrix/node.log"
AUTH_LOG = "var/log/auth.log"
UFW_STATE = "etc/ufw/ufw.json"
PID_FILE = "run/kaldrix-node.pid"
BACKDOOR = "var/lib/kaldrix/state/plugins/.kdx-helper"


class StateError(Exception):
    """The chain state is missing, inconsistent or corrupt."""


# --------------------------------------------------------------------------- helpers


def now_iso(ts: float | None = None) -> str:
    """UTC ISO-8601 with milliseconds, the format of every lab log line."""
    t = time.time() if ts is None else ts
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="milliseconds")


def parse_iso(text: str) -> float:
    """Seconds since the epoch of an ISO-8601 timestamp written by `now_iso`."""
    return _dt.datetime.fromisoformat(text).timestamp()


def node_root() -> Path:
    """The sandbox root of the node this program runs on."""
    return Path(os.environ.get("KALDRIX_ROOT") or "/")


def node_name() -> str:
    """The node's name."""
    return os.environ.get("KALDRIX_NODE") or socket.gethostname()


def write_atomic(path: Path, data: bytes, mode: int = 0o644, staging: Path | None = None) -> None:
    """Replace `path` by `data` with a rename, so readers (and tar) never see half a file."""
    tmp_dir = staging or path.parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def disk_full() -> bool:
    """True while the lab's `diskfull` fault is set on this node."""
    lab = os.environ.get("KALDRIX_LAB_DIR", "")
    return bool(lab) and os.path.exists(os.path.join(lab, "diskfull"))


def append_log(root: Path, rel: str, ident: str, message: str, ts: float | None = None) -> None:
    """Append one `ISO ident[pid]: message` line to a log file in the sandbox."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{now_iso(ts)} {ident}[{os.getpid()}]: {message}\n")


# --------------------------------------------------------------------------- chain state


def block_hash(height: int, prev: str, ts: float, txs: int) -> str:
    """The hash of a block: what links the chain and what `verify-state` recomputes."""
    return hashlib.sha256(f"{CHAIN_ID}|{height}|{prev}|{ts:.3f}|{txs}".encode()).hexdigest()


def segment_name(height: int) -> str:
    """The block file that holds `height`."""
    return f"blocks/{height // SEGMENT_BLOCKS:08d}.seg"


def _block_line(height: int, prev: str, ts: float, txs: int) -> tuple[str, str]:
    h = block_hash(height, prev, ts, txs)
    line = json.dumps(
        {"h": height, "prev": prev, "ts": round(ts, 3), "txs": txs, "hash": h},
        separators=(",", ":"),
    )
    return h, line + "\n"


def state_files(
    created: float,
    seed: str = NETWORK,
    base_height: int = BASE_HEIGHT,
    blocks: int = INITIAL_BLOCKS,
    snapshot_bytes: int = SNAPSHOT_BYTES,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """A consistent chain state as files (path under the state dir -> bytes) and its index:
    a snapshot at `base_height`, then `blocks` blocks every BLOCK_INTERVAL up to `created`.

    The same `created`, `seed` and sizes give the same chain, as replicas hold.
    """
    rng = random.Random(seed)
    accounts = rng.randbytes(snapshot_bytes)
    base_hash = hashlib.sha256(f"{CHAIN_ID}|snapshot|{base_height}".encode()).hexdigest()
    meta = {
        "height": base_height,
        "hash": base_hash,
        "accounts_sha256": hashlib.sha256(accounts).hexdigest(),
        "taken": now_iso(created - blocks * BLOCK_INTERVAL - 3600),
    }
    files: dict[str, bytes] = {
        "snapshot/accounts.db": accounts,
        "snapshot/meta.json": (json.dumps(meta, indent=2) + "\n").encode(),
    }
    segments: dict[str, list[str]] = {}
    prev = base_hash
    height = base_height
    for i in range(blocks):
        height = base_height + 1 + i
        ts = created - (blocks - i) * BLOCK_INTERVAL
        prev, line = _block_line(height, prev, ts, rng.randint(0, 6))
        segments.setdefault(segment_name(height), []).append(line)
    for name, lines in segments.items():
        files[name] = "".join(lines).encode()
    index = {
        "network": NETWORK,
        "chain_id": CHAIN_ID,
        "height": height,
        "tip": prev,
        "base_height": base_height,
        "base_hash": base_hash,
        "segment_blocks": SEGMENT_BLOCKS,
        "updated": now_iso(created),
        **(extra or {}),
    }
    files["index.json"] = (json.dumps(index, indent=2) + "\n").encode()
    return files, index


def init_state(root: Path, created: float, seed: str = NETWORK) -> dict[str, Any]:
    """Lay out a chain state: a snapshot at BASE_HEIGHT and INITIAL_BLOCKS blocks after it.

    Every node built with the same `created` and `seed` holds the same chain, as replicas do.
    """
    state = root / STATE_DIR
    (state / "blocks").mkdir(parents=True, exist_ok=True)
    (state / "snapshot").mkdir(parents=True, exist_ok=True)
    files, index = state_files(created, seed)
    for name, data in files.items():
        (state / name).write_bytes(data)
    return index


def read_index(root: Path) -> dict[str, Any]:
    """The chain index; StateError if it is missing or unreadable."""
    path = root / STATE_DIR / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise StateError("index.json is missing") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"index.json is unreadable ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("height"), int):
        raise StateError("index.json has no height")
    return index


def _last_block(root: Path, height: int) -> dict[str, Any]:
    seg = root / STATE_DIR / segment_name(height)
    try:
        lines = seg.read_text().splitlines()
    except OSError as exc:
        raise StateError(
            f"block file {segment_name(height)} is unreadable ({exc.strerror})"
        ) from None
    if not lines:
        raise StateError(f"block file {segment_name(height)} is empty")
    try:
        block = json.loads(lines[-1])
    except ValueError:
        raise StateError(f"block file {segment_name(height)} ends in a damaged record") from None
    return block


def load_state(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Index and tip block, checked against each other (what the node does at start)."""
    index = read_index(root)
    if index["height"] == index.get("base_height"):
        return index, {"h": index["height"], "hash": index.get("base_hash", ""), "ts": 0.0}
    block = _last_block(root, index["height"])
    if not isinstance(block, dict) or block.get("h") != index["height"]:
        last = block.get("h") if isinstance(block, dict) else None
        raise StateError(f"index says height {index['height']} but the last block is {last}")
    try:
        recomputed = block_hash(block["h"], block["prev"], block["ts"], block["txs"])
    except (KeyError, TypeError):
        raise StateError(f"tip block {block.get('h')} is a damaged record") from None
    if recomputed != block.get("hash") or block.get("hash") != index.get("tip"):
        raise StateError(f"tip block {block.get('h')} fails its hash check")
    return index, block


def _linked_block(line: str, height: int, prev: str) -> str | None:
    """The hash of the block record on `line` if it is block `height`, links to `prev` and
    hashes right; None for anything else (a torn, damaged or out-of-place record)."""
    try:
        b = json.loads(line)
        if (
            b["h"] == height
            and b["prev"] == prev
            and block_hash(b["h"], b["prev"], b["ts"], b["txs"]) == b["hash"]
        ):
            return str(b["hash"])
    except (ValueError, KeyError, TypeError):
        pass
    return None


def recover_state(root: Path) -> tuple[dict[str, Any], str]:
    """Bring the index back in line with the block files, as a node does after an unclean copy.

    A state copied while the node ran (a live `tar`, the plan's tier-1 backup) can hold an
    index one block ahead of or behind its block files. The blocks are the record: keep the
    longest run of blocks that links back to the snapshot, drop what follows it, and point
    the index at its tip. A missing index or snapshot is not recoverable here.
    """
    state = root / STATE_DIR
    index = read_index(root)
    base_height = index.get("base_height")
    base_hash = index.get("base_hash")
    if not isinstance(base_height, int) or not isinstance(base_hash, str):
        raise StateError("index.json has no snapshot base")
    if not (state / "snapshot" / "meta.json").is_file():
        raise StateError("the snapshot is missing")
    prev, expect = base_hash, base_height + 1
    segs = sorted((state / "blocks").glob("*.seg"))
    cut: tuple[Path, list[str]] | None = None
    for seg in segs:
        if cut is not None:
            seg.unlink()
            continue
        lines = seg.read_text().splitlines()
        for n, line in enumerate(lines):
            linked = _linked_block(line, expect, prev)
            if linked is None:
                cut = (seg, lines[:n])
                break
            prev, expect = linked, expect + 1
    if cut is not None:
        seg, kept = cut
        if kept:
            write_atomic(seg, "".join(f"{k}\n" for k in kept).encode(), staging=root / STAGING_DIR)
        else:
            seg.unlink()
    height = expect - 1
    said = index["height"]
    index = {**index, "height": height, "tip": prev}
    write_atomic(
        state / "index.json",
        (json.dumps(index, indent=2) + "\n").encode(),
        staging=root / STAGING_DIR,
    )
    return index, f"index said height {said}, the block files verify to {height}; index rewritten"


BODY_DIR = "bodies"
"""Where grown block bodies live, inside the state directory (`kconsole.lab.grow`)."""


def body_sizes(state: Path) -> dict[str, int]:
    """The grown segments as listed in `bodies/sizes.json` (empty when never grown)."""
    try:
        listed = json.loads((state / BODY_DIR / "sizes.json").read_text())
    except FileNotFoundError:
        return {}
    return {str(k): int(v) for k, v in listed.items()}


def check_bodies(state: Path) -> tuple[bool, str]:
    """Every listed body segment is present at its listed size (a cheap stat, not a read)."""
    sizes = body_sizes(state)
    total = 0
    for name, expect in sorted(sizes.items()):
        try:
            got = (state / BODY_DIR / name).stat().st_size
        except FileNotFoundError:
            return False, f"FAIL block body {BODY_DIR}/{name} is missing"
        if got != expect:
            return False, f"FAIL block body {BODY_DIR}/{name} is {got} bytes, {expect} expected"
        total += got
    return True, f"ok   {len(sizes)} block body files, {total} bytes, sizes as listed"


def verify_state(root: Path) -> tuple[bool, list[str]]:
    """Check the whole chain: snapshot checksum, every block's hash and link, the index."""
    out: list[str] = []
    state = root / STATE_DIR
    try:
        index = read_index(root)
    except StateError as exc:
        return False, [f"FAIL {exc}"]
    try:
        meta = json.loads((state / "snapshot" / "meta.json").read_text())
        accounts = (state / "snapshot" / "accounts.db").read_bytes()
    except (OSError, ValueError) as exc:
        return False, [f"FAIL snapshot unreadable: {exc}"]
    if hashlib.sha256(accounts).hexdigest() != meta.get("accounts_sha256"):
        return False, ["FAIL snapshot/accounts.db does not match its checksum"]
    out.append(f"ok   snapshot at height {meta.get('height')} ({len(accounts)} bytes, sha256 ok)")
    prev = meta.get("hash")
    expect = int(meta.get("height", 0)) + 1
    segs = sorted((state / "blocks").glob("*.seg"))
    for seg in segs:
        for n, line in enumerate(seg.read_text().splitlines(), 1):
            linked = _linked_block(line, expect, prev)
            if linked is None:
                return False, [
                    *out,
                    f"FAIL block file blocks/{seg.name} line {n}: broken block (expected height {expect})",
                ]
            prev, expect = linked, expect + 1
    height = expect - 1
    if height != index.get("height") or prev != index.get("tip"):
        return False, [
            *out,
            f"FAIL index.json says height {index.get('height')}, blocks end at {height}",
        ]
    out.append(
        f"ok   {len(segs)} block files, heights {meta.get('height')}..{height}, every link verified"
    )
    out.append(f"ok   tip {prev[:16]} matches index.json")
    if (state / BODY_DIR).is_dir():
        ok, line = check_bodies(state)
        out.append(line)
        if not ok:
            return False, out
    return True, out


def append_block(root: Path, index: dict[str, Any], ts: float, txs: int) -> dict[str, Any]:
    """Add one block: rewrite its block file and the index by rename (never a torn file)."""
    state = root / STATE_DIR
    staging = root / STAGING_DIR
    height = index["height"] + 1
    h, line = _block_line(height, index["tip"], ts, txs)
    seg = state / segment_name(height)
    seg.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = seg.read_bytes()
    except FileNotFoundError:
        old = b""
    write_atomic(seg, old + line.encode(), staging=staging)
    index = {**index, "height": height, "tip": h, "updated": now_iso(ts)}
    write_atomic(
        state / "index.json", (json.dumps(index, indent=2) + "\n").encode(), staging=staging
    )
    return index


def tx_lines(node: str, height: int, ts: float, count: int, rng: random.Random) -> list[str]:
    """Synthetic transaction log records for one block."""
    out = []
    for _ in range(count):
        txid = f"{rng.getrandbits(256):064x}"
        src = f"kdx1{rng.getrandbits(152):038x}"
        dst = f"kdx1{rng.getrandbits(152):038x}"
        amount = rng.randint(1, 500_000) / 100
        out.append(
            f"{now_iso(ts)} height={height} tx={txid} from={src} to={dst} "
            f"amount={amount:.2f} fee=0.0010 status=confirmed via={node}\n"
        )
    return out


def init_tx_logs(root: Path, node: str, created: float, days: int = 3) -> None:
    """A few days of transaction log files, one per day, as the node would have written."""
    tx_dir = root / TX_DIR
    tx_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"tx:{node}")
    start = created - days * 86400
    files: dict[str, list[str]] = {}
    t = start
    height = BASE_HEIGHT - int(days * 86400 / BLOCK_INTERVAL)
    while t < created:
        day = time.strftime("%Y%m%d", time.gmtime(t))
        files.setdefault(day, []).extend(tx_lines(node, height, t, rng.randint(1, 3), rng))
        t += 180
        height += int(180 / BLOCK_INTERVAL)
    for day, lines in files.items():
        (tx_dir / f"tx-{day}.log").write_text("".join(lines))


def new_validator_keys(
    node: str, role: str, version: int = 1, revoked: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A fresh validator key set (stand-in for the plan's quantum-resistant keys)."""
    private = os.urandom(64).hex()
    public = hashlib.sha256(bytes.fromhex(private)).hexdigest()
    return {
        "node": node,
        "role": role,
        "network": NETWORK,
        "algorithm": "dilithium3",
        "version": version,
        "created": now_iso(),
        "keys": [{"id": f"kdxval1{public[:20]}", "public": public, "private": private}],
        "revoked": revoked or [],
    }


# --------------------------------------------------------------------------- kaldrix-node


def _ufw_state(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / UFW_STATE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def node_run(root: Path, name: str) -> int:
    """The service: load the state, say READY=1 on stdout, add a block every 0.5 s until TERM."""

    def log(msg: str) -> None:
        append_log(root, NODE_LOG, "kaldrix-node", msg)

    def fatal(msg: str) -> int:
        log(f"FATAL {msg}")
        print(f"kaldrix-node: {msg}", file=sys.stderr)
        return 1

    if disk_full():
        return fatal("cannot open the chain state for writing: [Errno 28] No space left on device")
    try:
        index, _tip = load_state(root)
    except StateError as exc:
        # Not stopped cleanly, or copied live: recover from the block files if they are there.
        try:
            index, how = recover_state(root)
        except (StateError, OSError) as again:
            return fatal(f"chain state at /{STATE_DIR} is unusable: {again if str(again) else exc}")
        log(f"chain state was inconsistent ({exc}); recovered: {how}")
    try:
        keys = json.loads((root / KEYS_FILE).read_text())
        key_id = keys["keys"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return fatal(f"validator keys at /{KEYS_FILE} are missing or unreadable")
    if not (root / TLS_DIR / "node.crt").exists():
        return fatal(f"TLS certificate /{TLS_DIR}/node.crt is missing")

    flags = {"stop": False, "reload": False}
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)

    def on_term(signum: int, _frame: object) -> None:
        flags["stop"] = True

    def on_hup(signum: int, _frame: object) -> None:
        flags["reload"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    parent = os.getppid()
    pid_path = root / PID_FILE
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.write_text(f"{os.getpid()}\n")
    log(f"kaldrix-node {VERSION} starting: network {NETWORK}, node {name}, validator key {key_id}")
    log(f"loaded chain state: height {index['height']}, tip {index['tip'][:16]}")
    print("READY=1", flush=True)

    rng = random.Random()
    pending_tx: list[str] = []
    own = (root / STATE_DIR / "index.json").stat()
    stamp = (own.st_ino, own.st_mtime_ns)
    stalled = 0
    next_tick = time.monotonic() + BLOCK_INTERVAL
    rc = 0
    while not flags["stop"]:
        wait = next_tick - time.monotonic()
        if wait > 0:
            try:
                ready, _, _ = select.select([rfd], [], [], wait)
            except InterruptedError:
                ready = []
            if ready:
                os.read(rfd, 512)
                if flags["reload"]:
                    flags["reload"] = False
                    log("reloading: TLS certificate and peer list re-read")
                continue
        next_tick += BLOCK_INTERVAL
        if os.getppid() != parent:
            log("the lab that ran this node has gone; stopping")
            break
        if disk_full():
            rc = fatal(f"write block {index['height'] + 1}: [Errno 28] No space left on device")
            break
        try:
            st = (root / STATE_DIR / "index.json").stat()
        except FileNotFoundError:
            rc = fatal(f"chain state at /{STATE_DIR} disappeared underneath the running node")
            break
        if (st.st_ino, st.st_mtime_ns) != stamp:
            rc = fatal(
                f"chain state at /{STATE_DIR} was changed underneath the running node "
                "(stop the service before restoring)"
            )
            break
        if _ufw_state(root).get("outgoing") in ("deny", "reject"):
            stalled += 1
            if stalled % 20 == 1:
                log("no peers reachable: outgoing traffic is blocked by the firewall; not syncing")
            continue
        stalled = 0
        txs = rng.randint(0, 6)
        now = time.time()
        try:
            index = append_block(root, index, now, txs)
        except OSError as exc:
            rc = fatal(f"write block {index['height'] + 1}: {exc}")
            break
        own = (root / STATE_DIR / "index.json").stat()
        stamp = (own.st_ino, own.st_mtime_ns)
        pending_tx.extend(tx_lines(name, index["height"], now, txs, rng))
        if index["height"] % 10 == 0:
            _flush_tx(root, pending_tx)
        if index["height"] % 20 == 0:
            log(f"imported block #{index['height']} ({txs} txs, 8 peers) tip {index['tip'][:12]}")
    _flush_tx(root, pending_tx)
    if rc == 0:
        log(f"shutting down at height {index['height']}")
        with contextlib.suppress(FileNotFoundError):
            pid_path.unlink()
    return rc


def _flush_tx(root: Path, lines: list[str]) -> None:
    if not lines:
        return
    day = time.strftime("%Y%m%d", time.gmtime())
    path = root / TX_DIR / f"tx-{day}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(lines))
    lines.clear()


def rotate_keys(root: Path, name: str, emergency: bool) -> int:
    """`kaldrix-node rotate-keys [--emergency]`: a new key set; every old key is revoked."""
    path = root / KEYS_FILE
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    if disk_full():
        print(
            f"kaldrix-node: cannot write /{KEYS_FILE}: [Errno 28] No space left on device",
            file=sys.stderr,
        )
        return 1
    reason = "emergency rotation" if emergency else "scheduled rotation"
    revoked = list(old.get("revoked", [])) + [
        {"id": k.get("id"), "public": k.get("public"), "revoked": now_iso(), "reason": reason}
        for k in old.get("keys", [])
    ]
    new = new_validator_keys(
        name, str(old.get("role", "validator")), int(old.get("version", 0)) + 1, revoked
    )
    write_atomic(path, (json.dumps(new, indent=2) + "\n").encode(), mode=0o600)
    append_log(
        root,
        NODE_LOG,
        "kaldrix-node",
        f"validator keys rotated ({reason}): new key {new['keys'][0]['id']}, "
        f"{len(old.get('keys', []))} key(s) revoked",
    )
    print(f"Rotated validator keys for {name} ({reason}).")
    print(f"  new key:  {new['keys'][0]['id']}")
    print(f"  revoked:  {', '.join(str(k.get('id')) for k in old.get('keys', [])) or 'none'}")
    print("Reload or restart kaldrix-node to sign with the new key.")
    return 0


def cmd_kaldrix_node(argv: list[str]) -> int:
    """`kaldrix-node run | status | verify-state | rotate-keys [--emergency] | --version`."""
    root, name = node_root(), node_name()
    args = argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(
            "usage: kaldrix-node run | status | verify-state | rotate-keys [--emergency] | --version"
        )
        return 0 if args else 2
    cmd = args[0]
    if cmd in ("--version", "version"):
        print(f"kaldrix-node {VERSION} ({NETWORK})")
        return 0
    if cmd == "run":
        return node_run(root, name)
    if cmd == "status":
        try:
            index, _ = load_state(root)
        except StateError as exc:
            print(f"kaldrix-node: chain state unusable: {exc}", file=sys.stderr)
            return 1
        print(f"node {name} network {index['network']} height {index['height']} tip {index['tip']}")
        return 0
    if cmd == "verify-state":
        ok, lines = verify_state(root)
        print("\n".join(lines))
        print("chain state OK" if ok else "chain state BROKEN")
        return 0 if ok else 1
    if cmd == "rotate-keys":
        return rotate_keys(root, name, "--emergency" in args[1:])
    print(f"kaldrix-node: unknown command {cmd!r}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- systemctl


def cmd_systemctl(argv: list[str]) -> int:
    """Everything but `is-active`: handed to the lab, which plays systemd for this node."""
    addr = os.environ.get("KALDRIX_LAB_INIT", "")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        print(
            "System has not been booted with systemd as init system (PID 1). Can't operate.",
            file=sys.stderr,
        )
        return 1
    request = {
        "token": os.environ.get("KALDRIX_LAB_TOKEN", ""),
        "node": node_name(),
        "argv": argv[1:],
    }
    try:
        with socket.create_connection((host, int(port)), timeout=120) as sock:
            sock.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
    except (OSError, ValueError) as exc:
        print(f"Failed to connect to bus: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(reply.get("stdout", ""))
    sys.stderr.write(reply.get("stderr", ""))
    return int(reply.get("rc", 1))


# --------------------------------------------------------------------------- journalctl

_SYSTEM_EVENTS = (
    ("sshd", "Accepted publickey for ops from 10.20.0.{a} port {p} ssh2: ED25519 SHA256:{fp}"),
    ("systemd-logind", "New session {n} of user ops."),
    ("systemd", "Started session-{n}.scope - Session {n} of User ops."),
    ("CRON", "(root) CMD (/usr/local/bin/kaldrix-metrics-push >/dev/null 2>&1)"),
    ("chronyd", "Selected source 10.20.0.1 (ntp.kaldrix.internal)"),
    ("kernel", "[UFW BLOCK] IN=eth0 OUT= SRC=198.51.100.{a} DST=10.20.1.{b} PROTO=TCP DPT=22"),
    ("systemd", "Starting logrotate.service - Rotate log files..."),
    ("systemd", "logrotate.service: Deactivated successfully."),
    ("node_exporter", 'level=info msg="textfile collector: read {n} bytes"'),
    ("rsyslogd", "action 'action-1-builtin:omfwd' resumed (module 'builtin:omfwd') [v8.2302.0]"),
)


def _synthetic_system_log(
    name: str, since: float, until: float
) -> Iterator[tuple[float, str, int, str]]:
    slot = 300
    t = (int(since) // slot + 1) * slot
    while t <= until:
        rng = random.Random(f"{name}:{t}")
        batch = []
        for _ in range(rng.randint(1, 3)):
            ident, text = rng.choice(_SYSTEM_EVENTS)
            msg = text.format(
                a=rng.randint(2, 250),
                b=rng.randint(2, 250),
                p=rng.randint(30000, 65000),
                fp=f"{rng.getrandbits(172):043x}",
                n=rng.randint(100, 9999),
            )
            batch.append((t + rng.random() * 60, ident, rng.randint(300, 60000), msg))
        yield from (r for r in sorted(batch) if since <= r[0] <= until)
        t += slot


_LOG_LINE = re.compile(r"^(\S+) ([^\[\s]+)\[(\d+)\]: (.*)$")


def _file_log(path: Path, since: float, until: float) -> Iterator[tuple[float, str, int, str]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        m = _LOG_LINE.match(line.rstrip("\n"))
        if not m:
            continue
        try:
            ts = parse_iso(m.group(1))
        except ValueError:
            continue
        if since <= ts <= until:
            yield ts, m.group(2), int(m.group(3)), m.group(4)


def parse_since(text: str, now: float) -> float:
    """journalctl's time specs: `1 day ago`, `-2h`, `today`, `yesterday`, `YYYY-MM-DD [HH:MM[:SS]]`, `@EPOCH`."""
    t = text.strip().lower()
    units = {
        "s": 1,
        "sec": 1,
        "second": 1,
        "seconds": 1,
        "m": 60,
        "min": 60,
        "minute": 60,
        "minutes": 60,
        "h": 3600,
        "hour": 3600,
        "hours": 3600,
        "d": 86400,
        "day": 86400,
        "days": 86400,
        "w": 604800,
        "week": 604800,
        "weeks": 604800,
    }
    if t == "now":
        return now
    if t in ("today", "yesterday", "tomorrow"):
        midnight = _dt.datetime.fromtimestamp(now, _dt.UTC).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        return midnight.timestamp() + {"today": 0, "yesterday": -86400, "tomorrow": 86400}[t]
    if t.startswith("@"):
        return float(t[1:])
    m = re.fullmatch(r"-?\s*(\d+(?:\.\d+)?)\s*([a-z]+)(?:\s+ago)?", t)
    if m and m.group(2) in units and (t.startswith("-") or t.endswith("ago")):
        return now - float(m.group(1)) * units[m.group(2)]
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(text.strip(), fmt).replace(tzinfo=_dt.UTC).timestamp()
        except ValueError:
            pass
    raise ValueError(f"Failed to parse timestamp: {text}")


def cmd_journalctl(argv: list[str]) -> int:
    """Synthetic system logs merged with the node's real service log and SSH logins."""
    root, name = node_root(), node_name()
    now = time.time()
    since, until = now - 3 * 86400, now
    unit = ""
    lines: int | None = None
    output = "short"
    long_opts = {"--since": "S", "--until": "U", "--unit": "u", "--lines": "n", "--output": "o"}
    flags = {
        "--no-pager",
        "--quiet",
        "--all",
        "--boot",
        "--utc",
        "--catalog",
        "--pager-end",
        "--no-hostname",
    }
    args = argv[1:]
    i = 0
    try:
        while i < len(args):
            a = args[i]
            i += 1
            opts: list[tuple[str, str | None]] = []
            if a.startswith("--"):
                long_name, eq, inline = a.partition("=")
                if long_name in flags:
                    if long_name == "--pager-end" and lines is None:
                        lines = 1000
                    continue
                if long_name == "--follow":
                    raise ValueError("--follow is not available in the kconsole lab")
                if long_name not in long_opts:
                    raise ValueError(f"unrecognized option '{a}'")
                opts.append((long_opts[long_name], inline if eq else None))
            elif a.startswith("-") and len(a) > 1:
                letters = a[1:]
                for j, ch in enumerate(letters):
                    if ch in "SUuno":
                        opts.append((ch, letters[j + 1 :] or None))
                        break
                    if ch == "f":
                        raise ValueError("--follow is not available in the kconsole lab")
                    if ch == "e" and lines is None:
                        lines = 1000
                    elif ch not in "xeqabr":
                        raise ValueError(f"invalid option -- '{ch}'")
            else:
                raise ValueError(
                    f"unsupported argument {a!r} (match filters are not available in the lab)"
                )
            for opt, given in opts:
                if given is None:
                    if i >= len(args):
                        raise ValueError(f"option requires an argument -- '{opt}'")
                    given = args[i]
                    i += 1
                val: str = given
                if opt == "S":
                    since = parse_since(val, now)
                elif opt == "U":
                    until = parse_since(val, now)
                elif opt == "u":
                    unit = val.removesuffix(".service")
                elif opt == "n":
                    lines = int(val)
                else:
                    output = val
    except ValueError as exc:
        print(f"journalctl: {exc}", file=sys.stderr)
        return 1
    sources: list[Iterator[tuple[float, str, int, str]]] = [
        _file_log(root / NODE_LOG, since, until)
    ]
    if unit != "kaldrix-node":
        sources.append(_file_log(root / AUTH_LOG, since, until))
        sources.append(_synthetic_system_log(name, since, until))
    import heapq

    records = list(heapq.merge(*sources, key=lambda r: r[0]))
    if unit:
        records = [
            r for r in records if r[1] == unit or (unit in ("ssh", "sshd") and r[1] == "sshd")
        ]
    if lines is not None:
        records = records[-lines:] if lines else []
    if not records:
        print("-- No entries --")
        return 0
    out = sys.stdout
    for ts, ident, pid, msg in records:
        if output == "json":
            out.write(
                json.dumps(
                    {
                        "__REALTIME_TIMESTAMP": str(int(ts * 1e6)),
                        "_HOSTNAME": name,
                        "SYSLOG_IDENTIFIER": ident,
                        "_PID": str(pid),
                        "MESSAGE": msg,
                    }
                )
                + "\n"
            )
        elif output == "cat":
            out.write(msg + "\n")
        elif output == "short-iso":
            out.write(f"{now_iso(ts)} {name} {ident}[{pid}]: {msg}\n")
        else:
            stamp = time.strftime("%b %d %H:%M:%S", time.gmtime(ts))
            out.write(f"{stamp} {name} {ident}[{pid}]: {msg}\n")
    return 0


# --------------------------------------------------------------------------- ufw


def cmd_ufw(argv: list[str]) -> int:
    """A firewall whose rules live in /etc/ufw/ufw.json; a denied outgoing policy stalls the node."""
    root = node_root()
    path = root / UFW_STATE
    state: dict[str, Any] = {
        "enabled": True,
        "incoming": "allow",
        "outgoing": "allow",
        "routed": "disabled",
        "rules": [],
    }
    state.update(_ufw_state(root))
    args = [a for a in argv[1:] if a not in ("--force", "-f")]
    if not args or args[0] in ("-h", "--help"):
        print(
            "Usage: ufw COMMAND\n  enable | disable | default ARG DIRECTION | allow|deny|reject RULE | status [verbose] | reset"
        )
        return 0 if args else 1

    def save() -> bool:
        if disk_full():
            print(f"ERROR: Couldn't update /{UFW_STATE}: No space left on device", file=sys.stderr)
            return False
        write_atomic(path, (json.dumps(state, indent=2) + "\n").encode())
        append_log(root, "var/log/ufw.log", "ufw", " ".join(args))
        return True

    cmd = args[0]
    if cmd == "status":
        if not state["enabled"]:
            print("Status: inactive")
            return 0
        print("Status: active")
        if "verbose" in args[1:]:
            print(
                f"Logging: on (low)\nDefault: {state['incoming']} (incoming), {state['outgoing']} (outgoing), "
                f"{state['routed']} (routed)\nNew profiles: skip"
            )
        rules = state["rules"]
        if rules:
            print(
                "\nTo                         Action      From\n--                         ------      ----"
            )
            for r in rules:
                print(
                    f"{r.get('to', 'Anywhere'):<27}{r['action'].upper() + ' IN':<12}{r.get('from', 'Anywhere')}"
                )
        return 0
    if cmd in ("enable", "disable"):
        state["enabled"] = cmd == "enable"
        if not save():
            return 1
        print(
            "Firewall is active and enabled on system startup"
            if cmd == "enable"
            else "Firewall stopped and disabled on system startup"
        )
        return 0
    if cmd == "reset":
        state = {
            "enabled": False,
            "incoming": "allow",
            "outgoing": "allow",
            "routed": "disabled",
            "rules": [],
        }
        if not save():
            return 1
        print("Resetting all rules to installed defaults.")
        return 0
    if cmd == "default":
        if len(args) < 2 or args[1] not in ("allow", "deny", "reject"):
            print("ERROR: Invalid syntax", file=sys.stderr)
            return 1
        direction = args[2] if len(args) > 2 else "incoming"
        if direction not in ("incoming", "outgoing", "routed"):
            print("ERROR: Invalid syntax", file=sys.stderr)
            return 1
        state[direction] = args[1]
        if not save():
            return 1
        print(
            f"Default {direction} policy changed to '{args[1]}'\n(be sure to update your rules accordingly)"
        )
        return 0
    if cmd in ("allow", "deny", "reject", "limit"):
        rest = args[1:]
        if not rest:
            print("ERROR: Invalid syntax", file=sys.stderr)
            return 1
        rule: dict[str, str] = {"action": cmd}
        if rest[0] == "from" and len(rest) > 1:
            rule["from"] = rest[1]
            if len(rest) > 3 and rest[2] == "to":
                rule["to"] = " ".join(rest[3:])
        else:
            rule["to"] = " ".join(rest)
        state["rules"].append(rule)
        if not save():
            return 1
        print("Rule added")
        return 0
    print(f"ERROR: Invalid syntax: {cmd}", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- certbot


def _cert_days_left(cert: Path) -> float | None:
    try:
        out = subprocess.run(
            ["openssl", "x509", "-enddate", "-noout", "-in", str(cert)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    end = out.strip().split("=", 1)[-1]
    try:
        t = _dt.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=_dt.UTC)
    except ValueError:
        return None
    return (t.timestamp() - time.time()) / 86400


def cmd_certbot(argv: list[str]) -> int:
    """`certbot renew [--force-renewal]` and `certbot certificates` for the node's TLS pair."""
    root, name = node_root(), node_name()
    args = argv[1:]
    tls = root / TLS_DIR
    cert, key = tls / "node.crt", tls / "node.key"
    domain = f"{name}.kaldrix.lab"
    append_log(
        root, "var/log/letsencrypt/letsencrypt.log", "certbot", " ".join(args) or "(no arguments)"
    )
    print("Saving debug log to /var/log/letsencrypt/letsencrypt.log")
    if not args or args[0] not in ("renew", "certificates"):
        print(
            "certbot: the kconsole lab supports `certbot renew [--force-renewal]` and `certbot certificates`",
            file=sys.stderr,
        )
        return 1
    days = _cert_days_left(cert)
    if args[0] == "certificates":
        print(
            f"Found the following certs:\n  Certificate Name: {domain}\n    Domains: {domain}\n"
            f"    Expiry Date: {'unknown' if days is None else f'in {days:.0f} days'}\n"
            f"    Certificate Path: /{TLS_DIR}/node.crt\n    Private Key Path: /{TLS_DIR}/node.key"
        )
        return 0
    rule = "- " * 40
    print(f"\n{rule}\nProcessing /etc/letsencrypt/renewal/{domain}.conf\n{rule}")
    force = "--force-renewal" in args or "--force-renew" in args
    if not force and days is not None and days > 30:
        print(
            f"Certificate not yet due for renewal\n\n{rule}\nThe following certificates are not due for "
            f"renewal yet:\n  /{TLS_DIR}/node.crt expires in {days:.0f} days (skipped)\nNo renewals were attempted."
        )
        return 0
    if disk_full():
        print(
            f"Failed to renew certificate {domain} with error: [Errno 28] No space left on device",
            file=sys.stderr,
        )
        return 1
    tls.mkdir(parents=True, exist_ok=True)
    staging = root / "tmp"
    staging.mkdir(parents=True, exist_ok=True)
    new_key, new_cert = (
        staging / f".certbot-{os.getpid()}.key",
        staging / f".certbot-{os.getpid()}.crt",
    )
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(new_key),
                "-out",
                str(new_cert),
                "-days",
                "90",
                "-subj",
                f"/CN={domain}",
                "-addext",
                f"subjectAltName=DNS:{domain},IP:127.0.0.1",
            ],
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"Failed to renew certificate {domain}: {exc}", file=sys.stderr)
        return 1
    os.chmod(new_key, 0o600)
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    print(
        f"Renewing an existing certificate for {domain}\n\n{rule}\nCongratulations, all renewals succeeded:\n"
        f"  /{TLS_DIR}/node.crt (success)\n{rule}"
    )
    return 0


# --------------------------------------------------------------------------- kali-security-scan


def cmd_security_scan(argv: list[str]) -> int:
    """Checks a recovered node: key and TLS permissions, stray plaintext archives, unknown
    keys and binaries, chain integrity. Exit 1 when anything is found."""
    root, name = node_root(), node_name()
    findings: list[str] = []
    passes: list[str] = []

    def private(rel: str) -> None:
        p = root / rel
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except OSError:
            findings.append(f"/{rel} is missing")
            return
        if mode & 0o077:
            findings.append(f"/{rel} is readable by others (mode {mode:04o}, expected 0600)")
        else:
            passes.append(f"/{rel} is private (mode {mode:04o})")

    private(KEYS_FILE)
    private(f"{TLS_DIR}/node.key")
    try:
        keys = json.loads((root / KEYS_FILE).read_text())
        foreign = [k.get("id") for k in keys.get("keys", []) if k.get("origin") == "unknown"]
        if foreign:
            findings.append(
                f"validator key file holds key(s) this node never generated: {', '.join(map(str, foreign))}"
            )
        else:
            passes.append(
                f"validator keys: {len(keys.get('keys', []))} active, {len(keys.get('revoked', []))} revoked"
            )
    except (OSError, ValueError, AttributeError):
        findings.append(f"/{KEYS_FILE} is unreadable")
    if (root / BACKDOOR).exists():
        findings.append(f"unexpected executable /{BACKDOOR} (known persistence implant)")
    stray = []
    for rel in ("tmp", "root", "var/tmp"):
        d = root / rel
        if d.is_dir():
            stray += [
                p
                for p in d.rglob("*")
                if p.is_file() and re.search(r"\.(tar|tgz|tar\.gz|tar\.zst)$", p.name)
            ]
    for p in stray:
        findings.append(f"plaintext archive left behind: /{p.relative_to(root)}")
    if not stray:
        passes.append("no plaintext archives in /tmp, /var/tmp or /root")
    ok, lines = verify_state(root)
    (passes if ok else findings).append(
        "chain state: " + ("verified" if ok else lines[-1].removeprefix("FAIL "))
    )
    fw = _ufw_state(root)
    passes.append(
        f"firewall: incoming {fw.get('incoming', 'allow')}, outgoing {fw.get('outgoing', 'allow')}"
    )
    report = [f"kali-security-scan on {name} at {now_iso()}"]
    report += [f"[PASS] {p}" for p in passes] + [f"[FAIL] {f}" for f in findings]
    report.append(f"{len(findings)} finding(s)" if findings else "no findings")
    text = "\n".join(report) + "\n"
    sys.stdout.write(text)
    if not disk_full():
        out = root / "var/log/kaldrix" / f"security-scan-{time.strftime('%Y%m%d_%H%M%S')}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 1 if findings else 0


# --------------------------------------------------------------------------- disk-full wrappers


def _real_command(cmd: str) -> str | None:
    skip = {os.environ.get("KALDRIX_LAB_FAULT_BIN", ""), os.environ.get("KALDRIX_LAB_BIN", "")}
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if d and d not in skip:
            p = os.path.join(d, cmd)
            if os.access(p, os.X_OK) and not os.path.isdir(p):
                return p
    return None


def _tar_writes(args: list[str]) -> bool:
    if not args:
        return False
    extract = create = False
    archive: str | None = None
    first = args[0]
    if not first.startswith("-"):
        args = ["-" + first, *args[1:]]
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--extract", "--get"):
            extract = True
        elif a in ("--create", "--append", "--update"):
            create = True
        elif a.startswith("--file="):
            archive = a.split("=", 1)[1]
        elif a == "--file":
            archive = args[i + 1] if i + 1 < len(args) else None
            i += 1
        elif a.startswith("-") and not a.startswith("--"):
            letters = a[1:]
            extract |= "x" in letters
            create |= bool(set(letters) & set("cru"))
            if "f" in letters:
                rest = letters[letters.index("f") + 1 :]
                archive = rest if rest else (args[i + 1] if i + 1 < len(args) else None)
                if not rest:
                    i += 1
        i += 1
    return extract or (create and archive not in (None, "-"))


def cmd_diskfull(argv: list[str]) -> int:
    """`labtool __diskfull__ CMD ARGS`: fail CMD as a full disk would when it writes a file."""
    if len(argv) < 2:
        return 2
    cmd, args = argv[1], argv[2:]
    files = [a for a in args if not a.startswith("-")]
    if cmd == "tar":
        writes = _tar_writes(args)
    elif cmd in ("gzip", "gunzip", "zstd", "xz", "bzip2"):
        writes = bool(files) and not (
            {"-c", "--stdout", "-t", "--test", "-l", "--list"} & set(args)
        )
    elif cmd == "dd":
        writes = any(a.startswith("of=") for a in args)
    elif cmd == "tee":
        writes = bool(files)
    elif cmd == "mkdir":
        writes = not all(os.path.isdir(f) for f in files)
    else:
        writes = True
    if not writes:
        real = _real_command(cmd)
        if real is None:
            print(f"{cmd}: command not found", file=sys.stderr)
            return 127
        os.execv(real, [cmd, *args])
    target = files[-1] if files else "."
    if cmd == "tar":
        if not sys.stdin.isatty():
            try:
                while os.read(0, 1 << 16):
                    pass
            except OSError:
                pass
        print("tar: var/lib/kaldrix/state: Cannot write: No space left on device", file=sys.stderr)
        print("tar: Exiting with failure status due to previous errors", file=sys.stderr)
        return 2
    if cmd in ("mkdir", "install") and ("-d" in args or cmd == "mkdir"):
        message = f"cannot create directory '{target}'"
    elif cmd in ("cp", "mv", "ln", "install"):
        message = f"cannot create regular file '{target}'"
    elif cmd == "touch":
        message = f"cannot touch '{target}'"
    else:
        message = f"error writing '{target}'"
    print(f"{cmd}: {message}: No space left on device", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- dispatch

COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "kaldrix-node": cmd_kaldrix_node,
    "systemctl": cmd_systemctl,
    "journalctl": cmd_journalctl,
    "ufw": cmd_ufw,
    "certbot": cmd_certbot,
    "kali-security-scan": cmd_security_scan,
    "__diskfull__": cmd_diskfull,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command named by argv[0] (or argv[1] when invoked as `labtool`)."""
    args = list(sys.argv if argv is None else argv)
    prog = os.path.basename(args[0]) if args else "labtool"
    if prog not in COMMANDS and len(args) > 1:
        args = args[1:]
        prog = args[0]
    handler = COMMANDS.get(prog)
    if handler is None:
        print(f"labtool: unknown command {prog!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        rc = handler(args)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # The reader went away (`journalctl ... | head`): quiet exit, as the real tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
