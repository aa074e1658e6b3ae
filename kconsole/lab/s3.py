"""The lab's S3-compatible endpoint: moto's server on loopback, behind a fault relay.

The bucket `kaldrix-backups` is created with Object Lock enabled (which turns versioning
on); no default retention is set, so the console decides per object. moto keeps objects
in memory: the cloud location is empty again after the lab restarts. Several labs in one
process share moto's memory (tests: use distinct keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kconsole.errors import OperationFailed
from kconsole.lab.relay import Link, Relay

BUCKET = "kaldrix-backups"
REGION = "us-east-1"


class S3Endpoint:
    """moto S3 on 127.0.0.1; the console talks to `endpoint_url` (the relay)."""

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.link = Link()
        self.object_lock = False
        self.internal_port = 0
        self.port = 0
        self._moto: Any = None
        self._relay: Relay | None = None

    @property
    def endpoint_url(self) -> str:
        """What site.toml's `[locations.cloud] endpoint_url` names."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start moto (in its thread), create the bucket, open the relay."""
        await asyncio.to_thread(self._start_moto)
        self._relay = Relay(self.internal_port, lambda: self.link)
        self.port = await self._relay.start()

    def _start_moto(self) -> None:
        # werkzeug logs every request to stderr unless told otherwise.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise OperationFailed(
                "the lab's S3 endpoint needs moto; install kconsole[lab] "
                "(pip install 'kconsole[lab]')."
            ) from None

        server = _serialised(ThreadedMotoServer)(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._moto = server
        self.internal_port = int(server.get_host_and_port()[1])
        self._create_bucket()

    def _create_bucket(self) -> None:
        from botocore.exceptions import ClientError

        s3 = self.client(internal=True)
        try:
            s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        with contextlib.suppress(ClientError):
            lock = s3.get_object_lock_configuration(Bucket=BUCKET)
            self.object_lock = (
                lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            )
        if not self.object_lock:
            s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})

    def client(self, internal: bool = False) -> Any:
        """A boto3 S3 client with the lab's credentials. `internal` bypasses the fault relay
        (the lab's own calls must never wait on the event loop that runs the relay)."""
        import boto3
        from botocore.config import Config

        port = self.internal_port if internal else self.port
        return boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )

    def drop_connections(self) -> None:
        """Cut open connections (after the S3 fault changed)."""
        if self._relay is not None:
            self._relay.drop_all()

    async def close(self) -> None:
        """Stop the relay and moto."""
        if self._relay is not None:
            await self._relay.close()
        if self._moto is not None:
            server, self._moto = self._moto, None
            await asyncio.to_thread(server.stop)


def _serialised(server_cls: Any) -> Any:
    """moto's threaded server, answering one request at a time.

    moto 5.2.1 checks `If-None-Match: *` and `If-Match` and then writes, in request
    threads with no lock between the two, so nothing stops two racing conditional PUTs
    from both succeeding (not seen in 300 tries here: the window is small, not closed).
    Real S3 decides them atomically and the shared run store's leases rely on that, so
    the lab serialises requests, as a single-threaded server would.
    """
    import threading

    from werkzeug.serving import make_server

    class SerialisedMotoServer(server_cls):  # type: ignore[misc,valid-type]
        def _server_entry(self) -> None:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                create_backend_app,
            )

            app = DomainDispatcherApplication(create_backend_app)
            one_at_a_time = threading.Lock()

            def serialised(environ: Any, start_response: Any) -> Any:
                with one_at_a_time:
                    # Drain the body inside the lock: werkzeug streams it lazily.
                    return list(app(environ, start_response))

            self._server = make_server(self._ip_address, self._port, serialised, True)
            self._server_ready_event.set()
            self._server.serve_forever()

    return SerialisedMotoServer
