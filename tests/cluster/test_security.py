"""The epilog is root on a shared node: hostile run folders and markers must leak nothing.

Each case is a real job; planted files are created the way an attacker would (as the user),
or as root where only root can make them (a hard link to a root-only file, a device node),
to prove that even then nothing of it reaches the store.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.cluster.helpers import (demo_config, list_keys, read_object, slurm_yolo as cli, submit_standin,
                                   verify_archive, wait_job_over)

pytestmark = [pytest.mark.cluster]


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60)


def epilog_log(cluster) -> str:
    return (Path(cluster["SLURM_YOLO_DEV_STATE"]) / "log" / "epilog.log").read_text()


def test_planted_links_fifos_and_devices_never_reach_the_store(cluster, s3, dataset, runs_root, tmp_path,
                                                                test_user):
    user = test_user.pw_name
    secret = Path(cluster["SLURM_YOLO_DEV_STATE"]) / f"root-secret-{uuid.uuid4().hex[:6]}"
    secret.write_text("ROOT-ONLY-SECRET\n")
    os.chmod(secret, 0o600)
    pwned = f"pwned-{uuid.uuid4().hex[:6]}"
    odd_name = f"; touch {pwned} #$(id)"
    # The job fills a realistic run folder (results.csv, weights, args.yaml, images) while the
    # user plants; it runs long enough (3 x 2 s) for every plant to be in place before it ends.
    out = submit_standin(cluster, demo_config(tmp_path, dataset), user=user, runs_root=runs_root, epochs=3,
                         epoch_s=2, images=2)
    run = Path(out["run_dir"])
    # What the user can do to their own folder:
    for argv in (["ln", "-s", "/etc/shadow", str(run / "shadow")],
                 ["ln", "-s", str(secret), str(run / "root-secret-link")],
                 ["ln", "-s", "/root", str(run / "rootdir")],
                 ["mkfifo", str(run / "fifo")],
                 ["touch", str(run / odd_name)],
                 ["mkdir", "-p", str(run / "nested" / "deep")],
                 ["ln", "-s", "/etc", str(run / "nested" / "deep" / "etc")]):
        assert as_user(user, *argv).returncode == 0, argv
    # What only root could plant (the epilog must still refuse it):
    os.link(secret, run / "hardlink-to-secret")
    os.mknod(run / "zero-device", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    wait_job_over(cluster, out["job_id"])
    record, manifest = verify_archive(s3, out["archive_url"])
    assert record["end_state"] == "COMPLETED"
    keys = set(list_keys(s3, out["archive_url"]))
    for planted in ("shadow", "root-secret-link", "rootdir", "fifo", "hardlink-to-secret", "zero-device"):
        assert not any(k == planted or k.startswith(planted + "/") for k in keys), planted
    assert not any(k.startswith("nested/deep/etc") for k in keys)
    assert odd_name in keys  # a legit (if odd) file of the user's is archived as is
    for where in ("/", "/tmp", cluster["SLURM_YOLO_DEV_STATE"] + "/log", str(run)):
        assert not (Path(where) / pwned).exists()
    for k in keys:
        assert b"ROOT-ONLY-SECRET" not in read_object(s3, out["archive_url"] + k), k
    skipped = " ".join(record["epilog"]["skipped"])
    for planted in ("shadow", "fifo", "hardlink-to-secret", "zero-device"):
        assert planted in skipped


def _raw_job(cluster, comment: str, user: str | None = None) -> str:
    argv = ["sbatch", "--parsable", "--mem=50M", "-t", "1", f"--comment={comment}", "--wrap", "true"]
    if user:
        argv = ["runuser", "-u", user, "--", "env", f"SLURM_CONF={cluster['SLURM_CONF']}", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cluster, timeout=60, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def test_hostile_markers_are_refused(cluster, s3, runs_root, test_user):
    user = test_user.pw_name
    # A real run folder of root's, which the test user will try to have archived as theirs.
    victim = runs_root / "victim_run"
    victim.mkdir()
    (victim / "run.json").write_text(json.dumps({"run_id": "victim_run", "task": "detect", "project": "p",
                                                 "model_name": "m", "attempts": []}))
    (victim / "weights.pt").write_text("root's weights")
    link = runs_root / f"link-{uuid.uuid4().hex[:6]}"
    as_user(user, "ln", "-s", str(victim), str(link))
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex[:6]}")
    cases = {
        _raw_job(cluster, f"slurm-yolo:v1:{runs_root}/../../../etc"): "not an absolute, normalised path",
        _raw_job(cluster, f"slurm-yolo:v1:/tmp/x;touch {pwned}"): "without following links",
        _raw_job(cluster, "slurm-yolo:v1:relative/run"): "not an absolute, normalised path",
        _raw_job(cluster, f"slurm-yolo:v1:{victim}", user=user): "not the job's uid",
        _raw_job(cluster, f"slurm-yolo:v1:{link}", user=user): "without following links",
    }
    for job_id in cases:
        wait_job_over(cluster, job_id, timeout=120)
    log = epilog_log(cluster)
    for job_id, reason in cases.items():
        lines = [x for x in log.splitlines() if f"job {job_id}: refused" in x]
        assert lines and reason in lines[-1], (job_id, reason, lines)
    assert not pwned.exists()
    assert not list_keys(s3, f"s3://slurm-yolo/runs/{user}/detect/p/")


def test_user_cannot_write_outside_their_prefix(cluster, s3, dataset, runs_root, tmp_path, test_user):
    user = test_user.pw_name
    config = demo_config(tmp_path, dataset)
    # The launcher refuses a destination outside the site's prefix for this user, up front.
    proc = cli(cluster, "submit", str(config), "--set", "archive.url=s3://slurm-yolo/runs/root/stolen",
               "--set", f"runs_root={runs_root}", user=user)
    assert proc.returncode == 2 and "outside this site's allowed prefix s3://slurm-yolo/runs/syuser/" in proc.stderr
    assert not any(runs_root.iterdir())  # nothing created
    # A user who edits run.json behind the launcher's back is still confined by the epilog.
    out = submit_standin(cluster, config, user=user, runs_root=runs_root, epochs=3, epoch_s=1)
    forged = "s3://slurm-yolo/runs/root/forged/detect/pcb-test/yolov8n/" + out["run_id"] + "/"
    # Under the record's own lock, written atomically: the job's own updates (attempt start,
    # environment) then keep the forged URL instead of racing it away.
    script = (f"import fcntl, json, os; d='{out['run_dir']}'; "
              "fd=os.open(d+'/.run.lock', os.O_RDWR|os.O_CREAT, 0o644); fcntl.flock(fd, fcntl.LOCK_EX); "
              f"r=json.load(open(d+'/run.json')); r['archive_url']='{forged}'; "
              "json.dump(r, open(d+'/run.json.forged', 'w')); os.replace(d+'/run.json.forged', d+'/run.json')")
    assert as_user(user, "/usr/bin/python3", "-c", script).returncode == 0
    wait_job_over(cluster, out["job_id"])
    confined = f"s3://slurm-yolo/runs/{user}/detect/pcb-test/yolov8n/{out['run_id']}/"  # allowed prefix + run path
    record, _ = verify_archive(s3, confined)
    assert record["archive_url"] == confined
    assert not list_keys(s3, "s3://slurm-yolo/runs/root/forged/")


def test_site_credentials_are_not_readable_by_jobs(cluster, test_user):
    creds = Path(cluster["SLURM_YOLO_DEV_STATE"]) / "credentials"
    st = creds.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert as_user(test_user.pw_name, "cat", str(creds)).returncode != 0
    # A job of the user cannot read it either (and the epilog hands it to s5cmd as a file path
    # in a root process, never through an environment a user process could read).
    job = subprocess.run(["runuser", "-u", test_user.pw_name, "--", "env", f"SLURM_CONF={cluster['SLURM_CONF']}",
                          "sbatch", "--parsable", "--mem=50M", "-o", "/dev/null", "--wrap", f"cat {creds}"],
                         capture_output=True, text=True, timeout=60, cwd="/tmp")
    job_id = job.stdout.strip()
    wait_job_over(cluster, job_id, timeout=120)
    state = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %r"], capture_output=True,
                           text=True, env=cluster).stdout
    assert state.startswith("FAILED")
