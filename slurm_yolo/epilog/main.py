"""``slurm-yolo-epilog``: the Slurm node epilog. Runs as root after EVERY job on the node.

Contract (docs/admin.md): exit 0 always, within the site's time budget; a cheap no-op for
jobs that are not ours; no PATH (absolute paths only); every user-settable value is
hostile input; what cannot be uploaded now stays in the spool for ``slurm-yolo spool drain``.

Steps for one of our jobs: resolve the run folder from the marker (safely) → read the job's
own record → decide the end state → write it back into the run folder (as the user) →
snapshot the folder into the spool → upload with s5cmd → delete the spool entry.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from slurm_yolo.names import MARKER_PREFIX  # cheap: re, secrets

log = logging.getLogger("slurm_yolo.epilog")


def is_ours(env: Mapping[str, str]) -> bool:
    """The no-op test, first thing, before any import: is this job marked by slurm-yolo?"""
    return env.get("SLURM_JOB_COMMENT", "").startswith(MARKER_PREFIX)


def first_node(nodelist: str) -> str:
    """First host of a Slurm hostlist expression (``gpu[03-05,9],cpu1`` → ``gpu03``)."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[: nodelist.index("]") + 1]
    if "[" not in head:
        return head.strip()
    prefix, _, rng = head.partition("[")
    first = rng.rstrip("]").split(",")[0].split("-")[0]
    return prefix + first


def is_archiving_node(env: Mapping[str, str]) -> bool:
    """Multi-node jobs run the epilog on every node; only the first node of the job archives."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    node = env.get("SLURMD_NODENAME") or ""
    return not nodelist or not node or first_node(nodelist) == node


def _user(uid: int, env: Mapping[str, str]) -> tuple[str, int]:
    """User name and primary gid of the job's uid (names from the passwd database, not env)."""
    try:
        pw = pwd.getpwuid(uid)
        return pw.pw_name, pw.pw_gid
    except KeyError:
        return f"uid{uid}", int(env.get("SLURM_JOB_GID", uid) or uid)


