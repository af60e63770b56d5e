"""User mode on the real 22.05 dev cluster: slurm-yolo's Epilog and EpilogSlurmctld taken out
of slurm.conf (``scripts/dev-cluster.sh epilog off``), runs of the non-root test user, who
archives with their own S3 credentials.

Every ending reaches the store, indexed, exactly once: the job archives itself (a normal
end, a Python error, the time-limit warning, scancel, an OOM-killed srun step); what kills
the whole job (SIGKILL) is archived by one ``reconcile --user`` round; a second round changes
nothing; with the epilog put back, a job submitted in user mode leaves its attempt to the
epilog and the user's round leaves it alone. The stand-in workload (job/workloads.py) takes
the place of training: the end state, not the training, is the point.

Each test that changes slurm.conf is ``cluster_wide(scope="cluster")`` (no other test of this cluster runs meanwhile)
and puts the epilog back however it ends.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster.helpers import (BIN, DEV, SLURM_VERSION, STANDIN_DRIVER, USER_ENV, archived_record, demo_config,
                                   index_record, list_keys, verify_archive, wait_epochs, wait_for, wait_job_over)

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(SLURM_VERSION != "22.05", reason="`dev-cluster.sh epilog off` is for the 22.05 cluster")]


@contextmanager
def epilog_off(cluster):
    subprocess.run(["bash", str(DEV), "epilog", "off"], check=True, env=cluster, capture_output=True, timeout=120)
    try:
        yield
    finally:
        subprocess.run(["bash", str(DEV), "epilog", "on"], check=True, env=cluster, capture_output=True, timeout=120)


@pytest.fixture
def user_env(cluster, test_user, tmp_path):
    """The test user's shell: their own S3 keys, the index URL, and a fresh ~/.slurm-yolo of
    their own (SLURM_YOLO_USER_STATE) so that no other test's claims are seen."""
    state = Path("/tmp") / f"slurm-yolo-um-{uuid.uuid4().hex[:8]}"
    subprocess.run(["runuser", "-u", test_user.pw_name, "--", "mkdir", "-m", "0700", str(state)], check=True)
    env = {**cluster, "HOME": test_user.pw_dir, "SLURM_YOLO_INDEX": "s3://slurm-yolo/index/",
           "SLURM_YOLO_USER_STATE": str(state)}
    return env


KEYS = (*USER_ENV, "HOME", "SLURM_YOLO_INDEX", "SLURM_YOLO_USER_STATE")


def as_user(env, user, argv):
    return ["runuser", "-u", user, "--", "env", *(f"{k}={env[k]}" for k in KEYS if k in env), *argv]


def cli(env, user, *args):
    return subprocess.run(as_user(env, user, [str(BIN / "slurm-yolo"), *args]), capture_output=True, text=True,
                          env=env, timeout=300, cwd="/tmp")


