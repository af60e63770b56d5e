"""The run index in the store, the epilog's side: each run's record, written once per update
and never compacted here. Compaction into quarterly Parquet files is
:mod:`slurm_yolo.archive.index_compact`; the catalog (:mod:`slurm_yolo.catalog.scan`) reads both.

::

    <index_url>runs/<run_id>.json                  the run's record (the epilog; kept; owner check)
    <index_url>pending/<run_id>/<user>/<utc>-<rand>.json   an update not compacted yet, by <user>
    <index_url>parquet/quarter=YYYY-Qn/runs.parquet   compacted records (index_format)

An epilog's index step costs the same at 10 runs and at 10 million: it reads the run's own
record (who owns the run ID), writes it, and writes one pending update under a *unique* key
(never overwritten, so deleting it after compaction can never drop a newer update). Nothing
it reads or writes grows with the site's history. A reader lists ``pending/`` (only what
arrived since the last compaction) before it reads the quarters, so a run is visible from the
moment its pending update exists, whether or not a compaction folded it in meanwhile.

The ``<user>`` part of a pending key says who wrote it: a bucket policy lets a user write only
``pending/*/<their name>/*`` (docs/admin.md), and compaction refuses an update whose record
names anyone else (:func:`refusal`). Keys without it (``pending/<run_id>/<utc>-<rand>.json``)
come from epilogs older than this layout, written with the site's credentials.

Before this layout the index was one ``INDEX.jsonl`` that every epilog rewrote (see
``slurm-yolo index migrate``); its line format is the record format here.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from slurm_yolo.archive import layout, s5cmd
from slurm_yolo.archive.index_location import IndexLocation
from slurm_yolo.names import NAME_RE
from slurm_yolo.store import Store, error_code, store_error

PENDING = "pending/"
PENDING_STAMP = "%Y%m%dT%H%M%S.%fZ"  # pending keys sort by time within a run; parsed back for their age
# The index's single file before the quarterly Parquet files (``slurm-yolo index migrate``).
LEGACY_JSONL = "INDEX.jsonl"
# On a store whose conditional writes are not atomic, a pending update is deleted only once
# it is this old. Such a store (moto's server checks, then writes) can let two compactions
# both win, the later one from a listing that missed a fresh update. Every compaction that
# starts after an update is PENDING_GRACE_S old has listed it, so none can drop it any more.
# Generous against clock skew between nodes: it only costs a few extra small objects.
# Atomic stores need no grace (see pending_grace_s).
PENDING_GRACE_S = 300.0

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
    """The old ``INDEX.jsonl``'s records by run ID, one per line (blank and unparsable lines are
    skipped: one bad line must not hide all runs)."""
    out = {}
    for text in body.splitlines():
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("run_id"):
            out[record["run_id"]] = record
    return out

def list_keys(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under ``prefix`` (``Key``, ``Size``, ``LastModified``, ...), in key order."""
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]
    except Exception as e:
        raise store_error("list", f"s3://{bucket}/{prefix}", e) from e

# Pending updates read at once by one reader. They are small objects, so reading them is bound
# by round trips: overlapping many is what makes 1,000 of them take a second, not a minute
# (benchmarks/bench_index.py, "pending reads"). The client's connection pool
# (slurm_yolo.store.MAX_POOL) bounds how many actually run in parallel.
PENDING_READERS = 32


