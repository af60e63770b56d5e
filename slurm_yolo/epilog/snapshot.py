"""Safely find a job's run folder and copy it, as root, into the root-only spool.

The epilog runs as root; the run folder, the marker pointing at it and everything inside
belong to a user. Past Slurm CVEs were exactly root following user-controlled paths, so:

- the marker path is walked one component at a time with ``O_NOFOLLOW`` from ``/`` (the
  launcher writes a symlink-free real path), and the final folder must belong to the job's
  user: a marker pointing at another user's folder is refused;
- inside, every entry is ``lstat``-ed and opened relative to its parent's fd with
  ``O_NOFOLLOW | O_NONBLOCK`` and checked again with ``fstat``: only regular files owned by
  the job's user are copied. Symlinks, FIFOs, sockets, devices and files owned by anyone
  else (a hard link to ``/etc/shadow`` is owned by root) are skipped and logged. ``O_NONBLOCK``
  means even a FIFO swapped in between the two checks cannot block the epilog;
- small files are copied into the spool (root, 0700) and hashed on the way (one read per
  file), so what is uploaded is exactly what was checked, and an upload that fails later is
  retried from the copy;
- large files (:data:`DIRECT_MIN_BYTES` and up) are hashed where they are and not copied:
  the spool holds metadata and small files only, so a 10 GB run needs no 10 GB of spool.
  They are uploaded straight from the run folder (spool.py): re-opened with the same checks,
  their identity (device, inode, size, mtime, ctime) compared with what was hashed, handed to
  s5cmd as ``/proc/self/fd/N`` of the checked descriptor (never by path), and compared again
  after the upload, so the manifest's sha256 is what landed. A file that changed is hashed
  again; one that changed during its upload is uploaded again later.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from slurm_yolo import runfolder
from slurm_yolo.archive import manifest, s5cmd
from slurm_yolo.errors import Refused
from slurm_yolo.names import NAME_RE

# Never archived from the run folder: the epilog writes run.json/MANIFEST.json itself; the
# lock file is bookkeeping; last.good.pt is the job's local crash-safety copy of last.pt; the
# placement says what run.json says (task, project, model, archive URL), read only when
# run.json is damaged.
EXCLUDE = frozenset({runfolder.RUN_JSON, manifest.MANIFEST, runfolder.RUN_LOCK, runfolder.PLACEMENT,
                     f"{runfolder.WEIGHTS}/{runfolder.GOOD_CHECKPOINT}"})
MAX_DEPTH = 32
MAX_ENTRIES = 200_000
MAX_JSON_BYTES = 16 << 20
# The cores the epilog may use (its CPU affinity), fixed at start.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# Large files hashed at once (see _Hasher): one per core, at most 8 (each holds a descriptor
# and up to :data:`PART_THREADS` + 1 read-ahead queues: slurm_yolo.archive.manifest.AHEAD_CHUNKS).
HASH_THREADS = max(2, min(CORES, 8))
# Threads for the md5 of one file's upload parts, beside its sha256 (manifest.hash_fd).
PART_THREADS = max(1, min(CORES, 4))
# Large files handed to the hasher before the small files are copied: what it holds at once.
LARGE_FIRST = HASH_THREADS * 2
# Files at least this large go to the store straight from the run folder (see the module doc).
DIRECT_MIN_BYTES = 4 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass
class Snapshot:
    """Result of copying a run folder: files copied (relpath → size/sha256) and what was skipped."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    complete: bool = True
    # Archive path → where the file is and what was hashed (:func:`identity`), for the files
    # uploaded straight from the run folder instead of from the spool.
    direct: dict[str, dict[str, Any]] = field(default_factory=dict)
    spool_full: bool = False
    # Archive path → the ETag its upload would get (:func:`slurm_yolo.archive.manifest.s3_etag`),
    # for the files the caller asked it of (an object of that size is in the store already).
    etags: dict[str, str] = field(default_factory=dict)


# Whether to compute the upload's ETag of a file (archive path, size) while hashing it: an md5
# costs more than the sha256 here (SHA-NI), so only where it can spare an upload. ``None``: not
# known yet (the store's listing has not answered): the walk takes it as yes (it never waits);
# a large file's hash, on its own thread, waits up to ETAG_WAIT_S for the answer first.
EtagWanted = Callable[[str, int], "bool | None"]
ETAG_WAIT_S = 2.0


