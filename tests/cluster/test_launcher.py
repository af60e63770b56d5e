"""On the real cluster: submit --wait trains for real; a sweep is one array; the local executor trains too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import slurm_yolo
from slurm_yolo.job.train import TrainJob
from slurm_yolo.job.workloads import StandIn
from tests.cluster.helpers import REPO, demo_config, slurm_yolo as cli, verify_archive, wait_for, wait_job_over

pytestmark = [pytest.mark.cluster]


@pytest.mark.training
def test_submit_demo_wait_completes_with_metrics(cluster, dataset, runs_root, tmp_path):
    """The README's main path: `slurm-yolo submit configs/demo.yaml --wait` ends COMPLETED."""
    proc = cli(cluster, "submit", str(REPO / "configs" / "demo.yaml"), "--wait", "--json",
               "--set", f"runs_root={runs_root}", "--set", f"train.data={dataset}", "--set", "train.epochs=2",
               "--set", "slurm.cpus_per_task=1", cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["end_state"] == "COMPLETED"
    run_dir = Path(out["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["run_id"] == out["run_id"] == run_dir.name
    assert record["slurm"]["job_id"] == out["job_id"]
    assert record["end_state"] == "COMPLETED" and record["status"] == "COMPLETED"
    assert set(record["metrics"]) >= {"map50", "map50_95", "precision", "recall"}
    assert record["metrics"]["epochs_done"] == 2
    assert record["environment"]["torch"] and record["environment"]["node"]
    assert record["dataset"]["fingerprint"] and record["dataset"]["version"] == "synthetic-v1"
    assert record["code"]["commit"]  # submitted from the repository's folder
    [attempt] = record["attempts"]
    assert attempt["end_state"] == "COMPLETED" and attempt["node"] and attempt["end"]
    for name in ("results.csv", "args.yaml", "weights/best.pt", "weights/last.pt", "train.log"):
        assert (run_dir / name).is_file(), name
    # `status` shows the same record
    st = cli(cluster, "status", str(run_dir), "--json")
    assert json.loads(st.stdout)["end_state"] == "COMPLETED"
    human = cli(cluster, "status", out["run_id"], "--runs-root", str(runs_root))
    assert out["run_id"] in human.stdout and "COMPLETED" in human.stdout


def test_sweep_of_three_is_one_array(cluster, s3, dataset, runs_root, tmp_path, monkeypatch):
    """slurm_yolo.sweep(...) from Python: ONE job array, 3 run IDs, one sweep ID, all COMPLETED.

    What is tested is the array, so its elements run the stand-in workload (the Python API
    takes the job to run; training is test_submit_demo_wait_completes_with_metrics's)."""
    for k, v in cluster.items():
        monkeypatch.setenv(k, v)
    config = demo_config(tmp_path, dataset, epochs=1)
    handles = slurm_yolo.sweep(str(config), grid={"train.lr0": [0.01, 0.005, 0.001]},
                               base_overrides=[f"runs_root={runs_root}"], job=TrainJob(StandIn(epochs=1)))
    assert len(handles) == 3
    assert len({h.run_id for h in handles}) == 3
    assert len({h.sweep_id for h in handles}) == 1 and handles[0].sweep_id.startswith("sw_")
    array_ids = {h.job_id.split("_")[0] for h in handles}
    assert len(array_ids) == 1, f"not one array: {[h.job_id for h in handles]}"
    assert sorted(h.job_id.split("_")[1] for h in handles) == ["0", "1", "2"]
    for h in handles:
        wait_job_over(cluster, h.job_id, timeout=600)
    for h, lr in zip(handles, [0.01, 0.005, 0.001]):
        record = wait_for(lambda: (r := json.loads((Path(h.run_dir) / "run.json").read_text())).get("end_state")
                          and r, 60, f"end state of {h.run_id}")
        assert record["end_state"] == "COMPLETED", record["attempts"]
        assert record["sweep_id"] == h.sweep_id and record["config"]["train"]["lr0"] == lr
        assert record["slurm"]["job_id"] == h.job_id
        # Archived like any run, with the element's own Slurm log (kept in the sweep's folder).
        _, manifest = verify_archive(s3, h.archive_url)
        assert f"slurm/{h.job_id}_0_log.out" in manifest["files"]


@pytest.mark.training
def test_local_executor_runs_without_slurm(cluster, dataset, runs_root, tmp_path):
    config = demo_config(tmp_path, dataset, epochs=1)
    env = {k: v for k, v in cluster.items() if not k.startswith("SLURM")}
    env["PATH"] = "/usr/bin:/bin"  # no srun/sbatch reachable: local must not need them
    proc = subprocess.run([str(Path(cluster["PATH"].split(":")[0]) / "slurm-yolo"), "submit", str(config),
                           "--executor", "local", "--wait", "--json", "--set", f"runs_root={runs_root}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    record = json.loads((Path(out["run_dir"]) / "run.json").read_text())
    assert out["end_state"] == "COMPLETED" == record["status"]
    assert record["metrics"]["epochs_done"] == 1 and record["slurm"]["executor"] == "local"
    assert (Path(out["run_dir"]) / "weights" / "best.pt").is_file()
