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


def _run(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip()}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def _measure(variant: Variant, repeat: int) -> Measurement:
    times, rss = [], []
    for _ in range(repeat):
        variant.output.unlink(missing_ok=True)
        seconds, peak = _run(variant.argv)
        times.append(seconds)
        rss.append(peak)
    return Measurement(variant.name, statistics.median(times), max(rss))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    """Create the input, time every variant, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="input size (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from kconsole.crypto.keys import keygen

    work = Path(tempfile.mkdtemp(prefix="bench-crypto-", dir=args.dir))
    try:
        key = work / "bench.key"
        keygen(key)
        plain = work / "plain.bin"
        _make_input(plain, args.size_mib)
        size = plain.stat().st_size
        py = [sys.executable, "-c", _KCONSOLE]
        ossl_pass = ["-pass", f"file:{key}"]

        def ossl(mode: str, cipher: str, src: Path, dst: Path) -> list[str]:
            flag = ["-d"] if mode == "dec" else ["-salt"]
            return [
                OPENSSL,
                "enc",
                *flag,
                f"-{cipher}",
                *ossl_pass,
                "-in",
                str(src),
                "-out",
                str(dst),
            ]

        kdx, cbc, ctr = work / "plain.kdx", work / "plain.cbc", work / "plain.ctr"
        variants = [
            Variant("kconsole encrypt (KDXENC, AES-256-GCM)", [*py, "encrypt", str(key), str(plain), str(kdx)], kdx),
            Variant("openssl enc -aes-256-cbc", ossl("enc", "aes-256-cbc", plain, cbc), cbc),
            Variant("openssl enc -aes-256-ctr", ossl("enc", "aes-256-ctr", plain, ctr), ctr),
            Variant("kconsole decrypt (KDXENC)", [*py, "decrypt", str(key), str(kdx), str(work / "out.kdx")], work / "out.kdx"),
            Variant("kconsole decrypt (legacy CBC file)", [*py, "decrypt:sha256", str(key), str(cbc), str(work / "out.legacy")], work / "out.legacy"),
            Variant("openssl enc -d -aes-256-cbc", ossl("dec", "aes-256-cbc", cbc, work / "out.cbc"), work / "out.cbc"),
            Variant("openssl enc -d -aes-256-ctr", ossl("dec", "aes-256-ctr", ctr, work / "out.ctr"), work / "out.ctr"),
        ]  # fmt: skip
        results = [_measure(v, args.repeat) for v in variants]

        want = _sha256(plain)
        for v in variants[3:]:
            if _sha256(v.output) != want:
                raise SystemExit(f"{v.name} did not reproduce the input")

        baseline = next(r for r in results if r.name == "openssl enc -aes-256-cbc")
        print(f"{args.size_mib} MiB of random data, page cache warm, median of {args.repeat} runs")
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
