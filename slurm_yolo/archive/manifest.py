"""MANIFEST.json: size and sha256 of every file of an archived run, and verification."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_tree(root: str | os.PathLike[str], manifest: dict[str, Any]) -> list[str]:
    """Problems found checking a local copy against its manifest (empty list: all good)."""
    root = Path(root)
    problems = []
    for rel, want in sorted(manifest.get("files", {}).items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{rel}: size {p.stat().st_size} != {want['size']}")
        elif sha256_file(p) != want["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    return problems
