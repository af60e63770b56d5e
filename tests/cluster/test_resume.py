"""Requeued runs resume; a damaged last.pt is survived; sync while training: on the real cluster.

Where resuming a training is what is tested (from the last epoch after a requeue, from the
monitor's good copy of a truncated last.pt, syncing while it trains) the job trains with
Ultralytics. The two pre-emption paths (USR2 → checkpoint → requeue; Slurm's own pre-emption)
test the job wrapper and the epilog across attempts: their job runs the stand-in workload,
which continues after the epochs the earlier attempt left (slurm_yolo/job/workloads.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cluster.faultproxy import FaultProxy
from tests.cluster.helpers import (SLURM_VERSION, archived_record, demo_config, epochs_in, job_state, list_keys,
                                   read_object, submit_json, submit_standin, verify_archive, wait_epochs, wait_for,
                                   wait_job_over)

pytestmark = [pytest.mark.cluster]
# After SIGTERM a job trains on until Slurm's SIGKILL (KillWait, 5 s on the dev cluster) and
# these epochs take ~0.5 s or more: enough of them that a requeue always lands mid-training.
EPOCHS = 20
# The stand-in's first attempt goes at the training's pace; the attempt that resumes it is quick.
STANDIN = {"epochs": EPOCHS, "epoch_s": 0.5, "requeued_epoch_s": 0.05}
RESUMED = "resuming from"  # what the training job logs when it resumes a checkpoint
CONTINUED = "continuing after epoch"  # what the stand-in logs when it carries on after a requeue


def finish_and_check(cluster, s3, out, epochs: int, first_state: str, *, requeued_after_end: bool = False,
                     resumed: str = RESUMED) -> dict:
    """The run completed in a second attempt that resumed the first. ``requeued_after_end``:
    Slurm may requeue the second attempt once more after it finished training (24.11.5 does
    so after a pre-emption with GraceTime, docs/admin.md); then a third attempt finds the
    final checkpoint, trains nothing and completes. ``resumed``: what the job logs when it resumes."""
    run_dir = Path(out["run_dir"])
    wait_for(lambda: job_state(cluster, out["job_id"]) == "COMPLETED", 600, f"job {out['job_id']} to complete")
    record = archived_record(s3, out["archive_url"], state="COMPLETED", timeout=60)
    verify_archive(s3, out["archive_url"])
    attempts = record["attempts"]
    if requeued_after_end and len(attempts) == 3:
        assert attempts[1]["end_state"] == "REQUEUED" and attempts[1]["epoch"] == attempts[2]["epoch"] == epochs
        attempts = [attempts[0], attempts[2]]
    assert [a["attempt"] for a in attempts] == ([1, 3] if len(record["attempts"]) == 3 else [1, 2])
    assert [a["end_state"] for a in attempts] == [first_state, "COMPLETED"]
    assert 1 <= attempts[0]["epoch"] < epochs, "the first attempt must end mid-training"
    assert attempts[1]["epoch"] == epochs
    assert epochs_in(run_dir) == list(range(1, epochs + 1))  # resumed, not restarted, no duplicates
    log = (run_dir / "train.log").read_text()
    assert resumed in log
    # Each attempt's snapshot is kept, marked with its attempt number.
    first = json.loads(read_object(s3, out["archive_url"] + "attempts/attempt-1.json"))
    assert first["attempts"][0]["end_state"] == first_state
    return record


@pytest.mark.endstate
@pytest.mark.training
def test_scontrol_requeue_resumes_from_last_epoch(cluster, s3, dataset, runs_root, tmp_path):
    out = submit_json(cluster, demo_config(tmp_path, dataset, epochs=EPOCHS), runs_root=runs_root)
    wait_epochs(Path(out["run_dir"]), 2)
    subprocess.run(["scontrol", "requeue", out["job_id"]], check=True, env=cluster)
    # The first attempt's snapshot lands in the store as soon as it ends, before attempt 2 does.
    first = archived_record(s3, out["archive_url"], state="REQUEUED", timeout=120)
    assert [a["end_state"] for a in first["attempts"]] == ["REQUEUED"]
    finish_and_check(cluster, s3, out, EPOCHS, "REQUEUED")


def test_preemption_signal_requeues_and_resumes(cluster, s3, dataset, runs_root, tmp_path):
    """The signal path: USR2 (what Slurm sends before a time limit or a pre-emption) →
    submitit calls TrainJob.checkpoint → the job requeues itself → resumes."""
    out = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, **STANDIN)
    wait_epochs(Path(out["run_dir"]), 2)
    subprocess.run(["scancel", "--signal=USR2", out["job_id"]], check=True, env=cluster)
    record = finish_and_check(cluster, s3, out, EPOCHS, "PREEMPTED", resumed=CONTINUED)
    assert "SIGUSR2" in [s["signal"] for s in record["attempts"][0]["signals"]]


@pytest.mark.cluster_wide(scope="cluster")
@pytest.mark.endstate
def test_slurm_preemption_requeues_and_resumes(cluster, s3, dataset, runs_root, tmp_path):
    """Real pre-emption: a job in the higher-tier ``urgent`` partition asks for the whole
    node's memory, which this run holds part of; slurmctld (PreemptMode=REQUEUE) sends the
    run SIGTERM, kills it GraceTime + KillWait later and requeues it; it resumes once the
    urgent job is done. slurmctld took 5-20 s here to pick the run for pre-emption, then 10 s
    of grace: more epochs than the other tests (50 s at 0.5 s each), so the run is still
    running by then."""
    epochs = 5 * EPOCHS
    out = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, **{**STANDIN, "epochs": epochs})
    wait_epochs(Path(out["run_dir"]), 2)
    node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=True,
                          env=cluster).stdout
    memory = node.split("RealMemory=")[1].split()[0]
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", f"--mem={memory}M", "-o", "/dev/null",
                             "--wrap", "sleep 2"], capture_output=True, text=True, check=True, env=cluster)
    first = archived_record(s3, out["archive_url"], state="REQUEUED", timeout=120)
    assert [a["end_state"] for a in first["attempts"]] == ["REQUEUED"]
    assert "SIGTERM" in [s["signal"] for s in first["attempts"][0]["signals"]]  # Slurm's pre-emption notice
    wait_job_over(cluster, urgent.stdout.strip().split(";")[0], timeout=120)
    finish_and_check(cluster, s3, out, epochs, "REQUEUED", requeued_after_end=SLURM_VERSION != "22.05",
                     resumed=CONTINUED)


@pytest.mark.training
def test_truncated_last_pt_falls_back_to_the_good_copy(cluster, s3, dataset, runs_root, tmp_path):
    out = submit_json(cluster, demo_config(tmp_path, dataset, epochs=EPOCHS), runs_root=runs_root)
    run_dir = Path(out["run_dir"])
    wait_epochs(run_dir, 2)
    wait_for(lambda: (run_dir / "weights" / "last.good.pt").exists(), 60, "the monitor's good checkpoint copy")
    subprocess.run(["scontrol", "requeuehold", out["job_id"]], check=True, env=cluster)
    wait_for(lambda: job_state(cluster, out["job_id"]) == "PENDING", 120, "the job to be requeued and held")
    last = run_dir / "weights" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # as if killed in the middle of torch.save
    subprocess.run(["scontrol", "release", out["job_id"]], check=True, env=cluster)
    finish_and_check(cluster, s3, out, EPOCHS, "REQUEUED")
    assert "last.pt is unusable" in (run_dir / "train.log").read_text()


@pytest.mark.training
def test_sync_while_training_and_store_outage(cluster, s3, dataset, runs_root, tmp_path):
    """In-training sync through an endpoint that is down first: training is not disturbed;
    once the store is back, results.csv and run.json reach it while the job still runs."""
    host, port = cluster["AWS_ENDPOINT_URL"].removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port))  # starts down: connections refused
    out = submit_json(cluster, demo_config(tmp_path, dataset, epochs=200), "archive.sync_every=2s",
                      f"archive.endpoint_url={proxy.url}", runs_root=runs_root)
    run_dir = Path(out["run_dir"])
    wait_epochs(run_dir, 3)
    assert job_state(cluster, out["job_id"]) == "RUNNING"
    assert not list_keys(s3, out["archive_url"])
    assert "will retry" in (run_dir / "train.log").read_text()  # failures logged, not raised
    t_outage_epochs = len(epochs_in(run_dir))
    proxy.up()

    def synced():
        # A sync that started while the store was down retries and may land after proxy.up()
        # with the progress it recorded when it started, one epoch behind; the next one
        # (2 s later) carries the rest. So wait for the store to catch up, not for a first copy.
        keys = set(list_keys(s3, out["archive_url"]))
        if not {"results.csv", "run.json"} <= keys:
            return None
        remote = json.loads(read_object(s3, out["archive_url"] + "run.json"))
        if remote.get("progress", {}).get("epochs_done", 0) < t_outage_epochs:
            return None
        return remote, read_object(s3, out["archive_url"] + "results.csv")

    remote, stored = wait_for(synced, 60, f"results.csv and run.json with {t_outage_epochs}+ epochs "
                              "in the store during training")
    assert job_state(cluster, out["job_id"]) == "RUNNING"  # still training
    assert len(stored.decode().strip().splitlines()) - 1 >= t_outage_epochs
    assert remote["status"] == "RUNNING"
    subprocess.run(["scancel", out["job_id"]], check=True, env=cluster)
    wait_job_over(cluster, out["job_id"])
    proxy.down()
    record, _ = verify_archive(s3, out["archive_url"])  # the epilog's final copy, straight to the store
    assert record["end_state"] == "CANCELLED"
