"""The shared store: the site's S3 location used as a compare-and-swap register.

Layout under the `[site] shared` prefix (default `kconsole-shared`)::

    <stream>/journal/00000001.json   one batch of records: {"console", "records": [...]}
    runs/<run-id>/runbook.toml       the runbook exactly as it ran
    runs/<run-id>/lease.json         who drives the run (see `kconsole.shared.lease`)

A stream is `runs/<run-id>` for a run's journal, or any other name (`incidents/<id>`).
Batches are created with `If-None-Match: *`: two writers can never both write batch N,
so a stream is an ordered log no matter how many consoles look at it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from kconsole.errors import OperationFailed, UsageError
from kconsole.site import Location, Site

DEFAULT_PREFIX = "kconsole-shared"
_CLIENTS: dict[tuple[Location, int], Any] = {}
_CLIENTS_LOCK = threading.Lock()


class StoreUnavailable(OperationFailed):
    """The shared store could not be reached or answered with an error."""


@dataclass(frozen=True)
class StoredObject:
    """An object read from the store, with the store's own clock at the time of reading."""

    body: bytes
    etag: str
    last_modified: datetime
    store_now: datetime
    """The response's `Date` header: the store's clock, not this console's."""


def console_name(site: Site) -> str:
    """Which console this is, as other consoles see it: host and state directory."""
    return f"{socket.gethostname()}:{site.state_dir}"


