"""Benchmark kconsole's encryption against `openssl enc` on one large file.

Usage: python bench/bench_crypto.py [--size-mib 512] [--repeat 3] [--dir DIR]

Each variant runs in its own process; wall time and that process's peak RSS come from
`os.wait4`. The output is a Markdown table (MB/s, ratio to `openssl enc -aes-256-cbc`,
peak RSS). kconsole fsyncs its output before renaming it into place; openssl does not,
so kconsole pays for durability that openssl skips.
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

# The kconsole variants call the same functions `kconsole crypto …` calls.
_KCONSOLE = (
    "import sys; from pathlib import Path; from kconsole.crypto import cli; "
    "a = [Path(p) for p in sys.argv[2:]]; "
    "raise SystemExit(cli.cmd_encrypt(*a) if sys.argv[1] == 'encrypt' "
    "else cli.cmd_decrypt(a[1], a[2], key_path=a[0], kdf=sys.argv[1].partition(':')[2] or None))"
)


@dataclass
class Variant:
    """One command to time: what it reads and what it writes."""

    name: str
    argv: list[str]
    output: Path


@dataclass
class Measurement:
    """The median wall time and the largest peak RSS over the repeats."""

    name: str
    seconds: float
    peak_rss_mib: float


def _make_input(path: Path, size_mib: int) -> None:
    # Random bytes: a compressible input would flatter nothing here, but be honest anyway.
    with path.open("wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(1 << 20))


def _run(argv: list[str], scratch: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    report = scratch / "time.out"
    if TIME:
        # Through /usr/bin/time: a child forked straight from this Python would report
        # this process's own RSS as its peak (Linux keeps the high-water mark over exec).
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


def main() -> int:
    """Create the inputs, time every variant, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="input size (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from kconsole.crypto.keys import keygen, read_key_file
    from kconsole.crypto.stream import encrypt_file

    work = Path(tempfile.mkdtemp(prefix="bench-crypto-", dir=args.dir))
    try:
        key = work / "bench.key"
        keygen(key)
        plain = work / "plain.bin"
        _make_input(plain, args.size_mib)
        size = plain.stat().st_size
        # Inputs for the decrypt variants, made once so every timed run only writes out.*.
        kdx, cbc, ctr = work / "in.kdx", work / "in.cbc", work / "in.ctr"
        encrypt_file(read_key_file(key), plain, kdx)
        for cipher, dst in (("aes-256-cbc", cbc), ("aes-256-ctr", ctr)):
            subprocess.run(_openssl(cipher, plain, dst, key), check=True, capture_output=True)

        py = [sys.executable, "-c", _KCONSOLE]
        out = {n: work / f"out.{n}" for n in ("enc-kdx", "enc-cbc", "enc-ctr", "kdx", "legacy", "cbc", "ctr")}  # fmt: skip
        variants = [
            Variant("kconsole encrypt (KDXENC, AES-256-GCM)", [*py, "encrypt", str(key), str(plain), str(out["enc-kdx"])], out["enc-kdx"]),
            Variant("openssl enc -aes-256-cbc", _openssl("aes-256-cbc", plain, out["enc-cbc"], key), out["enc-cbc"]),
            Variant("openssl enc -aes-256-ctr", _openssl("aes-256-ctr", plain, out["enc-ctr"], key), out["enc-ctr"]),
            Variant("kconsole decrypt (KDXENC)", [*py, "decrypt", str(key), str(kdx), str(out["kdx"])], out["kdx"]),
            Variant("kconsole decrypt (legacy CBC file)", [*py, "decrypt:sha256", str(key), str(cbc), str(out["legacy"])], out["legacy"]),
            Variant("openssl enc -d -aes-256-cbc", _openssl("aes-256-cbc", cbc, out["cbc"], key, decrypt=True), out["cbc"]),
            Variant("openssl enc -d -aes-256-ctr", _openssl("aes-256-ctr", ctr, out["ctr"], key, decrypt=True), out["ctr"]),
        ]  # fmt: skip
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        peaks: dict[str, float] = {v.name: 0.0 for v in variants}
        # Round robin, with the previous run's dirty pages flushed first, so that one
        # variant's writeback does not land on the next one's clock.
        for _ in range(args.repeat):
            for v in variants:
                v.output.unlink(missing_ok=True)
                os.sync()
                seconds, peak = _run(v.argv, work)
                times[v.name].append(seconds)
                print(f"{v.name}: {seconds:.2f}", file=sys.stderr)
                peaks[v.name] = max(peaks[v.name], peak)

        want = _sha256(plain)
        for v in variants[3:]:
            if _sha256(v.output) != want:
                raise SystemExit(f"{v.name} did not reproduce the input")

        results = [Measurement(n, statistics.median(t), peaks[n]) for n, t in times.items()]
        baseline = next(r for r in results if r.name == "openssl enc -aes-256-cbc")
        print(
            f"{args.size_mib} MiB of random data, file to file, page cache warm, "
            f"median of {args.repeat} runs; kconsole fsyncs its output, openssl does not"
        )
        print()
        print("| variant | time (s) | MB/s | vs openssl aes-256-cbc | peak RSS (MiB) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in results:
            mbps = size / 1e6 / r.seconds
            ratio = baseline.seconds / r.seconds
            print(
                f"| {r.name} | {r.seconds:.2f} | {mbps:.0f} | {ratio:.2f}x | {r.peak_rss_mib:.1f} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
