"""Compaction: fold the pending index updates into the quarterly Parquet files, outside the epilog.

Run by the drain timer on the nodes (``slurm-yolo spool drain``) and by
``slurm-yolo index compact``; also ``index migrate`` (from the old ``INDEX.jsonl``),
``index rebuild`` and pruning write through here. Any number of compactions may run at once,
and stay correct; a lease in the store (:mod:`slurm_yolo.archive.index_lease`) lets one of
them do the work while the others skip at the cost of one request. A round:

0. take the lease (or skip: someone holds it; or go on without it where the store refuses it);

1. list and read the pending updates (:func:`slurm_yolo.archive.index_store.read_pending`);
2. for each quarter they fall in, compare-and-swap that quarter's file: read it and its ETag,
   apply the updates (:func:`slurm_yolo.archive.index_format.apply_updates`: the later
   ``indexed_at`` wins, a run stays its first user's), put it with ``If-Match`` (or
   ``If-None-Match: *`` for a new quarter); on 412/409 (or 404 to ``If-Match``: deleted since)
   another compaction won, so read its version and apply the same updates again;
   An update that may not speak for what it claims is refused and moved to ``refused/``
   (:func:`slurm_yolo.archive.index_store.refusal`: written under another user's part of
   ``pending/``, or its archive URL outside its user's prefix; or, checked against the
   quarter, its run ID already another user's), and reported in :class:`CompactResult`;
3. delete the updates folded in. On a store whose conditional writes are atomic (AWS S3,
   SeaweedFS) a won put is final, so at once. Otherwise (moto's server checks, then writes:
   two puts can both "win") only updates older than
   :data:`~slurm_yolo.archive.index_store.PENDING_GRACE_S` whose quarter still has our ETag:
   every compaction that started after that age listed them, so no later winner lacks them.

Readers list ``pending/`` before the quarters, and a compaction commits a quarter before it
deletes the updates in it: an update a reader listed is either still there when it reads it,
or gone, and then already in its quarter; the reader then lists and reads the quarters again
(:mod:`slurm_yolo.catalog.scan`). The lease saves work and guards nothing: a holder that dies
mid-round leaves a consistent index, its updates still pending, and a lease that expires.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from slurm_yolo.archive import index_format as fmt
from slurm_yolo.archive import index_lease
from slurm_yolo.archive.index_location import IndexLocation
from slurm_yolo.archive.index_store import (
    LEGACY_JSONL, PENDING, delete_keys, etag_now, get_object, list_keys, parse_jsonl, pending_grace_s,
    pending_stamp, read_pending, refusal, stamp,
)
from slurm_yolo.errors import ConfigError, StoreError
from slurm_yolo.store import error_code, store_error

if TYPE_CHECKING:  # imported where used (start-up time: slurm_yolo.archive.index_format)
    import pyarrow as pa

# Compare-and-swap attempts per quarter before giving up (the updates stay pending and visible).
MAX_ATTEMPTS = 40
log = logging.getLogger("slurm_yolo.index")
# Where refused pending updates are moved (kept for whoever investigates; never read back).
REFUSED = "refused/"
# Another compaction got there first. If-Match on a key deleted since we read it: AWS (and
# moto) answer 404 NoSuchKey, SeaweedFS 412; both mean "start over from what is there now".
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
GONE_CODES = {"NoSuchKey", "404"}
LEGACY_DIR = "legacy/"
MIGRATE_HINT = ("the index still has its old single file {url}: run `slurm-yolo index migrate` once (as an admin), "
                "after every node runs this slurm-yolo version")


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did.

    Attributes:
        updates: pending updates read.
        runs_changed: runs added or replaced in the quarterly files.
        quarters: the quarters whose files were written or checked.
        left: pending updates kept (younger than the grace period on a non-atomic store,
            or their quarter changed since: a later compaction deletes them).
        refused: one line per pending update refused (``<key>: <why>``), not folded in.
        skipped: why nothing was done (another compaction holds the lease), else ``""``.
        lease: ``"held"``, ``"free"`` (nothing pending: not taken), ``"busy"`` (skipped),
            ``"off"`` (not asked for), or why it could not be used.
    """

    updates: int
    runs_changed: int
    quarters: tuple[str, ...]
    left: int
    refused: tuple[str, ...] = ()
    skipped: str = ""
    lease: str = "off"

    def summary(self) -> str:
        """One line for a log or a terminal."""
        if self.skipped:
            return f"compaction skipped: {self.skipped}"
        line = (f"{self.updates} pending updates folded into {len(self.quarters)} quarters "
                f"({self.runs_changed} runs changed); {self.left} kept pending for now")
        if self.refused:
            line += f"; REFUSED {len(self.refused)}: " + "; ".join(self.refused)
        if self.lease not in ("held", "off", "free"):
            line += f" (without the lease: {self.lease})"
        return line


