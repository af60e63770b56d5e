"""User mode: where no slurm-yolo epilog is installed, the job archives itself, and the user's
own reconciler (``slurm-yolo reconcile --user``, from scrontab or crontab) archives what the
job could not (the whole job OOM-killed, SIGKILL, a dead node).

Both run the epilog's archive steps (:func:`slurm_yolo.epilog.archiver.archive_job`: the
safe copy, the end-state rules, manifest, index record) as the user, with the user's own
store credentials (those the in-training sync uses), and with a site of the user's own
(:func:`user_site`): claims, spool and refusals in a folder of the user's that every node and
the login node see, ``~/.slurm-yolo`` (home directories are on the shared filesystem on every
cluster this targets; one folder for all of a user's ``runs_root`` s, so one claim decides
for an attempt whichever of the job and the reconciler gets there first).

The job's side (``python -m slurm_yolo.epilog.usermode archive FOLDER``) runs from the batch
script the launcher writes in user mode (:func:`slurm_yolo.launcher.slurm_params.self_archive_setup`):

- after the training step ends (a normal end, a Python error, a time-limit warning with no
  requeue left, an OOM-killed ``srun`` step: the batch step survives those), with the
  step's exit status;
- from a watcher in the batch step on SIGTERM (``scancel``, the time limit, a requeue or a
  pre-emption: Slurm signals every process of the job, then SIGKILLs them ``KillWait``
  later), within ``KillWait``. It records the SIGTERM in run.json first, as the job's own
  signal handler does: the end-state rules read it as the cancel it is;
- at the start of a requeued job's batch step, before training resumes, for the attempt
  before it when nothing finished archiving that one (a pre-emption's SIGTERM archive cut
  short by SIGKILL, a node that died): the folder then holds exactly that attempt's end.

Before archiving it asks Slurm again whether a slurm-yolo epilog is configured: if one was
put back since the job was submitted, the epilog archives the attempt and the job does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from slurm_yolo import budget, mode
from slurm_yolo import record as rec
from slurm_yolo.archive.index_store import get_object
from slurm_yolo.commands import run_command
from slurm_yolo.epilog import ship
from slurm_yolo.epilog.archiver import Job, archive_job, resolve_run
from slurm_yolo.epilog.reconcile import job_env as slurm_job_env
from slurm_yolo.epilog.reconcile import list_jobs, reconcile
from slurm_yolo.errors import CommandError, ConfigError, Refused, SlurmYoloError
from slurm_yolo.names import MARKER_PREFIX
from slurm_yolo.runfolder import ARRAY_JSON
from slurm_yolo.site import SiteConfig
from slurm_yolo.store import Store, join_url, split_url

log = logging.getLogger("slurm_yolo.epilog")

STATE_ENV = mode.USER_STATE_ENV
# One archiver in user mode: the normal end has time (the job's own), a SIGTERM has KillWait.
TIME_BUDGET_S = 120.0
# s5cmd's parallel uploads from a job: it shares the node with the user's next jobs.
WORKERS = 16
# Kept from what SIGTERM leaves (KillWait) for the process to start and the last write to land.
KILL_SLACK_S = 1.0
WHY_EXIT, WHY_TERM, WHY_REQUEUED = "exit", "SIGTERM", "requeued"
# The variables the scheduled reconciler needs from the shell it was installed from (cron and
# scrontab start it with an almost empty environment), written 0600 next to the claims.
ENV_KEYS = ("PATH", "SLURM_CONF", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_REGION", "AWS_DEFAULT_REGION", "SLURM_YOLO_SITE_CONFIG", "SLURM_YOLO_INDEX", STATE_ENV)
ENV_FILE, LOG_FILE = "reconcile.env", "reconcile.log"
# Every 2 minutes: without accounting Slurm forgets an ended job MinJobAge (300 s) after it ended.
SCHEDULE = "*/2 * * * *"


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The user's folder for claims, spool and the reconciler's files (:func:`slurm_yolo.mode.user_state_dir`)."""
    return mode.user_state_dir(env)


