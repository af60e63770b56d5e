"""The reconciler: archive what no epilog archived (run as root by a timer, every minute).

For sites whose controller does not mount the users' filesystem (so ``EpilogSlurmctld``
cannot read run folders), and as a safety net everywhere. On any host that mounts that
filesystem and can talk to slurmctld, it:

1. lists the jobs slurmctld still knows (``squeue -t all``: finished jobs stay for
   ``MinJobAge`` seconds, 300 by default, so run it more often than that), keeps ours that
   have ended, and archives those that no epilog claimed: at once for ``NODE_FAIL`` (no
   node epilog will come), otherwise once the node epilogs had their time budget;
2. takes over claims whose holder died mid-archive (a node that crashed during its epilog).

The claim (:mod:`slurm_yolo.epilog.claim`) makes it safe to run next to the epilogs, the
controller path and another reconciler: each attempt is archived once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from slurm_yolo.commands import run_command
from slurm_yolo.epilog import claim as claims
from slurm_yolo.epilog import spool
from slurm_yolo.epilog.archiver import Job, archive_job, resolve_run, scontrol_fields
from slurm_yolo.site import SiteConfig
from slurm_yolo.errors import CommandError, Refused
from slurm_yolo.names import MARKER_PREFIX
from slurm_yolo.states import SLURM_ENDED

log = logging.getLogger("slurm_yolo.epilog")
# The comment is last: it is the user's text and may contain the separator.
SQUEUE_FORMAT = "%i|%T|%U|%e|%k"


@dataclass(frozen=True)
class QueuedJob:
    """One line of ``squeue``: a job slurmctld still knows."""

    job_id: str
    state: str
    uid: int
    end: str
    comment: str


def squeue_argv(squeue: str) -> list[str]:
    """Every job slurmctld knows, finished ones included, in :data:`SQUEUE_FORMAT`."""
    return [squeue, "-h", "-a", "-t", "all", "-o", SQUEUE_FORMAT]


def parse_squeue(text: str) -> list[QueuedJob]:
    """``squeue -o SQUEUE_FORMAT`` output → jobs (lines that do not parse are skipped)."""
    jobs = []
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) != 5 or not parts[2].strip().isdigit():
            continue
        job_id, state, uid, end, comment = parts
        jobs.append(QueuedJob(job_id.strip(), state.strip().split()[0] if state.strip() else "", int(uid),
                              end.strip(), comment))
    return jobs


def _ended_long_enough(job: QueuedJob, wait_s: float, now: datetime) -> bool:
    if job.state == "NODE_FAIL":
        return True  # no node epilog will run
    try:
        end = datetime.strptime(job.end, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    # squeue prints the controller's local time without a zone.
    return (now.replace(tzinfo=None) - end).total_seconds() >= wait_s


def due(jobs: list[QueuedJob], wait_s: float, now: datetime) -> list[QueuedJob]:
    """Our ended jobs whose node epilogs had ``wait_s`` seconds (NODE_FAIL ones at once)."""
    return [j for j in jobs if j.comment.startswith(MARKER_PREFIX) and j.state in SLURM_ENDED
            and _ended_long_enough(j, wait_s, now)]


def job_env(job: QueuedJob, fields: Mapping[str, str]) -> dict[str, str]:
    """The epilog environment Slurm would have given, rebuilt from squeue and scontrol."""
    raw_id = fields.get("JobId") or job.job_id
    return {"SLURM_JOB_ID": raw_id, "SLURM_JOB_UID": str(job.uid), "SLURM_JOB_COMMENT": job.comment,
            "SLURM_JOB_EXIT_CODE2": fields.get("ExitCode", ""), "SLURM_JOB_RESTART_COUNT": fields.get("Restarts", "0"),
            "SLURM_JOB_NODELIST": fields.get("NodeList", ""), "SLURM_SCRIPT_CONTEXT": "reconciler"}


def list_jobs(site: SiteConfig) -> list[QueuedJob]:
    """Ask slurmctld for every job it knows.

    Raises:
        CommandError: squeue failed (slurmctld down, no munge): nothing is decided this round.
    """
    env = {"PATH": "/usr/bin:/bin", **({"SLURM_CONF": site.slurm_conf} if site.slurm_conf else {})}
    return parse_squeue(run_command(squeue_argv(site.squeue_path), "reconcile", timeout=30, env=env).stdout)


def reconcile(site: SiteConfig, *, dry_run: bool = False, settle_s: float | None = None,
              now: datetime | None = None, say: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    """One round: archive ended jobs nobody claimed, and take over dead holders' claims.

    Args:
        site: the site config.
        dry_run: only say what would be archived.
        settle_s: how long after a job ended its node epilogs have before the reconciler steps
            in (default: the site's time budget + 60 s). NODE_FAIL jobs are due at once.
        now: the current time (tests).
        say: receives one line per run acted on.

    Returns:
        One dict per run archived (or that would be, or that failed): nothing for runs that
        an epilog already archived.
    """
    now = now or datetime.now(timezone.utc).astimezone()
    by = f"reconciler@{socket.gethostname()}"
    stale_after = site.time_budget_s + 60.0
    envs: list[dict[str, str]] = []
    for job in due(list_jobs(site), stale_after if settle_s is None else settle_s, now):
        env = job_env(job, scontrol_fields(site, job.job_id, time.monotonic() + 10, {}))
        if not claims.claim_path(site.claim_dir, refused_key(env)).exists():
            envs.append(env)
    for path in claims.stale_claims(site.claim_dir, stale_after_s=stale_after):
        held = claims.read_claim(path) or {}
        env = dict(held.get("job") or {})
        if env.get("SLURM_JOB_COMMENT", "").startswith(MARKER_PREFIX) and "SLURM_JOB_UID" in env:
            envs.append({**env, "SLURM_SCRIPT_CONTEXT": "reconciler"})
    results = [_one(env, site, by, dry_run, stale_after, say) for env in envs]
    if not dry_run:
        claims.prune(site.claim_dir)
    return [r for r in results if r]


def refused_key(env: Mapping[str, str]) -> str:
    """The claim that remembers a job whose folder was refused (so it is not retried each round).
    Keyed by the raw job ID, which an array element's squeue ID (``123_4``) is not."""
    return f"{env.get('SLURM_JOB_UID')}.{env.get('SLURM_JOB_ID')}.refused"


def _pending(env: dict[str, str], site: SiteConfig, stale_after: float) -> str | None:
    """The attempt's claim name if nobody archived (or is archiving) it; ``None`` otherwise."""
    job = Job(env, "reconciler")
    run = resolve_run(job, site, time.monotonic() + 10)
    try:
        name = spool.entry_name(spool.run_key(job.uid, job.job_id, run.run_id), run.attempt)
    finally:
        os.close(run.fd)
    held = claims.read_claim(claims.claim_path(site.claim_dir, name))
    if held is not None and (held.get("state") == claims.DONE or time.time() - held["epoch_s"] < stale_after):
        return None
    return name


def _one(env: dict[str, str], site: SiteConfig, by: str, dry_run: bool, stale_after: float,
         say: Callable[[str], None]) -> dict[str, Any] | None:
    job_id = env.get("SLURM_JOB_ID", "?")
    try:
        name = _pending(env, site, stale_after)
        if name is None:
            return None  # an epilog (or another reconciler) has it
        if dry_run:
            say(f"job {job_id}: would archive {name}")
            return {"job": job_id, "entry": name, "dry_run": True}
        result = archive_job(env, site, deadline=time.monotonic() + site.time_budget_s, by=by).to_dict()
    except Refused as e:
        say(f"job {job_id}: refused: {e}")
        if not dry_run:
            claims.try_claim(site.claim_dir, refused_key(env), env, by=by,
                             stale_after_s=float("inf"))
        return {"job": job_id, "refused": str(e)}
    except (OSError, CommandError) as e:
        say(f"job {job_id}: not archived this round: {e}")
        return {"job": job_id, "error": str(e)}
    if not result["claimed"]:
        return None
    say(f"job {job_id}: archived run {result['run']} as {result['state']} "
        f"({'shipped' if result['shipped'] else 'in the spool'}: {result['detail']})")
    log.info("job %s: %s", job_id, result)
    return result
