"""The job's side thread: keep a good checkpoint, and sync the run folder while it trains.

It runs beside training in the job's own process, not as an Ultralytics callback: custom
callbacks are dropped under multi-GPU DDP (Ultralytics re-launches training in worker
processes), while this thread lives in the process that launched them and only looks at
files. It never raises into training and never blocks it: copies run in an s5cmd child
process with few workers; failures are logged and the next round catches up (``s5cmd sync``
copies only what the store lacks or what changed).

Checkpoints: Ultralytics writes ``weights/last.pt`` in place, so a kill mid-write leaves a
truncated file. Whenever ``last.pt`` changes, the thread copies it, checks that the copy is
a complete checkpoint (its zip directory reads back) taken while the source did not change,
and renames it to ``weights/last.good.pt``; resume falls back to that copy when ``last.pt``
is damaged.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from slurm_yolo import record as rec
from slurm_yolo.archive import s5cmd
from slurm_yolo.runfolder import GOOD_CHECKPOINT, LAST_PT, PLACEMENT, RESULTS_CSV, RUN_LOCK, WEIGHTS
from slurm_yolo.store import Store

# Never synced: lock files, temp files of atomic writes, the spare checkpoint (bandwidth), and
# the launcher's placement note (the epilog's archive leaves it out too: the archive holds
# what its manifest lists, plus run.json and the manifest).
# s5cmd matches --exclude against the whole source path, hence the leading "*/".
SYNC_EXCLUDES = (f"*/{RUN_LOCK}", "*.tmp", f"*/{WEIGHTS}/{GOOD_CHECKPOINT}", f"*/{PLACEMENT}")


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


def sync_argv(store: Store, run_dir: Path, archive_url: str, workers: int = 4) -> list[str]:
    """``s5cmd sync`` of the run folder to its archive URL, minus lock/temp files, at the
    lowest CPU priority (nice 19): the data loader's CPU time matters more than the copy."""
    argv = s5cmd.base_argv(store, workers=workers, retries=2) + ["sync", "--no-follow-symlinks"]
    for pattern in SYNC_EXCLUDES:
        argv += ["--exclude", pattern]
    prefix = [NICE, "-n", "19"] if os.access(NICE, os.X_OK) else []
    return prefix + argv + [f"{run_dir}/", archive_url]


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
        self._last_sync = time.monotonic()
        self._last_rows = 0
        self.syncs = 0
        self.failures = 0

    @property
    def syncing(self) -> bool:
        return bool(self.archive_url) and (self.every_s is not None or self.every_epochs is not None)

    def run(self) -> None:
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
        if due_time or due_epochs:
            self._last_rows = rows
            self.sync(rows)

    def sync(self, rows: int) -> bool:
        """Record progress, then copy what changed to the store. Logs; never raises."""
        self._last_sync = time.monotonic()
        csv_path = self.run_dir / RESULTS_CSV
        try:
            rec.update_record(self.run_dir, lambda r: r.update(progress={
                "epochs_done": rows, "time": rec.utc_now(),
                "metrics": rec.read_metrics(csv_path, rec.fitness_candidates(r))}))
        except (OSError, ValueError) as e:
            _log(f"sync: could not record progress: {e}")
        result = s5cmd.run(sync_argv(self.store, self.run_dir, self.archive_url), self.store,
                           timeout=max(60.0, (self.every_s or 60.0) * 2))
        self.syncs += 1
        if not result.ok:
            self.failures += 1
            _log(f"sync to {self.archive_url} failed ({result.summary()}); will retry")
        return result.ok

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (waits up to ``timeout`` for a sync in flight)."""
        self._stop_event.set()
        self.join(timeout)


def _log(message: str) -> None:
    print(f"[slurm-yolo] {message}", file=sys.stderr, flush=True)