def user_site(env: Mapping[str, str] | None = None, *, endpoint_url: str | None = None,
              time_budget_s: float = TIME_BUDGET_S) -> SiteConfig:
    """The site settings the user's archivers run with.

    The store is the user's own (``AWS_*`` variables, ``~/.aws/credentials``: what the
    in-training sync uses), its endpoint ``endpoint_url`` (the run's ``archive.endpoint_url``),
    else the environment's, else the site config's. Where the site config is readable, its
    ``allowed_prefix`` confines the destination and its ``index_url`` names the index; without
    one, the user's credentials (and the bucket's policy, docs/admin.md) are the only bound and
    the index is ``$SLURM_YOLO_INDEX``.

    Raises:
        ConfigError: no index URL is known (nothing would be indexed).
    """
    env = os.environ if env is None else env
    public = mode.public_site(env)
    index_url = mode.user_index_url(env)
    if not index_url:
        raise ConfigError("user mode needs the run index's URL: set SLURM_YOLO_INDEX=s3://BUCKET/index/ (or ask "
                          "your admin for a site config with index_url; see README 'On a cluster without the epilog')")
    endpoint = endpoint_url or env.get("S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or \
        (public.store.endpoint_url if public else None)
    store = Store.from_env(env, endpoint_url=endpoint,
                           atomic_conditional_writes=bool(public and public.store.atomic_conditional_writes))
    root = state_dir(env)
    path = env.get("PATH", os.defpath)
    return SiteConfig(
        path=f"user mode ({root})", store=store,
        allowed_prefix=public.allowed_prefix if public else "s3://",
        index_url=index_url.rstrip("/") + "/",
        spool_dir=str(root / "spool"), log_file=str(root / LOG_FILE), time_budget_s=time_budget_s,
        s5cmd_workers=WORKERS, scontrol=True,
        scontrol_path=shutil.which("scontrol", path=path) or "/usr/bin/scontrol",
        claim_dir=str(root / "claims"), slurm_conf=env.get("SLURM_CONF") or None,
        squeue_path=shutil.which("squeue", path=path) or "/usr/bin/squeue",
        sacct_path=shutil.which("sacct", path=path) or "/usr/bin/sacct",
        metrics_textfile=None,  # node_exporter's folder is root's
        # Without accounting the round walks these: the site's shared ones and the user's own.
        runs_roots=tuple(dict.fromkeys((*(public.runs_roots if public else ()), *mode.remembered_runs_roots(env)))),
    )


# ---------------------------------------------------------------------------------------
# The job archives itself.


def step_exit_code2(code: int | None) -> str | None:
    """The ``SLURM_JOB_EXIT_CODE2`` form (``exit:signal``) of a shell's exit status of srun."""
    if code is None or code < 0:
        return None
    return f"0:{code - 128}" if code > 128 else f"{code}:0"


def job_env(folder: str, env: Mapping[str, str], step_exit: int | None) -> dict[str, str]:
    """What the epilog would be given about this job, from inside it."""
    out = {"SLURM_JOB_ID": env.get("SLURM_JOB_ID", ""), "SLURM_JOB_UID": str(os.getuid()),
           "SLURM_JOB_GID": str(os.getgid()), "SLURM_JOB_COMMENT": MARKER_PREFIX + folder,
           "SLURM_JOB_RESTART_COUNT": env.get("SLURM_RESTART_COUNT") or "0",
           "SLURM_JOB_NODELIST": env.get("SLURM_JOB_NODELIST", ""), "SLURM_SCRIPT_CONTEXT": "job"}
    code2 = step_exit_code2(step_exit)
    if code2:
        out["SLURM_JOB_EXIT_CODE2"] = code2
    return out


def run_folder_of(folder: str, env: Mapping[str, str]) -> Path | None:
    """The run folder of this job: ``folder`` itself, or a sweep's element for this array task."""
    path = Path(folder)
    if not (path / ARRAY_JSON).is_file():
        return path
    try:
        runs = json.loads((path / ARRAY_JSON).read_text()).get("runs") or {}
    except (OSError, ValueError):
        return None
    element = runs.get(env.get("SLURM_ARRAY_TASK_ID", ""))
    return Path(element) if isinstance(element, str) else None


def record_sigterm(run_dir: Path, job_id: str) -> None:
    """Note the SIGTERM in this job's attempt of run.json, as the job's own handler would (it
    may not have yet: both got it at the same moment), so the end-state rules see it."""
    now = rec.utc_now()

    def change(r: dict[str, Any]) -> None:
        attempts = r.get("attempts") or []
        if not attempts or str(attempts[-1].get("slurm_job_id")) != job_id:
            return  # this job's attempt never started: nothing of it to mark
        signals = attempts[-1].setdefault("signals", [])
        if not any(isinstance(s, dict) and s.get("signal") == WHY_TERM for s in signals):
            signals.append({"signal": WHY_TERM, "time": now, "by": "batch"})

    try:
        rec.update_record(run_dir, change)
    except (OSError, ValueError) as e:
        log.warning("%s: could not record SIGTERM (%s)", run_dir, e)


def previous_attempt_gone(job_id: str, restart_count: int) -> Callable[[Mapping[str, Any]], bool]:
    """For a claim: whether its holder was this job's own archiver in an earlier attempt. Slurm
    starts attempt ``restart_count + 1`` only once every process of the earlier ones is gone, so
    such a holder (the SIGTERM archive that KillWait's SIGKILL cut short) is dead."""
    def gone(held: Mapping[str, Any]) -> bool:
        job: Mapping[str, Any] = held["job"] if isinstance(held.get("job"), dict) else {}
        restarts = str(job.get("SLURM_JOB_RESTART_COUNT", ""))
        return str(held.get("by", "")).startswith("job@") and str(job.get("SLURM_JOB_ID")) == job_id \
            and restarts.isdigit() and int(restarts) < restart_count
    return gone


def archive_self(folder: str, *, why: str, step_exit: int | None, env: Mapping[str, str] | None = None,
                 started: float | None = None) -> dict[str, Any]:
    """Archive this job's attempt from inside the job (user mode). Returns a summary.

    Args:
        folder: the job's marker folder (the run folder, or the sweep folder of an array).
        why: ``exit`` (the training step ended, with ``step_exit``), ``SIGTERM``, or
            ``requeued``: the batch step of a requeued job, before training resumes, archives the
            attempt before it if nothing finished that (its SIGTERM archive did not fit in
            ``KillWait``, or its node died). The folder then holds exactly that attempt's end.
        step_exit: the shell's exit status of the training step (``None``: still running).
        env: the job's environment (default ``os.environ``).
        started: ``time.monotonic()`` when this process started (default: now).
    """
    env = os.environ if env is None else env
    started = time.monotonic() if started is None else started
    text = mode.show_config(env)
    if text is not None and mode.epilog_installed(text):
        return {"skipped": "a slurm-yolo epilog is configured: it archives this job"}
    setup = mode.slurm_setup(text) if text is not None else mode.SlurmSetup()
    run_dir = run_folder_of(folder, env)
    config: dict[str, Any] = {}
    if run_dir is not None:
        try:
            config = rec.read_record(run_dir).get("config") or {}
        except (OSError, ValueError):
            config = {}  # a damaged record: the archiver's placeholder path handles it
    site = user_site(env, endpoint_url=(config.get("archive") or {}).get("endpoint_url"))
    by = f"job@{env.get('SLURMD_NODENAME') or socket.gethostname()}"
    if why == WHY_REQUEUED:
        restarts = env.get("SLURM_RESTART_COUNT") or "0"
        if not restarts.isdigit() or int(restarts) < 1:
            return {"skipped": "not a requeued job: no earlier attempt"}
        earlier = {**env, "SLURM_RESTART_COUNT": str(int(restarts) - 1)}
        gone = previous_attempt_gone(env.get("SLURM_JOB_ID", ""), int(restarts))
        return archive_job(job_env(folder, earlier, None), site, by=by, holder_gone=gone,
                           deadline=budget.epilog_deadline(started, site.time_budget_s)).to_dict()
    if why == WHY_TERM:
        if run_dir is not None:
            record_sigterm(run_dir, env.get("SLURM_JOB_ID", ""))
        deadline = started + max(1.0, setup.kill_wait_s - KILL_SLACK_S)
    else:
        deadline = budget.epilog_deadline(started, site.time_budget_s)
    return archive_job(job_env(folder, env, step_exit), site, deadline=deadline, by=by).to_dict()


# ---------------------------------------------------------------------------------------
# The user's reconciler.


def epilog_archived(record: Mapping[str, Any], attempt: int, store: Store, archive_url: str | None) -> bool:
    """Whether an epilog (or any archiver outside this user's claims) archived ``attempt``:
    its end state is in the run folder's record, or its record is in the store."""
    attempts = [a for a in record.get("attempts") or [] if isinstance(a, dict) and a.get("attempt") == attempt]
    if attempts and attempts[-1].get("end_state") and attempts[-1].get("epilog"):
        return True
    if not archive_url:
        return False
    bucket, key = split_url(join_url(archive_url, "attempts", f"attempt-{attempt}.json"))
    try:
        return get_object(store.boto3_client(), bucket, key) is not None
    except SlurmYoloError:
        return False  # cannot tell: the claims still make it once


def _not_archived_elsewhere(site: SiteConfig) -> Callable[[Any], bool]:
    def keep(job: Any) -> bool:
        try:
            run = resolve_run(Job(slurm_job_env(job, {}), "reconciler"), site, budget.lookup_deadline())
        except (Refused, OSError, SlurmYoloError):
            return True  # the round refuses it and remembers that
        try:
            return not epilog_archived(run.record, run.attempt, site.store, run.record.get("archive_url"))
        finally:
            os.close(run.fd)
    return keep


def reconcile_user(env: Mapping[str, str] | None = None, *, dry_run: bool = False,
                   say: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    """One round over this user's ended jobs: archive those that neither the job itself nor
    an epilog archived, then ship what a killed self-archive left in the user's spool.

    Jobs are due as soon as they ended (no epilog is waited for); an attempt whose claim a
    killed job left behind is taken over once that claim is stale (the archivers' time budget).
    """
    env = os.environ if env is None else env
    site = user_site(env)
    uid = os.getuid()
    keep = _not_archived_elsewhere(site)

    def my_jobs(s: SiteConfig) -> list[Any]:
        return [j for j in list_jobs(s) if j.uid == uid and j.comment.startswith(MARKER_PREFIX) and keep(j)]

    results = reconcile(site, uid=uid, dry_run=dry_run, settle_s=0.0, say=say, jobs=my_jobs)
    if not dry_run and Path(site.spool_dir).is_dir():
        for shipped in ship.drain(site, budget_s=site.time_budget_s, log=say):
            results.append({"entry": shipped.entry, "shipped": shipped.ok, "detail": shipped.detail})
    return results


# ---------------------------------------------------------------------------------------
# Installing the reconciler: a scrontab entry where the cluster enables it, else crontab.


def reconciler_command(python: str, state: Path) -> str:
    """The scheduled command (one line, ending with the tag that finds it again)."""
    return (f"{shlex.quote(python)} -m slurm_yolo.cli reconcile --user --env-file {shlex.quote(str(state / ENV_FILE))} "
            f">> {shlex.quote(str(state / LOG_FILE))} 2>&1 {mode.RECONCILER_TAG}")


def with_line(table: str, kind: str, command: str) -> str:
    """``table`` with the reconciler's entry added (and any older one of ours replaced)."""
    lines = without_line(table).splitlines()
    if kind == mode.SCRONTAB:
        # scrontab: options for the next entry; a short job, its output in the log already.
        lines.append("#SCRON --job-name=slurm-yolo-reconcile --time=10 --output=/dev/null")
    lines.append(f"{SCHEDULE} {command}")
    return "\n".join(lines) + "\n"


def without_line(table: str) -> str:
    """``table`` without the reconciler's entry (and its ``#SCRON`` line); nothing else changes."""
    out: list[str] = []
    for line in table.splitlines():
        if line.rstrip().endswith(mode.RECONCILER_TAG):
            if out and out[-1].startswith("#SCRON") and "slurm-yolo-reconcile" in out[-1]:
                out.pop()
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def _table(kind: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(the tool's path, the user's current table: empty if they have none)."""
    tool = shutil.which(kind, path=env.get("PATH", os.defpath))
    if tool is None:
        raise ConfigError(f"{kind} is not installed here; install the reconciler from a login node that has it")
    proc = run_command([tool, "-l"], "reconcile --install", timeout=30, env=dict(env), check=False)
    if proc.returncode != 0:
        low = (proc.stderr or "").lower()
        if "no crontab" in low or "no scrontab" in low or not proc.stdout.strip():
            return tool, ""
        raise CommandError("reconcile --install", [tool, "-l"], (proc.stderr or proc.stdout).strip()[-300:])
    return tool, proc.stdout


def _write_table(tool: str, table: str, env: Mapping[str, str]) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="slurm-yolo-cron-", suffix=".txt") as f:
        f.write(table)
        f.flush()
        run_command([tool, f.name], "reconcile --install", timeout=30, env=dict(env))


def chosen_kind(env: Mapping[str, str]) -> str:
    """scrontab where the cluster enables it (``ScronParameters=enable``) and it is here, else crontab."""
    text = mode.show_config(env)
    scron = text is not None and mode.slurm_setup(text).scron_enabled
    return mode.SCRONTAB if scron and shutil.which(mode.SCRONTAB, path=env.get("PATH", os.defpath)) else mode.CRONTAB


def install(env: Mapping[str, str] | None = None, *, python: str | None = None) -> str:
    """Install (or refresh) the user's reconciler; returns the line saying where. Idempotent."""
    env = os.environ if env is None else env
    user_site(env)  # refuses a set-up that could not index anything, before anything is written
    state = state_dir(env)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    saved = {k: env[k] for k in ENV_KEYS if env.get(k)}
    saved.setdefault("HOME", env.get("HOME") or str(Path.home()))
    rec.write_json_atomic(state / ENV_FILE, saved, mode=0o600)
    kind = chosen_kind(env)
    other = mode.CRONTAB if kind == mode.SCRONTAB else mode.SCRONTAB
    _remove_from(other, env)  # one reconciler, not one in each table
    tool, table = _table(kind, env)
    _write_table(tool, with_line(table, kind, reconciler_command(python or sys.executable, state)), env)
    return (f"installed in your {kind} ({SCHEDULE}): `slurm-yolo reconcile --user`, logging to "
            f"{state / LOG_FILE}" + ("" if kind == mode.SCRONTAB else
                                     " (no scrontab on this cluster: it runs from this login node's cron)"))


def _remove_from(kind: str, env: Mapping[str, str]) -> bool:
    if shutil.which(kind, path=env.get("PATH", os.defpath)) is None:
        return False
    try:
        tool, table = _table(kind, env)
    except CommandError:
        return False
    if not mode.has_reconciler_line(table):
        return False
    _write_table(tool, without_line(table), env)
    return True


def uninstall(env: Mapping[str, str] | None = None) -> str:
    """Remove exactly the reconciler's line(s) from scrontab and crontab; returns what it did."""
    env = os.environ if env is None else env
    removed = [kind for kind in (mode.SCRONTAB, mode.CRONTAB) if _remove_from(kind, env)]
    return f"removed from your {' and '.join(removed)}" if removed else "not installed: nothing removed"


# ---------------------------------------------------------------------------------------
# Entry points.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``reconcile --user`` and its options (on the ``reconcile`` command of epilog/cli.py)."""
    parser.add_argument("--user", action="store_true",
                        help="user mode (no slurm-yolo epilog on this cluster): one round over YOUR ended jobs, "
                             "archived with your own S3 credentials; claims and spool in ~/.slurm-yolo")
    parser.add_argument("--install", action="store_true",
                        help="with --user: run it every 2 minutes, from scrontab where the cluster enables it, "
                             "else from your crontab on this login node; says which")
    parser.add_argument("--uninstall", action="store_true", help="with --user: remove exactly that entry")
    parser.add_argument("--env-file", default=None, help=argparse.SUPPRESS)  # what --install saved for cron


def load_env_file(path: str | None, env: Mapping[str, str]) -> dict[str, str]:
    """The environment with what ``--install`` saved laid over it (cron starts with almost none)."""
    out = dict(env)
    if path:
        try:
            out.update({k: str(v) for k, v in json.loads(Path(path).read_text()).items() if k in (*ENV_KEYS, "HOME")})
        except (OSError, ValueError) as e:
            raise ConfigError(f"--env-file {path}: cannot be read ({e}); run `slurm-yolo reconcile --user "
                              "--install` again") from e
    return out


def cmd_reconcile_user(args: argparse.Namespace) -> int:
    """``slurm-yolo reconcile --user [--install|--uninstall] [--dry-run] [--json]``."""
    if (args.install or args.uninstall) and not args.user:
        raise ConfigError("--install/--uninstall go with --user: slurm-yolo reconcile --user --install")
    if args.install and args.uninstall:
        raise ConfigError("reconcile --user: choose one of --install and --uninstall")
    if os.geteuid() == 0:
        raise ConfigError("reconcile --user archives your own runs: run it as yourself, not as root "
                          "(root runs the site's reconciler: slurm-yolo reconcile)")
    env = load_env_file(args.env_file, os.environ)
    if args.install or args.uninstall:
        line = install(env) if args.install else uninstall(env)
        print(json.dumps({"reconciler": line}) if args.json else line)
        return 0
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} reconcile --user", file=sys.stderr)
    results = reconcile_user(env, dry_run=args.dry_run, say=lambda m: None if args.json else print(m, flush=True))
    if args.json:
        print(json.dumps(results))
    elif not results:
        print("nothing to reconcile")
    return 1 if any("error" in r for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m slurm_yolo.epilog.usermode archive FOLDER --why exit|SIGTERM|requeued [--step-exit N]``:
    the batch script's self-archive. Never fails the job: exit 0, one line on stderr."""
    started = time.monotonic()
    # SIGKILL follows KillWait after the SIGTERM that may have started us: every second is the copy's.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    p = argparse.ArgumentParser(prog="python -m slurm_yolo.epilog.usermode")
    p.add_argument("action", choices=["archive"])
    p.add_argument("folder")
    p.add_argument("--why", choices=[WHY_EXIT, WHY_TERM, WHY_REQUEUED], default=WHY_EXIT)
    p.add_argument("--step-exit", default="")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[slurm-yolo] %(levelname)s %(message)s"))
    logging.getLogger("slurm_yolo").handlers[:] = [handler]
    logging.getLogger("slurm_yolo").setLevel(logging.INFO)
    code = int(args.step_exit) if args.step_exit.strip().lstrip("-").isdigit() else None
    try:
        summary = archive_self(args.folder, why=args.why, step_exit=code, started=started)
    except (SlurmYoloError, OSError) as e:
        print(f"[slurm-yolo] not archived by the job ({args.why}): {e}; `slurm-yolo reconcile --user` will",
              file=sys.stderr, flush=True)
        return 0
    except Exception:  # noqa: BLE001 - never fail the user's job for the archive's sake
        log.exception("self-archive failed")
        return 0
    short = {k: summary.get(k) for k in ("run", "state", "rule", "dest", "files", "shipped", "detail", "skipped")
             if summary.get(k) not in (None, "")}
    print(f"[slurm-yolo] self-archive ({args.why}): {json.dumps(short)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