def standins(env, user, config, jobs, runs_root):
    spec = [[[f"runs_root={runs_root}", *sets], workload] for sets, workload in jobs]
    proc = subprocess.run(as_user(env, user, [str(BIN / "python"), "-c", STANDIN_DRIVER, str(config), json.dumps(spec)]),
                          capture_output=True, text=True, env=env, timeout=300, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(outs) == len(spec), proc.stdout + proc.stderr
    return outs


def local_record(out) -> dict:
    return json.loads((Path(out["run_dir"]) / "run.json").read_text())


def claims(env) -> list[str]:
    return sorted(p.name for p in (Path(env["SLURM_YOLO_USER_STATE"]) / "claims").glob("*.a*"))


LONG = {"epochs": 400, "epoch_s": 0.5}

# As the user: a run folder with its record (as submit makes it), then the marker it would carry.
PREPARE = """
import json, sys
from slurm_yolo.config import load_config
from slurm_yolo.launcher.slurm_params import make_marker
from slurm_yolo.launcher.submit import prepare_run
run_dir = prepare_run(load_config(sys.argv[1], [f"runs_root={sys.argv[2]}"]))
(run_dir / "results.csv").write_text("epoch,time,metrics/mAP50(B),metrics/mAP50-95(B)\\n1,1.0,0.2,0.1\\n")
record = json.loads((run_dir / "run.json").read_text())
print(json.dumps({"run_dir": str(run_dir), "run_id": record["run_id"], "archive_url": record["archive_url"],
                  "marker": make_marker(str(run_dir))}))
"""


def oom_killed_job(env, user, config, runs_root) -> dict:
    """Submit, as ``user``, a job the cgroup OOM-kills, marked for the run folder it prepared."""
    made = subprocess.run(as_user(env, user, [str(BIN / "python"), "-c", PREPARE, str(config), str(runs_root)]),
                          capture_output=True, text=True, env=env, timeout=120, cwd="/tmp")
    assert made.returncode == 0, made.stderr[-3000:]
    out = json.loads(made.stdout.strip().splitlines()[-1])
    job = subprocess.run(as_user(env, user, ["sbatch", "--parsable", "--no-requeue", "--mem=100M",
                                             f"--comment={out['marker']}", "-o", "/dev/null", "--wrap",
                                             "python3 -c \"b = b'x' * (600 << 20)\"; sleep 5"]),
                         capture_output=True, text=True, env=env, timeout=60, cwd="/tmp")
    assert job.returncode == 0, job.stderr
    return {**out, "job_id": job.stdout.strip().split(";")[0]}


@pytest.mark.cluster_wide(scope="cluster")
def test_without_the_epilog_every_ending_is_archived_once(cluster, s3, dataset, runs_root, tmp_path, test_user,
                                                          user_env):
    user = test_user.pw_name
    config = demo_config(tmp_path, dataset)
    with epilog_off(cluster):
        dry = cli(user_env, user, "submit", str(config), "--dry-run", "--set", f"runs_root={runs_root}")
        assert dry.returncode == 0, dry.stderr
        assert "this cluster has no slurm-yolo epilog" in dry.stderr and "NOT installed" in dry.stderr
        assert "slurm_yolo.epilog.usermode archive" in dry.stdout
        completed, failed, timeout, cancelled, oom, killed, requeued, revived = standins(user_env, user, config, [
            ([], {"epochs": 2, "epoch_s": 0.2, "images": 1}),
            ([], {"epochs": 3, "epoch_s": 0.2, "fail_after": 1}),
            # USR2 90 s before the 2-minute limit, no requeue left: the job ends itself (TIMEOUT). Slurm
            # looks at time limits about every 30 s: a 1-minute limit got its USR2 before Python started.
            (["slurm.time=00:02:00", "slurm.signal_delay_s=90", "slurm.max_requeues=0"], LONG),
            ([], LONG),
            (["slurm.mem=300M"], {"epochs": 2, "epoch_s": 0.2, "allocate_mb": 700}),
            ([], LONG),
            ([], {"epochs": 6, "epoch_s": 1.0, "requeued_epoch_s": 0.05}),
            ([], {"epochs": 60, "epoch_s": 0.5, "requeued_epoch_s": 0.01}),
        ], runs_root)
        for out in (cancelled, killed, requeued):
            wait_epochs(Path(out["run_dir"]), 1, timeout=120)
        subprocess.run(["scancel", cancelled["job_id"]], check=True, env=cluster)
        subprocess.run(["scontrol", "requeue", requeued["job_id"]], check=True, env=cluster)
        wait_epochs(Path(revived["run_dir"]), 1, timeout=120)
        # SIGKILL to every process of the job, the batch shell too (as the kernel's OOM killer or a
        # kill -9 would; scancel --signal=KILL is a cancel with SIGTERM first): nothing in the job archives.
        for out in (killed, revived):
            listed = subprocess.run(["scontrol", "listpids", out["job_id"]], capture_output=True, text=True,
                                    check=True, env=cluster).stdout
            pids = [line.split()[0] for line in listed.splitlines()[1:] if line.split()]
            subprocess.run(["kill", "-9", *pids], check=False)
        # Then Slurm requeues one of them, as after its node died: its next attempt's batch step
        # archives the attempt nothing archived, before training resumes.
        wait_job_over(cluster, revived["job_id"], timeout=120)
        subprocess.run(["scontrol", "requeue", revived["job_id"]], check=True, env=cluster)
        # A whole job the cgroup OOM-kills: a plain sbatch of the user's with the run's marker and no
        # slurm-yolo batch script, so nothing in the job archives (as when the kernel kills the batch
        # step itself); Slurm records OUT_OF_MEMORY, and only the user's round can archive it.
        whole_oom = oom_killed_job(user_env, user, config, runs_root)
        want = {completed["run_id"]: "COMPLETED", failed["run_id"]: "FAILED", timeout["run_id"]: "TIMEOUT",
                cancelled["run_id"]: "CANCELLED", oom["run_id"]: "OUT_OF_MEMORY"}
        by_job = [completed, failed, timeout, cancelled, oom]
        for out in by_job + [killed, requeued, whole_oom, revived]:
            wait_job_over(cluster, out["job_id"], timeout=180)
        # A requeue: each attempt archived by the job itself (the first on the requeue's SIGTERM,
        # or, killed outright, by the second attempt's batch step).
        for out in (requeued, revived):
            record = archived_record(s3, out["archive_url"], timeout=30, state="COMPLETED")
            assert [(a["end_state"], a["epilog"]["node"].split("@")[0]) for a in record["attempts"]] == \
                [("REQUEUED", "job"), ("COMPLETED", "job")], record["attempts"]
        log = "".join(p.read_text() for p in sorted((Path(revived["run_dir"]) / "slurm").glob("*.out")))
        assert "self-archive (requeued)" in log and '"state": "REQUEUED"' in log, log[-3000:]
        verify_archive(s3, revived["archive_url"])
        for out in by_job:
            record = archived_record(s3, out["archive_url"], timeout=30)
            assert record["end_state"] == want[out["run_id"]], (out, record["epilog"])
            assert record["epilog"]["by"].startswith("job@"), record["epilog"]
            verify_archive(s3, out["archive_url"])
            assert index_record(s3, user_env, out["run_id"])["end_state"] == want[out["run_id"]]
            assert local_record(out)["end_state"] == want[out["run_id"]]  # the user's folder learns it too
        for out in (killed, whole_oom):
            assert not list_keys(s3, out["archive_url"] + "MANIFEST.json")  # nothing archived it yet

        first = cli(user_env, user, "reconcile", "--user", "--json")
        assert first.returncode == 0, first.stderr
        done = [r for r in json.loads(first.stdout) if r.get("run")]
        by_round = {killed["run_id"]: "CANCELLED", whole_oom["run_id"]: "OUT_OF_MEMORY"}
        assert sorted((r["run"], r["state"]) for r in done) == sorted(by_round.items()), first.stdout
        for out in (killed, whole_oom):
            record, _ = verify_archive(s3, out["archive_url"])
            assert record["end_state"] == by_round[out["run_id"]], record["epilog"]
            assert record["epilog"]["by"].startswith("reconciler@"), record["epilog"]
            assert index_record(s3, user_env, out["run_id"])["end_state"] == by_round[out["run_id"]]

        # Where the user's round walks when Slurm keeps no accounting: the runs_root submitted to.
        assert (Path(user_env["SLURM_YOLO_USER_STATE"]) / "runs_roots").read_text() == f"{runs_root}\n"
        second = cli(user_env, user, "reconcile", "--user", "--json")
        assert second.returncode == 0, second.stderr
        assert [r for r in json.loads(second.stdout) if r.get("run") or r.get("entry")] == [], second.stdout
        # Once each: one claim per attempt, one attempt record in the store.
        assert len(claims(user_env)) == 11
        for out in by_job + [killed, whole_oom]:
            assert [k for k in list_keys(s3, out["archive_url"]) if k.startswith("attempts/")] == \
                ["attempts/attempt-1.json"]


@pytest.mark.cluster_wide(scope="cluster")
def test_with_the_epilog_put_back_nothing_is_archived_twice(cluster, s3, dataset, runs_root, tmp_path, test_user,
                                                           user_env):
    """A job submitted in user mode (its batch script archives itself) that starts after the
    epilog was put back: the job sees the epilog, the epilog archives the attempt, and the
    user's round leaves it alone."""
    user = test_user.pw_name
    config = demo_config(tmp_path, dataset)
    with epilog_off(cluster):
        (out,) = standins(user_env, user, config, [(["slurm.extra={hold: true}"], {"epochs": 2, "epoch_s": 0.2})],
                          runs_root)
    subprocess.run(["scontrol", "release", out["job_id"]], check=True, env=cluster)
    wait_job_over(cluster, out["job_id"])
    record = archived_record(s3, out["archive_url"], timeout=60)
    assert record["end_state"] == "COMPLETED" and record["epilog"]["by"].startswith("epilog_slurmd@"), \
        record["epilog"]
    log = "".join(p.read_text() for p in (Path(out["run_dir"]) / "slurm").glob("*_log.out"))
    assert "a slurm-yolo epilog is configured" in log, log[-2000:]
    rounds = cli(user_env, user, "reconcile", "--user", "--json")
    assert rounds.returncode == 0, rounds.stderr
    assert [r for r in json.loads(rounds.stdout) if r.get("run") or r.get("entry")] == [], rounds.stdout
    assert claims(user_env) == []
    assert [k for k in list_keys(s3, out["archive_url"]) if k.startswith("attempts/")] == ["attempts/attempt-1.json"]


def test_install_and_uninstall_the_users_reconciler(cluster, test_user, user_env):
    """No scrontab command on 22.05 (Debian 12's slurm-client): the user's crontab; idempotent;
    uninstall removes exactly its own line."""
    user = test_user.pw_name
    crontab = lambda *a: subprocess.run(["crontab", "-u", user, *a], capture_output=True, text=True, timeout=30)  # noqa: E731
    keep = "17 3 * * * echo mine\n"
    subprocess.run(["crontab", "-u", user, "-"], input=keep, text=True, check=True)
    try:
        for _ in range(2):
            out = cli(user_env, user, "reconcile", "--user", "--install")
            assert out.returncode == 0, out.stderr
            assert "installed in your crontab" in out.stdout and "login node" in out.stdout
        table = crontab("-l").stdout
        ours = [line for line in table.splitlines() if line.endswith("# slurm-yolo:user-reconciler")]
        assert len(ours) == 1 and "reconcile --user --env-file" in ours[0] and table.startswith(keep)
        env_file = Path(user_env["SLURM_YOLO_USER_STATE"]) / "reconcile.env"
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert json.loads(env_file.read_text())["SLURM_YOLO_INDEX"] == "s3://slurm-yolo/index/"
        gone = cli(user_env, user, "reconcile", "--user", "--uninstall")
        assert gone.returncode == 0 and "removed from your crontab" in gone.stdout
        assert crontab("-l").stdout == keep
        again = cli(user_env, user, "reconcile", "--user", "--uninstall")
        assert "not installed" in again.stdout
    finally:
        crontab("-r")


@pytest.mark.cluster_wide(scope="cluster")
def test_without_the_epilog_a_preempted_run_is_archived_per_attempt(cluster, s3, dataset, runs_root, tmp_path,
                                                                     test_user, user_env):
    """Real pre-emption (PreemptMode=REQUEUE, the debug partition's GraceTime): the urgent job
    takes the node's memory, the run gets SIGTERM, is killed and requeued; its job archives the
    pre-empted attempt on that SIGTERM and the resumed one at its end."""
    user = test_user.pw_name
    config = demo_config(tmp_path, dataset)
    with epilog_off(cluster):
        (out,) = standins(user_env, user, config, [([], {"epochs": 100, "epoch_s": 0.5, "requeued_epoch_s": 0.02})],
                          runs_root)
        wait_epochs(Path(out["run_dir"]), 2, timeout=120)
        node = subprocess.run(["scontrol", "show", "node", "-o", "vm"], capture_output=True, text=True, check=True,
                              env=cluster).stdout
        memory = node.split("RealMemory=")[1].split()[0]
        urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", f"--mem={memory}M", "-o", "/dev/null",
                                 "--wrap", "sleep 2"], capture_output=True, text=True, check=True, env=cluster)
        wait_job_over(cluster, urgent.stdout.strip().split(";")[0], timeout=180)
        wait_job_over(cluster, out["job_id"], timeout=180)
        record = archived_record(s3, out["archive_url"], timeout=60, state="COMPLETED")
        attempts = record["attempts"]
        assert len(attempts) == 2 and attempts[1].get("end_state") == "COMPLETED", attempts
        assert attempts[1]["epilog"]["node"].split("@")[0] == "job", attempts
        # The pre-empted attempt was archived by its own job, on the pre-emption's SIGTERM.
        logs = "".join(p.read_text() for p in sorted((Path(out["run_dir"]) / "slurm").glob("*.out")))
        assert attempts[0].get("end_state") == "REQUEUED", (attempts, logs[-6000:])
        assert attempts[0]["epilog"]["node"].split("@")[0] == "job", attempts
        assert "SIGTERM" in [s["signal"] for s in attempts[0]["signals"]]
        verify_archive(s3, out["archive_url"])
        assert index_record(s3, user_env, out["run_id"])["end_state"] == "COMPLETED"