def read_quarter(cat: IndexLocation, client: Any, quarter: str, *, damaged_ok: bool = False) -> tuple[pa.Table, str | None]:
    """A quarter's table and ETag (an empty table and ``None`` when it has no file yet; an empty
    table and its ETag when it is damaged and ``damaged_ok``: it is about to be replaced).

    Raises:
        StoreError: unreadable store, or the file is not Parquet (names the key and the fix).
    """
    key = cat.key(fmt.part_rel(quarter))
    got = get_object(client, cat.bucket, key)
    if got is None:
        return fmt.empty(), None
    try:
        return fmt.decode(got[0]), got[1]
    except ConfigError as e:  # a newer slurm-yolo's file: never rewritten (or skipped) by this one
        raise ConfigError(f"s3://{cat.bucket}/{key}: {e}") from e
    except (ValueError, OSError) as e:  # pyarrow.ArrowInvalid is a ValueError
        if damaged_ok:
            return fmt.empty(), got[1]
        raise StoreError(f"s3://{cat.bucket}/{key} is not a readable index file ({e}); "
                         "run `slurm-yolo index rebuild` to recreate the index from the archived run.json files") from e


def commit_quarter(cat: IndexLocation, client: Any, quarter: str, transform: Callable[[pa.Table], pa.Table | None], *,
                 sleep: Callable[[float], None] = time.sleep, damaged_ok: bool = False) -> str | None:
    """Compare-and-swap one quarter's file to ``transform(current table)``; return its ETag.

    ``transform`` returns ``None`` for "no change" (nothing is written). Retries with full
    jitter on conflicts, from the winner's version.

    Raises:
        StoreError: unreachable store, or still conflicting after :data:`MAX_ATTEMPTS` tries.
    """
    key = cat.key(fmt.part_rel(quarter))
    url = f"s3://{cat.bucket}/{key}"
    for attempt in range(MAX_ATTEMPTS):
        table, etag = read_quarter(cat, client, quarter, damaged_ok=damaged_ok)
        new = transform(table)
        if new is None:
            return etag
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            put = client.put_object(Bucket=cat.bucket, Key=key, Body=fmt.encode(new),
                                    ContentType="application/vnd.apache.parquet", **condition)
        except Exception as e:  # botocore raises ClientError and connection errors
            code = error_code(e)
            if code not in CONFLICT_CODES and not (etag is not None and code in GONE_CODES):
                raise store_error("write", url, e) from e
            sleep(random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))
            continue
        return str(put["ETag"])
    raise StoreError(f"{url} stayed busy (other compactions won {MAX_ATTEMPTS} tries); the updates stay pending "
                     "and visible: run `slurm-yolo index compact` later")


def fold(cat: IndexLocation, client: Any, records: Iterable[Mapping[str, Any]], *,
         sleep: Callable[[float], None] = time.sleep, between: Callable[[], None] = lambda: None,
         refused: list[tuple[Mapping[str, Any], str]] | None = None) -> tuple[dict[str, str | None], int]:
    """Apply ``records`` to their quarters; return each quarter's ETag after it, and how many runs changed.

    With ``refused`` (a list to fill), an update whose run ID is another user's (in the quarter
    as committed, or by an earlier update of the same round) is not applied but added there
    with the reason. ``between`` runs after each quarter (the lease's renewal).
    """
    by_quarter: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for rec in records:
        by_quarter[fmt.quarter_of(rec)].append(rec)
    etags: dict[str, str | None] = {}
    changed = 0
    for quarter, recs in sorted(by_quarter.items()):
        counts: list[tuple[int, list[tuple[Mapping[str, Any], str]]]] = []

        def apply(table: pa.Table, recs: list[Mapping[str, Any]] = recs) -> pa.Table | None:
            ok, bad = (claims(table, recs) if refused is not None else (recs, []))
            new, n = fmt.apply_updates(table, ok)
            counts.append((n, bad))  # the last attempt's is the one committed
            return new if n else None

        etags[quarter] = commit_quarter(cat, client, quarter, apply, sleep=sleep)
        if counts:
            changed += counts[-1][0]
            if refused is not None:
                refused += counts[-1][1]
        between()
    return etags, changed


