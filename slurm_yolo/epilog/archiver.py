"""Archive one attempt of one job: the steps the node epilog, the controller path and the
reconciler share, each a small function, testable without Slurm (an env dict, a folder, a
store).

    resolve_run   the marker → the run folder (opened safely) and its record, or a
                  placeholder record when run.json is missing, not JSON, huge or hostile
    try_claim     exactly one archiver per attempt (claim.py)
    stage         the spool entry, written before the copy, then the safe snapshot
    decide        the end state from Slurm's evidence and the job's own record
    finish        the verdict into the record (and, as the user, into their folder)
    ship          s5cmd to the store (ship.py); the claim is marked done
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from slurm_yolo import budget, runfolder
from slurm_yolo.archive import manifest
from slurm_yolo.archive.layout import RunLocation, index_record, is_under, user_prefix
from slurm_yolo.commands import run_command
from slurm_yolo.epilog import claim as claims
from slurm_yolo.epilog import endstate, ship, slurm_parse, snapshot, spool, writeback
from slurm_yolo.epilog.entry import EntryInfo
from slurm_yolo.site import SiteConfig
from slurm_yolo.errors import CommandError, Refused
from slurm_yolo.names import MARKER_PREFIX, NAME_RE
from slurm_yolo.scontrol import parse_scontrol
from slurm_yolo.record import PLACEMENT_KEYS, fitness_candidates, read_metrics, utc_now
from slurm_yolo.runfolder import AttemptKey
from slurm_yolo.states import EndState

log = logging.getLogger("slurm_yolo.epilog")
# Path-forming names of a run whose record cannot be trusted: the run ID is its folder's name.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Job:
    """The job as Slurm describes it to whoever archives it (never from the user's files).

    Attributes:
        env: the Slurm environment (``SLURM_JOB_*``) or its equivalent built by the reconciler.
        by: who archives: ``epilog_slurmd@<node>``, ``epilog_slurmctld@<host>`` or ``reconciler@<host>``.
    """

    env: Mapping[str, str]
    by: str

    @property
    def job_id(self) -> str:
        return self.env.get("SLURM_JOB_ID", "")

    @property
    def uid(self) -> int:
        return int(self.env["SLURM_JOB_UID"])

    @property
    def marker_path(self) -> str:
        return self.env["SLURM_JOB_COMMENT"][len(MARKER_PREFIX):]

    @property
    def restart_count(self) -> int:
        text = self.env.get("SLURM_JOB_RESTART_COUNT") or "0"
        return int(text) if text.isdigit() else 0

    def user(self) -> tuple[str, int]:
        """User name and primary gid of the job's uid (from passwd, not from the environment)."""
        try:
            pw = pwd.getpwuid(self.uid)
            return pw.pw_name, pw.pw_gid
        except KeyError:
            gid = self.env.get("SLURM_JOB_GID") or str(self.uid)
            return f"uid{self.uid}", int(gid) if gid.isdigit() else self.uid


@dataclass
class Run:
    """The run folder found from the marker. ``damaged`` says why its record was replaced."""

    fd: int
    path: str
    record: dict[str, Any]
    damaged: str | None = None
    sweep_path: str | None = None
    scontrol: dict[str, str] | None = None

    @property
    def run_id(self) -> str:
        return str(self.record["run_id"])

    @property
    def current(self) -> dict[str, Any]:
        attempts = self.record.get("attempts") or []
        return attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}

    @property
    def attempt(self) -> int:
        n = self.current.get("attempt")
        return n if isinstance(n, int) and n > 0 else len(self.record.get("attempts") or []) or 1


@dataclass(frozen=True)
class ArchiveResult:
    """What archiving one attempt did (logged by the epilog, printed by the reconciler)."""

    job: str
    run: str
    by: str
    state: str = ""
    rule: str = ""
    dest: str = ""
    files: int = 0
    skipped: int = 0
    complete: bool = False
    shipped: bool = False
    detail: str = ""
    writeback: str = ""
    note: str = ""
    damaged: str | None = None
    superseded: list[str] = field(default_factory=list)
    claimed: bool = True
    bytes: int = 0  # uploaded to the store by this archiver (0 when left in the spool)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scontrol_fields(site: SiteConfig, job_id: str, deadline: float, env: Mapping[str, str]) -> dict[str, str]:
    """One ``scontrol show job`` (``{}`` if not allowed or it fails: decide without it)."""
    if not site.scontrol:
        return {}
    conf = env.get("SLURM_CONF") or site.slurm_conf
    try:
        proc = run_command(slurm_parse.scontrol_argv(site.scontrol_path, job_id), "epilog",
                           timeout=budget.command_timeout(deadline),
                           env={"PATH": "/usr/bin:/bin", **({"SLURM_CONF": conf} if conf else {})})
        return parse_scontrol(proc.stdout, job_id)
    except (CommandError, ValueError) as e:
        log.warning("job %s: scontrol unavailable (%s); deciding without it", job_id, e)
        return {}


