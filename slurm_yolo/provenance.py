"""What a run was made from: code version and dataset identity (for ``run.json``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from slurm_yolo.commands import run_command
from slurm_yolo.errors import CommandError


def code_version(cwd: str | os.PathLike[str]) -> dict[str, Any] | None:
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


# A classify dataset's split folders, as Ultralytics' check_cls_dataset looks for them.
CLASSIFY_SPLITS = ("train", "val", "validation", "valid", "test")


def dataset_identity(data: str | os.PathLike[str], declared_version: str | None = None,
                     task: str | None = None) -> dict[str, Any]:
    """Path, declared version and a cheap fingerprint of a dataset, in any task's layout.

    The fingerprint is a sha256 over the sorted (relative path, size) list of every file of
    the dataset: its images and its targets, wherever the task keeps them (YOLO label files
    in ``labels/``, semantic PNG masks in data.yaml's ``masks_dir``, depth maps in ``depth/``,
    class folders for classify). It changes when an image or target is added, removed,
    renamed, moved to another class or rewritten with another size, and costs one directory
    walk (no file contents read), so it stays cheap for 100k-image datasets. The declared
    version comes from the config (``run.dataset_version``) or else from a ``version:`` key
    in data.yaml.

    Args:
        data: ``train.data``: the data.yaml, or the folder of a classify dataset.
        declared_version: ``run.dataset_version``.
        task: the run's task; a semantic dataset's masks are in ``masks/`` when data.yaml
            names no ``masks_dir`` (as Ultralytics assumes), a depth dataset's maps in ``depth/``.
    """
    data = Path(data)
    if data.is_dir():
        return _class_folders_identity(data, declared_version)
    try:
        spec = yaml.safe_load(data.read_text()) or {}
    except (OSError, yaml.YAMLError):
        spec = {}
    if not isinstance(spec, dict):
        spec = {}
    root = Path(spec.get("path") or data.parent)
    if not root.is_absolute():
        root = (data.parent / root).resolve()
    dirs = []
    for split in ("train", "val", "test"):
        entry = spec.get(split)
        for item in entry if isinstance(entry, list) else [entry] if entry else []:
            if not isinstance(item, str):  # not a YOLO split: Ultralytics will say so, on the node
                continue
            p = Path(item) if Path(item).is_absolute() else root / item
            dirs.append(p.parent if p.suffix == ".txt" else p)
    images = list(dirs)
    # Labels live in a sibling "labels" tree in YOLO layout; include them too. (The first
    # "/images" is replaced, as this always did: existing runs' fingerprints stay comparable.)
    dirs += [Path(str(d).replace(f"{os.sep}images", f"{os.sep}labels", 1)) for d in images]
    # Semantic masks and depth maps: a sibling tree named as Ultralytics names it, in place of
    # the last "images" folder of each image path.
    masks = spec.get("masks_dir") or ("masks" if task == "semantic" else None)
    targets = [str(masks)] if isinstance(masks, str) else []
    if task == "depth" or "depth_scale" in spec:
        targets.append("depth")
    dirs += [t for d in images for t in (_sibling(d, name) for name in targets) if t is not None]
    h = hashlib.sha256()
    count = _walk(sorted(set(dirs)), root, h)
    version = declared_version if declared_version is not None else spec.get("version")
    return _identity(data, root, version, h, count)


def _class_folders_identity(folder: Path, declared_version: str | None) -> dict[str, Any]:
    """A classify dataset: its split folders' class folders (empty ones too: each is a class)
    and their images."""
    root = folder.resolve()
    h = hashlib.sha256()
    classes: set[str] = set()
    splits = [root / s for s in CLASSIFY_SPLITS if (root / s).is_dir()]
    for split in splits:
        try:
            names = sorted(e.name for e in os.scandir(split) if e.is_dir())
        except OSError:
            names = []
        classes.update(names)
        for name in names:
            h.update(f"class\0{split.name}/{name}\n".encode())
    count = _walk(splits, root, h)
    return {**_identity(folder, root, declared_version, h, count), "classes": sorted(classes)}


def _identity(path: Path | str, root: Path, version: Any, h: Any, count: int) -> dict[str, Any]:
    """The record of a dataset whose ``count`` files went into the hash ``h``."""
    return {
        "path": str(path),
        "root": str(root),
        "version": None if version is None else str(version),
        "fingerprint": "sha256:" + h.hexdigest()[:16] if count else None,
        "files": count,
    }


def _sibling(images_dir: Path, name: str) -> Path | None:
    """``images_dir`` with its last ``images`` component replaced by ``name``; ``None`` if it has none."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = name
            return Path(*parts)
    return None


def _walk(dirs: list[Path], root: Path, h: Any) -> int:
    """Hash (path relative to ``root``, size) of every file under ``dirs``, in order; the file count."""
    count = 0
    for d in dirs:
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
    return count
