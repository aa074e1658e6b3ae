"""Benchmark kconsole's encryption against `openssl enc` on one large file.

Usage: python bench/bench_crypto.py [--size-mib 512] [--repeat 5] [--dir DIR]

Every variant runs in its own process, measured by GNU time (wall time and that
process's own peak RSS), round robin. Two groups: file to file (what an operator runs;
kconsole fsyncs its output before renaming it into place, openssl does not), and to
/dev/null (the crypto and hashing alone, without the disk's noise). The output is a
Markdown table: MB/s and the speed relative to `openssl enc -aes-256-cbc` of the same
group, from each variant's best run (the one least disturbed by anything else running
on the machine), the median time, and peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
"""GNU time reports a child's own peak RSS; without it the figure is only an upper bound."""

# What the kconsole variants run: the functions `kconsole crypto …` calls (file to file),
# or the streaming API writing to /dev/null.
_KCONSOLE = """
import sys
from pathlib import Path
from kconsole.crypto import cli, decrypt_stream, encrypt_stream, read_key_file
op, key, src, dst = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
if op == "encrypt":
    raise SystemExit(cli.cmd_encrypt(key, src, dst))
if op == "decrypt" or op.startswith("decrypt:"):
    raise SystemExit(cli.cmd_decrypt(src, dst, key_path=key, kdf=op.partition(":")[2] or None))
stream = encrypt_stream if op == "encrypt-stream" else decrypt_stream
with src.open("rb", buffering=0) as fin, dst.open("wb") as fout:
    stream(read_key_file(key), fin, fout)
"""


@dataclass
class Variant:
    """One command to time and the file it writes."""

    group: str
    name: str
    argv: list[str]
    output: Path | None


def _make_input(path: Path, size_mib: int) -> None:
    # Random bytes, like the compressed archives kconsole really encrypts.
    with path.open("wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(1 << 20))


def _run(argv: list[str], report: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if TIME:
        # Through GNU time: a child forked straight from this Python would report this
        # process's own RSS as its peak (Linux keeps the high-water mark across exec).
        argv = [TIME, "-f", "%M", "-o", str(report), *argv]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    if TIME:
        peak_kib = int(report.read_text().split()[-1])
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, peak_kib / 1024


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _openssl(cipher: str, src: Path, dst: Path, key: Path, decrypt: bool = False) -> list[str]:
    mode = ["-d"] if decrypt else ["-salt"]
    return [OPENSSL, "enc", *mode, f"-{cipher}", "-pass", f"file:{key}", "-in", str(src), "-out", str(dst)]  # fmt: skip


def _variants(work: Path, key: Path, plain: Path, kdx: Path, cbc: Path, ctr: Path) -> list[Variant]:
    py = [sys.executable, "-c", _KCONSOLE]
    out = {n: work / f"out.{n}" for n in ("enc-kdx", "enc-cbc", "enc-ctr", "kdx", "legacy", "cbc", "ctr")}  # fmt: skip
    null = Path(os.devnull)
    f2f, dn = "file to file", "to /dev/null"
    return [
        Variant(f2f, "kconsole encrypt (KDXENC, AES-256-GCM)", [*py, "encrypt", str(key), str(plain), str(out["enc-kdx"])], out["enc-kdx"]),
        Variant(f2f, "openssl enc -aes-256-cbc", _openssl("aes-256-cbc", plain, out["enc-cbc"], key), out["enc-cbc"]),
        Variant(f2f, "openssl enc -aes-256-ctr", _openssl("aes-256-ctr", plain, out["enc-ctr"], key), out["enc-ctr"]),
        Variant(f2f, "kconsole decrypt (KDXENC)", [*py, "decrypt", str(key), str(kdx), str(out["kdx"])], out["kdx"]),
        Variant(f2f, "kconsole decrypt (legacy CBC file)", [*py, "decrypt:sha256", str(key), str(cbc), str(out["legacy"])], out["legacy"]),
        Variant(f2f, "openssl enc -d -aes-256-cbc", _openssl("aes-256-cbc", cbc, out["cbc"], key, decrypt=True), out["cbc"]),
        Variant(f2f, "openssl enc -d -aes-256-ctr", _openssl("aes-256-ctr", ctr, out["ctr"], key, decrypt=True), out["ctr"]),
        Variant(dn, "kconsole encrypt_stream", [*py, "encrypt-stream", str(key), str(plain), str(null)], None),
        Variant(dn, "openssl enc -aes-256-cbc", _openssl("aes-256-cbc", plain, null, key), None),
        Variant(dn, "openssl enc -aes-256-ctr", _openssl("aes-256-ctr", plain, null, key), None),
        Variant(dn, "kconsole decrypt_stream", [*py, "decrypt-stream", str(key), str(kdx), str(null)], None),
        Variant(dn, "openssl enc -d -aes-256-cbc", _openssl("aes-256-cbc", cbc, null, key, decrypt=True), None),
    ]  # fmt: skip


def main() -> int:
    """Create the inputs, time every variant, check the outputs, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="input size (default 512)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant (median)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from kconsole.crypto import encrypt_file, keygen

    work = Path(tempfile.mkdtemp(prefix="bench-crypto-", dir=args.dir))
    try:
        key = work / "bench.key"
        plain = work / "plain.bin"
        _make_input(plain, args.size_mib)
        size = plain.stat().st_size
        # Inputs for the decrypt variants, made once: every timed run only writes out.*.
        kdx, cbc, ctr = work / "in.kdx", work / "in.cbc", work / "in.ctr"
        encrypt_file(keygen(key), plain, kdx)
        for cipher, dst in (("aes-256-cbc", cbc), ("aes-256-ctr", ctr)):
            subprocess.run(_openssl(cipher, plain, dst, key), check=True, capture_output=True)

        variants = _variants(work, key, plain, kdx, cbc, ctr)
        times: dict[int, list[float]] = {i: [] for i in range(len(variants))}
        peaks: dict[int, float] = dict.fromkeys(times, 0.0)
        # Round robin, each run after a sync, so that one variant's writeback neither
        # lands on the next one's clock nor all of one variant's runs hit a slow spell.
        for _ in range(args.repeat):
            for i, v in enumerate(variants):
                if v.output is not None:
                    v.output.unlink(missing_ok=True)
                os.sync()
                seconds, peak = _run(v.argv, work / "time.out")
                times[i].append(seconds)
                peaks[i] = max(peaks[i], peak)

        want = _sha256(plain)
        for v in variants:
            if v.output is not None and "decrypt" in v.name and _sha256(v.output) != want:
                raise SystemExit(f"{v.name} did not reproduce the input")

        print(
            f"{args.size_mib} MiB of random data, page cache warm, best and median of "
            f"{args.repeat} runs, process start-up included"
        )
        print()
        print(
            "| group | variant | best (s) | median (s) | MB/s | vs openssl aes-256-cbc "
            "| peak RSS (MiB) |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for i, v in enumerate(variants):
            base = next(
                j
                for j, b in enumerate(variants)
                if b.group == v.group and b.name == "openssl enc -aes-256-cbc"
            )
            best = min(times[i])
            ratio = min(times[base]) / best
            print(
                f"| {v.group} | {v.name} | {best:.2f} | {statistics.median(times[i]):.2f} "
                f"| {size / 1e6 / best:.0f} | {ratio:.2f}x | {peaks[i]:.1f} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
