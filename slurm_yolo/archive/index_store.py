"""The run index in the store (the write side): ``INDEX.jsonl`` kept current under concurrent
writers. The epilog adds runs through it; the catalog (:mod:`slurm_yolo.catalog.index`) reads it.

::

    <index_url>runs/<run_id>.json                 the run's index record (epilog; kept)
    <index_url>pending/<run_id>/<utc>-<rand>.json  an update not yet in INDEX.jsonl
    <index_url>INDEX.jsonl                         every run, one line each, sorted by run ID

Why a ``pending/`` folder: listing 10,000 ``runs/`` records takes seconds, so readers
cannot afford to find new records by listing ``runs/``. Each update is written once under a
*unique* key in ``pending/`` (never overwritten, so deleting it later can never drop a newer
update), then folded into ``INDEX.jsonl`` by a compare-and-swap (``If-Match`` the ETag read,
``If-None-Match: *`` to create). A reader loads ``INDEX.jsonl`` plus whatever is still
pending, so a run is visible as soon as its pending entry exists, even if compaction lost
every race. A record is never lost even on a store whose conditional writes race (moto's
server): there, pending entries are deleted only once they are :data:`PENDING_GRACE_S` old
and ``INDEX.jsonl`` was read back at the ETag we wrote. On a store whose conditional writes
are atomic (AWS S3, SeaweedFS; ``Store.atomic_conditional_writes``) a won
compare-and-swap is final, so the entries it folded in are deleted at once.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from slurm_yolo.archive import layout
from slurm_yolo.store import Store, error_code, split_url, store_error
from slurm_yolo.errors import StoreError

PENDING = "pending/"
PENDING_STAMP = "%Y%m%dT%H%M%S.%fZ"  # pending keys sort by time within a run; parsed back for their age
# Compare-and-swap attempts before giving up (the pending entry keeps the run visible).
MAX_ATTEMPTS = 40
# On a store whose conditional writes are not atomic, a pending update is deleted only once
# it is this old. Such a store (moto's server checks, then writes) can let two writers both
# win, the later one from a listing that missed a fresh update. Every compaction that starts
# after an update is PENDING_GRACE_S old has listed it, so none can drop it any more.
# Generous against clock skew between nodes: it only costs a few extra small objects.
# Atomic stores need no grace (see pending_grace_s).
PENDING_GRACE_S = 300.0
# Another writer got there first. If-Match on a key deleted since we read it: AWS (and moto)
# answer 404 NoSuchKey, SeaweedFS 412; both mean "start over from what is there now".
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
GONE_CODES = {"NoSuchKey", "404"}
# Reads of INDEX.jsonl + pending/ that a compaction interleaved with are retried this often.
CONSISTENT_READ_TRIES = 3

@dataclass(frozen=True)
class Catalog:
    """Where the index is and how to reach the store.

    Attributes:
        store: connection settings.
        index_url: ``s3://bucket/prefix/`` (always ends with ``/``).
    """

    store: Store
    index_url: str

    @property
    def bucket(self) -> str:
        return split_url(self.index_url)[0]

    def key(self, rel: str) -> str:
        """Object key of ``rel`` under the index prefix."""
        return split_url(self.index_url)[1] + rel

def get_object(client: Any, bucket: str, key: str) -> tuple[bytes, str] | None:
    """``(body, etag)`` of an object, ``None`` when it does not exist."""
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
        return obj["Body"].read(), obj["ETag"]
    except Exception as e:  # botocore raises ClientError and connection errors
        if error_code(e) in ("NoSuchKey", "404"):
            return None
        raise store_error("read", f"s3://{bucket}/{key}", e) from e

def parse_jsonl(body: bytes) -> dict[str, dict[str, Any]]:
    """Index lines by run ID (blank and unparsable lines are skipped: one bad line must not hide all runs)."""
    out = {}
    for line in body.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("run_id"):
            out[rec["run_id"]] = rec
    return out

def dump_jsonl(records: Mapping[str, dict[str, Any]]) -> bytes:
    """``INDEX.jsonl``: one compact line per run, sorted by run ID (stable diffs, time order for generated IDs)."""
    return "".join(json.dumps(records[k], sort_keys=True, separators=(",", ":"), default=str) + "\n"
                   for k in sorted(records)).encode()

def list_keys(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under ``prefix`` (``Key``, ``Size``, ``LastModified``, ...), in key order."""
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]
    except Exception as e:
        raise store_error("list", f"s3://{bucket}/{prefix}", e) from e

