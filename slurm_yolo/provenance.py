"""What a run was made from: code version and dataset identity (for ``run.json``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from slurm_yolo.commands import run_command
from slurm_yolo.errors import CommandError


def code_version(cwd: str | os.PathLike) -> dict[str, Any] | None:
    """Git commit and dirty flag of the repository containing ``cwd``; ``None`` outside git.

    The dirty flag ignores untracked files under ``runs/`` and ``datasets/``-like outputs only
    insofar as the repository's own .gitignore does: what git calls dirty is what we record.
    """
    try:
        top = run_command(["git", "rev-parse", "--show-toplevel"], "code version", cwd=str(cwd), timeout=10)
        commit = run_command(["git", "rev-parse", "HEAD"], "code version", cwd=str(cwd), timeout=10)
        status = run_command(["git", "status", "--porcelain", "--untracked-files=no"], "code version",
                             cwd=str(cwd), timeout=30)
    except CommandError:
        return None
    return {"repo": top.stdout.strip(), "commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def dataset_identity(data_yaml: str | os.PathLike, declared_version: str | None = None) -> dict[str, Any]:
    """Path, declared version and a cheap fingerprint of a YOLO dataset.

    The fingerprint is a sha256 over the sorted (relative path, size) list of every file
    under the dataset's split folders: it changes when images or labels are added, removed
    or rewritten with another size, and costs one directory walk (no file contents read),
    so it stays cheap for 100k-image datasets. The declared version comes from the config
    (``run.dataset_version``) or else from a ``version:`` key in data.yaml.
    """
    data_yaml = Path(data_yaml)
    try:
        spec = yaml.safe_load(data_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        spec = {}
    if not isinstance(spec, dict):
        spec = {}
    root = Path(spec.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    dirs = []
    for split in ("train", "val", "test"):
        entry = spec.get(split)
        for item in entry if isinstance(entry, list) else [entry] if entry else []:
            if not isinstance(item, str):  # not a YOLO split: Ultralytics will say so, on the node
                continue
            p = Path(item) if Path(item).is_absolute() else root / item
            dirs.append(p.parent if p.suffix == ".txt" else p)
    # Labels live in a sibling "labels" tree in YOLO layout; include them too.
    dirs += [Path(str(d).replace(f"{os.sep}images", f"{os.sep}labels", 1)) for d in list(dirs)]
    h = hashlib.sha256()
    count = 0
    for d in sorted(set(dirs)):
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    size = os.stat(full).st_size
                except OSError:
                    continue
                h.update(f"{os.path.relpath(full, root)}\0{size}\n".encode())
                count += 1
    version = declared_version if declared_version is not None else spec.get("version")
    return {
        "path": str(data_yaml),
        "root": str(root),
        "version": None if version is None else str(version),
        "fingerprint": "sha256:" + h.hexdigest()[:16] if count else None,
        "files": count,
    }
