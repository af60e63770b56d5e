"""``slurm-yolo doctor``: check a user's set-up end to end, one line per check with its fix.

What a run needs before it is submitted, in the order a new user meets the problems:

    credentials      S3 keys found in the shell (keys, a profile, ~/.aws/credentials)
    store            the archive bucket answers with them
    archive prefix   a probe object can be written and deleted under the run's archive URL
    mode             a slurm-yolo epilog is configured, or user mode (``slurm_yolo.mode``)
    reconciler       in user mode, the user's ``reconcile --user`` is installed
    runs_root        on a filesystem the compute nodes share (nfs, lustre, gpfs, beegfs, ...)
    check job        a one-minute job imports slurm_yolo and ultralytics on a compute node
                     with this very interpreter (``sys.executable``): a venv or a checkout
                     the nodes cannot see fails every job with ModuleNotFoundError

Each check is a function of what earlier ones found; none raises. A failed check exits the
command non-zero; a warning (a filesystem that may be local) does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from slurm_yolo import mode as modes
from slurm_yolo.archive.layout import user_prefix
from slurm_yolo.commands import run_command
from slurm_yolo.config import load_config
from slurm_yolo.errors import CommandError, SlurmYoloError
from slurm_yolo.store import Store, split_url, store_error

OK, WARN, FAIL = "ok", "warn", "FAIL"
# Filesystem types (/proc/mounts) that a cluster shares between its login and compute nodes.
SHARED_FS = frozenset({"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "fuse.glusterfs", "glusterfs",
                       "panfs", "wekafs", "fuse.sshfs", "smbfs", "cifs", "smb3", "fuse.cephfs", "orangefs",
                       "fuse.beegfs", "fuse.weka", "vast", "afs"})
# The check job: this interpreter imports both packages and says where they came from.
CHECK_CODE = ("import sys, slurm_yolo, ultralytics; "
              "print('slurm-yolo-doctor ok', sys.executable, slurm_yolo.__file__, ultralytics.__version__)")
CHECK_TIME_LIMIT_MIN = 1
# How long the check job may wait in the queue and run, in all, before doctor gives up on it.
CHECK_WAIT_S = 180.0
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"})


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, what was seen, what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<15} {self.detail}" + (f"  → {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Setup:
    """What the checks look at: the shell's environment, the store, where runs go."""

    env: Mapping[str, str]
    store: Store
    archive_url: str | None
    runs_root: Path
    partition: str | None = None


# --- the checks ------------------------------------------------------------------------------


