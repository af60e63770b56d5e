"""MANIFEST.json: size and sha256 of every file of an archived run; how it is built, hashed
and verified, in one place.

::

    {"version": 1, "run_id": ..., "attempt": N, "created": "<utc>",
     "files": {"<path in the run folder>": {"size": bytes, "sha256": hex}, ...}}

The epilog writes it (uploaded last, with run.json: the commit marker); ``runs fetch`` and
the tests check what they read back against it. Every file hash of the project goes through
:func:`hash_fd`, so the epilog's copy, its in-place hash of a large file and a reader's check
can never disagree on what a hash covers.
"""

from __future__ import annotations

import hashlib
import os
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

MANIFEST = "MANIFEST.json"
VERSION = 1
CHUNK = 1 << 20


def build(run_id: str, attempt: int, files: Mapping[str, Mapping[str, Any]],
          created: str | None = None) -> dict[str, Any]:
    """A manifest of ``files`` (archive path → ``{"size", "sha256"}``), in path order.

    ``created`` is left out of a provisional manifest (the one staged before the copy).
    """
    manifest: dict[str, Any] = {"version": VERSION, "run_id": run_id, "attempt": attempt,
                                "files": {rel: dict(meta) for rel, meta in sorted(files.items())}}
    if created is not None:
        manifest["created"] = created
    return manifest


def hash_fd(fd: int, *, copy_to: int | None = None, part_size: int | None = None,
            threads: int = 0) -> dict[str, Any]:
    """Size and sha256 of an open file, read from its start; written to ``copy_to`` on the way
    (one read for the copy and the hash: what is hashed is exactly what was copied).

    The file is read once, in :data:`CHUNK` pieces (``pread``: the descriptor's offset is left
    alone, so a ``dup`` shared with another reader is safe); the sha256 runs in the calling
    thread, and with ``threads`` the md5 of each upload part runs on worker threads beside it,
    on the same chunks (hashlib releases the GIL on large buffers, so the hashes use several
    cores). Not ``mmap``: a file the user truncates meanwhile would kill the reader (SIGBUS).

    Args:
        fd: an open file; read from offset 0 to its end.
        copy_to: where to write what was read (``None``: nowhere).
        part_size: also compute, in the same read, the ETag an S3 store gives the object when
            it is uploaded in parts of this many bytes (:func:`s3_etag`); it is added as
            ``"etag"`` (``None`` when no such upload exists, see :func:`s3_etag`).
        threads: with ``part_size``, hash the parts of a file of :data:`PARALLEL_MIN_BYTES`
            or more on up to this many threads beside the sha256 (0: all in this thread).

    Returns:
        ``{"size": bytes, "sha256": hex}``, plus ``"etag"`` when ``part_size`` is given.
    """
    h = hashlib.sha256()
    size = 0
    parallel = threads > 0 and os.fstat(fd).st_size >= PARALLEL_MIN_BYTES
    parts = _Parts(part_size, threads if parallel else 0) if part_size is not None else None
    try:
        while chunk := os.pread(fd, CHUNK, size):
            if parts is not None:  # first: a worker starts on the chunk while the sha256 runs here
                parts.feed(chunk)
            h.update(chunk)
            size += len(chunk)
            if copy_to is not None:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(copy_to, view):]
        meta: dict[str, Any] = {"size": size, "sha256": h.hexdigest()}
        if parts is not None and part_size is not None:
            meta["etag"] = s3_etag(size, parts.digests(), part_size)
        return meta
    finally:
        if parts is not None:
            parts.close()


# From this size on, the parts' md5 run on threads (a smaller file costs less than a thread).
PARALLEL_MIN_BYTES = 4 << 20
# Chunks read ahead of the md5 of the part they belong to: the sha256 (~2.4x as fast as md5
# here) runs on while the md5s catch up, and the next part's md5 starts before the last one
# ends. Bounds the memory of one file's hash: (threads + 1) * AHEAD_CHUNKS * CHUNK at most.
AHEAD_CHUNKS = 16


