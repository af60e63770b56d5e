"""Shipping the spool: upload a staged entry to the store, and the drain that ships them all.

For one entry (:func:`ship`): the small files from the spool and the large ones straight from
the run folder (:func:`ship_direct`), then the commit marker (``meta/``: run.json, the
manifest, each attempt's record), then the run's index record and its pending update
(compaction is the drain's, not the epilog's); then the entry is deleted. ``s5cmd cp``, not
``sync``: an in-training sync may have left a same-size object with a newer time (a
``last.pt`` uploaded while it was being rewritten), and ``sync`` would keep it. An entry whose
snapshot the epilog could not finish in its time budget is copied again from the run folder
by the drain before it ships (:func:`restage`). The queue and the per-run lock that make two
drains (or a drain and an epilog) never ship one run at once are :mod:`slurm_yolo.epilog.spool`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from slurm_yolo import budget
from slurm_yolo.archive import s5cmd
from slurm_yolo.archive.index_store import index_run, list_keys
from slurm_yolo.archive.layout import stored_totals
from slurm_yolo.archive.manifest import MANIFEST
from slurm_yolo.epilog import claim as claims
from slurm_yolo.epilog import refusals
from slurm_yolo.epilog import snapshot
from slurm_yolo.epilog.entry import ENTRY_JSON, EntryInfo
from slurm_yolo.epilog.spool import (
    DIRECT_JSON, FILES, INDEX_JSON, META, RunLock, iter_entries, records,
)
from slurm_yolo.errors import Refused, StoreError
from slurm_yolo.record import utc_now, write_json_atomic
from slurm_yolo.site import SiteConfig
from slurm_yolo.store import split_url
from slurm_yolo.timeparse import parse_time

# At most this many descriptors handed to one s5cmd (batches beyond it).
DIRECT_BATCH = 256


@dataclass(frozen=True)
class ShipResult:
    """What one shipping attempt of a spool entry did."""

    entry: str
    ok: bool
    detail: str
    seconds: float
    bytes: int = 0  # what this try uploaded (the manifest's files and the records), when it shipped
    end_state: str = ""


@dataclass(frozen=True)
class Problem:
    """Why a try failed: one line, and whether trying later may help."""

    detail: str
    error_class: str
    transient: bool

    @classmethod
    def of(cls, label: str, result: s5cmd.Result) -> Problem:
        """The problem of a failed s5cmd run: its summary, the class of its first failure."""
        first = result.failures[0].error_class if result.failures else None
        return cls(f"{label}: {result.summary()}", "timeout" if result.timed_out else first or "unknown",
                   result.transient or not result.failures)


def _failed(entry: Path, info: EntryInfo, problem: Problem, started: float) -> ShipResult:
    """Record the failure in the entry (it stays in the spool for the drain) and report it."""
    info.after_failure(problem.detail, problem.error_class, problem.transient, utc_now()).save(entry)
    return ShipResult(entry.name, False, problem.detail, time.monotonic() - started)


def ship(entry: Path, site: SiteConfig, *, deadline: float) -> ShipResult:
    """Upload one staged entry: files, commit marker, index record; delete it on success.

    Never raises for store problems: the entry stays in the spool with the error recorded.
    """
    started = time.monotonic()
    info = EntryInfo.load(entry)
    dest = info.dest
    base = s5cmd.base_argv(site.store, workers=site.s5cmd_workers, retries=3)
    # The small files (from the spool) and the large ones (straight from the run folder) go up
    # at once: two s5cmd processes, so neither waits for the other's last slow file.
    with ThreadPoolExecutor(1) as pool:
        small = None
        if (entry / FILES).is_dir() and any((entry / FILES).iterdir()):
            small = pool.submit(s5cmd.run, base + ["cp", f"{entry / FILES}/*", dest], site.store, deadline=deadline)
        problem = ship_direct(entry, info, site, base, deadline=deadline)
        result = small.result() if small is not None else None
    if result is not None and not result.ok:
        return _failed(entry, info, Problem.of("files", result), started)
    if problem:
        return _failed(entry, info, problem, started)
    # Last: the commit marker. A reader that sees run.json sees every file of the manifest.
    result = s5cmd.run(base + ["cp", f"{entry / META}/*", dest], site.store, deadline=deadline)
    if not result.ok:
        return _failed(entry, info, Problem.of("commit marker", result), started)
    # Who owns the run ID in the index, the run's record and its pending update: boto3 (a read
    # and three small writes, cheaper than three s5cmd processes). Compaction is not ours: the
    # drain timer and `slurm-yolo index compact` do it, so job ends never wait on each other.
    index = json.loads((entry / INDEX_JSON).read_text())
    try:
        # The run's size in the index is what the store now holds under it (every attempt's
        # files and records): one listing, so `store usage` never lists the store.
        index.update(stored_totals(list_keys(site.store.boto3_client(), *split_url(dest))))
        owner = index_run(site.store, site.index_url, index)
    except StoreError as e:
        return _failed(entry, info, Problem(f"index: {e}", "store", True), started)
    taken = owner is not None
    note = f"; NOT indexed: run ID {info.run_id} belongs to {owner} in the index (use unique run IDs)" \
        if taken else ""
    if not info.complete and not info.restaged:
        # The epilog ran out of time while copying: the partial snapshot is in the store now,
        # and the entry stays for the drain to copy the rest (restage) and ship it again.
        info.replace(shipped_partial=utc_now()).save(entry)
        return ShipResult(entry.name, True, f"partial snapshot shipped to {dest}; the drain ships the rest{note}",
                          time.monotonic() - started)
    uploaded = _uploaded_bytes(entry)
    shutil.rmtree(entry, ignore_errors=True)
    return ShipResult(entry.name, True, f"shipped to {dest}{note}", time.monotonic() - started, uploaded,
                      str(index.get("end_state") or ""))


def _uploaded_bytes(entry: Path) -> int:
    """Bytes one ship of ``entry`` sent: every file of its manifest, and its records."""
    manifest = json.loads((entry / META / MANIFEST).read_text())
    return sum(int(meta.get("size") or 0) for meta in manifest.get("files", {}).values()) + \
        sum(p.stat().st_size for p in (entry / META).rglob("*") if p.is_file())


def _identity_changed(fd: int, meta: dict[str, Any]) -> bool:
    now = snapshot.identity(os.fstat(fd))
    return any(now[k] != meta.get(k) for k in now)


def _open_direct(direct: dict[str, dict[str, Any]], uid: int) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Open every large file again, with the snapshot's checks: ``[(archive path, fd)]`` and
    what could not be opened (a link now, another owner, gone): archive path → why."""
    opened: list[tuple[str, int]] = []
    dropped: dict[str, str] = {}
    roots: dict[str, int] = {}
    try:
        for rel, meta in sorted(direct.items()):
            try:
                if meta["root"] not in roots:
                    roots[meta["root"]] = snapshot.open_dir_nofollow(meta["root"], uid)
                opened.append((rel, snapshot.open_file_at(roots[meta["root"]], meta["rel"], uid)))
            except (Refused, OSError) as e:
                dropped[rel] = str(e)
    finally:
        for fd in roots.values():
            os.close(fd)
    return opened, dropped


