"""The durable spool's queue: staged run snapshots waiting to be (or being) shipped, and the
per-run lock. Shipping them is :mod:`slurm_yolo.epilog.ship`'s.

One entry per ended attempt, in the root-only spool folder::

    <spool>/<uid>.<job_id>.<run_id>.a<attempt>/
        entry.json        where it goes (destination, index key), who it belongs to, state, errors
        files/...         the run folder snapshot (copied safely, see snapshot.py)
        meta/run.json     the record with the epilog's end state   } uploaded last:
        meta/MANIFEST.json size + sha256 of every file (archive/manifest.py) } the commit marker
        meta/attempts/attempt-N.json  the record as this attempt ended (kept per attempt)
        index.json        the run's index record
        direct.json       the large files, uploaded straight from the run folder (snapshot.py)
        etags.json        the ETag each file's upload would get, where it was computed: a file
                          the store already holds with that ETag is not sent again (remote.py)

The entry's name is the attempt's :class:`~slurm_yolo.runfolder.AttemptKey` (its claim's name
too). The run ID alone is chosen by the user (``--run-id``), so it never names an entry
alone: the uid and the Slurm job ID (both from slurmd, and kept across requeues) come first,
and two users, or two jobs, with the same run ID never share an entry, a lock or a supersede.

Shipping is idempotent: ``s5cmd cp`` uploads every staged file the store does not already
hold under its key (same size and the ETag this upload would give it: :mod:`slurm_yolo.archive.remote`;
not ``sync``, which trusts sizes and times: an in-training sync may have left a same-size
object with a newer time, e.g. a ``last.pt`` uploaded while it was being rewritten), then the
commit marker, then the run's
index record and its pending update (compaction is the drain's, not the epilog's), then the entry is
deleted. An entry whose snapshot the epilog could not finish in its time budget is copied
again from the run folder by the drain before it ships. A per-run ``flock`` makes two
drains (or a drain and an epilog) never ship the same run at once; a newer attempt's entry
supersedes older ones of the same run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from slurm_yolo.archive.manifest import MANIFEST
from slurm_yolo.epilog.entry import ENTRY_JSON, EntryInfo
from slurm_yolo.record import write_json_atomic
from slurm_yolo.runfolder import RUN_JSON, AttemptKey

FILES, META, ATTEMPTS = "files", "meta", "attempts"
INDEX_JSON = "index.json"
DIRECT_JSON = "direct.json"
ETAGS_JSON = "etags.json"
LOCKS = ".locks"


def entry_path(spool_dir: str | os.PathLike[str], key: AttemptKey) -> Path:
    """The spool folder of one attempt."""
    return Path(spool_dir) / str(key)


def entry_key(entry: Path) -> AttemptKey | None:
    """The attempt a spool folder holds; ``None`` for a folder no archiver names so."""
    return AttemptKey.parse(entry.name)


def attempt_record(entry: Path, attempt: int) -> Path:
    """Where an entry keeps the record of attempt ``attempt`` (``meta/attempts/attempt-N.json``)."""
    return entry / META / ATTEMPTS / f"attempt-{attempt}.json"


def records(entry: Path) -> list[Path]:
    """Every record an entry will upload: ``meta/run.json`` and each attempt's."""
    return [entry / META / RUN_JSON, *sorted((entry / META / ATTEMPTS).glob("attempt-*.json"))]


def iter_entries(spool_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Spool entries, oldest attempt first within each run (folders not named by an
    :class:`AttemptKey` last, in name order: still listed, for a person to look at)."""
    root = Path(spool_dir)
    if not root.is_dir():
        return iter(())

    def order(p: Path) -> tuple[int, str, int]:
        key = entry_key(p)
        return (0, key.run_key, key.attempt) if key is not None else (1, p.name, 0)

    return iter(sorted((p for p in root.iterdir() if p.is_dir() and (p / ENTRY_JSON).is_file()), key=order))


class RunLock:
    """An exclusive per-run ``flock`` in the spool (``<spool>/.locks/<run key>``)."""

    def __init__(self, spool_dir: str | os.PathLike[str], run_key: str) -> None:
        locks = Path(spool_dir) / LOCKS
        locks.mkdir(mode=0o700, exist_ok=True)
        self.fd = os.open(locks / run_key, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    @classmethod
    def of(cls, spool_dir: str | os.PathLike[str], entry: Path) -> RunLock:
        """The lock of the run a spool entry belongs to."""
        key = entry_key(entry)
        return cls(spool_dir, key.run_key if key is not None else entry.name)

    def acquire(self, timeout: float) -> bool:
        """Take the lock, polling for up to ``timeout`` seconds; ``False`` if someone holds it."""
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= end:
                    return False
                time.sleep(0.05)

    def close(self) -> None:
        """Release the lock."""
        os.close(self.fd)


def write_entry(entry: Path, info: EntryInfo, record: dict[str, Any], manifest: dict[str, Any],
                index: dict[str, Any], direct: dict[str, dict[str, Any]] | None = None,
                etags: dict[str, str] | None = None) -> None:
    """Write the metadata of a staged entry (the small files are already in ``entry/files``;
    ``direct`` lists the large ones, uploaded from the run folder: see snapshot.py; ``etags``
    the expected ETag of the files whose store copy may already be this one)."""
    (entry / META / ATTEMPTS).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomic(entry / META / RUN_JSON, record, mode=0o600)
    # Each attempt's snapshot stays in the store, marked with its number; later attempts
    # overwrite run.json but never this file.
    write_json_atomic(attempt_record(entry, info.attempt), record, mode=0o600)
    write_json_atomic(entry / META / MANIFEST, manifest, mode=0o600)
    write_json_atomic(entry / INDEX_JSON, index, mode=0o600)
    if direct is not None:
        write_json_atomic(entry / DIRECT_JSON, direct, mode=0o600)
    if etags is not None:
        write_json_atomic(entry / ETAGS_JSON, etags, mode=0o600)
    info.save(entry)


def supersede_older(spool_dir: str | os.PathLike[str], key: AttemptKey) -> list[str]:
    """Delete entries of earlier attempts of ``key``'s run: the new snapshot has everything newer.

    Their per-attempt records (``meta/attempts/attempt-N.json``) move into the new entry
    first, so every attempt's record still reaches the store.
    """
    removed = []
    keep = entry_path(spool_dir, key) / META / ATTEMPTS
    for p in iter_entries(spool_dir):
        older = entry_key(p)
        if older is not None and older.run_key == key.run_key and older.attempt < key.attempt:
            for rec in sorted((p / META / ATTEMPTS).glob("attempt-*.json")):
                keep.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.replace(rec, keep / rec.name)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed
