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
from typing import Any, Mapping

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


def hash_fd(fd: int, *, copy_to: int | None = None) -> dict[str, Any]:
    """Size and sha256 of an open file, read from its start; written to ``copy_to`` on the way
    (one read for the copy and the hash: what is hashed is exactly what was copied)."""
    os.lseek(fd, 0, os.SEEK_SET)
    h = hashlib.sha256()
    size = 0
    while chunk := os.read(fd, CHUNK):
        h.update(chunk)
        size += len(chunk)
        if copy_to is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(copy_to, view):]
    return {"size": size, "sha256": h.hexdigest()}


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