def ship_direct(entry: Path, info: EntryInfo, site: SiteConfig, base: list[str], *,
                deadline: float) -> Problem | None:
    """Upload the entry's large files straight from the run folder; ``None`` if all landed.

    Each file is re-opened with the snapshot's checks and handed to s5cmd as
    ``/proc/self/fd/N`` of that descriptor. One that changed since it was hashed is hashed
    again (the manifest follows); one that changed while it was uploaded fails this round
    and is uploaded again by the drain. One that can no longer be opened safely (the user
    swapped in a link, or deleted it) is dropped from the manifest and listed in the record's
    ``epilog.skipped``: the rest of the run still arrives.
    """
    if not (entry / DIRECT_JSON).is_file():
        return None
    direct = json.loads((entry / DIRECT_JSON).read_text())
    if not direct:
        return None
    manifest = json.loads((entry / META / MANIFEST).read_text())
    opened, dropped = _open_direct(direct, info.uid)
    try:
        for rel, fd in opened:
            if _identity_changed(fd, direct[rel]):
                meta = snapshot.hash_fd(fd)
                direct[rel].update(meta, **snapshot.identity(os.fstat(fd)))
                manifest["files"][rel] = meta
        for rel in dropped:
            manifest["files"].pop(rel, None)
            direct.pop(rel, None)
        _note_dropped(entry, manifest, direct, dropped)
        for i in range(0, len(opened), DIRECT_BATCH):
            batch = opened[i:i + DIRECT_BATCH]
            lines = [f"cp {s5cmd.quote_run_arg(f'/proc/self/fd/{fd}')} {s5cmd.quote_run_arg(info.dest + rel)}"
                     for rel, fd in batch]
            result = s5cmd.run(base + ["run"], site.store, deadline=deadline, stdin_text="\n".join(lines) + "\n",
                               pass_fds=tuple(fd for _, fd in batch))
            if not result.ok:
                failed = sorted(_archive_path(info.dest, url) for url in result.failed_destinations)
                return Problem.of("large files" + (f" ({', '.join(failed[:3])}{' …' if len(failed) > 3 else ''})"
                                                   if failed else ""), result)
            moved = [rel for rel, fd in batch if _identity_changed(fd, direct[rel])]
            if moved:
                return Problem(f"large files: {moved[0]} changed while it was uploaded; uploaded again on the "
                               "next try", "changed", True)
        return None
    finally:
        for _, fd in opened:
            os.close(fd)


