"""The reconciler: archive what no epilog archived (run as root by a timer, every minute).

For sites whose controller does not mount the users' filesystem (so ``EpilogSlurmctld``
cannot read run folders), and as a safety net everywhere. On any host that mounts that
filesystem and can talk to slurmctld, it:

1. lists the jobs slurmctld still knows (``squeue -t all``: finished jobs stay for
   ``MinJobAge`` seconds, 300 by default), keeps ours that have ended, and archives those
   that no epilog claimed: at once for ``NODE_FAIL`` (no node epilog will come), otherwise
   once the node epilogs had their time budget;
2. so that a reconciler that was down longer than ``MinJobAge`` forgets nothing: where the
   cluster keeps accounting, asks ``sacct`` for the jobs that ended since its last completed
   round (less :data:`SACCT_MARGIN_S`), with the end state Slurm recorded; where it keeps
   none, walks the site's ``runs_roots`` for run folders whose last attempt was never
   archived and whose job slurmctld no longer lists;
3. takes over claims whose holder died mid-archive (a node that crashed during its epilog);
4. remembers the jobs whose marker or folder it refused (:mod:`slurm_yolo.epilog.refusals`),
   so that a hostile marker is opened once, not every minute.

A round may be restricted to one user's jobs (``uid``): the user-level reconciler.

The claim (:mod:`slurm_yolo.epilog.claim`) makes it safe to run next to the epilogs, the
controller path and another reconciler: each attempt is archived once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from slurm_yolo import budget
from slurm_yolo.commands import run_command
from slurm_yolo.epilog import claim as claims
from slurm_yolo.epilog import refusals
from slurm_yolo.epilog import snapshot
from slurm_yolo.epilog.archiver import Job, archive_job, dead_nodes, resolve_run, scontrol_fields
from slurm_yolo.epilog.slurm_parse import (NO_ACCOUNTING, AccountedJob, QueuedJob, parse_sacct, parse_squeue,
                                           sacct_argv, squeue_argv)
from slurm_yolo.site import SiteConfig
from slurm_yolo.errors import CommandError, Refused
from slurm_yolo.names import MARKER_PREFIX, NAME_RE
from slurm_yolo.runfolder import RUN_JSON, AttemptKey
from slurm_yolo.record import utc_now
from slurm_yolo.states import SLURM_ENDED

log = logging.getLogger("slurm_yolo.epilog")
J = TypeVar("J", QueuedJob, AccountedJob)

# sacct is asked from this long before the last completed round: a job's end reaches slurmdbd
# after the job ends (slurmctld queues it when slurmdbd is slow or down), and clocks differ.
SACCT_MARGIN_S = 900.0
# How far back a first round (no state yet) and a round after a long outage look. Done claims
# are kept claims.KEEP_S (a week): looking back further could archive an attempt again.
SACCT_LOOKBACK_S = 2 * 86400.0
# The time of the last completed round, per scope (every user, or one uid), in the claims folder.
STATE_DIR = "reconciler"


def state_path(site: SiteConfig, uid: int | None) -> Path:
    """The file holding when the last round of this scope (every user, or ``uid``) completed."""
    return Path(site.claim_dir) / STATE_DIR / ("all.json" if uid is None else f"uid{uid}.json")


def last_completed(path: Path) -> float | None:
    """The epoch seconds a round of this scope last completed; ``None`` if none did (or unreadable)."""
    try:
        value = json.loads(path.read_text()).get("completed_epoch_s")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def record_completed(path: Path, started: float) -> None:
    """Remember that a round that started at ``started`` completed (atomically: rename)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"completed_epoch_s": started, "time": utc_now(),
                               "host": socket.gethostname()}))
    os.replace(tmp, path)


def sacct_since(last: float | None, now: float) -> float:
    """Where the sacct window starts: the last completed round less the margin, never further
    back than :data:`SACCT_LOOKBACK_S`."""
    floor = now - SACCT_LOOKBACK_S
    return floor if last is None else max(floor, last - SACCT_MARGIN_S)