def claims(table: pa.Table, recs: Iterable[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[tuple[Mapping[str, Any], str]]]:
    """Split ``recs`` into those that may update their run and those claiming another user's run ID.

    A run ID belongs to the user of its row in ``table`` (the whole quarter), else to the user
    of the earliest update (by ``indexed_at``) of this round: the same first-user rule as
    :func:`~slurm_yolo.archive.index_store.newer`, made visible.
    """
    recs = sorted(recs, key=lambda r: str(r.get("indexed_at") or ""))
    ids = {str(r["run_id"]) for r in recs}
    owners: dict[str, Any] = {row["run_id"]: row.get("user")
                              for row in fmt.from_table(table.filter(fmt.has_run_id(table, ids)))} if ids else {}
    ok, bad = [], []
    for rec in recs:
        rid = str(rec["run_id"])
        if rid in owners and owners[rid] != rec.get("user"):
            bad.append((rec, f"run ID {rid} belongs to {owners[rid] or '(no user)'} in the index, "
                             f"not to {rec.get('user') or '(no user)'}"))
            continue
        owners.setdefault(rid, rec.get("user"))
        ok.append(rec)
    return ok, bad


def legacy_url(cat: IndexLocation, client: Any) -> str | None:
    """The URL of the old ``INDEX.jsonl`` if the index still has one."""
    key = cat.key(LEGACY_JSONL)
    return f"s3://{cat.bucket}/{key}" if etag_now(client, cat.bucket, key) is not None else None


def compact(cat: IndexLocation, *, client: Any = None, grace_s: float | None = None, now: datetime | None = None,
            sleep: Callable[[float], None] = time.sleep, lease: bool = True,
            lease_ttl_s: float = index_lease.LEASE_TTL_S) -> CompactResult:
    """Fold every pending update into its quarter; delete the updates that are settled.

    Args:
        cat: the catalog (its ``allowed_prefix``, when set, confines each update's archive URL).
        grace_s: how old a folded-in update must be to be deleted (default:
            :func:`~slurm_yolo.archive.index_store.pending_grace_s` of the store).
        now: the time the grace period counts to (tests).
        lease: take the compaction lease first and skip when another compaction holds it
            (one request); ``False``: compact whatever others do (still correct).
        lease_ttl_s: how long the lease lasts without renewal (a dead holder's frees then).

    Raises:
        ConfigError: the index still has the old ``INDEX.jsonl``: ``index migrate`` first
            (compacting without it would hide its runs from readers).
        StoreError: the store could not be read or written, or a quarter stayed busy.
    """
    client = client or cat.store.boto3_client()
    if not lease:
        return _checked(cat, client, grace_s, now, sleep, lambda: None, "off")
    seen = index_lease.look(cat, client)
    got: index_lease.Lease | index_lease.Busy | index_lease.Unavailable
    if isinstance(seen, index_lease.Free):
        if not _anything_pending(cat, client):  # an idle index: two reads, no write
            return CompactResult(0, 0, (), 0, lease="free")
        got = index_lease.take(cat, client, seen, ttl_s=lease_ttl_s)
    else:
        got = seen
    if isinstance(got, index_lease.Busy):
        by = f" by {got.holder}" if got.holder else ""
        left = f", {got.left_s:.0f} s left" if got.left_s is not None else ""
        return CompactResult(0, 0, (), 0, skipped=f"another compaction holds the lease{by}{left}", lease="busy")
    if isinstance(got, index_lease.Unavailable):
        log.info("index compaction without the lease: %s", got.reason)
        return _checked(cat, client, grace_s, now, sleep, lambda: None, got.reason)
    held: list[index_lease.Lease | None] = [got]

    def renew() -> None:
        last = held[-1]
        if last is not None and index_lease.due(last):
            held.append(index_lease.renew(cat, client, last))

    try:
        return _checked(cat, client, grace_s, now, sleep, renew, "held")
    finally:
        last = held[-1]
        if last is not None:
            index_lease.release(cat, client, last)


def _anything_pending(cat: IndexLocation, client: Any) -> bool:
    prefix = cat.key(PENDING)
    try:
        return bool(client.list_objects_v2(Bucket=cat.bucket, Prefix=prefix, MaxKeys=1).get("Contents"))
    except Exception as e:  # botocore raises ClientError and connection errors
        raise store_error("list", f"s3://{cat.bucket}/{prefix}", e) from e


def _checked(cat: IndexLocation, client: Any, grace_s: float | None, now: datetime | None,
             sleep: Callable[[float], None], between: Callable[[], None], lease: str) -> CompactResult:
    legacy = legacy_url(cat, client)
    if legacy:
        raise ConfigError(MIGRATE_HINT.format(url=legacy))
    return dataclasses.replace(_compact(cat, client, grace_s, now, sleep, between), lease=lease)


def _compact(cat: IndexLocation, client: Any, grace_s: float | None, now: datetime | None,
             sleep: Callable[[float], None], between: Callable[[], None] = lambda: None) -> CompactResult:
    pending = read_pending(cat, client, writers_checked=False)  # the forged too: refused and moved below
    if not pending:
        return CompactResult(0, 0, (), 0)
    prefix = cat.key(PENDING)
    refused: list[tuple[str, str]] = []
    keyed: list[tuple[str, dict[str, Any]]] = []
    for k, rec in pending:
        why = refusal(k, rec, cat.allowed_prefix, prefix)
        if why:
            refused.append((k, why))
        else:
            keyed.append((k, rec))
    unchecked = {k for k, _ in refused}  # refused whatever the quarters hold
    claimed: list[tuple[Mapping[str, Any], str]] = []
    etags, changed = fold(cat, client, [rec for _, rec in keyed], sleep=sleep, between=between, refused=claimed)
    key_of = {id(rec): k for k, rec in keyed}
    refused += [(key_of[id(rec)], why) for rec, why in claimed]
    out = {k for k, _ in refused}
    grace_s = pending_grace_s(cat.store) if grace_s is None else grace_s
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=grace_s)
    settled = [(k, rec) for k, rec in pending if pending_stamp(k) <= cutoff]
    if settled and not cat.store.atomic_conditional_writes:
        # A racing put may have replaced our version since: delete only what the quarter, as it
        # is now, was written by us (a newer version, from a compaction that read ours, also holds it).
        # A refused update too: a version that replaced ours may have been built without the
        # update that made it a claim on someone else's run.
        now_tags = {m: etag_now(client, cat.bucket, cat.key(fmt.part_rel(m))) for m in etags}
        settled = [(k, rec) for k, rec in settled
                   if k in unchecked or now_tags.get(fmt.quarter_of(rec)) == (etags.get(fmt.quarter_of(rec)) or "").strip('"')]
    settled_keys = {k for k, _ in settled}
    for k, why in refused:
        log.warning("index compaction refused the pending update s3://%s/%s: %s", cat.bucket, k, why)
    moved = _move_refused(cat, client, [k for k in out if k in settled_keys], prefix)
    gone = [k for k, _ in settled if k not in out] + moved
    delete_keys(client, cat.bucket, gone)
    return CompactResult(len(pending), changed, tuple(sorted(etags)), len(pending) - len(gone),
                         tuple(f"{k[len(prefix):]}: {why}" for k, why in refused))