def _archive_path(dest: str, url: str) -> str:
    """A file's path in the run from its store URL (s5cmd's destination), else the URL."""
    return url[len(dest):] if url.startswith(dest) else url


def _note_dropped(entry: Path, manifest: dict[str, Any], direct: dict[str, Any], dropped: dict[str, str]) -> None:
    """Keep the entry's manifest, direct list and records in step with what will be uploaded."""
    write_json_atomic(entry / META / MANIFEST, manifest, mode=0o600)
    write_json_atomic(entry / DIRECT_JSON, direct, mode=0o600)
    if not dropped:
        return
    notes = [f"{rel}: not uploaded: {why}" for rel, why in sorted(dropped.items())]
    for rec_path in records(entry):
        record = json.loads(rec_path.read_text())
        epilog = record.setdefault("epilog", {})
        epilog["skipped"] = (list(epilog.get("skipped") or []) + notes)[:200]
        write_json_atomic(rec_path, record, mode=0o600)


def restage(entry: Path, info: EntryInfo, *, deadline: float) -> tuple[str, EntryInfo]:
    """Copy the run folder again into an entry whose snapshot the epilog cut short.

    Same safe copy as the epilog's (as root, only the job user's files, no links; large files
    listed for the upload straight from the folder). Files the first copy has that this one
    does not (an array element's Slurm log, which lives in the sweep folder) are kept. Marks
    the entry ``restaged`` whatever happens, so it ships and leaves the spool even when the
    folder is gone: a partial archive beats a stuck spool.

    Returns:
        What happened (one line for the drain's log), and the entry as saved.
    """
    try:
        fd = snapshot.open_dir_nofollow(str(info.source), info.uid)
    except (Refused, OSError) as e:
        outcome = f"run folder not copied again ({e}); shipping the partial snapshot"
    else:
        try:
            snap = snapshot.copy_tree(fd, info.uid, entry / f"{FILES}.new", deadline=deadline,
                                      exclude=snapshot.EXCLUDE, direct_root=info.source)
        finally:
            os.close(fd)
        outcome = _swap_in(entry, snap)
        if snap.complete:
            info = info.replace(complete=True)
    info = info.replace(restaged=outcome)
    info.save(entry)
    return outcome, info