def _setup_logging(path: str) -> None:
    handler: logging.Handler
    try:
        Path(path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("slurm_yolo")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def archive_job(env: Mapping[str, str], site, *, deadline: float) -> dict[str, Any]:
    """Do the epilog's work for one job of ours; returns a summary (also logged).

    Raises:
        snapshot.Refused: the marker or folder cannot be trusted (nothing copied).
    """
    from slurm_yolo.archive.layout import index_record
    from slurm_yolo.epilog import endstate, snapshot, spool, writeback
    from slurm_yolo.record import read_metrics, utc_now

    job_id = env.get("SLURM_JOB_ID", "")
    uid = int(env["SLURM_JOB_UID"])
    user, gid = _user(uid, env)
    fd, run_path, record, sc_fields, sweep_path = _resolve_run(env, site, uid, deadline)
    try:
        run_id = record["run_id"]
        attempts = record.get("attempts") or []
        current = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
        attempt = int(current.get("attempt") or len(attempts) or 1)
        spool_root = Path(site.spool_dir)
        spool_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = spool.run_key(uid, job_id, run_id)
        lock = spool.RunLock(spool_root, key)
        try:
            # A drain shipping an older attempt of this run holds the lock: then stage only, and
            # leave shipping (in attempt order) to the drain, so old never lands after new.
            locked = lock.acquire(timeout=max(0.0, min(10.0, deadline - time.monotonic())))
            entry = spool_root / spool.entry_name(key, attempt)
            # Same uid, job and attempt: only a copy an interrupted epilog of this very attempt
            # left behind. Start clean so nothing of it is mixed into this snapshot.
            shutil.rmtree(entry, ignore_errors=True)
            superseded = spool.supersede_older(spool_root, key, attempt) if locked else []
            dest, note = destination(record, site, user)
            info = {"run_id": run_id, "attempt": attempt, "job_id": job_id, "user": user, "uid": uid, "dest": dest,
                    "source": run_path, "created": utc_now()}
            # Written before the copy: an epilog killed while copying (node crash, slurmd's own
            # timeout) leaves an entry the drain finishes by copying the folder again, not an
            # orphan folder nobody ships. The drain leaves it alone while we may still run.
            provisional = {**record, "end_state": "UNKNOWN", "status": "UNKNOWN", "archive_url": dest,
                           "user": user, "uid": uid, "epilog": {"interrupted": "the epilog ended while copying"}}
            spool.write_entry(entry, {**info, "complete": False, "staging": True}, provisional,
                              {"version": 1, "run_id": run_id, "attempt": attempt, "files": {}},
                              index_record(provisional))
            stage_deadline = time.monotonic() + max(1.0, (deadline - time.monotonic()) * 0.6)
            snap = snapshot.copy_tree(fd, uid, entry / "files", deadline=stage_deadline,
                                      exclude=snapshot.EXCLUDE)
            if sweep_path:  # an array element's Slurm log lives in the sweep folder: archive it too
                snapshot.copy_sweep_log(sweep_path, uid, record.get("slurm") or {}, entry / "files", snap)
            evidence = endstate.Evidence(
                exit_code2=env.get("SLURM_JOB_EXIT_CODE2"),
                restart_count=int(env.get("SLURM_JOB_RESTART_COUNT") or 0),
                attempt=attempt,
                job_status=current.get("status") if current else record.get("status"),
                job_signals=tuple(str(x.get("signal")) for x in current.get("signals") or [] if isinstance(x, dict)),
                scontrol=sc_fields if sc_fields is not None else
                _scontrol(site, job_id, deadline, env) if site.scontrol else {},
                oom_in_log=endstate.oom_in_logs(entry / "files", attempt),
            )
            verdict = endstate.decide(evidence)
            now = utc_now()

            # From the snapshot, not from the job: a job killed by SIGKILL/OOM never wrote them.
            metrics = read_metrics(entry / "files" / "results.csv")

            def apply(r: dict[str, Any]) -> None:
                r["end_state"] = r["status"] = verdict.state
                r["archive_url"] = dest
                # Who ran it comes from slurmd and passwd, never from the user-writable record.
                r["user"], r["uid"] = user, uid
                if metrics:
                    r["metrics"] = metrics
                if r.get("attempts"):
                    a = r["attempts"][-1]
                    a["end"] = a.get("end") or now
                    a.update(end_state=verdict.state, exit_code=verdict.exit_code,
                             epilog={"node": env.get("SLURMD_NODENAME"), "time": now, "rule": verdict.rule})
                    if metrics:
                        a["epoch"] = metrics["epochs_done"]

            apply(record)
            record["epilog"] = {"evidence": verdict.to_dict()["evidence"], "skipped": snap.skipped[:200],
                                "snapshot_complete": snap.complete}
            # Tell the user's folder too (as the user, never as root inside their folder).
            wb = writeback.update_as_user(run_path, uid, gid, apply,
                                          timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            manifest = {"version": 1, "run_id": run_id, "attempt": attempt, "created": now, "files": snap.files}
            spool.write_entry(entry, {**info, "complete": snap.complete}, record, manifest, index_record(record))
            result = spool.ship(entry, site, deadline=deadline - 1.0) if locked else \
                spool.ShipResult(entry.name, False, "another drain holds this run: left to the drain", 0.0)
        finally:
            lock.close()
    finally:
        os.close(fd)
    return {"job": job_id, "run": run_id, "state": verdict.state, "rule": verdict.rule, "dest": dest,
            "files": len(snap.files), "skipped": len(snap.skipped), "complete": snap.complete,
            "shipped": result.ok, "detail": result.detail, "writeback": wb, "note": note,
            "superseded": superseded}


def _resolve_run(env: Mapping[str, str], site, uid: int, deadline: float):
    """Marker → (open run folder fd, its path, its run.json, scontrol fields if already asked,
    the sweep folder for an array element else ``None``)."""
    from slurm_yolo.epilog import snapshot

    job_id = env.get("SLURM_JOB_ID", "")
    marker_path = env["SLURM_JOB_COMMENT"][len(MARKER_PREFIX):]
    fd = snapshot.open_dir_nofollow(marker_path, uid)
    sc_fields: dict[str, str] | None = None
    sweep_path = None
    try:
        run_path = marker_path
        if snapshot.exists_at(fd, "array.json"):
            sweep_path = marker_path
            # A sweep: Slurm gives the epilog no SLURM_ARRAY_TASK_ID, so find the element
            # whose job recorded this SLURM_JOB_ID, else ask scontrol for ArrayTaskId.
            sc_fields = _scontrol(site, job_id, deadline, env) if site.scontrol else {}
            run_path = snapshot.resolve_array_element(fd, job_id, uid, task_id=sc_fields.get("ArrayTaskId"))
            os.close(fd)
            fd = snapshot.open_dir_nofollow(run_path, uid)
        record = snapshot.read_json_at(fd, "run.json", uid)
        if not isinstance(record, dict) or not snapshot.safe_names(record) or record["run_id"] != Path(run_path).name:
            raise snapshot.Refused(f"{run_path}/run.json has unsafe names or a run_id that is not the folder name")
        return fd, run_path, record, sc_fields, sweep_path
    except BaseException:
        os.close(fd)
        raise


def destination(record: Mapping[str, Any], site, user: str) -> tuple[str, str]:
    """Where the run goes: the record's ``archive_url`` if it lies under the user's allowed
    prefix and ends with the run's own path, else the allowed prefix + the run's path."""
    tail = f"{record['task']}/{record['project']}/{record['model_name']}/{record['run_id']}/"
    prefix = site.prefix_for(user)
    wanted = record.get("archive_url")
    if isinstance(wanted, str) and wanted.startswith(prefix) and wanted.endswith("/" + tail) \
            and "/../" not in wanted and "/./" not in wanted and not any(ord(c) < 32 for c in wanted):
        return wanted, ""
    return prefix + tail, f"archive_url {wanted!r} is outside {prefix}; archived under it instead"


def _scontrol(site, job_id: str, deadline: float, env: Mapping[str, str]) -> dict[str, str]:
    from slurm_yolo.commands import run_command
    from slurm_yolo.epilog.endstate import parse_scontrol, scontrol_argv
    from slurm_yolo.errors import CommandError

    try:
        proc = run_command(scontrol_argv(site.scontrol_path, job_id), "epilog",
                           timeout=max(0.5, min(5.0, deadline - time.monotonic())),
                           # slurmd sets SLURM_CONF for the epilog; scontrol needs it (or /etc/slurm).
                           env={"PATH": "/usr/bin:/bin", **{k: env[k] for k in ("SLURM_CONF",) if k in env}})
        return parse_scontrol(proc.stdout, job_id)
    except (CommandError, ValueError) as e:
        log.warning("job %s: scontrol unavailable (%s); deciding without it", job_id, e)
        return {}


def run(env: Mapping[str, str]) -> int:
    """The epilog proper (after the no-op test). Always returns 0."""
    from slurm_yolo.epilog.site import load_site_config, site_config_path
    from slurm_yolo.errors import SlurmYoloError
    from slurm_yolo.epilog.snapshot import Refused

    started = time.monotonic()
    job_id = env.get("SLURM_JOB_ID", "?")
    try:
        site = load_site_config(site_config_path(dict(env)))
    except SlurmYoloError as e:
        _setup_logging("/var/log/slurm-yolo/epilog.log")
        log.error("job %s: not archived: %s", job_id, e)
        return 0
    _setup_logging(site.log_file)
    # Hard stop: whatever hangs (a dead NFS server, a stuck store), the node must not drain.
    watchdog = threading.Timer(site.time_budget_s, _give_up, args=(job_id,))
    watchdog.daemon = True
    watchdog.start()
    if not is_archiving_node(env):
        log.info("job %s: not the first node of a multi-node job; the first node archives", job_id)
        return 0
    try:
        summary = archive_job(env, site, deadline=started + site.time_budget_s - 2.0)
        level = logging.INFO if summary["shipped"] else logging.WARNING
        log.log(level, "job %s: %s", job_id, summary)
    except Refused as e:
        log.error("job %s: refused: %s", job_id, e)
    except Exception:  # never let a bug drain the node; log it whole
        log.exception("job %s: epilog error", job_id)
    log.info("job %s: epilog done in %.2f s", job_id, time.monotonic() - started)
    return 0


def _give_up(job_id: str) -> None:
    log.error("job %s: epilog time budget exhausted; exiting 0, run stays in the spool", job_id)
    logging.shutdown()
    os._exit(0)


def _detach_fds() -> None:
    """Slurm waits for the epilog's stdout to close; never let a child inherit it, nor other fds."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 65536)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``slurm-yolo-epilog`` (``--check`` validates the site config instead)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        from slurm_yolo.epilog.check import main as check_main

        return check_main(argv)
    env = dict(os.environ)
    if not is_ours(env):
        return 0
    _detach_fds()
    try:
        return run(env)
    except BaseException:  # noqa: BLE001 - the contract is exit 0, always
        return 0


if __name__ == "__main__":
    sys.exit(main())