def check_credentials(setup: Setup) -> Check:
    """Keys in the environment, or a credentials file with the profile's keys."""
    keys = dict(setup.store.keys)
    if keys.get("AWS_ACCESS_KEY_ID") and keys.get("AWS_SECRET_ACCESS_KEY"):
        return Check("credentials", OK, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set")
    if keys.get("AWS_ACCESS_KEY_ID") or keys.get("AWS_SECRET_ACCESS_KEY"):
        return Check("credentials", FAIL, "only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set",
                     "set both (or neither, and use a profile in ~/.aws/credentials)")
    found = setup.store.file_keys() if setup.store.credentials_file and os.path.isfile(
        setup.store.credentials_file) else {}
    if found.get("AWS_ACCESS_KEY_ID"):
        return Check("credentials", OK, f"profile {setup.store.profile or 'default'} in {setup.store.credentials_file}")
    return Check("credentials", FAIL, "no S3 keys in the environment or in ~/.aws/credentials",
                 "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (your own store keys), or AWS_PROFILE")


def check_store(setup: Setup, client: Any) -> Check:
    """The archive bucket answers (HeadBucket) with these credentials."""
    if not setup.archive_url:
        return Check("store", FAIL, "no archive URL: no config given and no readable site config",
                     "pass your run config (slurm-yolo doctor CONFIG) or set SLURM_YOLO_SITE_CONFIG")
    bucket, _ = split_url(setup.archive_url)
    where = setup.store.endpoint_url or "AWS S3"
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as e:  # botocore's errors: translated to one line with its fix
        status = str((getattr(e, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        fix = {"403": "the store refused these keys for this bucket: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
               "404": "no such bucket: check archive.url"}.get(status, "check AWS_ENDPOINT_URL and your keys")
        return Check("store", FAIL, f"bucket {bucket} at {where}: {store_error('reach', f's3://{bucket}', e)}", fix)
    return Check("store", OK, f"bucket {bucket} answers at {where}")


def check_prefix(setup: Setup, client: Any) -> Check:
    """A probe object put and deleted under the archive URL (what the sync and the job's own
    archive write there)."""
    if not setup.archive_url:
        return Check("archive prefix", FAIL, "no archive URL", "see the store check")
    bucket, prefix = split_url(setup.archive_url)
    key = f"{prefix.rstrip('/')}/.slurm-yolo-doctor-{uuid.uuid4().hex[:12]}".lstrip("/")
    url = f"s3://{bucket}/{key}"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"slurm-yolo doctor probe\n")
    except Exception as e:
        return Check("archive prefix", FAIL, f"cannot write {url}: {store_error('write', url, e)}",
                     "ask for write access to this prefix, or change archive.url in your config")
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except Exception as e:
        return Check("archive prefix", FAIL, f"wrote but cannot delete {url}: {store_error('delete', url, e)}",
                     "delete the probe object by hand; retention (store prune) needs delete rights too")
    return Check("archive prefix", OK, f"wrote and deleted a probe object under {setup.archive_url}")


def check_mode(found: modes.Mode) -> Check:
    """A slurm-yolo epilog archives runs, or user mode (the job and ``reconcile --user``)."""
    if found.epilog is None:
        return Check("mode", FAIL, "cannot ask Slurm (`scontrol show config` failed or no Slurm config here)",
                     "run doctor on a login node of the cluster, with SLURM_CONF set if your site needs it")
    if found.epilog:
        return Check("mode", OK, "a slurm-yolo epilog is configured: the node archives every run")
    return Check("mode", OK, "user mode: no slurm-yolo epilog here; the job archives itself, "
                             "`slurm-yolo reconcile --user` archives what it cannot")


def check_reconciler(found: modes.Mode) -> Check:
    """In user mode, the user's reconciler must be scheduled (scrontab or crontab)."""
    if found.epilog is None:
        return Check("reconciler", FAIL, "unknown (Slurm could not be asked)", "see the mode check")
    if found.epilog:
        return Check("reconciler", OK, "not needed: the epilog (and the admin's reconciler) archive every run")
    if found.reconciler:
        return Check("reconciler", OK, f"installed ({found.reconciler})")
    return Check("reconciler", FAIL, "not installed: runs killed by an OOM, SIGKILL or a dead node are not archived",
                 "slurm-yolo reconcile --user --install")


def mount_type(path: str, mounts_text: str) -> tuple[str, str]:
    """``(mount point, filesystem type)`` of the mount holding ``path`` (``/proc/mounts`` text)."""
    best = ("/", "")
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/") or point == "/") and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best


def check_runs_root(setup: Setup, mounts_text: str) -> Check:
    """The runs_root on a shared filesystem: the job writes there, the login node reads it."""
    root = setup.runs_root
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # submit creates runs_root: judge the filesystem it will be on
    real = os.path.realpath(probe)
    point, fstype = mount_type(real, mounts_text)
    if fstype in SHARED_FS:
        return Check("runs_root", OK, f"{root} is on {fstype} ({point})")
    if not os.access(real, os.W_OK):
        return Check("runs_root", FAIL, f"{root}: {real} is not writable", "set runs_root to a folder you can write")
    return Check("runs_root", WARN, f"{root} is on {fstype or 'an unknown filesystem'} ({point}), not a known shared "
                                    "one: compute nodes may not see it (the check job tells)",
                 "set runs_root to a shared filesystem (your home or project space) if the check job fails")


# --- the check job: build, run, parse --------------------------------------------------------


def check_job_argv(python: str, out_path: str, workdir: str, partition: str | None) -> list[str]:
    """``sbatch`` for the check job: this interpreter imports slurm_yolo and ultralytics."""
    return ["sbatch", "--parsable", "-J", "slurm-yolo-doctor", "-t", str(CHECK_TIME_LIMIT_MIN), "-n", "1", "-c", "1",
            "--mem=2G", "-D", workdir, "-o", out_path, "-e", out_path,
            *(["-p", partition] if partition else []),
            "--wrap", f"exec {shlex.quote(python)} -c {shlex.quote(CHECK_CODE)}"]


def job_state_argv(job_id: str) -> list[str]:
    return ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%N"]


def parse_job_state(text: str) -> tuple[str, str]:
    """``squeue -o '%T|%N'`` → ``(state, node)`` (``("", "")`` when slurmctld no longer lists it)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    state, _, node = line.partition("|")
    return state.strip(), node.strip()


def judge_check_job(state: str, node: str, output: str | None, python: str, workdir: str) -> Check:
    """The check job's verdict from its end state and what it printed."""
    where = f" on {node}" if node else ""
    if state == "COMPLETED" and output and "slurm-yolo-doctor ok" in output:
        seen = output.split("slurm-yolo-doctor ok", 1)[1].split()
        version = seen[2] if len(seen) > 2 else "?"
        return Check("check job", OK, f"{python} imported slurm_yolo and ultralytics {version}{where}")
    text = output or ""
    missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", text)
    if missing:
        return Check("check job", FAIL, f"{python}{where}: ModuleNotFoundError: No module named '{missing.group(1)}'",
                     f"the compute node cannot see your venv or checkout: install slurm-yolo and ultralytics in a "
                     f"venv on a filesystem the nodes share (not {sys.prefix} if it is local), then submit from it")
    if re.search(r"No such file or directory|not found|cannot execute", text):
        return Check("check job", FAIL, f"{python} does not exist or cannot run{where}: {_last_line(text)}",
                     "use a venv on a filesystem the compute nodes share (your home or project space)")
    if output is None:
        return Check("check job", FAIL, f"ended {state or 'unknown'}{where}, and its output {workdir} is not "
                                        "readable here: the node cannot write your runs_root",
                     "set runs_root to a filesystem the compute nodes share")
    return Check("check job", FAIL, f"ended {state or 'unknown'}{where}: {_last_line(text) or 'no output'}",
                 "read the job's output above; `slurm-yolo doctor --json` has it whole")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_check_job(setup: Setup, *, python: str = sys.executable, wait_s: float = CHECK_WAIT_S,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Check:
    """Submit the check job from the runs_root (shared, or the check says it is not), wait for
    its end (``wait_s`` at most, then cancel it), and judge it."""
    env = dict(setup.env)
    workdir = setup.runs_root
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return Check("check job", FAIL, f"cannot create runs_root {workdir}: {e.strerror}", "set runs_root")
    out_path = workdir / f".slurm-yolo-doctor-{uuid.uuid4().hex[:8]}.out"
    try:
        job_id = run_command(check_job_argv(python, str(out_path), str(workdir), setup.partition), "doctor",
                             timeout=60, env=env).stdout.strip().split(";")[0]
    except CommandError as e:
        return Check("check job", FAIL, f"sbatch refused the check job: {e.detail}",
                     "check the partition (slurm.partition in your config) and your Slurm account")
    state, node = "", ""
    deadline = clock() + wait_s
    try:
        while clock() < deadline:
            try:
                state, node = parse_job_state(run_command(job_state_argv(job_id), "doctor", timeout=30, env=env).stdout)
            except CommandError:
                state = state or ""
            if state in ENDED or (state == "" and out_path.exists()):
                break
            sleep(1.0)
        else:
            run_command(["scancel", job_id], "doctor", timeout=30, env=env, check=False)
            return Check("check job", FAIL, f"job {job_id} did not end within {wait_s:g} s ({state or 'unknown'})",
                         "the queue may be busy: run doctor again later, or pick a partition with free nodes")
        output = _read(out_path)
        return judge_check_job(state or "COMPLETED", node, output, python, str(workdir))
    finally:
        out_path.unlink(missing_ok=True)


def _read(path: Path) -> str | None:
    # The node writes the file; NFS may show it a moment after the job ended.
    for _ in range(5):
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            time.sleep(1.0)
        except OSError:
            return None
    return None


# --- the command -----------------------------------------------------------------------------


def setup_of(config_path: str | None, sets: Sequence[str], env: Mapping[str, str]) -> Setup:
    """The set-up to check: the config's archive URL, runs_root and partition, else the site's
    allowed prefix for this user and ``./runs``.

    Raises:
        SlurmYoloError: the config does not load (its own message names the fix).
    """
    user = _user()
    if config_path:
        config = load_config(config_path, list(sets))
        return Setup(env, Store.from_env(env, config.archive.get("endpoint_url")),
                     user_prefix(config.archive["url"], user), config.runs_root, config.data["slurm"].get("partition"))
    site = modes.public_site(env)
    return Setup(env, Store.from_env(env), user_prefix(site.allowed_prefix, user) if site else None,
                 Path(env.get("SLURM_YOLO_RUNS") or "runs").resolve())


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def run_checks(setup: Setup, *, job: bool = True) -> list[Check]:
    """Every check, in order (the check job last: it takes up to a minute)."""
    checks = [check_credentials(setup)]
    try:
        client = setup.store.boto3_client()
    except SlurmYoloError as e:
        checks += [Check("store", FAIL, str(e)), Check("archive prefix", FAIL, "no store connection")]
    else:
        checks.append(check_store(setup, client))
        checks.append(check_prefix(setup, client) if checks[-1].status == OK else
                      Check("archive prefix", FAIL, "not tried: the store check failed"))
    found = modes.detect(setup.env)
    checks += [check_mode(found), check_reconciler(found)]
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        mounts = ""
    checks.append(check_runs_root(setup, mounts))
    if job:
        checks.append(run_check_job(setup))
    return checks


def add_commands(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check your set-up end to end: store, mode, reconciler, a check job",
                       description="One line per check, ok/warn/FAIL with the fix: S3 credentials, the store, "
                                   "writing under the archive prefix, whether a slurm-yolo epilog is configured "
                                   "or user mode, the user reconciler, runs_root on a shared filesystem, and a "
                                   "one-minute job that imports slurm_yolo and ultralytics on a compute node "
                                   "with this interpreter. Exit 1 when a check fails.")
    p.add_argument("config", nargs="?", default=None,
                   help="your run config (its archive.url, runs_root and slurm.partition); default: the site's "
                        "allowed prefix and ./runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--no-job", action="store_false", dest="job", help="skip the check job")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    checks = run_checks(setup_of(args.config, args.set, env), job=args.job)
    failed = [c.name for c in checks if c.status == FAIL]
    if args.json:
        print(json.dumps({"ok": not failed, "failed": failed, "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            print(c.line())
        print("all checks passed" if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}",
              file=sys.stderr)
    return 1 if failed else 0