def _swap_in(entry: Path, snap: snapshot.Snapshot) -> str:
    """Make a complete fresh copy (``files.new``) the entry's snapshot, keeping what only the old
    one had; a still incomplete one is dropped."""
    fresh, old, parked = entry / f"{FILES}.new", entry / FILES, entry / f"{FILES}.old"
    if not snap.complete:
        shutil.rmtree(fresh, ignore_errors=True)
        return "run folder still too large to copy in the drain's budget; shipping the partial snapshot"
    manifest = json.loads((entry / META / MANIFEST).read_text())
    direct = json.loads((entry / DIRECT_JSON).read_text()) if (entry / DIRECT_JSON).is_file() else {}
    for rel, meta in manifest.get("files", {}).items():
        if rel in snap.files:
            continue
        if (old / rel).is_file():
            (fresh / rel).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(old / rel, fresh / rel)
            snap.files[rel] = meta
        elif rel in direct:
            snap.files[rel], snap.direct[rel] = meta, direct[rel]
    if old.exists():
        os.replace(old, parked)
    os.replace(fresh, old)
    shutil.rmtree(parked, ignore_errors=True)
    manifest["files"] = snap.files
    write_json_atomic(entry / META / MANIFEST, manifest, mode=0o600)
    write_json_atomic(entry / DIRECT_JSON, snap.direct, mode=0o600)
    for rec_path in records(entry):
        record = json.loads(rec_path.read_text())
        record.setdefault("epilog", {}).update(snapshot_complete=True, skipped=snap.skipped[:200])
        write_json_atomic(rec_path, record, mode=0o600)
    return f"run folder copied again ({len(snap.files)} files)"


def _age_s(info: EntryInfo) -> float:
    """Seconds since the entry was created (``created``, UTC ISO); unknown → very old."""
    created = parse_time(info.created)
    return float("inf") if created is None else (datetime.now(timezone.utc) - created).total_seconds()


def drain(site: SiteConfig, *, budget_s: float = 600, log: Callable[[str], None] = lambda m: None,
          lock_timeout: float = 0.0, everything: bool = False) -> list[ShipResult]:
    """Ship every spooled entry that is due and whose run nobody else holds. Idempotent.

    Safe to run twice at once: each run is shipped under its lock; an entry shipped by
    the other drain meanwhile is simply gone when we get to it. Each entry is handled on
    its own: one that cannot be read (a corrupt ``entry.json``) is reported, stays in the
    spool for a person to look at, and never blocks the entries after it. An entry whose
    last try failed for a reason that may pass (store down, throttled) waits out its
    back-off; one that needs a person (credentials, no such bucket) is not tried again until
    ``everything`` (``spool drain --all``, once the cause is fixed), which tries every entry.
    """
    deadline = time.monotonic() + budget_s
    results = []
    # Sites without a reconciler: the drain keeps the claims folder tidy.
    claims.prune(site.claim_dir)
    refusals.prune(site.claim_dir)
    for entry in iter_entries(site.spool_dir):
        if time.monotonic() >= deadline:
            break
        try:
            result = _drain_one(entry, site, deadline, log, lock_timeout, everything)
        except (OSError, ValueError) as e:
            result = ShipResult(entry.name, False, f"unreadable entry, left for a person: {type(e).__name__}: {e}", 0.0)
            log(f"{entry.name}: failed {result.detail}")
        if result is not None:
            results.append(result)
    return results


def _drain_one(entry: Path, site: SiteConfig, deadline: float, log: Callable[[str], None],
               lock_timeout: float, everything: bool) -> ShipResult | None:
    lock = RunLock.of(site.spool_dir, entry)
    try:
        if not lock.acquire(lock_timeout):
            log(f"{entry.name}: busy (another drain or epilog holds it), skipped")
            return None
        if not (entry / ENTRY_JSON).is_file():
            return None  # shipped by someone else while we waited
        info = EntryInfo.load(entry)
        # An epilog exits within the site's time budget (its watchdog makes sure): an entry
        # still marked "staging" after the stale window belongs to one killed mid-copy.
        if info.staging and _age_s(info) < budget.stale_after_s(site.time_budget_s):
            log(f"{entry.name}: an epilog may still be copying it, skipped")
            return None
        if not info.due(everything=everything):
            log(f"{entry.name}: not due ({'needs a person: ' if info.permanent else 'backing off after: '}"
                f"{info.last_error})")
            return None
        if not info.complete and not info.restaged:
            log(f"{entry.name}: {restage(entry, info, deadline=deadline)[0]}")
        result = ship(entry, site, deadline=deadline)
        log(f"{entry.name}: {'ok' if result.ok else 'failed'} {result.detail} ({result.seconds:.1f} s)")
        return result
    finally:
        lock.close()
