"""Benchmark: listing an S3 location of about 2,000 objects, kconsole's S3Store.list
(ListObjectsV2, paginated at 1,000 keys) against `aws s3 ls --recursive` on the same
endpoint, in the same run.

The endpoint is a moto server on 127.0.0.1 (a fresh port), with dummy credentials.
moto serves one request at a time and slows as a bucket grows, so the absolute figures
are moto's, not S3's: what this measures is the client side, and the ratio. Keys are laid
out as the catalog writes them (`<kind>/<node>/<id>.kdx` and `.kdx.json`).

Measured (median of --repeat rounds, the listers interleaved within each round):
- kconsole, in process, warm client: `await S3Store(location).list()` with its boto3 client
  already made (what a catalog refresh inside the console pays);
- kconsole, in process, new client each time (credentials file read, client built);
- kconsole, new process: `python -c` that imports kconsole, builds the store and lists
  (the same shape of work as the aws CLI command);
- aws CLI: `aws s3 ls --recursive s3://BUCKET/ --endpoint-url URL` (the awscli package from
  PyPI; if `aws` is not on PATH it is installed into a private venv under bench/out/ so the
  project's own boto3 is left alone).

    python bench/bench_s3_list.py [--objects 2000] [--repeat 9]

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kconsole.backups.stores import S3Store  # noqa: E402
from kconsole.site import BACKUP_KINDS, Location  # noqa: E402

BUCKET = "kconsole-bench"
ACCESS, SECRET = "AKIABENCHBENCHBENCH0", "bench-secret-not-a-secret"


def aws_command() -> list[str]:
    """`aws` from PATH, or from a private venv made (once) under bench/out/."""
    found = shutil.which("aws")
    if found:
        return [found]
    env_dir = ROOT / "bench" / "out" / "awscli-venv"
    exe = env_dir / "bin" / "aws"
    if not exe.exists():
        print(f"installing awscli into {env_dir} ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        subprocess.run(
            [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "awscli"],
            check=True,
        )
    return [str(exe)]


def fill(endpoint: str, count: int) -> None:
    """`count` small objects: half backups, half manifests, under kind/node/ prefixes."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
    )
    s3.create_bucket(Bucket=BUCKET)
    keys = []
    for i in range(count // 2):
        kind, node = BACKUP_KINDS[i % len(BACKUP_KINDS)], f"validator{i % 9 + 1}"
        bid = f"{node}_{kind}_2026{(i // 1440) % 12 + 1:02d}{(i // 48) % 28 + 1:02d}T{(i // 2) % 24:02d}{i % 60:02d}00Z"
        keys += [f"{kind}/{node}/{bid}-{i}.kdx", f"{kind}/{node}/{bid}-{i}.kdx.json"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=BUCKET, Key=k, Body=b"x" * 64), keys))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    aws = aws_command()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="kconsole-bench-s3-"))
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        t0 = time.perf_counter()
        fill(endpoint, args.objects)
        print(f"{args.objects} objects put in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        creds = tmp / "credentials"
        creds.write_text(
            f"[default]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n"
        )
        os.chmod(creds, 0o600)
        location = Location(
            "cloud", "s3", bucket=BUCKET, endpoint_url=endpoint, credentials_file=str(creds)
        )
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": ACCESS,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }
        warm = S3Store(location)
        asyncio.run(warm.list())  # build the client once
        script = (
            "import asyncio, sys; sys.path.insert(0, sys.argv[1]); "
            "from kconsole.backups.stores import S3Store; from kconsole.site import Location; "
            "loc = Location('cloud', 's3', bucket=sys.argv[2], endpoint_url=sys.argv[3], "
            "credentials_file=sys.argv[4]); print(len(asyncio.run(S3Store(loc).list())))"
        )

        def kconsole_process() -> int:
            out = subprocess.run(
                [sys.executable, "-c", script, str(ROOT), BUCKET, endpoint, str(creds)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            return int(out.stdout.strip())

        def aws_ls() -> int:
            out = subprocess.run(
                [*aws, "s3", "ls", "--recursive", f"s3://{BUCKET}/", "--endpoint-url", endpoint],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            return len(out.stdout.splitlines())

        listers: list[tuple[str, Callable[[], int]]] = [
            (
                "kconsole S3Store.list, in process, warm client",
                lambda: len(asyncio.run(warm.list())),
            ),
            (
                "kconsole S3Store.list, in process, new client",
                lambda: len(asyncio.run(S3Store(location).list())),
            ),
            ("kconsole S3Store.list, new python process", kconsole_process),
            ("aws s3 ls --recursive (awscli, new process)", aws_ls),
        ]
        # Interleaved, so load from anything else on the machine falls on every lister alike.
        times: dict[str, list[float]] = {name: [] for name, _ in listers}
        found: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, fn in listers:
                t0 = time.perf_counter()
                found[name] = fn()
                times[name].append(time.perf_counter() - t0)
        rows = [(name, statistics.median(times[name]), found[name]) for name, _ in listers]
        counts = {r[2] for r in rows}
        assert counts == {args.objects}, f"the listings disagree: {rows}"
        version = subprocess.run([*aws, "--version"], capture_output=True, text=True, env=env)
        print(
            f"\n{args.objects} objects in one bucket, moto server on loopback, {args.repeat} runs each "
            f"({(version.stdout or version.stderr).split()[0]}, Python {sys.version.split()[0]})\n"
        )
        aws_time = rows[-1][1]
        print("| lister | wall (median) | objects | aws CLI time / this |")
        print("| --- | ---: | ---: | ---: |")
        for name, secs, n in rows:
            print(f"| {name} | {secs * 1000:.0f} ms | {n} | {aws_time / secs:.2f}x |")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