def _move_refused(cat: IndexLocation, client: Any, keys: Iterable[str], prefix: str) -> list[str]:
    """Copy refused updates to ``refused/`` (kept for an investigation); the keys copied, to delete.

    One that cannot be copied (a user compacting without the right to write there) stays
    pending: refused again, and reported again, by every round until an admin's compaction
    moves it."""
    moved = []
    for key in keys:
        try:
            client.copy_object(Bucket=cat.bucket, Key=cat.key(REFUSED + key[len(prefix):]),
                               CopySource={"Bucket": cat.bucket, "Key": key})
        except Exception as e:  # botocore raises ClientError and connection errors
            log.warning("could not move the refused update s3://%s/%s aside: %s", cat.bucket, key, e)
            continue
        moved.append(key)
    return moved


def migrate(cat: IndexLocation, *, client: Any = None, now: datetime | None = None) -> tuple[int, CompactResult]:
    """Convert the old ``INDEX.jsonl`` into quarterly files; return its line count and the compaction.

    Its lines go into their quarters (a newer record already there wins), then every pending
    update is compacted, then ``INDEX.jsonl`` is moved to ``legacy/INDEX-<utc>.jsonl`` if
    nobody changed it meanwhile (an epilog of an older version still installed somewhere
    would: then its new lines are folded in on the next round). Idempotent: with no
    ``INDEX.jsonl`` left it only compacts.

    Raises:
        StoreError: the store could not be read or written.
    """
    client = client or cat.store.boto3_client()
    key = cat.key(LEGACY_JSONL)
    lines = 0
    for _ in range(MAX_ATTEMPTS):
        got = get_object(client, cat.bucket, key)
        if got is None:
            break
        records = parse_jsonl(got[0])
        lines = len(records)
        fold(cat, client, records.values())
        if etag_now(client, cat.bucket, key) != got[1].strip('"'):
            continue  # an older epilog rewrote it meanwhile: fold its new lines too
        backup = cat.key(f"{LEGACY_DIR}INDEX-{stamp(now).replace(':', '')}.jsonl")
        try:
            client.copy_object(Bucket=cat.bucket, Key=backup, CopySource={"Bucket": cat.bucket, "Key": key})
            client.delete_object(Bucket=cat.bucket, Key=key)
        except Exception as e:
            raise store_error("move", f"s3://{cat.bucket}/{key}", e) from e
        break
    return lines, _compact(cat, client, None, now, time.sleep)