def _ended_long_enough(job: QueuedJob | AccountedJob, wait_s: float, now: datetime) -> bool:
    if job.state == "NODE_FAIL":
        return True  # no node epilog will run
    try:
        end = datetime.strptime(job.end, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    # squeue prints the controller's local time without a zone.
    return (now.replace(tzinfo=None) - end).total_seconds() >= wait_s


def due(jobs: Sequence[J], wait_s: float, now: datetime) -> list[J]:
    """Our ended jobs whose node epilogs had ``wait_s`` seconds (NODE_FAIL ones at once)."""
    return [j for j in jobs if j.comment.startswith(MARKER_PREFIX) and j.state in SLURM_ENDED
            and _ended_long_enough(j, wait_s, now)]


def job_env(job: QueuedJob | AccountedJob, fields: Mapping[str, str]) -> dict[str, str]:
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


def list_accounted(site: SiteConfig, since: float, uid: int | None) -> list[AccountedJob] | None:
    """The jobs accounting says ended since ``since`` (epoch s); ``None`` if the cluster keeps no
    accounting (sacct says so, or there is no sacct).

    Raises:
        CommandError: sacct failed otherwise (slurmdbd unreachable): this round learns nothing from it.
    """
    env = {"PATH": "/usr/bin:/bin", **({"SLURM_CONF": site.slurm_conf} if site.slurm_conf else {})}
    start = datetime.fromtimestamp(since).strftime("%Y-%m-%dT%H:%M:%S")  # sacct reads local time
    if not os.path.exists(site.sacct_path):
        return None
    proc = run_command(sacct_argv(site.sacct_path, start, uid=uid), "reconcile", timeout=60, env=env, check=False)
    if NO_ACCOUNTING.search(proc.stdout + proc.stderr):
        return None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise CommandError("reconcile", sacct_argv(site.sacct_path, start, uid=uid),
                           detail[-1] if detail else f"exit code {proc.returncode}")
    return parse_sacct(proc.stdout)


def reconcile(site: SiteConfig, *, uid: int | None = None, dry_run: bool = False, settle_s: float | None = None,
              now: datetime | None = None, say: Callable[[str], None] = lambda m: None,
              jobs: Callable[[SiteConfig], list[QueuedJob]] = list_jobs,
              accounted: Callable[[SiteConfig, float, int | None], list[AccountedJob] | None] = list_accounted,
              runs_roots: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One round: archive ended jobs nobody claimed, and take over dead holders' claims.

    Ended jobs come from squeue (what slurmctld still lists) and, so that a reconciler that was
    stopped for longer than ``MinJobAge`` forgets nothing, from sacct since the last completed
    round where the cluster keeps accounting, else from a walk of ``runs_roots``. A job whose
    marker or folder was refused once is remembered (:mod:`.refusals`) and never opened again
    by a later round; refusals older than a week are pruned.

    Args:
        site: the site config.
        uid: only this user's jobs, runs and claims (the user-level reconciler); ``None``: everyone's.
        dry_run: only say what would be archived, and list the remembered refusals.
        settle_s: how long after a job ended its node epilogs have before the reconciler steps
            in (default: :func:`slurm_yolo.budget.stale_after_s` of the site's time budget).
            NODE_FAIL jobs are due at once.
        now: the current time (tests): the jobs' end times, the claims' and refusals' ages.
        say: receives one line per run acted on.
        jobs: lists the jobs slurmctld knows (:func:`list_jobs`; tests pass their own).
        accounted: lists the jobs accounting says ended since a time (:func:`list_accounted`;
            ``None`` from it: no accounting).
        runs_roots: the folders to walk without accounting (default: the site's ``runs_roots``).

    Returns:
        One dict per run archived (or that would be, or that failed, or was refused): nothing
        for runs that an epilog already archived.
    """
    now = now or datetime.now(timezone.utc).astimezone()
    clock = now.timestamp()
    by = f"reconciler@{socket.gethostname()}"
    stale_after = budget.stale_after_s(site.time_budget_s)
    settle = stale_after if settle_s is None else settle_s
    mine = (lambda u: True) if uid is None else (lambda u: u == uid)
    queued = [j for j in jobs(site) if mine(j.uid)]
    work = [_Candidate(job_env(job, scontrol_fields(site, job.job_id, budget.lookup_deadline(), {})))
            for job in due(queued, settle, now)]
    known = {j.job_id for j in queued}
    state = state_path(site, uid)
    completed = True
    try:
        ended = accounted(site, sacct_since(last_completed(state), clock), uid)
    except CommandError as e:
        log.warning("%s; this round takes ended jobs from squeue only, and is not counted as completed", e)
        ended, completed = [], False
    if ended is not None:
        # squeue's line wins for a job both list: scontrol still has the job's whole story.
        forgotten = [j for j in ended if mine(j.uid) and not j.ids() & known]
        work += [_Candidate(job_env(j, j.scontrol()), j.scontrol(), record_says=True)
                 for j in due(forgotten, settle, now)]
    else:
        roots = site.runs_roots if runs_roots is None else runs_roots
        work += [_Candidate(env, None, bool(dead_nodes(site, env["SLURM_JOB_NODELIST"], budget.lookup_deadline(), {})),
                            record_says=True) for env in forgotten_runs(roots, uid, known)]
    for path in claims.stale_claims(site.claim_dir, stale_after_s=stale_after, now=clock):
        env = dict((claims.read_claim(path) or {}).get("job") or {})
        owner = str(env.get("SLURM_JOB_UID", ""))
        if env.get("SLURM_JOB_COMMENT", "").startswith(MARKER_PREFIX) and owner.isdigit() and mine(int(owner)):
            work.append(_Candidate({**env, "SLURM_SCRIPT_CONTEXT": "reconciler"}))
    results = []
    seen: set[str] = set()
    for c in work:
        # The same job from two sources (a stale claim of a job sacct lists too): once per round.
        job_id = c.env.get("SLURM_JOB_ID", "")
        if job_id in seen or refusals.is_refused(site.claim_dir, c.env):
            continue
        seen.add(job_id)
        results.append(_one(c, site, by, dry_run, stale_after, clock, say))
    if dry_run:
        results += [_remembered(r, say) for r in refusals.listing(site.claim_dir) if mine(int(r.uid))]
    else:
        claims.prune(site.claim_dir, now=clock)
        refusals.prune(site.claim_dir, now=clock)
        # A job that failed to archive this round must stay in the next round's sacct window.
        if completed and not any(r and "error" in r for r in results):
            record_completed(state, clock)
    return [r for r in results if r]


@dataclass(frozen=True)
class _Candidate:
    """One attempt a round may archive, and what is known of its end besides the run folder.

    Attributes:
        env: the epilog environment Slurm would have given.
        slurm: sacct's fields in scontrol's words, for a job slurmctld forgot; ``None``: ask scontrol.
        node_down: the attempt's node is DOWN now (a forgotten run found by the walk).
        record_says: an end state in the run's own record means archived (jobs older than
            the claims kept: from sacct or the walk).
    """

    env: dict[str, str]
    slurm: Mapping[str, str] | None = None
    node_down: bool = False
    record_says: bool = False


def forgotten_runs(roots: Iterable[str], uid: int | None, known: set[str]) -> list[dict[str, str]]:
    """Run folders under ``roots`` whose last attempt has no end state and whose job slurmctld
    no longer lists (``known``: the IDs squeue printed): the epilog environment for each.

    Only folders of ``uid`` (all users' when ``None``), opened without following links as their
    owner would; what cannot be read is skipped (the archiver checks everything again).
    """
    out = []
    for root in roots:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError as e:
            log.warning("runs root %s unreadable (%s): not walked", root, e)
            continue
        for entry in entries:
            env = _forgotten(entry, uid, known)
            if env is not None:
                out.append(env)
    return out


def _forgotten(entry: "os.DirEntry[str]", uid: int | None, known: set[str]) -> dict[str, str] | None:
    if not NAME_RE.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
        return None
    try:
        owner = entry.stat(follow_symlinks=False).st_uid
        if uid is not None and owner != uid:
            return None
        fd = snapshot.open_dir_nofollow(entry.path, owner)
        try:
            record = snapshot.read_json_at(fd, RUN_JSON, owner)
        finally:
            os.close(fd)
    except (OSError, ValueError, Refused):
        return None
    if not isinstance(record, dict) or (record.get("slurm") or {}).get("executor", "slurm") != "slurm":
        return None
    attempts = record.get("attempts") or []
    last = attempts[-1] if isinstance(attempts, list) and attempts and isinstance(attempts[-1], dict) else None
    job_id = str((last or {}).get("slurm_job_id") or "")
    if last is None or last.get("end_state") or not job_id.isdigit():
        return None
    if job_id in known or str((record.get("slurm") or {}).get("job_id") or "") in known:
        return None  # slurmctld still lists it: squeue's part of the round decides
    number = last.get("attempt")
    node = str(last.get("node") or "")
    return {"SLURM_JOB_ID": job_id, "SLURM_JOB_UID": str(owner), "SLURM_JOB_COMMENT": MARKER_PREFIX + entry.path,
            "SLURM_JOB_RESTART_COUNT": str(number - 1 if isinstance(number, int) and number > 0 else 0),
            "SLURM_JOB_NODELIST": node, "SLURM_SCRIPT_CONTEXT": "reconciler"}


def _remembered(refusal: refusals.Refusal, say: Callable[[str], None]) -> dict[str, Any]:
    say(f"job {refusal.job_id}: refused since {refusal.time}, not retried "
        f"(pruned {refusals.KEEP_S / 86400:g} days after): {refusal.reason}")
    return {"job": refusal.job_id, "uid": refusal.uid, "refused": refusal.reason, "since": refusal.time,
            "remembered": True}


def _pending(env: dict[str, str], site: SiteConfig, stale_after: float, clock: float,
             record_says: bool = False) -> AttemptKey | None:
    """The attempt's key if nobody archived (or is archiving) it; ``None`` otherwise.

    ``record_says``: also trust the run's own record: an attempt it shows archived (an end
    state written back) is done. For jobs found in sacct or by the walk, which may be older
    than the claims kept (claims.KEEP_S).
    """
    job = Job(env, "reconciler")
    run = resolve_run(job, site, budget.lookup_deadline())
    try:
        key = AttemptKey.of(job.uid, job.job_id, run.run_id, run.attempt)
        if record_says and run.current.get("end_state") and str(run.current.get("slurm_job_id")) == job.job_id:
            return None
    finally:
        os.close(run.fd)
    held = claims.read_claim(claims.claim_path(site.claim_dir, key))
    if held is not None and (held.get("state") == claims.DONE or clock - held["epoch_s"] < stale_after):
        return None
    return key


def _one(c: _Candidate, site: SiteConfig, by: str, dry_run: bool, stale_after: float, clock: float,
         say: Callable[[str], None]) -> dict[str, Any] | None:
    env = c.env
    job_id = env.get("SLURM_JOB_ID", "?")
    try:
        key = _pending(env, site, stale_after, clock, c.record_says)
        if key is None:
            return None  # an epilog (or another reconciler) has it
        if dry_run:
            say(f"job {job_id}: would archive {key}")
            return {"job": job_id, "entry": str(key), "dry_run": True}
        result = archive_job(env, site, deadline=time.monotonic() + site.time_budget_s, by=by,
                             node_down=c.node_down, slurm=c.slurm).to_dict()
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
