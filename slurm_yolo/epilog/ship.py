"""Shipping the spool: upload a staged entry to the store, and the drain that ships them all.

For one entry (:func:`ship`): every file the store does not already hold under its key (the
small ones from the spool, the large ones straight from the run folder, by one s5cmd), with
the run's index record and its pending update written beside them (compaction is the drain's,
not the epilog's), then the commit marker (``meta/``: run.json, the manifest, each attempt's
record); then the entry is deleted. What the store holds is asked once (one listing of the
run's prefix) and compared by size and ETag (:mod:`slurm_yolo.archive.remote`), never by
size and time as ``s5cmd sync`` does: an in-training sync may have left a same-size object
with a newer time (a ``last.pt`` uploaded while it was being rewritten). An entry whose
snapshot the epilog could not finish in its time budget is copied again from the run folder
by the drain before it ships (:func:`restage`). The queue and the per-run lock that make two
drains (or a drain and an epilog) never ship one run at once are :mod:`slurm_yolo.epilog.spool`'s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from slurm_yolo import budget
from slurm_yolo.archive import remote, s5cmd
from slurm_yolo.archive.index_store import index_run, list_keys
from slurm_yolo.archive.layout import stored_totals
from slurm_yolo.archive.manifest import MANIFEST
from slurm_yolo.epilog import claim as claims
from slurm_yolo.epilog import refusals
from slurm_yolo.epilog import snapshot
from slurm_yolo.epilog.entry import ENTRY_JSON, EntryInfo
from slurm_yolo.epilog.spool import (
    DIRECT_JSON, ETAGS_JSON, FILES, INDEX_JSON, META, RunLock, iter_entries, records,
)
from slurm_yolo.errors import Refused, StoreError
from slurm_yolo.record import utc_now, write_json_atomic
from slurm_yolo.site import SiteConfig
from slurm_yolo.store import split_url
from slurm_yolo.timeparse import parse_time

log = logging.getLogger("slurm_yolo.epilog")

# At most this many descriptors handed to one s5cmd (batches beyond it).
DIRECT_BATCH = 256


@dataclass(frozen=True)
class ShipResult:
    """What one shipping attempt of a spool entry did."""

    entry: str
    ok: bool
    detail: str
    seconds: float
    bytes: int = 0  # what this try uploaded (the files sent and the records), when it shipped
    end_state: str = ""
    unchanged: int = 0  # files the store already held under their keys: not sent again


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


class Ahead:
    """What shipping needs from the store, asked while the run folder is still being copied:
    the listing of the run's prefix (what the store already holds: :mod:`slurm_yolo.archive.remote`),
    by an s5cmd process (a thread importing boto3 here instead would slow the walk: it holds
    the GIL for ~0.3 s). One per ship; its thread ends by itself."""

    def __init__(self, site: SiteConfig, dest: str, deadline: float) -> None:
        pool = ThreadPoolExecutor(1, thread_name_prefix="ahead")
        self._held: Future[dict[str, remote.RemoteObject] | None] = pool.submit(_held, site, dest, deadline)
        pool.shutdown(wait=False)

    def held(self) -> dict[str, remote.RemoteObject] | None:
        """Archive path → object under the run's prefix; ``None`` if the listing failed (then
        everything is uploaded)."""
        return self._held.result()

    def etag_wanted(self, rel: str, size: int) -> bool | None:
        """Whether hashing ``rel`` should also give its upload's ETag: if the store holds an
        object of that size at its key (otherwise the file is sent anyway); ``None`` while the
        listing has not answered (:data:`slurm_yolo.epilog.snapshot.EtagWanted`: the walk takes
        it as yes, a large file's hashing thread waits for the answer)."""
        if not self._held.done():
            return None
        held = self.held()
        return held is not None and rel in held and held[rel].size == size


def _held(site: SiteConfig, dest: str, deadline: float) -> dict[str, remote.RemoteObject] | None:
    try:
        return remote.listing(site.store, dest, deadline=deadline)
    except StoreError as e:
        log.info("listing %s failed (%s): every file is uploaded", dest, e)
        return None


@dataclass(frozen=True)
class _Plan:
    """One ship's uploads: small files from the spool, large ones from open descriptors, and
    how many files the store already holds (not sent)."""

    small: list[str]
    direct: list[tuple[str, int]]
    unchanged: int
    sent_bytes: int


def ship(entry: Path, site: SiteConfig, *, deadline: float, ahead: Ahead | None = None) -> ShipResult:
    """Upload one staged entry: files, commit marker, index record; delete it on success.

    Files the store already holds under their keys (same size and the ETag this upload would
    give them) are not sent again. One s5cmd process sends the rest: the small files from the
    spool and the large ones straight from the run folder; the index record is written beside
    it; the commit marker (run.json, the manifest, the attempt's record) goes last.

    Args:
        entry: the spool entry.
        site: the site config.
        deadline: ``time.monotonic()`` value; s5cmd is stopped there.
        ahead: the listing started while the entry was staged (``None``: listed now).

    Never raises for store problems: the entry stays in the spool with the error recorded.
    """
    started = time.monotonic()
    info = EntryInfo.load(entry)
    dest = info.dest
    held = (ahead or Ahead(site, dest, deadline)).held()
    base = s5cmd.base_argv(site.store, workers=site.s5cmd_workers, retries=3)
    direct = json.loads((entry / DIRECT_JSON).read_text()) if (entry / DIRECT_JSON).is_file() else {}
    opened, dropped = _open_direct(direct, info.uid)
    try:
        plan = _plan(entry, direct, opened, dropped, held or {})
        index = json.loads((entry / INDEX_JSON).read_text())
        if held is not None:
            # The run's size in the index is what the store holds under it once this ship is
            # done (every attempt's files and records), known now: no listing after the copy.
            index.update(stored_totals(_after(entry, held)))
        with ThreadPoolExecutor(1) as pool:
            # The index record beside the copy: readers open run.json (the commit marker)
            # before they rely on any file, and a failed copy leaves the entry to the drain.
            indexed = pool.submit(_index, site, dest, index, held is None)
            problem, committed = _upload(entry, info, site, base, plan, direct, deadline)
            if problem is None and not committed:
                # Last: the commit marker. A reader that sees run.json sees every file of the manifest.
                result = s5cmd.run(base + ["cp", f"{entry / META}/*", dest], site.store, deadline=deadline)
                problem = None if result.ok else Problem.of("commit marker", result)
            owner = indexed.result()
    finally:
        for _, fd in opened:
            os.close(fd)
    if problem:
        return _failed(entry, info, problem, started)
    if isinstance(owner, StoreError):
        return _failed(entry, info, Problem(f"index: {owner}", "store", True), started)
    taken = owner is not None
    note = f"; NOT indexed: run ID {info.run_id} belongs to {owner} in the index (use unique run IDs)" \
        if taken else ""
    if plan.unchanged:
        note += f"; {plan.unchanged} files already in the store, not sent again"
    if not info.complete and not info.restaged:
        # The epilog ran out of time while copying: the partial snapshot is in the store now,
        # and the entry stays for the drain to copy the rest (restage) and ship it again.
        info.replace(shipped_partial=utc_now()).save(entry)
        return ShipResult(entry.name, True, f"partial snapshot shipped to {dest}; the drain ships the rest{note}",
                          time.monotonic() - started, unchanged=plan.unchanged)
    uploaded = plan.sent_bytes + _meta_bytes(entry)
    shutil.rmtree(entry, ignore_errors=True)
    return ShipResult(entry.name, True, f"shipped to {dest}{note}", time.monotonic() - started, uploaded,
                      str(index.get("end_state") or ""), plan.unchanged)


def _index(site: SiteConfig, dest: str, index: dict[str, Any], list_first: bool) -> str | None | StoreError:
    """The index step (:func:`index_run`): the owner of the run ID if another user's, ``None``
    when indexed, the error if the store failed (returned: it runs on a thread)."""
    try:
        if list_first:  # the listing ahead failed: the size is what is there now (as a try)
            index.update(stored_totals(list_keys(site.store.boto3_client(), *split_url(dest))))
        return index_run(site.store, site.index_url, index)
    except StoreError as e:
        return e


def _plan(entry: Path, direct: dict[str, dict[str, Any]], opened: list[tuple[str, int]], dropped: dict[str, str],
          held: dict[str, remote.RemoteObject]) -> _Plan:
    """What to send: every file of the manifest the store does not already hold.

    A large file that changed since it was hashed is hashed again (the manifest follows) and
    sent; one that can no longer be opened safely (the user swapped in a link, or deleted it)
    is dropped from the manifest and listed in the record's ``epilog.skipped``.
    """
    manifest = json.loads((entry / META / MANIFEST).read_text())
    etags = json.loads((entry / ETAGS_JSON).read_text()) if (entry / ETAGS_JSON).is_file() else {}
    rehashed = False
    for rel, fd in opened:
        if _identity_changed(fd, direct[rel]):
            meta = snapshot.hash_fd(fd)
            direct[rel].update(meta, **snapshot.identity(os.fstat(fd)))
            manifest["files"][rel] = meta
            etags.pop(rel, None)
            rehashed = True
    for rel in dropped:
        manifest["files"].pop(rel, None)
        direct.pop(rel, None)
    if rehashed or dropped:  # else the entry says it already (two fsyncs saved)
        _note_dropped(entry, manifest, direct, dropped)

    def send(rel: str) -> bool:
        meta = manifest["files"][rel]
        return not remote.unchanged({"size": meta["size"], "etag": etags.get(rel)}, held.get(rel))

    small = [rel for rel in manifest["files"] if rel not in direct and (entry / FILES / rel).is_file()]
    sent_small = [rel for rel in small if send(rel)]
    sent_direct = [(rel, fd) for rel, fd in opened if rel in manifest["files"] and send(rel)]
    sent = sum(int(manifest["files"][rel]["size"]) for rel in sent_small + [rel for rel, _ in sent_direct])
    return _Plan(sent_small, sent_direct, len(small) + len(opened) - len(sent_small) - len(sent_direct), sent)


def _after(entry: Path, held: dict[str, remote.RemoteObject]) -> list[dict[str, int]]:
    """``{"Size"}`` of every object under the run's prefix once the entry has shipped: what was
    there, with the manifest's files and the records in their new sizes."""
    sizes = {rel: obj.size for rel, obj in held.items()}
    manifest = json.loads((entry / META / MANIFEST).read_text())
    sizes.update({rel: int(meta["size"]) for rel, meta in manifest["files"].items()})
    meta_dir = entry / META
    sizes.update({str(p.relative_to(meta_dir)): p.stat().st_size for p in meta_dir.rglob("*") if p.is_file()})
    return [{"Size": size} for size in sizes.values()]


def _upload(entry: Path, info: EntryInfo, site: SiteConfig, base: list[str], plan: _Plan,
            direct: dict[str, dict[str, Any]], deadline: float) -> tuple[Problem | None, bool]:
    """Send the plan's files with one s5cmd (``run``: a ``cp`` per file; more than
    :data:`DIRECT_BATCH` descriptors go in batches), and the commit marker after them by the
    same process where it can (:func:`slurm_yolo.archive.s5cmd.run_then`: the marker's lines
    are given to s5cmd only once every file has reported success and no large file changed).

    Large files go as ``/proc/self/fd/N`` of the checked descriptor; one that changed while it
    was uploaded fails this round and is sent again by the drain. Small files are named by
    their spool path (``--raw``: a ``*`` in a name is no wildcard); the rare name a ``run``
    line cannot quote goes by its own ``cp`` (and the marker by its own process, after it).

    Returns:
        The problem (``None`` if all landed unchanged), and whether the commit marker landed too.
    """
    flags = " ".join(s5cmd.cp_flags())
    lines, odd = [], []
    for rel in plan.small:
        try:
            lines.append(f"cp --raw {flags} {s5cmd.quote_run_arg(str(entry / FILES / rel))} "
                         f"{s5cmd.quote_run_arg(info.dest + rel)}")
        except ValueError:
            odd.append(rel)
    try:
        marker = [] if odd else [f"cp {s5cmd.quote_run_arg(f'{entry / META}/*')} {s5cmd.quote_run_arg(info.dest)}"]
    except ValueError:  # a spool path a run line cannot quote: the marker goes by its own cp
        marker = []
    batches = [plan.direct[i:i + DIRECT_BATCH] for i in range(0, len(plan.direct), DIRECT_BATCH)] or [[]]
    committed = False
    for n, batch in enumerate(batches):
        todo = (lines if n == 0 else []) + [
            f"cp {flags} {s5cmd.quote_run_arg(f'/proc/self/fd/{fd}')} {s5cmd.quote_run_arg(info.dest + rel)}"
            for rel, fd in batch]
        then = marker if n == len(batches) - 1 else []

        def unmoved(batch: list[tuple[str, int]] = batch) -> bool:
            return not any(_identity_changed(fd, direct[rel]) for rel, fd in batch)

        if todo or then:
            result, committed = s5cmd.run_then(base + ["run"], site.store, deadline=deadline, first=todo, then=then,
                                               proceed=unmoved, pass_fds=tuple(fd for _, fd in batch))
            if not result.ok and committed:  # every file had landed: what failed is the marker
                return Problem.of("commit marker", result), False
            if not result.ok:
                failed = sorted(_archive_path(info.dest, url) for url in result.failed_destinations)
                return Problem.of("files" + (f" ({', '.join(failed[:3])}{' …' if len(failed) > 3 else ''})"
                                             if failed else ""), result), False
            if committed:  # the files were checked unchanged once all had landed (unmoved), then the marker went
                return None, True
        moved = [rel for rel, fd in batch if _identity_changed(fd, direct[rel])]
        if moved:
            return Problem(f"large files: {moved[0]} changed while it was uploaded; uploaded again on the "
                           "next try", "changed", True), False
    for rel in odd:
        result = s5cmd.run(base + ["cp", "--raw", *s5cmd.cp_flags(), str(entry / FILES / rel), info.dest + rel],
                           site.store, deadline=deadline)
        if not result.ok:
            return Problem.of(f"files ({rel})", result), False
    return None, committed


def _meta_bytes(entry: Path) -> int:
    """Bytes of the commit marker and the records one ship sends."""
    return sum(p.stat().st_size for p in (entry / META).rglob("*") if p.is_file())


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
        # The ETags computed for the first copy may be of bytes that changed since.
        (entry / ETAGS_JSON).unlink(missing_ok=True)
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
