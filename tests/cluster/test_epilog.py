"""Every way a job can end leads to a verified archive, on the real cluster.

Each test submits a job through the real launcher (its marker, its submitit job), makes it end
in the stated way, then reads the store back: every manifest file present with the right
sha256, run.json with the right end state, the index record written. The node is checked
after every test (conftest: never drained). What ends the job here is the job wrapper's
workload: a stand-in (slurm_yolo/job/workloads.py) that sleeps through its epochs, fails or
allocates, and fills the run folder as a training does; the epilog cannot tell the difference,
and training itself is tested in test_resume.py, test_multinode_training.py and test_launcher.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster.helpers import (archived_record, demo_config, index_record, list_keys, slurm_yolo as cli,
                                   submit_standin, submit_standins, verify_archive, wait_epochs, wait_job_over)

pytestmark = [pytest.mark.cluster]


@pytest.mark.endstate
def test_completes_normally(cluster, s3, dataset, runs_root, tmp_path):
    out = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, epochs=2)
    wait_job_over(cluster, out["job_id"])
    record, manifest = verify_archive(s3, out["archive_url"])
    assert record["end_state"] == "COMPLETED" and record["attempts"][-1]["end_state"] == "COMPLETED"
    assert {"results.csv", "args.yaml", "weights/best.pt", "weights/last.pt", "train.log"} <= set(manifest["files"])
    assert out["archive_url"] == record["archive_url"]
    assert "/runs/root/test/detect/pcb-test/yolov8n/" in out["archive_url"]
    assert record["metrics"]["epochs_done"] == 2 and record["attempts"][-1]["epoch"] == 2
    idx = index_record(s3, cluster, out["run_id"])
    assert idx["end_state"] == "COMPLETED" and idx["archive_url"] == out["archive_url"]
    assert idx["map50_95"] == record["metrics"]["map50_95"]
    # The user's own folder learns the verdict too.
    local = json.loads((Path(out["run_dir"]) / "run.json").read_text())
    assert local["end_state"] == "COMPLETED"
    # ...and the catalog finds it through the index the epilog wrote.
    shown = cli(cluster, "runs", "show", out["run_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["archive_url"] == out["archive_url"]
    listed = json.loads(cli(cluster, "runs", "list", "--project", "pcb-test", "--json").stdout)
    assert out["run_id"] in [r["run_id"] for r in listed]


@pytest.mark.endstate
def test_error_mid_training_is_failed(cluster, s3, dataset, runs_root, tmp_path):
    out = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, epochs=50, epoch_s=0.3,
                         fail_after=3)
    wait_job_over(cluster, out["job_id"])
    record = archived_record(s3, out["archive_url"])
    verify_archive(s3, out["archive_url"])
    assert record["end_state"] == "FAILED", record["epilog"]
    attempt = record["attempts"][-1]
    assert attempt["exit_code"] != 0 and "stand-in failure after epoch 3" in attempt["error"]
    assert attempt["epoch"] == 3


@pytest.mark.endstate
def test_cgroup_oom_kill(cluster, s3, dataset, runs_root, tmp_path):
    # 600 MB touched under a 300 MB limit: the cgroup kills the job (the OOM hits the srun
    # step; Slurm itself says OUT_OF_MEMORY or FAILED). The epilog must know.
    out = submit_standin(cluster, demo_config(tmp_path, dataset), "slurm.mem=300M", runs_root=runs_root,
                         epochs=1, allocate_mb=600)
    wait_job_over(cluster, out["job_id"])
    record, _ = verify_archive(s3, out["archive_url"])
    assert record["end_state"] == "OUT_OF_MEMORY", record["epilog"]


@pytest.mark.endstate
def test_time_limit(cluster, s3, dataset, runs_root, tmp_path):
    out = submit_standin(cluster, demo_config(tmp_path, dataset), "slurm.time=1", "slurm.signal_delay_s=30",
                         "slurm.max_requeues=0", runs_root=runs_root, epochs=1000, epoch_s=0.5)
    wait_job_over(cluster, out["job_id"], timeout=240)
    record, _ = verify_archive(s3, out["archive_url"])
    assert record["end_state"] == "TIMEOUT", record["epilog"]
    # Slurm's warning (USR2, signal_delay_s before the limit) reached the job, which did not
    # requeue (max_requeues=0). How many epochs ran is up to slurmctld: it checks time limits
    # only every 30 s.
    assert "SIGUSR2" in [s["signal"] for s in record["attempts"][-1]["signals"]]
    assert len(record["attempts"]) == 1


@pytest.mark.endstate
def test_scancel_mid_training(cluster, s3, dataset, runs_root, tmp_path):
    out = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, epochs=100, epoch_s=0.3)
    wait_epochs(Path(out["run_dir"]))
    subprocess.run(["scancel", out["job_id"]], check=True, env=cluster)
    wait_job_over(cluster, out["job_id"])
    record, _ = verify_archive(s3, out["archive_url"])
    assert record["end_state"] == "CANCELLED", record["epilog"]
    assert "SIGTERM" in [s["signal"] for s in record["attempts"][-1]["signals"]]


# `scontrol requeue` mid-training (archive of each attempt, then the complete run) is
# tested with resuming in test_resume.py::test_scontrol_requeue_resumes_from_last_epoch.


def test_non_root_user_lands_under_own_prefix(cluster, s3, dataset, runs_root, tmp_path, test_user):
    out = submit_standin(cluster, demo_config(tmp_path, dataset), user=test_user.pw_name, runs_root=runs_root,
                         epochs=1)
    assert Path(out["run_dir"]).stat().st_uid == test_user.pw_uid
    wait_job_over(cluster, out["job_id"])
    record, _ = verify_archive(s3, out["archive_url"])
    assert f"/runs/{test_user.pw_name}/" in out["archive_url"] == record["archive_url"]
    assert record["user"] == test_user.pw_name and record["end_state"] == "COMPLETED"
    local = json.loads((Path(out["run_dir"]) / "run.json").read_text())
    assert local["end_state"] == "COMPLETED"
    assert (Path(out["run_dir"]) / "run.json").stat().st_uid == test_user.pw_uid  # written back as the user


@pytest.fixture
def store_down(cluster):
    """Point the site config at a closed port for the duration of the test."""
    path = Path(cluster["SLURM_YOLO_SITE_CONFIG"])
    original = path.read_text()
    path.write_text(original.replace(cluster["AWS_ENDPOINT_URL"], "http://127.0.0.1:9"))

    def restore():
        path.write_text(original)

    yield restore
    restore()


@pytest.mark.cluster_wide
def test_store_down_goes_to_spool_then_drains(cluster, s3, dataset, runs_root, tmp_path, store_down):
    out = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, epochs=1)
    state = wait_job_over(cluster, out["job_id"])
    assert state == "COMPLETED"  # the epilog exited 0 (else Slurm would say otherwise and drain the node)
    log = (Path(cluster["SLURM_YOLO_DEV_STATE"]) / "log" / "epilog.log").read_text()
    done = [line for line in log.splitlines() if f"job {out['job_id']}: epilog done in" in line]
    assert done and float(done[-1].split("done in ")[1].split(" s")[0]) < 60
    pending = json.loads(cli(cluster, "spool", "list", "--json").stdout)
    mine = [e["entry"] for e in pending if e["run_id"] == out["run_id"]]
    assert mine == [f"{os.getuid()}.{out['job_id']}.{out['run_id']}.a1"]
    assert not list_keys(s3, out["archive_url"])
    store_down()  # the store is back
    drained = cli(cluster, "spool", "drain", "--json")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert mine[0] in json.loads(drained.stdout)["shipped"]
    record, _ = verify_archive(s3, out["archive_url"])
    assert record["end_state"] == "COMPLETED"
    assert index_record(s3, cluster, out["run_id"])["run_id"] == out["run_id"]
    again = cli(cluster, "spool", "drain", "--json")  # idempotent
    assert again.returncode == 0 and json.loads(again.stdout)["pending"] == []


@pytest.mark.cluster_wide
def test_twenty_jobs_ending_together(cluster, s3, dataset, runs_root, tmp_path):
    """20 epilogs at once: 20 complete archives, 20 index records, nothing mixed up.

    All 20 start together (the partition lets 10 share a core), sleep through one epoch and
    end within seconds of each other; each leaves a realistic payload (a 2 MB checkpoint, 10
    sample images, results.csv) so that the 20 concurrent uploads carry real data.
    """
    config = demo_config(tmp_path, dataset, epochs=1)
    outs = submit_standins(cluster, config, [(["slurm.mem=150M", f"train.seed={i}"],
                                              {"epochs": 1, "epoch_s": 3, "checkpoint_bytes": (2 << 20) + i,
                                               "images": 10}) for i in range(20)], runs_root=runs_root)
    for out in outs:
        wait_job_over(cluster, out["job_id"], timeout=300)
    run_ids = set()
    for i, out in enumerate(outs):
        record, manifest = verify_archive(s3, archived_record(s3, out["archive_url"]) and out["archive_url"])
        assert record["run_id"] == out["run_id"] and record["config"]["train"]["seed"] == i
        assert manifest["files"]["weights/last.pt"]["size"] == (Path(out["run_dir"]) / "weights/last.pt").stat().st_size
        assert manifest["files"]["weights/last.pt"]["size"] > (2 << 20) + i
        assert len([k for k in manifest["files"] if k.startswith("val_batch")]) == 10
        assert index_record(s3, cluster, out["run_id"])["archive_url"] == out["archive_url"]
        run_ids.add(record["run_id"])
    assert len(run_ids) == 20
    # Every run once in the catalog: none lost, none twice. (The epilogs compact nothing: the
    # runs are pending updates until a drain or `index compact` folds them into their quarters.)
    listed = cli(cluster, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    ours = [x["run_id"] for x in json.loads(listed.stdout) if x["run_id"] in run_ids]
    assert sorted(ours) == sorted(run_ids)
    compacted = cli(cluster, "index", "compact", "--json")
    assert compacted.returncode == 0, compacted.stderr
    again = json.loads(cli(cluster, "runs", "list", "--json").stdout)
    assert sorted(x["run_id"] for x in again if x["run_id"] in run_ids) == sorted(run_ids)
    left = json.loads(cli(cluster, "spool", "list", "--json").stdout)
    assert not [e for e in left if e["run_id"] in run_ids]


def test_check_validates_the_installation(cluster):
    proc = subprocess.run([str(Path(cluster["PATH"].split(":")[0]) / "slurm-yolo-epilog"), "--check"],
                          capture_output=True, text=True, env=cluster, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and "bucket slurm-yolo: reachable" in proc.stdout