def dead_nodes(site: SiteConfig, nodelist: str, deadline: float, env: Mapping[str, str]) -> list[str]:
    """The nodes of ``nodelist`` (Slurm's, e.g. ``n[1-2]``) that Slurm marks DOWN/not responding."""
    argv = slurm_parse.scontrol_node_argv(site.scontrol_path, nodelist)
    if argv is None:
        return []
    conf = env.get("SLURM_CONF") or site.slurm_conf
    try:
        proc = run_command(argv, "epilog", timeout=budget.command_timeout(deadline),
                           env={"PATH": "/usr/bin:/bin", **({"SLURM_CONF": conf} if conf else {})})
    except CommandError as e:
        log.warning("scontrol show node %s failed (%s)", nodelist, e)
        return []
    return slurm_parse.down_nodes(proc.stdout)


def placeholder_record(run_id: str, job: Job, reason: str,
                       placement: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of a run whose run.json cannot be used: what Slurm says, and where the
    launcher said the run goes (``placement``, already checked: :func:`read_placement`)."""
    where = {"task": UNKNOWN, "project": UNKNOWN, "model_name": UNKNOWN}
    if placement is not None:
        where = {k: placement[k] for k in where}
        where["archive_url"] = placement["archive_url"]
        where["placement"] = runfolder.PLACEMENT
    return {"schema": 1, "run_id": run_id, **where,
            "slurm": {"job_id": job.job_id}, "status": None, "record_damaged": reason,
            "attempts": [{"attempt": job.restart_count + 1, "slurm_job_id": job.job_id, "start": None,
                          "end": None, "status": None, "signals": []}]}


def read_placement(fd: int, run_id: str, uid: int) -> dict[str, Any] | None:
    """The run folder's ``.placement.json`` if it can be trusted as far as run.json would be:
    a regular file of the job's user, of this run, with safe names; else ``None``.

    Its ``archive_url`` is checked later, like run.json's (:func:`destination`).
    """
    try:
        placement = snapshot.read_json_at(fd, runfolder.PLACEMENT, uid)
    except (OSError, ValueError, Refused) as e:
        log.info("run %s: no usable %s (%s)", run_id, runfolder.PLACEMENT, type(e).__name__)
        return None
    if not isinstance(placement, dict) or not snapshot.safe_names(placement) or placement["run_id"] != run_id \
            or not isinstance(placement.get("archive_url"), str):
        log.warning("run %s: %s ignored: not a placement of this run with safe names", run_id, runfolder.PLACEMENT)
        return None
    return {k: placement[k] for k in PLACEMENT_KEYS}


def _read_record(fd: int, run_path: str, uid: int, job: Job) -> tuple[dict[str, Any], str | None]:
    """The job's run.json, or a placeholder and the reason it was not usable."""
    run_id = Path(run_path).name
    if not NAME_RE.fullmatch(run_id):
        raise Refused(f"{run_path}: the folder name is not a run ID")
    try:
        record = snapshot.read_json_at(fd, runfolder.RUN_JSON, uid)
    except FileNotFoundError:
        reason = f"{runfolder.RUN_JSON} is missing"
    except (OSError, ValueError, Refused) as e:
        reason = f"{runfolder.RUN_JSON} is unreadable: {type(e).__name__}: {str(e)[:200]}"
    else:
        if isinstance(record, dict) and snapshot.safe_names(record) and record["run_id"] == run_id:
            return record, None
        reason = f"{runfolder.RUN_JSON} is not a record of this folder (unsafe names or another run_id)"
    return placeholder_record(run_id, job, reason, read_placement(fd, run_id, uid)), reason


def resolve_run(job: Job, site: SiteConfig, deadline: float) -> Run:
    """Marker → the run folder, opened without following links, and its record.

    Raises:
        Refused: the marker or folder cannot be trusted (nothing is copied).
    """
    fd = snapshot.open_dir_nofollow(job.marker_path, job.uid)
    try:
        run_path, sweep_path, sc = job.marker_path, None, None
        if snapshot.exists_at(fd, runfolder.ARRAY_JSON):
            # A sweep: Slurm gives the epilog no SLURM_ARRAY_TASK_ID, so find the element
            # whose job recorded this SLURM_JOB_ID, else ask scontrol for ArrayTaskId.
            sweep_path = run_path
            sc = scontrol_fields(site, job.job_id, deadline, job.env)
            run_path = snapshot.resolve_array_element(fd, job.job_id, job.uid, task_id=sc.get("ArrayTaskId"))
            os.close(fd)
            fd = snapshot.open_dir_nofollow(run_path, job.uid)
        record, damaged = _read_record(fd, run_path, job.uid, job)
        return Run(fd, run_path, record, damaged, sweep_path, sc)
    except BaseException:
        os.close(fd)
        raise


def destination(record: Mapping[str, Any], site: SiteConfig, user: str) -> tuple[str, str]:
    """Where the run goes: the record's ``archive_url`` if it lies under the user's allowed
    prefix and ends with the run's own path, else the allowed prefix + the run's path."""
    prefix = user_prefix(site.allowed_prefix, user)
    place = RunLocation.of(prefix, record)
    wanted = record.get("archive_url")
    if isinstance(wanted, str) and is_under(wanted, prefix) and wanted.endswith("/" + place.tail):
        return wanted, ""
    return place.url, f"archive_url {wanted!r} is outside {prefix}; archived under it instead"


def _evidence(job: Job, run: Run, site: SiteConfig, files: Path, deadline: float,
              node_down: bool) -> endstate.Evidence:
    current = run.current
    sc = run.scontrol if run.scontrol is not None else scontrol_fields(site, job.job_id, deadline, job.env)
    return endstate.Evidence(
        exit_code2=job.env.get("SLURM_JOB_EXIT_CODE2"),
        restart_count=job.restart_count,
        attempt=run.attempt,
        job_status=current.get("status") if current else run.record.get("status"),
        job_signals=tuple(str(x.get("signal")) for x in current.get("signals") or [] if isinstance(x, dict)),
        scontrol=sc,
        oom_in_log=slurm_parse.oom_in_logs(files, run.attempt),
        record_damaged=run.damaged is not None,
        node_down=node_down,
    )


def _stage(job: Job, run: Run, site: SiteConfig, entry: Path, dest: str, user: str,
           deadline: float, ahead: ship.Ahead | None = None) -> tuple[EntryInfo, snapshot.Snapshot]:
    """Write the entry (before the copy: an archiver killed mid-copy leaves an entry the
    drain finishes, not an orphan), then copy the run folder into it."""
    info = EntryInfo(run_id=run.run_id, attempt=run.attempt, job_id=job.job_id, uid=job.uid, dest=dest, user=user,
                     source=run.path, created=utc_now(), by=job.by)
    provisional = {**run.record, "end_state": EndState.UNKNOWN, "archive_url": dest,
                   "user": user, "uid": job.uid, "epilog": {"interrupted": "the epilog ended while copying"}}
    spool.write_entry(entry, info.replace(complete=False, staging=True), provisional,
                      manifest.build(run.run_id, run.attempt, {}), index_record(provisional))
    snap = snapshot.copy_tree(run.fd, job.uid, entry / spool.FILES, deadline=budget.stage_deadline(deadline),
                              exclude=snapshot.EXCLUDE, direct_root=run.path,
                              etag_wanted=ahead.etag_wanted if ahead is not None else None)
    if run.damaged:  # kept as it was, next to the record the archiver writes
        snapshot.copy_file_as(run.fd, runfolder.RUN_JSON, runfolder.DAMAGED_RECORD, job.uid, entry / spool.FILES,
                              snap, direct_root=run.path)
    if snap.spool_full:
        log.warning("job %s: spool %s is full: every file of run %s goes straight from the run folder",
                    job.job_id, site.spool_dir, run.run_id)
    if run.sweep_path:  # an array element's Slurm log lives in the sweep folder: archive it too
        snapshot.copy_sweep_log(run.sweep_path, job.uid, run.record.get("slurm") or {}, entry / spool.FILES, snap)
    return info, snap


def _finish(job: Job, run: Run, site: SiteConfig, entry: Path, info: EntryInfo, snap: snapshot.Snapshot,
            dest: str, deadline: float, node_down: bool) -> tuple[endstate.Verdict, dict[str, Any]]:
    """Decide and record the verdict in the spool entry; returns it and the fields that
    :func:`_write_back` puts into the run folder."""
    user, _ = job.user()
    verdict = endstate.decide(_evidence(job, run, site, entry / spool.FILES, deadline, node_down))
    now = utc_now()
    # From the snapshot, not from the job: a job killed by SIGKILL/OOM never wrote them.
    metrics = read_metrics(entry / spool.FILES / runfolder.RESULTS_CSV, fitness_candidates(run.record))
    fields = {"state": str(verdict.state), "exit_code": verdict.exit_code, "rule": verdict.rule, "dest": dest,
              "user": user, "uid": job.uid, "metrics": metrics, "node": job.by, "now": now}
    writeback.apply_verdict(run.record, fields)
    run.record["epilog"] = {"evidence": verdict.to_dict()["evidence"], "skipped": snap.skipped[:200],
                            "snapshot_complete": snap.complete, "by": job.by}
    spool.write_entry(entry, info.replace(complete=snap.complete), run.record,
                      manifest.build(run.run_id, run.attempt, snap.files, created=now), index_record(run.record),
                      snap.direct, snap.etags)
    return verdict, fields


def _write_back(job: Job, run: Run, fields: dict[str, Any], deadline: float) -> str:
    """The verdict into the run folder's run.json, as the user (a child process: it runs
    beside the upload, which never reads run.json from the folder)."""
    if run.damaged:
        return "skipped: damaged record kept as it was"
    _, gid = job.user()
    return writeback.update_as_user(run.path, job.uid, gid, fields, timeout=budget.command_timeout(deadline))


# Archiving without a claim (the claims folder is unusable): a run archived twice beats a run lost.
NO_CLAIM = claims.Claim(Path("/nonexistent"), {})


def _claim(site: SiteConfig, key: AttemptKey, env: Mapping[str, str], by: str,
           holder_gone: Callable[[Mapping[str, Any]], bool] | None = None) -> claims.Claim | None:
    try:
        return claims.try_claim(site.claim_dir, key, env, by=by, stale_after_s=budget.stale_after_s(site.time_budget_s),
                                holder_gone=holder_gone)
    except OSError as e:
        log.warning("claims folder %s unusable (%s): archiving %s without a claim", site.claim_dir, e, key)
        return NO_CLAIM


def archive_job(env: Mapping[str, str], site: SiteConfig, *, deadline: float, by: str,
                node_down: bool = False, slurm: Mapping[str, str] | None = None,
                holder_gone: Callable[[Mapping[str, Any]], bool] | None = None) -> ArchiveResult:
    """Archive the attempt of the job ``env`` describes, unless someone else claimed it.

    ``node_down``: the caller saw the job's node die (the controller path); the attempt
    ends as ``NODE_FAIL`` even where Slurm already requeued the job. ``slurm``: what the caller
    already knows in ``scontrol show job``'s words (the reconciler, from sacct, for a job
    slurmctld forgot): used instead of asking scontrol. ``holder_gone``: see
    :func:`slurm_yolo.epilog.claim.try_claim`.

    Raises:
        Refused: the marker or folder cannot be trusted (nothing copied).
    """
    job = Job(env, by)
    run = resolve_run(job, site, deadline)
    if slurm is not None and not run.scontrol:
        run.scontrol = dict(slurm)
    try:
        user, _ = job.user()
        key = AttemptKey.of(job.uid, job.job_id, run.run_id, run.attempt)
        held = _claim(site, key, env, by, holder_gone)
        if held is None:
            return ArchiveResult(job.job_id, run.run_id, by, claimed=False,
                                 detail=f"claimed by another archiver: {claims.claim_path(site.claim_dir, key)}")
        spool_root = Path(site.spool_dir)
        spool_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = spool.RunLock(spool_root, key.run_key)
        try:
            # A drain shipping an older attempt of this run holds the lock: then stage only, and
            # leave shipping (in attempt order) to the drain, so old never lands after new.
            locked = lock.acquire(timeout=budget.lock_wait(deadline))
            entry = spool.entry_path(spool_root, key)
            shutil.rmtree(entry, ignore_errors=True)  # an interrupted archiver's copy of this very attempt
            superseded = spool.supersede_older(spool_root, key) if locked else []
            dest, note = destination(run.record, site, user)
            # What the store already holds under the run is asked while the folder is copied.
            ahead = ship.Ahead(site, dest, deadline) if locked else None
            info, snap = _stage(job, run, site, entry, dest, user, deadline, ahead)
            verdict, fields = _finish(job, run, site, entry, info, snap, dest, deadline, node_down)
            with ThreadPoolExecutor(1) as pool:
                written = pool.submit(_write_back, job, run, fields, deadline)
                shipped = ship.ship(entry, site, deadline=deadline - 1.0, ahead=ahead) if locked else \
                    ship.ShipResult(entry.name, False, "another drain holds this run: left to the drain", 0.0)
                wb = written.result()
        finally:
            lock.close()
        # Shipped, or durably in the spool for the drain: either way nobody archives it again.
        if held is not NO_CLAIM:
            claims.mark_done(held, {"state": verdict.state, "shipped": shipped.ok, "entry": str(key)})
    finally:
        os.close(run.fd)
    return ArchiveResult(job.job_id, run.run_id, by, str(verdict.state), verdict.rule, dest, len(snap.files),
                         len(snap.skipped), snap.complete, shipped.ok, shipped.detail, wb, note, run.damaged,
                         superseded, bytes=shipped.bytes)
