"""The compaction lease: one object in the store that lets one compaction run while the others skip.

Every node's drain timer compacts the index. Compaction is correct with any number of
compactors at once (compare-and-swap per quarter, :mod:`slurm_yolo.archive.index_compact`),
but each one reads every pending update and every quarter it touches, so a thousand nodes
would do a thousand times the work of one. The lease makes that work one compaction's::

    <index_url>lease/compact.json   {"holder": "...", "ttl_s": 120, "released": false}

- **Skip: one request.** A drain GETs the lease; held and not expired, it skips.
- **Nothing to do: one more.** Free, the drain lists ``pending/`` (one key at most): nothing
  pending, it stops there without writing anything.
- **Take: one more.** Missing: ``PUT If-None-Match: *``. Expired or released: ``PUT If-Match:
  <the ETag just read>``. Of any number of racing takers the store lets exactly one win (on a
  store whose conditional writes are atomic); the others get 412 and skip.
- **Expiry is judged by the store's clock**: the lease's ``LastModified`` (stamped by the store
  when it was written) plus its ``ttl_s``, against the ``Date`` header of the same GET's
  response (the store's clock now). Node clocks never enter, so skew between nodes cannot
  extend or cut a lease. Both have one-second resolution: a lease lasts ``ttl_s`` ± 1 s.
  Only where a store sends no ``Date`` header is the local clock used, and then a lease
  counts as expired only :data:`MAX_SKEW_S` after its end.
- **Renew** (a long round) and **release** (round done) are ``PUT If-Match`` of the holder's
  own ETag; a release writes ``released: true`` rather than deleting, so it can never remove
  a lease someone else took over meanwhile.
- **A holder that dies** leaves its lease to expire; compaction under compare-and-swap loses
  nothing halfway (the pending updates it did not delete are folded again by the next holder).

The lease only saves work, it never guards correctness: where a store refuses it (no
conditional writes, no permission for ``lease/``, a store error), compaction runs without
it, as before, and says so.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from slurm_yolo.archive.index_location import IndexLocation
from slurm_yolo.store import error_code

LEASE_KEY = "lease/compact.json"
# Long enough for a round over thousands of pending updates and large quarters (the holder
# renews it between quarters anyway); short enough that a dead holder's lease frees the
# index within two drain ticks.
LEASE_TTL_S = 120.0
# Allowance for a clock difference between this node and the store, used only where the
# store's response carries no Date header.
MAX_SKEW_S = 60.0
# Another taker won (SeaweedFS and AWS answer 412; 409 is AWS's concurrent-conditional code;
# If-Match on a key deleted since: 404 on AWS and moto).
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey", "404"}


@dataclass(frozen=True)
class Lease:
    """A lease this process holds.

    Attributes:
        key: the lease object's key.
        etag: its ETag as we wrote it (the condition of our renew and release).
        holder: who we are (``host:pid:random``), written into the lease.
        ttl_s: how long it lasts after each write.
        written: ``time.monotonic()`` of our last write (when to renew).
    """

    key: str
    etag: str
    holder: str
    ttl_s: float
    written: float


@dataclass(frozen=True)
class Busy:
    """Another compaction holds the lease: skip this round.

    Attributes:
        holder: the holder named in the lease ("" when a racing taker just won it).
        left_s: seconds it still has by the store's clock (``None``: not known).
    """

    holder: str
    left_s: float | None


@dataclass(frozen=True)
class Unavailable:
    """The lease could not be used (no permission, no conditional writes, a store error):
    compact without it.

    Attributes:
        reason: one line saying why.
    """

    reason: str


def holder_name() -> str:
    """Who this compaction is, as written into the lease (for people reading it, not for logic)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def body(holder: str, ttl_s: float, *, released: bool = False) -> bytes:
    """The lease object's content."""
    return json.dumps({"holder": holder, "ttl_s": ttl_s, "released": released}, sort_keys=True).encode()