def read_pending(cat: IndexLocation, client: Any, *, writers_checked: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """``(key, record)`` of every pending update, oldest first within each run: one listing,
    then the GETs :data:`PENDING_READERS` at a time (``writers_checked``: see :func:`parse_pending`)."""
    keys = [obj["Key"] for obj in list_keys(client, cat.bucket, cat.key(PENDING))]
    return parse_pending(keys, get_many(client, cat.bucket, keys), writers_checked=writers_checked)


def get_many(client: Any, bucket: str, keys: Sequence[str]) -> list[tuple[bytes, str] | None]:
    """:func:`get_object` of each key, :data:`PENDING_READERS` at a time, in the keys' order."""
    if len(keys) < 2:
        return [get_object(client, bucket, k) for k in keys]
    with ThreadPoolExecutor(min(PENDING_READERS, len(keys))) as pool:
        return list(pool.map(lambda k: get_object(client, bucket, k), keys))


def read_pending_s5cmd(cat: IndexLocation) -> list[tuple[str, dict[str, Any]]]:
    """:func:`read_pending` by one ``s5cmd cp 'pending/*' DIR`` (its listing and parallel GETs
    in Go) instead of boto3; measured against it in benchmarks/bench_index.py.

    Raises:
        StoreError: s5cmd failed (nothing pending is not a failure).
    """
    prefix = cat.key(PENDING)
    with tempfile.TemporaryDirectory(prefix="slurm-yolo-pending-") as tmp:
        result = s5cmd.run(s5cmd.base_argv(cat.store) + ["cp", f"s3://{cat.bucket}/{prefix}*", tmp + "/"],
                           cat.store, timeout=300)
        s5cmd.check_s5cmd(result, f"read the pending updates s3://{cat.bucket}/{prefix}", allow_empty=True)
        keys, bodies = [], []
        for root, _, files in os.walk(tmp):
            for name in files:
                path = os.path.join(root, name)
                keys.append(prefix + os.path.relpath(path, tmp))
                with open(path, "rb") as f:
                    bodies.append((f.read(), ""))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return parse_pending([keys[i] for i in order], [bodies[i] for i in order])


def parse_pending(keys: Sequence[str], bodies: Sequence[tuple[bytes, str] | None], *,
                  writers_checked: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """``(key, record)`` of the pending updates read; the vanished (``None``: compacted and
    deleted since the listing) and unreadable ones left out, and, with ``writers_checked``,
    those whose record names another user than the one whose part of ``pending/`` holds it
    (:func:`key_user`): no reader takes one user's word for another's run. Compaction reads
    them all, to refuse and move them aside."""
    out = []
    for key, got in zip(keys, bodies):
        if got is None:
            continue
        try:
            rec = json.loads(got[0])
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("run_id"):
            writer = key_user(key)
            if not writers_checked or writer is None or writer == rec.get("user"):
                out.append((key, rec))
    return out


def key_parts(key: str, pending_prefix: str | None = None) -> list[str]:
    """The parts of a pending key after ``pending_prefix`` (the index's ``.../pending/``; by
    default the first ``pending/`` part of the key): ``[run_id, user, file]`` or, from an
    older epilog, ``[run_id, file]``."""
    if pending_prefix is not None and key.startswith(pending_prefix):
        rel = key[len(pending_prefix):]
    elif key.startswith(PENDING):
        rel = key[len(PENDING):]
    else:
        rel = key.split("/" + PENDING, 1)[-1]
    return rel.split("/")


def key_user(key: str, pending_prefix: str | None = None) -> str | None:
    """Who wrote a pending update, from its key; ``None`` for the older layout without a user part."""
    parts = key_parts(key, pending_prefix)
    return parts[1] if len(parts) == 3 else None


def refusal(key: str, rec: Mapping[str, Any], allowed_prefix: str | None,
            pending_prefix: str | None = None) -> str | None:
    """Why compaction must not fold this pending update in (``None``: nothing against it).

    A pending update is written with the credentials of whoever ran the job (the site's for
    an epilog, the user's own in user mode). It may speak only for its writer: its key's
    user part must be the user its record names, and its archive URL must lie under that
    user's part of the site's ``allowed_prefix``. (Whether the run ID already belongs to
    someone else needs the quarter: :func:`slurm_yolo.archive.index_compact.fold` checks it.)
    """
    parts = key_parts(key, pending_prefix)
    user = rec.get("user")
    if len(parts) not in (2, 3) or not all(parts):
        return "its key is not pending/<run_id>/<user>/<file>"
    if parts[0] != rec.get("run_id"):
        return f"it lies under pending/{parts[0]}/ but is for run {rec.get('run_id')}"
    if len(parts) == 3 and parts[1] != user:
        return f"it was written under {parts[1]}'s part of pending/ but names user {user}"
    url = rec.get("archive_url")
    if allowed_prefix and url:
        if not isinstance(user, str) or not NAME_RE.fullmatch(user):
            return f"its archive URL {url} names no valid user to check it against"
        mine = layout.user_prefix(allowed_prefix, user)
        if not isinstance(url, str) or not layout.is_under(url, mine):
            return f"its archive URL {url} lies outside {user}'s prefix {mine}"
    return None


def newer(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` replaces ``old`` (two versions of the same run's record).

    A run ID belongs to the user who indexed it first: another user's record (two users
    picking the same ``--run-id``) never replaces it, so nobody can take over, or hide,
    someone else's run in the catalog (the epilog sets ``user`` from passwd). Between
    versions of one user the later ``indexed_at`` wins, whatever order compactions and
    readers see them in; a record without one (written before the field existed) loses to
    one with it, and a tie goes to the newcomer (indexing the same version twice is harmless).
    """
    if old is None:
        return True
    if old.get("user") != new.get("user"):
        return False
    return str(new.get("indexed_at") or "") >= str(old.get("indexed_at") or "")


def stamp(now: datetime | None = None) -> str:
    """An ``indexed_at`` value: ISO UTC with microseconds (sorts as text)."""
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pending_key(cat: IndexLocation, run_id: str, now: datetime | None = None, user: str | None = None) -> str:
    """A fresh, never-reused pending key for an update of ``run_id`` by ``user``; sorts by time
    within the run and user. Without a (valid) user: the older layout, no user part."""
    now = now or datetime.now(timezone.utc)
    who = f"{user}/" if isinstance(user, str) and NAME_RE.fullmatch(user) else ""
    return cat.key(f"{PENDING}{run_id}/{who}{now.strftime(PENDING_STAMP)}-{secrets.token_hex(4)}.json")

def _owner(body: bytes) -> str | None:
    try:
        rec = json.loads(body)
    except ValueError:
        return None  # a broken record protects nobody: replace it
    return rec.get("user") if isinstance(rec, dict) else None


def index_run(store: Store, index_url: str, record: Mapping[str, Any], *, now: datetime | None = None) -> str | None:
    """The epilog's whole index step: check who owns the run ID, write ``runs/<run_id>.json``
    and the pending update (:func:`add_to_index`). Three small requests on one connection,
    whatever the index's size.

    Returns:
        ``None`` when indexed; the other user's name when the run ID is theirs in the index
        (nothing written: two users picked the same ``--run-id``).

    Raises:
        StoreError: the store could not be read or written (retry later; idempotent).
    """
    cat = IndexLocation.at(store, index_url)
    client = store.boto3_client()
    key = cat.key(layout.index_key(str(record["run_id"])))
    got = get_object(client, cat.bucket, key)
    owner = None if got is None else _owner(got[0])
    if owner is not None and owner != record.get("user"):
        return owner
    try:
        client.put_object(Bucket=cat.bucket, Key=key, Body=json.dumps(dict(record), sort_keys=True, default=str).encode(),
                          ContentType="application/json")
    except Exception as e:  # botocore raises ClientError and connection errors
        raise store_error("write index record", f"s3://{cat.bucket}/{key}", e) from e
    add_to_index(store, index_url, record, now=now, client=client)
    return None


def add_to_index(store: Store, index_url: str, record: Mapping[str, Any], *, now: datetime | None = None,
                 client: Any = None) -> str:
    """Add or update one run in the index: one small write, whatever the index's size.

    The epilog calls it after it wrote ``runs/<run_id>.json``. The record goes under a fresh
    pending key, stamped with ``indexed_at``; from then on every reader sees it, and a later
    compaction (the drain timer, ``slurm-yolo index compact``) folds it into its quarter.
    Safe from any number of nodes at once and to repeat.

    Args:
        store: the store connection.
        index_url: ``s3://bucket/prefix/`` of the index (the site's ``index_url``).
        record: the index record, :func:`slurm_yolo.archive.layout.index_record` of ``run.json``.
        now: the time to stamp (tests); default now.
        client: a boto3 client to reuse.

    Returns:
        the pending key written.

    Raises:
        StoreError: the update could not be written (nothing changed: retry later).
    """
    cat = IndexLocation.at(store, index_url)
    now = now or datetime.now(timezone.utc)
    key = pending_key(cat, str(record["run_id"]), now, record.get("user"))
    body = json.dumps({**record, "indexed_at": stamp(now)}, sort_keys=True, default=str).encode()
    try:
        (client or store.boto3_client()).put_object(Bucket=cat.bucket, Key=key, Body=body,
                                                    ContentType="application/json")
    except Exception as e:  # botocore raises ClientError and connection errors
        raise store_error("write index update", f"s3://{cat.bucket}/{key}", e) from e
    return key


def pending_grace_s(store: Store) -> float:
    """How old a folded-in pending update must be before it is deleted: 0 on a store whose
    conditional writes are atomic, else :data:`PENDING_GRACE_S`."""
    return 0.0 if store.atomic_conditional_writes else PENDING_GRACE_S

def pending_stamp(key: str) -> datetime:
    """When a pending update was written, from its key (:func:`pending_key`); unparsable → long ago."""
    try:
        text = key.rsplit("/", 1)[-1].split("-", 1)[0]
        return datetime.strptime(text, PENDING_STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def etag_now(client: Any, bucket: str, key: str) -> str | None:
    try:
        return str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    except Exception as e:
        if error_code(e) in ("NoSuchKey", "404"):
            return None
        raise store_error("read", f"s3://{bucket}/{key}", e) from e

def delete_keys(client: Any, bucket: str, keys: Sequence[str]) -> None:
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        chunk = keys[i:i + 1000]
        try:
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
        except Exception as e:
            raise store_error("delete", f"s3://{bucket}/{chunk[0]}", e) from e
