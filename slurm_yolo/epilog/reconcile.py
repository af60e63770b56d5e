"""The reconciler: archive what no epilog archived (run as root by a timer, every minute).

For sites whose controller does not mount the users' filesystem (so ``EpilogSlurmctld``
cannot read run folders), and as a safety net everywhere. On any host that mounts that
filesystem and can talk to slurmctld, it:

1. lists the jobs slurmctld still knows (``squeue -t all``: finished jobs stay for
   ``MinJobAge`` seconds, 300 by default, so run it more often than that), keeps ours that
   have ended, and archives those that no epilog claimed: at once for ``NODE_FAIL`` (no
   node epilog will come), otherwise once the node epilogs had their time budget;
2. takes over claims whose holder died mid-archive (a node that crashed during its epilog);
3. remembers the jobs whose marker or folder it refused (:mod:`slurm_yolo.epilog.refusals`),
   so that a hostile marker is opened once, not every minute.

The claim (:mod:`slurm_yolo.epilog.claim`) makes it safe to run next to the epilogs, the
controller path and another reconciler: each attempt is archived once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from slurm_yolo import budget
from slurm_yolo.commands import run_command
from slurm_yolo.epilog import claim as claims
from slurm_yolo.epilog import refusals
from slurm_yolo.epilog.archiver import Job, archive_job, resolve_run, scontrol_fields
from slurm_yolo.epilog.slurm_parse import QueuedJob, parse_squeue, squeue_argv
from slurm_yolo.site import SiteConfig
from slurm_yolo.errors import CommandError, Refused
from slurm_yolo.names import MARKER_PREFIX
from slurm_yolo.runfolder import AttemptKey
from slurm_yolo.states import SLURM_ENDED

log = logging.getLogger("slurm_yolo.epilog")


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
              now: datetime | None = None, say: Callable[[str], None] = lambda m: None,
              jobs: Callable[[SiteConfig], list[QueuedJob]] = list_jobs) -> list[dict[str, Any]]:
    """One round: archive ended jobs nobody claimed, and take over dead holders' claims.

    A job whose marker or folder was refused once is remembered (:mod:`.refusals`) and never
    opened again by a later round; refusals older than a week are pruned.

    Args:
        site: the site config.
        dry_run: only say what would be archived, and list the remembered refusals.
        settle_s: how long after a job ended its node epilogs have before the reconciler steps
            in (default: :func:`slurm_yolo.budget.stale_after_s` of the site's time budget).
            NODE_FAIL jobs are due at once.
        now: the current time (tests): the jobs' end times, the claims' and refusals' ages.
        say: receives one line per run acted on.
        jobs: lists the jobs slurmctld knows (:func:`list_jobs`; tests pass their own).

    Returns:
        One dict per run archived (or that would be, or that failed, or was refused): nothing
        for runs that an epilog already archived.
    """
    now = now or datetime.now(timezone.utc).astimezone()
    clock = now.timestamp()
    by = f"reconciler@{socket.gethostname()}"
    stale_after = budget.stale_after_s(site.time_budget_s)
    envs: list[dict[str, str]] = []
    for job in due(jobs(site), stale_after if settle_s is None else settle_s, now):
        env = job_env(job, scontrol_fields(site, job.job_id, budget.lookup_deadline(), {}))
        if not refusals.is_refused(site.claim_dir, env):
            envs.append(env)
    for path in claims.stale_claims(site.claim_dir, stale_after_s=stale_after, now=clock):
        held = claims.read_claim(path) or {}
        env = dict(held.get("job") or {})
        if env.get("SLURM_JOB_COMMENT", "").startswith(MARKER_PREFIX) and "SLURM_JOB_UID" in env \
                and not refusals.is_refused(site.claim_dir, env):
            envs.append({**env, "SLURM_SCRIPT_CONTEXT": "reconciler"})
    results = [_one(env, site, by, dry_run, stale_after, clock, say) for env in envs]
    if dry_run:
        results += [_remembered(r, say) for r in refusals.listing(site.claim_dir)]
    else:
        claims.prune(site.claim_dir, now=clock)
        refusals.prune(site.claim_dir, now=clock)
    return [r for r in results if r]


def _remembered(refusal: refusals.Refusal, say: Callable[[str], None]) -> dict[str, Any]:
    say(f"job {refusal.job_id}: refused since {refusal.time}, not retried "
        f"(pruned {refusals.KEEP_S / 86400:g} days after): {refusal.reason}")
    return {"job": refusal.job_id, "uid": refusal.uid, "refused": refusal.reason, "since": refusal.time,
            "remembered": True}


def _pending(env: dict[str, str], site: SiteConfig, stale_after: float, clock: float) -> AttemptKey | None:
    """The attempt's key if nobody archived (or is archiving) it; ``None`` otherwise."""
    job = Job(env, "reconciler")
    run = resolve_run(job, site, budget.lookup_deadline())
    try:
        key = AttemptKey.of(job.uid, job.job_id, run.run_id, run.attempt)
    finally:
        os.close(run.fd)
    held = claims.read_claim(claims.claim_path(site.claim_dir, key))
    if held is not None and (held.get("state") == claims.DONE or clock - held["epoch_s"] < stale_after):
        return None
    return key


def _one(env: dict[str, str], site: SiteConfig, by: str, dry_run: bool, stale_after: float, clock: float,
         say: Callable[[str], None]) -> dict[str, Any] | None:
    job_id = env.get("SLURM_JOB_ID", "?")
    try:
        key = _pending(env, site, stale_after, clock)
        if key is None:
            return None  # an epilog (or another reconciler) has it
        if dry_run:
            say(f"job {job_id}: would archive {key}")
            return {"job": job_id, "entry": str(key), "dry_run": True}
        result = archive_job(env, site, deadline=time.monotonic() + site.time_budget_s, by=by).to_dict()
    except Refused as e:
        say(f"job {job_id}: refused: {e}")
        if not dry_run:
            refusals.remember(site.claim_dir, env, str(e), by=by, now=clock)
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