def quarters(cat: IndexLocation, client: Any) -> dict[str, str]:
    """Every quarter that has a file: ``{quarter: key}``."""
    found = {}
    for obj in list_keys(client, cat.bucket, cat.key(fmt.PARTS)):
        quarter = fmt.quarter_of_key(obj["Key"])
        if quarter is not None:
            found[quarter] = obj["Key"]
    return found


def remove_from_index(cat: IndexLocation, records: Iterable[Mapping[str, Any]]) -> int:
    """Drop runs (their index records, as read) from their quarters and from ``pending/``, after
    their archived objects were deleted; return how many rows went."""
    by_quarter: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        by_quarter[fmt.quarter_of(rec)].add(str(rec["run_id"]))
    gone = set().union(*by_quarter.values()) if by_quarter else set()
    client = cat.store.boto3_client()
    removed = 0
    for quarter, ids in sorted(by_quarter.items()):
        counts: list[int] = []

        def drop(table: pa.Table, ids: set[str] = ids) -> pa.Table | None:
            out = fmt.without(table, ids)
            counts.append(table.num_rows - out.num_rows)
            return out if counts[-1] else None

        commit_quarter(cat, client, quarter, drop)
        removed += counts[-1] if counts else 0
    # Their pending updates go whatever their age: readers would otherwise bring them back.
    delete_keys(client, cat.bucket, [k for k, rec in read_pending(cat, client, writers_checked=False)
                                     if rec["run_id"] in gone])
    return removed


def replace_all(cat: IndexLocation, records: Mapping[str, Mapping[str, Any]], *, force: bool = False,
                now: datetime | None = None) -> int:
    """Make the index hold exactly ``records`` (``index rebuild``); return how many runs it lists.

    The records are stamped ``indexed_at`` now, so pending updates written before lose to
    them and are cleaned up by the next compaction; later ones win as usual. Runs in the
    index now that ``records`` lacks are dropped only with ``force``; the old ``INDEX.jsonl``
    is moved aside.

    Raises:
        ConfigError: runs would be dropped and ``force`` is not set (nothing changed).
        StoreError: the store could not be read or written.
    """
    client = cat.store.boto3_client()
    present = quarters(cat, client)
    current: set[str] = set()
    for quarter in present:
        current.update(read_quarter(cat, client, quarter, damaged_ok=True)[0]["run_id"].to_pylist())
    legacy = get_object(client, cat.bucket, cat.key(LEGACY_JSONL))
    if legacy is not None:
        current.update(parse_jsonl(legacy[0]))
    dropped = sorted(current - set(records))
    if dropped and not force:
        raise ConfigError(f"rebuild would drop {len(dropped)} of the {len(current)} runs the index lists now "
                          f"(e.g. {dropped[0]}): no run.json for them; check --root, or pass --force to drop them")
    when = stamp(now)
    by_quarter: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records.values():
        by_quarter[fmt.quarter_of(rec)].append({**rec, "indexed_at": when})
    for quarter in sorted(set(present) | set(by_quarter)):
        table = fmt.to_table(by_quarter.get(quarter, []))

        def replace(_old: pa.Table, table: pa.Table = table) -> pa.Table:
            return table

        commit_quarter(cat, client, quarter, replace, damaged_ok=True)
    if legacy is not None:
        delete_keys(client, cat.bucket, [cat.key(LEGACY_JSONL)])
    return len(records)
