"""The job's side thread: keep a good checkpoint, and sync the run folder while it trains.

It runs beside training in the job's own process, not as an Ultralytics callback: custom
callbacks are dropped under multi-GPU DDP (Ultralytics re-launches training in worker
processes), while this thread lives in the process that launched them and only looks at
files. It never raises into training and never blocks it: the thread runs at nice 19 (Linux
gives each thread its own nice value), copies run in an s5cmd child process at nice 19 with
few workers, failures are logged and the next round catches up.

What a sync sends is decided by the epilog's own rule (:mod:`slurm_yolo.archive.remote`): one
listing of the run's prefix, and a file is sent unless the store holds an object of its size
whose ETag is the one this upload gives it (every upload uses :data:`s5cmd.PART_SIZE`). So an
unchanged ``best.pt``, plots or a ``save_period`` checkpoint go up once, a changed file (same
size, other bytes included) goes up again, and the epilog later skips what the sync sent.
The local ETags (md5s, read in full) are kept per file and computed again only when the
file's size, mtime, ctime or inode changed; the sync runs as the job's user, whose files these
are, so that is the user's own shortcut, not something a root process believes.

Checkpoints: Ultralytics writes ``weights/last.pt`` in place, so a kill mid-write leaves a
truncated file. Whenever ``last.pt`` changes, the thread copies it, checks that the copy is
a complete checkpoint (its zip directory reads back) taken while the source did not change,
and renames it to ``weights/last.good.pt``; resume falls back to that copy when ``last.pt``
is damaged.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm_yolo import record as rec
from slurm_yolo.archive import manifest, remote, s5cmd
from slurm_yolo.errors import StoreError
from slurm_yolo.runfolder import GOOD_CHECKPOINT, LAST_PT, PLACEMENT, RESULTS_CSV, RUN_LOCK, WEIGHTS
from slurm_yolo.store import Store

# Never synced: lock files, the spare checkpoint (bandwidth), and the launcher's placement
# note (the epilog's archive leaves them out too: the archive holds what its manifest lists,
# plus run.json and the manifest); and temp files of atomic writes, which vanish.
SYNC_EXCLUDED_NAMES = frozenset({RUN_LOCK, PLACEMENT})
SYNC_EXCLUDED_PATHS = frozenset({f"{WEIGHTS}/{GOOD_CHECKPOINT}"})
TEMP_SUFFIX = ".tmp"


def checkpoint_complete(path: Path) -> bool:
    """Whether a torch checkpoint file is whole: torch.save writes a zip, whose directory is
    at the end of the file, so a truncated file fails to open. Cheap: reads only the end."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def keep_good_checkpoint(weights: Path, seen: dict[str, Any]) -> bool:
    """Copy a new, complete ``last.pt`` to ``last.good.pt`` (atomically); True if copied.

    The copy is checked, not the source: Ultralytics may be rewriting ``last.pt`` while we
    read it, so the copy must be a complete zip and the source unchanged across the copy.
    """
    last = weights / LAST_PT
    try:
        before = last.stat()
    except FileNotFoundError:
        return False
    key = (before.st_mtime_ns, before.st_size)
    if seen.get("copied") == key:
        return False
    tmp = weights / f".{GOOD_CHECKPOINT}.{os.getpid()}.tmp"
    try:
        shutil.copyfile(last, tmp)
        after = last.stat()
        if (after.st_mtime_ns, after.st_size) != key or not checkpoint_complete(tmp):
            return False  # caught mid-write; next round
        os.replace(tmp, weights / GOOD_CHECKPOINT)
    finally:
        tmp.unlink(missing_ok=True)
    seen["copied"] = key
    return True


NICE = "/usr/bin/nice"


def synced(rel: str) -> bool:
    """Whether the sync sends the run folder's file ``rel`` (a path below the folder, ``/``-separated)."""
    name = rel.rsplit("/", 1)[-1]
    return not (name in SYNC_EXCLUDED_NAMES or rel in SYNC_EXCLUDED_PATHS or name.endswith(TEMP_SUFFIX))


