"""Who archives an attempt: a claim that survives a dead node.

A run's attempt can be archived by any of: the node epilog of each of the job's nodes, the
controller's ``EpilogSlurmctld`` (the node died), and the reconciler (a timer on a host that
mounts the users' filesystem). Exactly one of them must do it. Position in the nodelist
cannot decide it (the first node may be the one that died), so the first to create the
claim file wins::

    <claim_dir>/<uid>.<job_id>.<run_id>.a<attempt>     {"state": "claimed" | "done", ...}

``claim_dir`` is a root-only folder on a filesystem every node, the controller and the
reconciler share (NFS ``O_EXCL`` creates are atomic since v3). The claim records the job's
identity (the values slurmd/slurmctld gave, not the user's), so that if its holder dies
while archiving (the node crashes during its epilog), the reconciler can take it over once
it is older than the holder's time budget: the one taker that creates that stale claim's
takeover marker (``O_EXCL`` again) replaces it.

Only files named by an :class:`~slurm_yolo.runfolder.AttemptKey` are claims. Refused
markers are remembered apart, in ``<claim_dir>/refused/`` (:mod:`slurm_yolo.epilog.refusals`):
a refusal is never stale and never taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from slurm_yolo.record import utc_now, write_json_atomic
from slurm_yolo.runfolder import AttemptKey

# The job's identity, as Slurm gave it to whoever claimed: enough to archive it again.
JOB_KEYS = ("SLURM_JOB_ID", "SLURM_JOB_UID", "SLURM_JOB_GID", "SLURM_JOB_COMMENT", "SLURM_JOB_EXIT_CODE2",
            "SLURM_JOB_RESTART_COUNT", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_PARTITION")
CLAIMED, DONE = "claimed", "done"
# Claims matter while slurmctld still lists the job (MinJobAge, minutes) and while a dead
# holder's claim waits for the reconciler; a week later they are history.
KEEP_S = 7 * 86400.0


@dataclass(frozen=True)
class Claim:
    """A claim this process holds (returned by :func:`try_claim`)."""

    path: Path
    data: Mapping[str, Any]


def claim_path(claim_dir: str | os.PathLike[str], key: AttemptKey | str) -> Path:
    """The claim file of one attempt (named by its :class:`AttemptKey`, as its spool entry is)."""
    return Path(claim_dir) / str(key)


def read_claim(path: Path) -> dict[str, Any] | None:
    """The claim's content; ``None`` if there is none.

    A file that does not parse (its holder is still writing it, or died doing so) reads as
    ``claimed`` at the file's modification time: young, it is respected; old, it is stale.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 16)
            mtime = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("epoch_s"), (int, float)):
        return {"state": CLAIMED, "epoch_s": mtime, "torn": True}
    return data


def _age_s(data: Mapping[str, Any], now: float) -> float:
    stamp = data.get("epoch_s")
    return now - stamp if isinstance(stamp, (int, float)) else float("inf")


def _generation(data: Mapping[str, Any]) -> str:
    """Names one holder's claim: takers of the same stale claim compete for one marker."""
    return f"{data.get('epoch_s')}-{data.get('host')}-{data.get('pid')}"


def try_claim(claim_dir: str | os.PathLike[str], key: AttemptKey | str, env: Mapping[str, str], *, by: str,
              stale_after_s: float, now: float | None = None,
              holder_gone: Callable[[Mapping[str, Any]], bool] | None = None) -> Claim | None:
    """Claim the attempt ``key``; ``None`` if someone else has it (or has archived it).

    Args:
        claim_dir: the shared claims folder (created 0700 if missing).
        key: the attempt's key (``<uid>.<job>.<run_id>.a<n>``, its spool entry's name too).
        env: the job's Slurm environment; :data:`JOB_KEYS` are kept in the claim.
        by: who claims (``"epilog_slurmd@n1"``), for people reading the claim.
        stale_after_s: a ``claimed`` (not ``done``) claim older than this belongs to a holder
            that died: take it over.
        now: ``time.time()`` (tests pass their own).
        holder_gone: says, from a ``claimed`` claim's content, that its holder is certainly dead
            (a job's own archiver once Slurm runs the job's next attempt): take it over at once.
    """
    now = time.time() if now is None else now
    root = Path(claim_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = claim_path(root, key)
    data = {"state": CLAIMED, "by": by, "host": socket.gethostname(), "pid": os.getpid(), "time": utc_now(),
            "epoch_s": now, "job": {k: env[k] for k in JOB_KEYS if k in env}}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return _take_over(path, data, stale_after_s, now, holder_gone)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    return Claim(path, data)


def _take_over(path: Path, data: dict[str, Any], stale_after_s: float, now: float,
               holder_gone: Callable[[Mapping[str, Any]], bool] | None) -> Claim | None:
    held = read_claim(path)
    if held is None or held.get("state") == DONE:
        return None
    if _age_s(held, now) < stale_after_s and not (holder_gone and not held.get("torn") and holder_gone(held)):
        return None
    # Several takers may judge the same claim stale: the one that creates this generation's
    # marker (O_EXCL) replaces it; a fresh claim has another generation, so it is never hit.
    marker = path.with_name(f".takeover.{path.name}.{_generation(held)}")
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        return None
    data = {**data, "took_over": {k: held.get(k) for k in ("by", "host", "pid", "time")}}
    write_json_atomic(path, data, mode=0o600)
    return Claim(path, data)


def mark_done(claim: Claim, outcome: Mapping[str, Any]) -> None:
    """Record that the attempt is archived (shipped, or durably in the spool): nobody redoes it."""
    write_json_atomic(claim.path, {**claim.data, "state": DONE, "done": utc_now(), "outcome": dict(outcome)},
                      mode=0o600)


def stale_claims(claim_dir: str | os.PathLike[str], *, stale_after_s: float, now: float | None = None) -> list[Path]:
    """Claims still ``claimed`` past ``stale_after_s``: their holder died mid-archive."""
    now = time.time() if now is None else now
    root = Path(claim_dir)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        if AttemptKey.parse(path.name) is None or not path.is_file():
            continue
        data = read_claim(path)
        if data is not None and data.get("state") != DONE and _age_s(data, now) >= stale_after_s:
            out.append(path)
    return out


def prune(claim_dir: str | os.PathLike[str], *, older_than_s: float = KEEP_S, now: float | None = None) -> int:
    """Delete done claims (and takeover markers) older than ``older_than_s``; returns how many.

    A claim still ``claimed`` is never deleted: it waits for the reconciler to take it over.
    Anything else in the folder (the refusals' folder, files no version wrote) is left alone.
    """
    now = time.time() if now is None else now
    root = Path(claim_dir)
    removed = 0
    if not root.is_dir():
        return 0
    for path in root.iterdir():
        try:
            marker = path.name.startswith(".")  # takeover markers, temp files of a killed write
            if not marker and AttemptKey.parse(path.name) is None:
                continue
            if now - path.stat(follow_symlinks=False).st_mtime < older_than_s:
                continue
            if not marker and (read_claim(path) or {}).get("state") != DONE:
                continue
            path.unlink()
            removed += 1
        except OSError:
            continue  # gone meanwhile, or not ours to delete
    return removed