class SharedStore:
    """Conditional reads and writes on the shared S3 prefix (blocking: call from a thread)."""

    def __init__(self, location: Location, prefix: str = DEFAULT_PREFIX) -> None:
        self.location = location
        self.prefix = "/".join(p for p in (location.prefix.strip("/"), prefix.strip("/")) if p)
        self._client: Any = None

    @classmethod
    def for_site(cls, site: Site) -> SharedStore | None:
        """The site's shared store, or None when `[site] shared` is not set."""
        if not site.shared:
            return None
        name, _, prefix = site.shared.partition("/")
        location = site.locations.get(name)
        if location is None or location.type != "s3":
            raise UsageError(f"[site] shared names {name!r}, which is not an s3 location.")
        return cls(location, prefix or DEFAULT_PREFIX)

    def describe(self) -> str:
        """Where the store is, for messages."""
        return f"s3://{self.location.bucket}/{self.prefix}"

    def client(self) -> Any:
        """A boto3 client with short timeouts and no retries: the callers retry themselves,
        in the background, and a dead store must cost a run seconds, not minutes. Built
        once per location and process (boto3 clients are thread-safe; building one takes
        about half a second here, which a run's start should not pay every time)."""
        if self._client is None:
            key = (self.location, os.getpid())
            with _CLIENTS_LOCK:
                if key not in _CLIENTS:
                    _CLIENTS[key] = self._new_client()
                self._client = _CLIENTS[key]
        return self._client

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        from kconsole.backups.stores import read_credentials

        kwargs: dict[str, Any] = {"region_name": self.location.region or "us-east-1"}
        if self.location.endpoint_url:
            kwargs["endpoint_url"] = self.location.endpoint_url
        if self.location.credentials_file:
            kwargs.update(
                read_credentials(Path(self.location.credentials_file), self.location.profile)
            )
        cfg = Config(
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 1, "mode": "standard"},
        )
        session = (
            boto3.session.Session(profile_name=self.location.profile or None)
            if self.location.profile and not self.location.credentials_file
            else boto3.session.Session()
        )
        return session.client("s3", config=cfg, **kwargs)

    def key(self, name: str) -> str:
        """The full S3 key of a shared object."""
        return f"{self.prefix}/{name}" if self.prefix else name

    # -- primitives ------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.location.bucket, **kwargs)
        except ClientError:
            raise
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(
                f"shared store {self.describe()}: {what} failed: {exc.__class__.__name__}: {exc}."
            ) from None

    @staticmethod
    def _code(exc: Any) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    def _unavailable(self, what: str, exc: Any) -> StoreUnavailable:
        err = exc.response.get("Error", {})
        return StoreUnavailable(
            f"shared store {self.describe()}: {what} failed: "
            f"{err.get('Code', '?')} {err.get('Message', '')}".rstrip()
            + "."
        )

    def create(self, name: str, body: bytes) -> str | None:
        """Write `name` only if it does not exist (`If-None-Match: *`): its ETag, or None
        if it already existed."""
        from botocore.exceptions import ClientError

        try:
            resp = self._call(
                f"creating {name}",
                self.client().put_object,
                Key=self.key(name),
                Body=body,
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return None
            raise self._unavailable(f"creating {name}", exc) from None
        return str(resp["ETag"])

    def replace(self, name: str, body: bytes, etag: str) -> str | None:
        """Overwrite `name` only if it is still at `etag` (`If-Match`): the new ETag, or
        None if someone changed (or deleted) it meanwhile."""
        from botocore.exceptions import ClientError

        try:
            resp = self._call(
                f"updating {name}",
                self.client().put_object,
                Key=self.key(name),
                Body=body,
                IfMatch=etag,
            )
        except ClientError as exc:
            if self._code(exc) in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "NoSuchKey",
                "412",
                "404",
            ):
                return None
            raise self._unavailable(f"updating {name}", exc) from None
        return str(resp["ETag"])

    def read(self, name: str) -> StoredObject | None:
        """The object, its ETag and timestamps, or None if there is none."""
        from botocore.exceptions import ClientError

        try:
            resp = self._call(f"reading {name}", self.client().get_object, Key=self.key(name))
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._unavailable(f"reading {name}", exc) from None
        body = resp["Body"].read()
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date", "")
        last_modified = resp["LastModified"]
        try:
            store_now = parsedate_to_datetime(date) if date else last_modified
        except (TypeError, ValueError):
            store_now = last_modified
        return StoredObject(body, str(resp["ETag"]), last_modified, store_now)

    def names(self, under: str, delimiter: str = "") -> list[str]:
        """Names below `under/` (with a delimiter: the next level's sub-prefixes)."""
        from botocore.exceptions import ClientError

        prefix = self.key(under.rstrip("/") + "/")
        out: list[str] = []
        kwargs: dict[str, Any] = {"Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            while True:
                resp = self._call(f"listing {under}", self.client().list_objects_v2, **kwargs)
                out += [o["Key"][len(prefix) :] for o in resp.get("Contents", [])]
                out += [
                    p["Prefix"][len(prefix) :].rstrip("/") for p in resp.get("CommonPrefixes", [])
                ]
                if not resp.get("IsTruncated"):
                    return out
                kwargs["ContinuationToken"] = resp["NextContinuationToken"]
        except ClientError as exc:
            raise self._unavailable(f"listing {under}", exc) from None

    # -- streams: ordered logs of records --------------------------------------------------

    def append(
        self,
        stream: str,
        records: list[dict[str, Any]],
        batch: int,
        console: str = "",
        header: dict[str, Any] | None = None,
    ) -> bool:
        """Write `records` as batch number `batch` of `stream` (with `header`'s keys beside
        them); False if that batch exists already: another console wrote it, and this one
        is no longer the stream's writer."""
        body = json.dumps(
            {**(header or {}), "console": console, "pid": os.getpid(), "records": records},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
        return self.create(f"{stream}/journal/{batch:08d}.json", body) is not None

    def read_stream(self, stream: str) -> StreamView:
        """Every record of `stream` in order, up to the first missing batch."""
        names = sorted(n for n in self.names(f"{stream}/journal") if n.endswith(".json"))
        view = StreamView()
        for name in names:
            if name != f"{view.batches + 1:08d}.json":
                break  # a gap would reorder records: stop at the last contiguous batch
            obj = self.read(f"{stream}/journal/{name}")
            if obj is None:
                break
            batch = json.loads(obj.body)
            if view.batches == 0:
                view.header = {k: v for k, v in batch.items() if k != "records"}
            view.records += list(batch.get("records", []))
            view.console = str(batch.get("console", "")) or view.console
            view.batches += 1
        return view


@dataclass
class StreamView:
    """A stream as read from the store."""

    records: list[dict[str, Any]] = field(default_factory=list)
    batches: int = 0
    console: str = ""
    """The console that wrote the last batch."""
    header: dict[str, Any] = field(default_factory=dict)
    """What the first batch carried beside its records (a run's runbook text)."""
