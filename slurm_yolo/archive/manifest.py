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


def hash_fd(fd: int, *, copy_to: int | None = None, part_size: int | None = None) -> dict[str, Any]:
    """Size and sha256 of an open file, read from its start; written to ``copy_to`` on the way
    (one read for the copy and the hash: what is hashed is exactly what was copied).

    Args:
        fd: an open file; read from offset 0 to its end.
        copy_to: where to write what was read (``None``: nowhere).
        part_size: also compute, in the same read, the ETag an S3 store gives the object when
            it is uploaded in parts of this many bytes (:func:`s3_etag`); it is added as
            ``"etag"`` (``None`` when no such upload exists, see :func:`s3_etag`).

    Returns:
        ``{"size": bytes, "sha256": hex}``, plus ``"etag"`` when ``part_size`` is given.
    """
    os.lseek(fd, 0, os.SEEK_SET)
    h = hashlib.sha256()
    size = 0
    parts: list[bytes] = []
    # md5 of the part being read, and how many of its bytes are in it so far.
    part, in_part = hashlib.md5(usedforsecurity=False), 0
    while chunk := os.read(fd, CHUNK):
        h.update(chunk)
        size += len(chunk)
        if part_size is not None:
            view = memoryview(chunk)
            while view:
                take = view[:part_size - in_part]
                part.update(take)
                in_part += len(take)
                view = view[len(take):]
                if in_part == part_size:
                    parts.append(part.digest())
                    part, in_part = hashlib.md5(usedforsecurity=False), 0
        if copy_to is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(copy_to, view):]
    meta: dict[str, Any] = {"size": size, "sha256": h.hexdigest()}
    if part_size is not None:
        if in_part or not parts:
            parts.append(part.digest())
        meta["etag"] = s3_etag(size, parts, part_size)
    return meta


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