def identity(st: os.stat_result) -> dict[str, int]:
    """What must not change between hashing a file and uploading it."""
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def valid_marker_path(path: str) -> bool:
    """An absolute, normalised path without control characters or ``..`` components."""
    return (
        path.startswith("/") and len(path) < 4096 and os.path.normpath(path) == path
        and not any(ord(c) < 32 or ord(c) == 127 for c in path)
        and ".." not in path.split("/")
    )


def open_dir_nofollow(path: str, uid: int) -> int:
    """Open ``path`` walking every component with ``O_NOFOLLOW``; the last must be owned by ``uid``.

    Returns:
        An open directory fd (caller closes it).

    Raises:
        Refused: a component is a symlink or missing, or the folder belongs to someone else.
    """
    if not valid_marker_path(path):
        raise Refused(f"marker path {path!r} is not an absolute, normalised path")
    fd = _descend(os.open("/", DIR_FLAGS), [p for p in path.split("/") if p], repr(path))
    try:
        st = os.fstat(fd)
        if st.st_uid != uid:
            raise Refused(f"{path} belongs to uid {st.st_uid}, not the job's uid {uid}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _descend(fd: int, parts: list[str], where: str, owner: int | None = None) -> int:
    """From the open folder ``fd`` (consumed), open each of ``parts`` in turn without following
    links (and, with ``owner``, only folders that uid owns); return the last folder's fd.

    Raises:
        Refused: a component is a link, missing, or owned by someone else.
    """
    try:
        for part in parts:
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise Refused(f"cannot open {part!r} in {where} without following links: {e.strerror}") from e
            os.close(fd)
            fd = nfd
            if owner is not None and os.fstat(fd).st_uid != owner:
                raise Refused(f"{part!r} in {where} is not owned by the job's user")
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_json_at(dir_fd: int, name: str, uid: int) -> Any:
    """Read a small JSON file in ``dir_fd`` that must be a regular file owned by ``uid``."""
    fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            raise Refused(f"{name} is not a regular file owned by uid {uid}")
        if st.st_size > MAX_JSON_BYTES:
            raise Refused(f"{name} is larger than {MAX_JSON_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            return json.loads(f.read(MAX_JSON_BYTES + 1))
    finally:
        os.close(fd)


def exists_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists in ``dir_fd`` (not following a final symlink)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


def resolve_array_element(sweep_fd: int, job_id: str, uid: int, task_id: str | None = None) -> str:
    """The run folder of the array element that ran as Slurm job ``job_id``.

    ``array.json`` (written by the launcher) lists the element folders; the element whose
    ``run.json`` records ``job_id`` in its last attempt is the one (each job writes that
    first thing). ``task_id`` (from scontrol's ArrayTaskId) is used when no element has
    recorded it, e.g. a job killed before it started Python.
    """
    data = read_json_at(sweep_fd, runfolder.ARRAY_JSON, uid)
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, dict):
        raise Refused(f"{runfolder.ARRAY_JSON} has no 'runs' mapping")
    for path in runs.values():
        if not isinstance(path, str) or not valid_marker_path(path):
            continue
        try:
            fd = open_dir_nofollow(path, uid)
        except Refused:
            continue
        try:
            record = read_json_at(fd, runfolder.RUN_JSON, uid)
        except (OSError, ValueError, Refused):
            continue
        finally:
            os.close(fd)
        attempts = record.get("attempts") if isinstance(record, dict) else None
        if attempts and isinstance(attempts[-1], dict) and str(attempts[-1].get("slurm_job_id")) == str(job_id):
            return path
    path = runs.get(str(task_id)) if task_id not in (None, "") else None
    if not isinstance(path, str):
        raise Refused(f"no element of the sweep recorded job {job_id} and scontrol gave no ArrayTaskId")
    return path


def _safe_component(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(ord(c) < 32 or ord(c) == 127 for c in name)


def copy_tree(src_fd: int, uid: int, dest: Path, *, deadline: float, exclude: frozenset[str] = frozenset(),
              direct_root: str | None = None, etag_wanted: EtagWanted | None = None) -> Snapshot:
    """Copy the regular files owned by ``uid`` under ``src_fd`` into ``dest`` (created 0700).

    Args:
        src_fd: an open fd of the run folder (from :func:`open_dir_nofollow`).
        uid: the job's uid; only files it owns are copied.
        dest: where the copy goes (inside the root-only spool).
        deadline: ``time.monotonic()`` value; past it the copy stops with ``complete=False``.
        exclude: relative paths not to copy (the epilog writes its own run.json).
        direct_root: the folder's path: large files are then hashed, not copied, and listed
            in :attr:`Snapshot.direct` for an upload straight from there. ``None``: copy all.
        etag_wanted: which files also get the ETag of their upload, computed in the same read
            (:attr:`Snapshot.etags`); ``None``: none.
    """
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _Hasher() as hasher:
        walk = _Walk(uid, dest, deadline, exclude, direct_root, hasher, etag_wanted)
        if direct_root is not None:
            # The first large files first, so their hashes run on the hasher's threads while the
            # walk copies the small ones (sorted, weights/ comes last: its hashes were the tail).
            # As many as the hasher takes without waiting: the small files are never held up
            # (results.csv and args.yaml are in a snapshot cut short by the deadline).
            walk.large_only = True
            walk.folder(src_fd, "", 0)
            walk.large_only, walk.entries = False, 0
        if walk.snap.complete:
            walk.folder(src_fd, "", 0)
    return walk.snap


class _Hasher:
    """Hashes large files in place on :data:`HASH_THREADS` threads while the walk goes on.

    Hashing is most of the epilog's own time on a run of big checkpoints (sha256 ~0.65 s per
    GB on one core here, the md5 of the upload's ETag ~1.5 s, where it is wanted); hashlib
    releases the GIL, so :data:`HASH_THREADS` files hash at once, each with its parts' md5 on
    threads of its own (:func:`hash_fd`). Each job holds a ``dup`` of the checked descriptor
    (the walk closes its own); at most :data:`HASH_THREADS` * 2 are open.
    Leaving the ``with`` waits for every hash and raises the first error, as hashing inline did.
    """

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="sha256")
        self.slots = threading.BoundedSemaphore(LARGE_FIRST)
        self.jobs: list[Future[None]] = []

    def submit(self, fd: int, st: os.stat_result, relpath: str, root: str, src_rel: str, snap: Snapshot,
               etag_wanted: EtagWanted | None = None) -> None:
        self.slots.acquire()
        own = os.dup(fd)

        def job() -> None:
            try:
                _hash_in_place(own, st, relpath, root, src_rel, snap, _etag_answer(etag_wanted, relpath, st.st_size))
            finally:
                os.close(own)
                self.slots.release()

        self.jobs.append(self.pool.submit(job))

    def __enter__(self) -> _Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        for job in self.jobs:
            job.result()


@dataclass
class _Walk:
    """One :func:`copy_tree`: its settings, the entries seen so far and the snapshot it fills."""

    uid: int
    dest: Path
    deadline: float
    exclude: frozenset[str]
    direct_root: str | None
    hasher: _Hasher | None = None
    etag_wanted: EtagWanted | None = None
    snap: Snapshot = field(default_factory=Snapshot)
    entries: int = 0
    # The first pass takes only the large files (copy_tree); the second skips what it took.
    large_only: bool = False
    taken: set[str] = field(default_factory=set)

    def folder(self, dir_fd: int, rel: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            if not self.large_only:
                self.snap.skipped.append(f"{rel}: deeper than {MAX_DEPTH} levels")
            return
        with os.scandir(dir_fd) as it:
            names = sorted(e.name for e in it)
        for name in names:
            if self.large_only and len(self.taken) >= LARGE_FIRST:
                return
            self.entries += 1
            if time.monotonic() > self.deadline or self.entries > MAX_ENTRIES:
                self.snap.complete = False
                return
            self.entry(dir_fd, name, f"{rel}{name}", depth)
            if not self.snap.complete:
                return

    def entry(self, dir_fd: int, name: str, relpath: str, depth: int) -> None:
        if relpath in self.exclude or relpath in self.taken:
            return
        if not _safe_component(name):
            if not self.large_only:  # said once, by the second pass
                self.snap.skipped.append(f"{relpath!r}: control characters in name")
            return
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return  # vanished meanwhile
        if stat.S_ISDIR(st.st_mode):
            self.subfolder(dir_fd, name, relpath, depth)
        elif self.large_only:
            if stat.S_ISREG(st.st_mode) and st.st_size >= DIRECT_MIN_BYTES and can_upload_direct(relpath):
                self.taken.add(relpath)  # whatever the checks on the open file say, it is handled now
                _copy_file(dir_fd, name, relpath, self.uid, self.dest, self.snap, direct_root=self.direct_root,
                           src_rel=relpath, hasher=self.hasher, etag_wanted=self.etag_wanted)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(dir_fd, name, relpath, self.uid, self.dest, self.snap, direct_root=self.direct_root,
                       src_rel=relpath, hasher=self.hasher, etag_wanted=self.etag_wanted)
        else:
            kind = "symlink" if stat.S_ISLNK(st.st_mode) else "special file"
            self.snap.skipped.append(f"{relpath}: {kind}")

    def subfolder(self, dir_fd: int, name: str, relpath: str, depth: int) -> None:
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if not self.large_only:
                self.snap.skipped.append(f"{relpath}/: {e.strerror}")
            return
        try:
            if os.fstat(sub).st_uid != self.uid:
                if not self.large_only:
                    self.snap.skipped.append(f"{relpath}/: not owned by the job's user")
                return
            self.folder(sub, relpath + "/", depth + 1)
        finally:
            os.close(sub)


def copy_sweep_log(sweep_path: str, uid: int, slurm: dict[str, Any], dest: Path, snap: Snapshot) -> None:
    """Copy an array element's Slurm log (``<sweep>/slurm/<array job>_<task>_*log*``) into the
    snapshot's ``slurm/``, with the same checks as :func:`copy_tree`. The IDs come from the
    job's record and are only used as a digits-only file name prefix inside the user's folder."""
    array_job, task = str(slurm.get("array_job_id") or ""), str(slurm.get("array_task_id") or "")
    if not (array_job.isdigit() and task.isdigit()):
        return
    sweep_fd = open_dir_nofollow(sweep_path, uid)
    try:
        logs_fd = os.open(runfolder.SLURM_LOGS, DIR_FLAGS, dir_fd=sweep_fd)
    except OSError:
        os.close(sweep_fd)
        return
    try:
        with os.scandir(logs_fd) as it:
            names = sorted(e.name for e in it if e.name.startswith(f"{array_job}_{task}_") and "_log." in e.name)
        for name in names:
            _copy_file(logs_fd, name, f"{runfolder.SLURM_LOGS}/{name}", uid, dest, snap)
    finally:
        os.close(logs_fd)
        os.close(sweep_fd)


def copy_file_as(dir_fd: int, name: str, relpath: str, uid: int, dest: Path, snap: Snapshot, *,
                 direct_root: str | None = None) -> None:
    """Copy one file ``name`` of ``dir_fd`` (the folder ``direct_root``, if large files may stay
    there) into the snapshot under ``relpath``, with the checks of :func:`copy_tree` (regular
    file owned by ``uid``, no links, never blocks)."""
    _copy_file(dir_fd, name, relpath, uid, dest, snap, direct_root=direct_root, src_rel=name)


def _copy_file(dir_fd: int, name: str, relpath: str, uid: int, dest: Path, snap: Snapshot, *,
               direct_root: str | None = None, src_rel: str | None = None, hasher: _Hasher | None = None,
               etag_wanted: EtagWanted | None = None) -> None:
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:  # ELOOP: swapped for a symlink since lstat
        snap.skipped.append(f"{relpath}: {e.strerror}")
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            snap.skipped.append(f"{relpath}: not a regular file when opened")
            return
        if st.st_uid != uid:
            snap.skipped.append(f"{relpath}: owned by uid {st.st_uid}, not the job's user")
            return
        os.set_blocking(fd, True)
        root = direct_root if direct_root is not None and can_upload_direct(relpath) else None
        if root is not None and st.st_size >= DIRECT_MIN_BYTES and hasher is not None:
            hasher.submit(fd, st, relpath, root, src_rel or relpath, snap, etag_wanted)
            return
        etag = _etag_answer(etag_wanted, relpath, st.st_size, wait=False)
        if root is not None and st.st_size >= DIRECT_MIN_BYTES:
            _hash_in_place(fd, st, relpath, root, src_rel or relpath, snap, etag)
            return
        try:
            snap.files[relpath] = _keep_etag(snap, relpath, _copy_hashed(fd, dest / relpath, etag))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or root is None:
                raise
            # The spool is full: this file goes straight from the run folder too.
            (dest / relpath).unlink(missing_ok=True)
            snap.spool_full = True
            _hash_in_place(fd, os.fstat(fd), relpath, root, src_rel or relpath, snap, etag)
    finally:
        os.close(fd)


def _etag_answer(etag_wanted: EtagWanted | None, relpath: str, size: int, wait: bool = True) -> bool:
    """Whether to compute the file's ETag: ``etag_wanted``'s answer; while it has none yet,
    asked again every few ms for up to :data:`ETAG_WAIT_S` (``wait``: on a hashing thread,
    never the walk), then yes (an md5 too many costs less than an upload too many)."""
    if etag_wanted is None:
        return False
    end = time.monotonic() + (ETAG_WAIT_S if wait else 0.0)
    while (answer := etag_wanted(relpath, size)) is None and time.monotonic() < end:
        time.sleep(0.005)
    return True if answer is None else answer


def _keep_etag(snap: Snapshot, relpath: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest's part of a hash (size, sha256); its ETag, if any, into :attr:`Snapshot.etags`."""
    etag = meta.pop("etag", None)
    if etag:
        snap.etags[relpath] = etag
    return meta


def can_upload_direct(relpath: str) -> bool:
    """Whether an s5cmd ``run`` line can name this archive path (no quotes, backslashes, newlines)."""
    return not any(c in relpath for c in '"\\\n\r')


def _copy_hashed(fd: int, target: Path, etag: bool = False) -> dict[str, Any]:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        return manifest.hash_fd(fd, copy_to=out, part_size=s5cmd.PART_SIZE if etag else None, threads=PART_THREADS)
    finally:
        os.close(out)


def hash_fd(fd: int, etag: bool = False) -> dict[str, Any]:
    """Size and sha256 of an open file, read from its start (:func:`slurm_yolo.archive.manifest.hash_fd`);
    with ``etag``, also the ETag of its upload (``"etag"``), its parts hashed on
    :data:`PART_THREADS` threads beside the sha256."""
    return manifest.hash_fd(fd, part_size=s5cmd.PART_SIZE if etag else None, threads=PART_THREADS)


def _hash_in_place(fd: int, st: os.stat_result, relpath: str, root: str, src_rel: str, snap: Snapshot,
                   etag: bool = False) -> None:
    meta = _keep_etag(snap, relpath, hash_fd(fd, etag))
    snap.files[relpath] = meta
    # The identity is the one from before the read: a write during it shows at upload time,
    # and the file is hashed again then.
    snap.direct[relpath] = {**meta, "root": root, "rel": src_rel, **identity(st)}


def open_file_at(root_fd: int, rel: str, uid: int) -> int:
    """Open ``rel`` under ``root_fd`` with the checks of :func:`copy_tree`: every folder on the
    way and the file without following links, all owned by ``uid``, the file regular.

    Raises:
        Refused: a link, another owner, not a regular file, or gone.
    """
    parts = [p for p in rel.split("/") if p]
    if not parts or not all(_safe_component(p) for p in parts):
        raise Refused(f"{rel!r} is not a safe relative path")
    fd = _descend(os.dup(root_fd), parts[:-1], repr(rel), owner=uid)
    try:
        try:
            ffd = os.open(parts[-1], FILE_FLAGS, dir_fd=fd)
        except OSError as e:
            raise Refused(f"{rel}: {e.strerror}") from e
        st = os.fstat(ffd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            os.close(ffd)
            raise Refused(f"{rel}: not a regular file owned by the job's user")
        os.set_blocking(ffd, True)
        return ffd
    finally:
        os.close(fd)


def safe_names(record: dict[str, Any]) -> bool:
    """Whether the record's path-forming fields are all safe names."""
    return all(isinstance(record.get(k), str) and NAME_RE.fullmatch(record[k])
               for k in ("run_id", "task", "project", "model_name"))