def run_files(run_dir: Path) -> dict[str, os.stat_result]:
    """The regular files the sync considers (path below ``run_dir`` → stat), symlinks and
    what :func:`synced` leaves out skipped; symlinked folders are not entered."""
    found: dict[str, os.stat_result] = {}
    for top, dirs, files in os.walk(run_dir, followlinks=False):
        base = Path(top).relative_to(run_dir).as_posix()
        for name in files:
            rel = name if base == "." else f"{base}/{name}"
            try:
                st = os.lstat(os.path.join(top, name))
            except FileNotFoundError:  # gone since the listing (a temp file renamed)
                continue
            if stat.S_ISREG(st.st_mode) and synced(rel):
                found[rel] = st
    return found


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def local_etag(path: Path, st: os.stat_result, known: dict[str, tuple[tuple[int, int, int, int], str | None]],
               rel: str) -> str | None:
    """The ETag an upload of ``path`` would get (:func:`manifest.hash_fd`, the upload's part
    size), from ``known`` while the file's identity is the one it was computed for. A file that
    changes while it is read gets no cached value (its next look reads it again)."""
    key = _identity(st)
    cached = known.get(rel)
    if cached and cached[0] == key:
        return cached[1]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        etag = manifest.hash_fd(fd, part_size=s5cmd.PART_SIZE).get("etag")
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if _identity(after) == key:
        known[rel] = (key, etag)
    return etag


def sync_plan(run_dir: Path, files: dict[str, os.stat_result], held: dict[str, remote.RemoteObject],
              known: dict[str, tuple[tuple[int, int, int, int], str | None]]) -> dict[str, int]:
    """What this round sends: path below ``run_dir`` → size, every one of ``files`` (from
    :func:`run_files`) that the store does not already hold (:func:`remote.unchanged`). Only a
    file with an object of its size at its key is read (for its ETag): a new or resized file is
    sent unread."""
    send: dict[str, int] = {}
    for rel, st in sorted(files.items()):
        obj = held.get(rel)
        if obj is not None and obj.size == st.st_size:
            meta = {"size": st.st_size, "etag": local_etag(run_dir / rel, st, known, rel)}
            if remote.unchanged(meta, obj):
                continue
        send[rel] = st.st_size
    return send


def upload_argv(store: Store, workers: int = 4) -> list[str]:
    """``s5cmd run`` (its commands on stdin) at the lowest CPU priority (nice 19): the data
    loader's CPU time matters more than the copy."""
    prefix = [NICE, "-n", "19"] if os.access(NICE, os.X_OK) else []
    return prefix + s5cmd.base_argv(store, workers=workers, retries=2) + ["run"]


def upload_commands(run_dir: Path, archive_url: str, rels: list[str]) -> str:
    """One ``cp`` per file, with the part size the skip rule assumes (:func:`s5cmd.cp_flags`);
    ``--raw``: a name with glob characters (``train_batch[0]*.jpg``) is a name, not a pattern.

    Raises:
        ValueError: a path cannot be written into an s5cmd command (a quote, a newline).
    """
    flags = " ".join(s5cmd.cp_flags())
    dest = archive_url.rstrip("/") + "/"
    return "".join(f"cp --raw {flags} {s5cmd.quote_run_arg(str(run_dir / rel))} {s5cmd.quote_run_arg(dest + rel)}\n"
                   for rel in rels)


@dataclass(frozen=True)
class SyncRound:
    """What one sync did: files and bytes sent, files the store already held, and whether
    every copy landed (``detail`` says what failed)."""

    ok: bool
    sent_files: int = 0
    sent_bytes: int = 0
    unchanged: int = 0
    detail: str = ""