def read_pending(cat: Catalog, client: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(key, record)`` of every pending update, oldest first within each run."""
    keys = [obj["Key"] for obj in list_keys(client, cat.bucket, cat.key(PENDING))]
    with ThreadPoolExecutor(8) as pool:  # small GETs: latency-bound, so overlap them
        bodies = list(pool.map(lambda k: get_object(client, cat.bucket, k), keys))
    out = []
    for key, got in zip(keys, bodies):
        if got is None:  # compacted and deleted since the listing
            continue
        try:
            rec = json.loads(got[0])
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("run_id"):
            out.append((key, rec))
    return out

def merge(base: Mapping[str, dict[str, Any]], pending: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``base`` updated with the pending records; the later key (newer UTC stamp) wins per run.

    A run ID belongs to the user who indexed it first: an update from another user (two
    users picking the same ``--run-id``) never replaces it, so nobody can take over, or
    hide, someone else's run in the catalog. The epilog sets ``user`` from passwd.
    """
    out = dict(base)
    for _, rec in pending:
        old = out.get(rec["run_id"])
        if old is not None and old.get("user") != rec.get("user"):
            continue
        out[rec["run_id"]] = rec
    return out

def pending_key(cat: Catalog, run_id: str, now: datetime | None = None) -> str:
    """A fresh, never-reused pending key for an update of ``run_id``; sorts by time within the run."""
    now = now or datetime.now(timezone.utc)
    return cat.key(f"{PENDING}{run_id}/{now.strftime(PENDING_STAMP)}-{secrets.token_hex(4)}.json")

def index_owner(store: Store, record_url: str) -> str | None:
    """The ``user`` of the index record at ``record_url`` (``index/runs/<run_id>.json``), or
    ``None`` when there is none yet.

    Raises:
        StoreError: the store could not be read.
    """
    bucket, _, key = record_url.removeprefix("s3://").partition("/")
    got = get_object(store.boto3_client(), bucket, key)
    if got is None:
        return None
    try:
        rec = json.loads(got[0])
    except ValueError:
        return None  # a broken record protects nobody: replace it
    return rec.get("user") if isinstance(rec, dict) else None

def add_to_index(store: Store, index_url: str, record: Mapping[str, Any], *, deadline: float | None = None) -> None:
    """Add or update one run in the index; called by the epilog after it wrote ``runs/<run_id>.json``.

    Writes the record as a pending update (from then on every reader sees it), then
    compacts all pending updates into ``INDEX.jsonl``. Safe to call from any number of
    nodes at once and to repeat (idempotent per record).

    Args:
        store: the store connection.
        index_url: ``s3://bucket/prefix/`` of the index (the site's ``index_url``).
        record: the index line, :func:`slurm_yolo.archive.layout.index_record` of ``run.json``.
        deadline: a ``time.monotonic()`` value after which compaction stops retrying (the
            epilog's time budget); the update stays pending, and visible.

    Raises:
        StoreError: the pending update could not be written (nothing changed: retry later),
            or compaction lost :data:`MAX_ATTEMPTS` races (the run is visible anyway;
            ``slurm-yolo index compact`` finishes it).
    """
    cat = Catalog(store, index_url.rstrip("/") + "/")
    client = store.boto3_client()
    key = pending_key(cat, str(record["run_id"]))
    body = json.dumps(dict(record), sort_keys=True, default=str).encode()
    try:
        client.put_object(Bucket=cat.bucket, Key=key, Body=body, ContentType="application/json")
    except Exception as e:
        raise store_error("write index update", f"s3://{cat.bucket}/{key}", e) from e
    update_index(cat, merge, client=client, deadline=deadline)

def pending_grace_s(store: Store) -> float:
    """How old a folded-in pending update must be before it is deleted: 0 on a store whose
    conditional writes are atomic, else :data:`PENDING_GRACE_S`."""
    return 0.0 if store.atomic_conditional_writes else PENDING_GRACE_S

def compact(cat: Catalog, *, grace_s: float | None = None) -> int:
    """Fold every pending update into ``INDEX.jsonl``; return how many runs it lists.

    Pending updates younger than ``grace_s`` (default: :func:`pending_grace_s` of the store)
    stay, still visible.
    """
    return update_index(cat, merge, grace_s=grace_s)

def remove_from_index(cat: Catalog, run_ids: Iterable[str]) -> int:
    """Drop runs from ``INDEX.jsonl`` and pending updates (after their objects were deleted)."""
    gone = set(run_ids)
    client = cat.store.boto3_client()
    n = update_index(cat, lambda base, pending: {k: v for k, v in merge(base, pending).items() if k not in gone},
                     client=client)
    # Their pending updates go whatever their age: readers would otherwise bring them back.
    _delete_keys(client, cat.bucket, [k for k, rec in read_pending(cat, client) if rec["run_id"] in gone])
    return n

Records = dict[str, dict[str, Any]]


def update_index(cat: Catalog, transform: Callable[[Records, list[tuple[str, dict[str, Any]]]], Records],
                 *, client: Any = None, sleep: Callable[[float], None] = time.sleep, deadline: float | None = None,
                 grace_s: float | None = None, now: datetime | None = None) -> int:
    """Compare-and-swap ``INDEX.jsonl`` to ``transform(current lines, pending updates)``.

    Loop: read INDEX.jsonl and its ETag, read the pending updates, put the new content with
    ``If-Match`` (``If-None-Match: *`` when there is none yet). On 412/409 another writer got
    there first (also on 404 to ``If-Match``: ``INDEX.jsonl`` was deleted since we read it):
    back off with full jitter and start over from its version. After a successful put, the
    pending updates older than ``grace_s`` are deleted. On a store whose conditional writes
    are atomic, ``grace_s`` defaults to 0 and a won put is final: every later version was
    written by a writer that read ours. Otherwise ``grace_s`` defaults to
    :data:`PENDING_GRACE_S`, younger updates stay for a later compaction, and the older ones
    are deleted only if ``INDEX.jsonl`` still has our ETag: a newer version (from a writer
    that read ours) also contains them.

    Returns:
        the number of runs in the ``INDEX.jsonl`` written.

    Raises:
        StoreError: unreachable store, or still conflicting after :data:`MAX_ATTEMPTS` tries
            or at ``deadline`` (a ``time.monotonic()`` value).
    """
    client = client or cat.store.boto3_client()
    key = cat.key(layout.INDEX_JSONL)
    url = f"s3://{cat.bucket}/{key}"
    grace_s = pending_grace_s(cat.store) if grace_s is None else grace_s
    atomic = cat.store.atomic_conditional_writes
    for attempt in range(MAX_ATTEMPTS):
        if deadline is not None and time.monotonic() > deadline:
            break
        got = get_object(client, cat.bucket, key)
        current = parse_jsonl(got[0]) if got else {}
        pending = read_pending(cat, client)
        new = transform(current, pending)
        body = dump_jsonl(new)
        cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=grace_s)
        settled = [k for k, _ in pending if _pending_stamp(k) <= cutoff]
        if got is not None and body == got[0]:  # already committed: only clean up
            _delete_keys(client, cat.bucket, settled)
            return len(new)
        condition = {"IfMatch": got[1]} if got else {"IfNoneMatch": "*"}
        try:
            put = client.put_object(Bucket=cat.bucket, Key=key, Body=body, ContentType="application/x-ndjson",
                                    **condition)
        except Exception as e:
            code = error_code(e)
            if code not in CONFLICT_CODES and not (got is not None and code in GONE_CODES):
                raise store_error("write", url, e) from e
            sleep(random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))
            continue
        if settled and not atomic and etag_now(client, cat.bucket, key) != put["ETag"].strip('"'):
            continue  # replaced since: re-read, and delete pending updates only once we see them committed
        _delete_keys(client, cat.bucket, settled)
        return len(new)
    raise StoreError(f"{url} stayed busy (other writers won {MAX_ATTEMPTS} tries or until the deadline); "
                     "the updates stay pending and visible: run `slurm-yolo index compact` later")

def _pending_stamp(key: str) -> datetime:
    """When a pending update was written, from its key (:func:`pending_key`); unparsable → long ago."""
    try:
        stamp = key.rsplit("/", 1)[-1].split("-", 1)[0]
        return datetime.strptime(stamp, PENDING_STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def etag_now(client: Any, bucket: str, key: str) -> str | None:
    try:
        return str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    except Exception as e:
        if error_code(e) in ("NoSuchKey", "404"):
            return None
        raise store_error("read", f"s3://{bucket}/{key}", e) from e

def _delete_keys(client: Any, bucket: str, keys: Sequence[str]) -> None:
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        chunk = keys[i:i + 1000]
        try:
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
        except Exception as e:
            raise store_error("delete", f"s3://{bucket}/{chunk[0]}", e) from e