def parse(text: bytes) -> tuple[str, float, bool]:
    """``(holder, ttl_s, released)`` of a lease body; a broken body is an expired lease."""
    try:
        got = json.loads(text)
        return str(got.get("holder") or ""), float(got["ttl_s"]), bool(got.get("released"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return "", 0.0, True


def left_s(modified: datetime, ttl_s: float, server_date: str | None, now: datetime | None = None) -> float:
    """Seconds a lease written at ``modified`` (the store's ``LastModified``) still has.

    Judged by the store's clock (its response ``Date`` header) when it sent one, else by the
    local clock less :data:`MAX_SKEW_S`.
    """
    store_now = None
    if server_date:
        try:
            store_now = parsedate_to_datetime(server_date)
        except (TypeError, ValueError):
            store_now = None
    if store_now is None:
        local = now or datetime.now(timezone.utc)
        return (modified - local).total_seconds() + ttl_s + MAX_SKEW_S
    return (modified - store_now).total_seconds() + ttl_s


@dataclass(frozen=True)
class Free:
    """Nobody holds the lease: it may be taken with ``condition`` (the PUT's precondition)."""

    condition: tuple[tuple[str, str], ...]


def look(cat: IndexLocation, client: Any) -> Free | Busy | Unavailable:
    """Whether the lease is held, by one GET (a skipping drain's whole cost)."""
    key = cat.key(LEASE_KEY)
    try:
        got = client.get_object(Bucket=cat.bucket, Key=key)
        text = got["Body"].read()
    except Exception as e:  # botocore raises ClientError and connection errors
        if error_code(e) not in ("NoSuchKey", "404"):
            return Unavailable(f"cannot read the lease s3://{cat.bucket}/{key}: {error_code(e) or type(e).__name__}")
        return Free((("IfNoneMatch", "*"),))
    other, their_ttl, released = parse(text)
    if not released:
        left = left_s(got["LastModified"], their_ttl, got["ResponseMetadata"]["HTTPHeaders"].get("date"))
        if left > 0:
            return Busy(other, left)
    return Free((("IfMatch", got["ETag"]),))


def take(cat: IndexLocation, client: Any, free: Free, *, holder: str | None = None,
         ttl_s: float = LEASE_TTL_S) -> Lease | Busy | Unavailable:
    """Take a lease :func:`look` found free: one conditional PUT; :class:`Busy` when another
    taker won the race."""
    return _write(cat, client, cat.key(LEASE_KEY), holder or holder_name(), ttl_s, dict(free.condition))


def acquire(cat: IndexLocation, client: Any, *, holder: str | None = None,
            ttl_s: float = LEASE_TTL_S) -> Lease | Busy | Unavailable:
    """Take the compaction lease, or learn that someone holds it (:func:`look`, then :func:`take`).

    One GET when it is held; a GET and a conditional PUT otherwise.
    """
    seen = look(cat, client)
    return take(cat, client, seen, holder=holder, ttl_s=ttl_s) if isinstance(seen, Free) else seen


def _write(cat: IndexLocation, client: Any, key: str, holder: str, ttl_s: float, condition: dict[str, str], *,
           released: bool = False) -> Lease | Busy | Unavailable:
    try:
        put = client.put_object(Bucket=cat.bucket, Key=key, Body=body(holder, ttl_s, released=released),
                                ContentType="application/json", **condition)
    except Exception as e:
        if error_code(e) in CONFLICT_CODES:
            return Busy("", None)
        return Unavailable(f"cannot write the lease s3://{cat.bucket}/{key}: {error_code(e) or type(e).__name__}")
    return Lease(key, str(put["ETag"]), holder, ttl_s, time.monotonic())


def renew(cat: IndexLocation, client: Any, lease: Lease) -> Lease | None:
    """Extend our lease by its ``ttl_s`` from now; ``None`` when it is no longer ours (it expired
    and was taken over, or the store refused: carry on without it, compaction stays correct)."""
    got = _write(cat, client, lease.key, lease.holder, lease.ttl_s, {"IfMatch": lease.etag})
    return got if isinstance(got, Lease) else None


def due(lease: Lease, now: float | None = None) -> bool:
    """Whether a third of our lease has passed since we last wrote it (time to renew)."""
    return (time.monotonic() if now is None else now) - lease.written > lease.ttl_s / 3


def release(cat: IndexLocation, client: Any, lease: Lease) -> bool:
    """Free the lease for the next drain; whether it was still ours. Never raises."""
    return isinstance(_write(cat, client, lease.key, lease.holder, lease.ttl_s, {"IfMatch": lease.etag},
                             released=True), Lease)
