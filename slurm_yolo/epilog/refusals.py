"""Refused markers: jobs whose marker or run folder the archivers would not trust, remembered
so that no round opens them again.

A marker that points at a symlink, at another user's folder, or at a sweep with no element
for the job is refused (:class:`~slurm_yolo.errors.Refused`) and nothing is copied. The
reconciler runs every minute and sees the job in ``squeue`` for ``MinJobAge``; without a
record it would open the hostile folder again each round. So the first refusal is written
down, in a folder of its own beside the claims (a refusal is not a claim: nothing ever takes
it over, and the claims' stale window does not apply to it)::

    <claim_dir>/refused/<uid>.<raw job id>.json   {"job_id", "uid", "reason", "by", "time", "epoch_s"}

Keyed by the uid and the job ID, both from slurmctld, never from the user. Kept :data:`KEEP_S` (a week: slurmctld forgot
the job long before), then pruned. ``slurm-yolo reconcile --dry-run`` lists them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slurm_yolo.record import utc_now
from slurm_yolo.scontrol import JOB_ID_RE

REFUSED_DIR = "refused"
KEEP_S = 7 * 86400.0
# Before this folder existed, a refusal was a claim named so, in the claims folder itself.
_LEGACY_SUFFIX = ".refused"


@dataclass(frozen=True)
class Refusal:
    """One remembered refusal."""

    job_id: str
    uid: int
    reason: str
    by: str
    time: str
    epoch_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "uid": self.uid, "reason": self.reason, "by": self.by, "time": self.time,
                "epoch_s": self.epoch_s}


def _name(uid: str | int, job_id: str) -> str | None:
    """The record's file name; ``None`` if the IDs are not Slurm's (then nothing is kept).

    The job ID is the raw one where scontrol gave it; without scontrol an array element is
    known only by squeue's ``123_4``, which names it as well.
    """
    uid, job_id = str(uid), str(job_id)
    return f"{uid}.{job_id}.json" if uid.isdigit() and JOB_ID_RE.fullmatch(job_id) else None


def folder(claim_dir: str | os.PathLike[str]) -> Path:
    """Where the refusals of a site are kept."""
    return Path(claim_dir) / REFUSED_DIR


def is_refused(claim_dir: str | os.PathLike[str], env: Mapping[str, str]) -> bool:
    """Whether the job ``env`` describes was refused before (by any round, any archiver)."""
    uid, job_id = env.get("SLURM_JOB_UID", ""), env.get("SLURM_JOB_ID", "")
    name = _name(uid, job_id)
    if name is None:
        return False
    return (folder(claim_dir) / name).exists() or (Path(claim_dir) / f"{uid}.{job_id}{_LEGACY_SUFFIX}").exists()


def remember(claim_dir: str | os.PathLike[str], env: Mapping[str, str], reason: str, *, by: str,
             now: float | None = None) -> bool:
    """Write down that the job ``env`` describes was refused; ``False`` if it already was.

    Created with ``O_EXCL``: two reconcilers refusing the same job at once keep the first.
    """
    name = _name(env.get("SLURM_JOB_UID", ""), env.get("SLURM_JOB_ID", ""))
    if name is None:
        return False
    root = folder(claim_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = time.time() if now is None else now
    refusal = Refusal(env["SLURM_JOB_ID"], int(env["SLURM_JOB_UID"]), reason[:500], by, utc_now(), now)
    try:
        fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(refusal.to_dict(), f)
    return True


def listing(claim_dir: str | os.PathLike[str]) -> list[Refusal]:
    """Every remembered refusal, oldest first (unreadable records are left out)."""
    root = folder(claim_dir)
    if not root.is_dir():
        return []
    out = []
    for path in root.glob("*.json"):
        try:
            raw = json.loads(path.read_text())
            out.append(Refusal(str(raw["job_id"]), int(raw["uid"]), str(raw["reason"]), str(raw["by"]),
                               str(raw["time"]), float(raw["epoch_s"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda r: r.epoch_s)


def prune(claim_dir: str | os.PathLike[str], *, older_than_s: float = KEEP_S, now: float | None = None) -> int:
    """Delete refusals (and refusals kept as claims by older versions) older than ``older_than_s``.

    The age is the file's modification time: a record that does not parse still goes.
    """
    now = time.time() if now is None else now
    paths = list(folder(claim_dir).glob("*.json")) if folder(claim_dir).is_dir() else []
    if Path(claim_dir).is_dir():
        paths += Path(claim_dir).glob(f"*{_LEGACY_SUFFIX}")
    removed = 0
    for path in paths:
        try:
            if now - path.stat(follow_symlinks=False).st_mtime >= older_than_s:
                path.unlink()
                removed += 1
        except OSError:
            continue  # gone meanwhile
    return removed