class _Parts:
    """The md5 digest of each ``part_size`` slice of a file, fed its bytes in order: in the
    feeding thread (``threads`` 0), or each part on a worker thread of its own, through a
    bounded queue (``threads`` workers: parts beyond that wait for a free one)."""

    def __init__(self, part_size: int, threads: int) -> None:
        self.part_size = part_size
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="md5") if threads else None
        self.done: list[Future[bytes] | bytes] = []
        self.md5: Any = None  # the part being fed, inline
        self.queue: queue.Queue[memoryview | None] | None = None  # the part being fed, on a worker
        self.in_part = 0
        self.open = False

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if not self.open:
                self._start()
            take = view[:self.part_size - self.in_part]
            if self.queue is not None:
                self.queue.put(take)
            else:
                self.md5.update(take)
            self.in_part += len(take)
            view = view[len(take):]
            if self.in_part == self.part_size:
                self._end()

    def digests(self) -> list[bytes]:
        """Every part's digest, in order (an empty file has one part: the md5 of nothing)."""
        if self.open or not self.done:
            if not self.open:
                self._start()
            self._end()
        return [d.result() if isinstance(d, Future) else d for d in self.done]

    def close(self) -> None:
        """Let every worker finish (also when the read failed half-way) and stop the pool."""
        if self.queue is not None:
            self.queue.put(None)
            self.queue = None
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def _start(self) -> None:
        self.open, self.in_part = True, 0
        if self.pool is not None:
            self.queue = queue.Queue(AHEAD_CHUNKS)
            self.done.append(self.pool.submit(_md5_of, self.queue))
        else:
            self.md5 = hashlib.md5(usedforsecurity=False)

    def _end(self) -> None:
        self.open = False
        if self.queue is not None:
            self.queue.put(None)
            self.queue = None
        else:
            self.done.append(self.md5.digest())


def _md5_of(chunks: queue.Queue[memoryview | None]) -> bytes:
    """The md5 of what arrives on ``chunks`` until ``None`` (one part, on a worker thread)."""
    md5 = hashlib.md5(usedforsecurity=False)
    while (chunk := chunks.get()) is not None:
        md5.update(chunk)
    return md5.digest()


# S3's limit on the parts of one upload; past it the uploader picks a larger part size itself.
MAX_PARTS = 10_000


def s3_etag(size: int, part_md5s: Sequence[bytes], part_size: int) -> str | None:
    """The ETag S3 (AWS, SeaweedFS, moto: checked) gives an object of ``size`` bytes uploaded as
    s5cmd uploads it with ``--part-size`` ``part_size``: one PUT up to ``part_size`` bytes (the
    ETag is the hex md5 of the bytes), else a multipart upload of ``part_size`` parts (the md5
    of the parts' binary md5s, ``-`` and the number of parts). ``part_md5s``: the md5 digest of
    each ``part_size`` slice of the file, in order (one digest for a file up to ``part_size``).

    ``None`` when the uploader would choose another part size (more than :data:`MAX_PARTS`
    parts: files over 500 GB at 50 MiB): the caller then cannot predict the ETag and uploads.
    """
    if size // part_size >= MAX_PARTS:
        return None
    if size <= part_size:
        return part_md5s[0].hex()
    return hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest() + f"-{len(part_md5s)}"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's contents."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return str(hash_fd(fd)["sha256"])
    finally:
        os.close(fd)


def verify_tree(root: str | os.PathLike[str], manifest: Mapping[str, Any]) -> list[str]:
    """Problems found checking a local copy against its manifest (empty list: all good)."""
    root = Path(root)
    problems = []
    for rel, want in sorted((manifest.get("files") or {}).items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{rel}: size {p.stat().st_size} != {want['size']}")
        elif sha256_file(p) != want["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    return problems
