"""The durable spool: staged run snapshots waiting to be (or being) shipped to the store.

One entry per ended attempt, in the root-only spool folder::

    <spool>/<run_id>.a<attempt>/
        entry.json        where it goes (destination, index key), who it belongs to, state, errors
        files/...         the run folder snapshot (copied safely, see snapshot.py)
        meta/run.json     the record with the epilog's end state   } uploaded last:
        meta/MANIFEST.json size + sha256 of every file in files/    } the commit marker
        meta/attempts/attempt-N.json  the record as this attempt ended (kept per attempt)
        index.json        the run's index record

Shipping is idempotent: ``s5cmd sync`` copies only what the store does not have yet (so a
partial copy resumes), then the commit marker, then the run's index record, then the line
in ``INDEX.jsonl`` (conditional writes), then the entry is deleted. A per-run ``flock`` makes two drains (or a drain and an epilog) never ship the same
run at once; a newer attempt's entry supersedes older ones of the same run.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from slurm_yolo.archive import s5cmd
from slurm_yolo.archive.layout import MANIFEST, index_key
from slurm_yolo.archive.store import join_url
from slurm_yolo.epilog.site import SiteConfig
from slurm_yolo.record import utc_now, write_json_atomic

ENTRY_JSON = "entry.json"


@dataclass(frozen=True)
class ShipResult:
    """What one shipping attempt of a spool entry did."""

    entry: str
    ok: bool
    detail: str
    seconds: float


def entry_name(run_id: str, attempt: int) -> str:
    return f"{run_id}.a{attempt}"


def iter_entries(spool_dir: str | os.PathLike) -> Iterator[Path]:
    """Spool entries, oldest attempt first within each run."""
    root = Path(spool_dir)
    if not root.is_dir():
        return iter(())

    def key(p: Path):
        run_id, _, attempt = p.name.rpartition(".a")
        return run_id, int(attempt) if attempt.isdigit() else 0

    return iter(sorted((p for p in root.iterdir() if p.is_dir() and (p / ENTRY_JSON).is_file()), key=key))


class RunLock:
    """An exclusive per-run ``flock`` in the spool (``<spool>/.locks/<run_id>``)."""

    def __init__(self, spool_dir: str | os.PathLike, run_id: str) -> None:
        locks = Path(spool_dir) / ".locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        self.fd = os.open(locks / run_id, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def acquire(self, timeout: float) -> bool:
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
        os.close(self.fd)


def write_entry(entry: Path, info: dict[str, Any], record: dict[str, Any], manifest: dict[str, Any],
                index: dict[str, Any]) -> None:
    """Write the metadata of a staged entry (the files are already in ``entry/files``)."""
    (entry / "meta" / "attempts").mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomic(entry / "meta" / "run.json", record, mode=0o600)
    # Each attempt's snapshot stays in the store, marked with its number; later attempts
    # overwrite run.json but never this file.
    write_json_atomic(entry / "meta" / "attempts" / f"attempt-{info['attempt']}.json", record, mode=0o600)
    write_json_atomic(entry / "meta" / MANIFEST, manifest, mode=0o600)
    write_json_atomic(entry / "index.json", index, mode=0o600)
    write_json_atomic(entry / ENTRY_JSON, info, mode=0o600)


def supersede_older(spool_dir: str | os.PathLike, run_id: str, attempt: int) -> list[str]:
    """Delete entries of earlier attempts of a run: the new snapshot contains everything newer."""
    removed = []
    for p in iter_entries(spool_dir):
        rid, _, a = p.name.rpartition(".a")
        if rid == run_id and a.isdigit() and int(a) < attempt:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _failed(entry: Path, info: dict[str, Any], detail: str, started: float) -> ShipResult:
    """Record the failure in the entry (it stays in the spool for the drain) and report it."""
    info.update(attempts=info.get("attempts", 0) + 1, last_error=detail, last_try=utc_now())
    write_json_atomic(entry / ENTRY_JSON, info, mode=0o600)
    return ShipResult(entry.name, False, detail, time.monotonic() - started)


def ship(entry: Path, site: SiteConfig, *, deadline: float) -> ShipResult:
    """Upload one staged entry: files (sync), commit marker, index record; delete it on success.

    Never raises for store problems: the entry stays in the spool with the error recorded.
    """
    started = time.monotonic()
    info = json.loads((entry / ENTRY_JSON).read_text())
    dest = info["dest"]
    base = s5cmd.base_argv(site.store, workers=site.s5cmd_workers, retries=3)
    steps: list[tuple[str, list[str]]] = []
    if any((entry / "files").iterdir()):
        steps.append(("files", base + ["sync", f"{entry / 'files'}/", dest]))
    steps.append(("commit marker", base + ["cp", f"{entry / 'meta'}/*", dest]))
    steps.append(("index record", base + ["cp", "--content-type", "application/json", str(entry / "index.json"),
                                          join_url(site.index_url, index_key(info["run_id"]))]))
    for label, argv in steps:
        result = s5cmd.run(argv, site.store, deadline=deadline)
        if not result.ok:
            return _failed(entry, info, f"{label}: {result.summary()}", started)
    # INDEX.jsonl needs conditional writes (If-Match), which s5cmd cannot do: boto3 here.
    from slurm_yolo.catalog.index import add_to_index
    from slurm_yolo.errors import StoreError

    try:
        add_to_index(site.store, site.index_url, json.loads((entry / "index.json").read_text()), deadline=deadline)
    except StoreError as e:
        return _failed(entry, info, f"INDEX.jsonl: {e}", started)
    shutil.rmtree(entry, ignore_errors=True)
    return ShipResult(entry.name, True, f"shipped to {dest}", time.monotonic() - started)


def drain(site: SiteConfig, *, budget_s: float = 600, log: Callable[[str], None] = lambda m: None,
          lock_timeout: float = 0.0) -> list[ShipResult]:
    """Ship every spooled entry whose run is not locked by someone else. Idempotent.

    Safe to run twice at once: each run is shipped under its lock; an entry shipped by
    the other drain meanwhile is simply gone when we get to it.
    """
    deadline = time.monotonic() + budget_s
    results = []
    for entry in iter_entries(site.spool_dir):
        if time.monotonic() >= deadline:
            break
        run_id = entry.name.rpartition(".a")[0]
        lock = RunLock(site.spool_dir, run_id)
        try:
            if not lock.acquire(lock_timeout):
                log(f"{entry.name}: busy (another drain or epilog holds it), skipped")
                continue
            if not (entry / ENTRY_JSON).is_file():
                continue  # shipped by someone else while we waited
            result = ship(entry, site, deadline=deadline)
            log(f"{entry.name}: {'ok' if result.ok else 'failed'} {result.detail} ({result.seconds:.1f} s)")
            results.append(result)
        finally:
            lock.close()
    return results