class RunMonitor(threading.Thread):
    """Daemon thread: every ``poll_s`` (1 s) keep a good checkpoint; every ``every_s`` seconds (or
    ``every_epochs`` new epochs) record progress in run.json and sync the folder to the store.

    Args:
        run_dir: the run folder.
        archive_url: ``s3://…/<run_id>/`` (from run.json).
        store: the user's store settings (the job runs as the user, with the user's credentials).
        every_s: seconds between syncs; ``None`` disables time-based sync.
        every_epochs: epochs between syncs; ``None`` disables epoch-based sync.
    """

    def __init__(self, run_dir: Path, archive_url: str | None, store: Store, every_s: float | None,
                 every_epochs: int | None, poll_s: float = 1.0) -> None:
        super().__init__(name="slurm-yolo-monitor", daemon=True)
        self.run_dir, self.archive_url, self.store = run_dir, archive_url, store
        self.every_s, self.every_epochs, self.poll_s = every_s, every_epochs, poll_s
        self._stop_event = threading.Event()
        self._seen: dict[str, Any] = {}
        # path → (size, mtime, ctime, inode) → the upload ETag computed for it (local_etag)
        self._etags: dict[str, tuple[tuple[int, int, int, int], str | None]] = {}
        self._last_sync = time.monotonic()
        self._last_rows = 0
        self.syncs = 0
        self.failures = 0
        self.sent_bytes = 0
        self.last_round: SyncRound | None = None

    @property
    def syncing(self) -> bool:
        return bool(self.archive_url) and (self.every_s is not None or self.every_epochs is not None)

    def run(self) -> None:
        try:  # this thread only (Linux): its hashing and copying yield to training
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while not self._stop_event.wait(self.poll_s):
            try:
                self.tick()
            except Exception as e:  # never into training
                _log(f"monitor: {type(e).__name__}: {e}")

    def tick(self) -> None:
        """One look at the run: keep a verified checkpoint copy, sync if the interval passed."""
        keep_good_checkpoint(self.run_dir / WEIGHTS, self._seen)
        if not self.syncing:
            return
        rows = len(rec.read_results_rows(self.run_dir / RESULTS_CSV))
        due_time = self.every_s is not None and time.monotonic() - self._last_sync >= self.every_s
        due_epochs = self.every_epochs is not None and rows - self._last_rows >= self.every_epochs
        if (due_time or due_epochs) and not self._stop_event.is_set():
            self._last_rows = rows
            self.sync(rows)

    def sync(self, rows: int) -> bool:
        """Record progress, then copy what the store does not hold yet. Logs; never raises."""
        self._last_sync = time.monotonic()
        csv_path = self.run_dir / RESULTS_CSV
        try:
            rec.update_record(self.run_dir, lambda r: r.update(progress={
                "epochs_done": rows, "time": rec.utc_now(),
                "metrics": rec.read_metrics(csv_path, rec.fitness_candidates(r))}))
        except (OSError, ValueError) as e:
            _log(f"sync: could not record progress: {e}")
        done = self.send(deadline=time.monotonic() + max(60.0, (self.every_s or 60.0) * 2))
        self.syncs += 1
        self.last_round = done
        self.sent_bytes += done.sent_bytes
        if not done.ok:
            self.failures += 1
            _log(f"sync to {self.archive_url} failed ({done.detail}); will retry")
        elif done.sent_files:
            _log(f"sync: {done.sent_files} file(s), {done.sent_bytes / 1e6:.1f} MB sent; "
                 f"{done.unchanged} already in the store")
        return done.ok

    def send(self, deadline: float) -> SyncRound:
        """One round: list the run's prefix, send what it lacks (:func:`sync_plan`)."""
        assert self.archive_url
        try:
            held = remote.listing(self.store, self.archive_url, deadline=deadline)
            files = run_files(self.run_dir)
            plan = sync_plan(self.run_dir, files, held, self._etags)
            if not plan:
                return SyncRound(True, unchanged=len(files))
            result = s5cmd.run(upload_argv(self.store), self.store, deadline=deadline,
                               stdin_text=upload_commands(self.run_dir, self.archive_url, list(plan)))
        except (StoreError, OSError, ValueError) as e:
            return SyncRound(False, detail=str(e))
        prefix = self.archive_url.rstrip("/") + "/"
        failed = {d[len(prefix):] for d in result.failed_destinations if d.startswith(prefix)}
        # A time-out or a failure that names no file: which copies landed is not known; count none.
        sent = [] if result.timed_out or (failed == set() and not result.ok) else [r for r in plan if r not in failed]
        return SyncRound(result.ok, len(sent), sum(plan[r] for r in sent), len(files) - len(plan),
                         "" if result.ok else result.summary())

    def halt(self) -> None:
        """Start no new round (safe from a signal handler: it only sets an event)."""
        self._stop_event.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (waits up to ``timeout`` for a sync in flight)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)


def _log(message: str) -> None:
    print(f"[slurm-yolo] {message}", file=sys.stderr, flush=True)
