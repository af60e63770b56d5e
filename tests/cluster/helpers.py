"""What the cluster tests call: submitting (the CLI, or the launcher with a stand-in workload),
waiting on Slurm, and reading the store back (every manifest file by sha256).

Two ways to submit a run, both through the real launcher, its marker and the real epilog:

* :func:`submit_json`: ``slurm-yolo submit CONFIG --json``: the job trains with Ultralytics;
  for the tests where training is what is tested (resume, in-training sync, multi-node, the demo).
* :func:`submit_standin`: a small driver process calls ``slurm_yolo.launcher.submit.submit``
  with ``TrainJob(StandIn(...))``: the same job wrapper (attempt record, signals, train.log,
  monitor, requeue), with the training replaced by a stand-in that sleeps, allocates, fails
  and fills a realistic run folder (slurm_yolo/job/workloads.py). The driver runs as a
  subprocess, as the given user with that user's environment, so submitting is as real as
  the CLI's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import pytest

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "scripts" / "dev-cluster.sh"
BIN = Path(sys.executable).parent
TEST_USER = "syuser"
# The Slurm version of the dev cluster under test (scripts/dev-cluster.sh --slurm).
SLURM_VERSION = os.environ.get("SLURM_YOLO_TEST_SLURM") or "22.05"
# What the submitting user's shell holds: Slurm, the store endpoint and *their* S3 keys.
USER_ENV = ("SLURM_CONF", "PATH", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "SLURM_YOLO_SITE_CONFIG",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The stand-in driver: what `slurm-yolo submit` does (load_config, submit), with another job.
# Run with `python -c` from /tmp: it imports the installed slurm_yolo, as the node does.
STANDIN_DRIVER = """
import json, sys
from slurm_yolo.config import load_config
from slurm_yolo.job.train import TrainJob
from slurm_yolo.job.workloads import StandIn
from slurm_yolo.launcher.submit import submit
for overrides, workload in json.loads(sys.argv[2]):
    handle = submit(load_config(sys.argv[1], overrides), job=TrainJob(StandIn(**workload)))
    print(json.dumps(handle.to_dict()), flush=True)
"""


def demo_config(tmp_path: Path, dataset: Path, **train) -> Path:  # noqa: ARG001 - tmp_path kept for symmetry
    """A tiny CPU config on the synthetic dataset (1 CPU so that two jobs run at once)."""
    cfg = {
        "run": {"task": "detect", "project": "pcb-test", "model_name": "yolov8n"},
        "train": {"model": "yolov8n.yaml", "data": str(dataset), "epochs": 2, "imgsz": 64, "batch": 8,
                  "workers": 0, "plots": False, "amp": False, "val": True, **train},
        "slurm": {"partition": "debug", "gpus": 0, "cpus_per_task": 1, "mem": "2500M", "time": "00:10:00",
                  "signal_delay_s": 30},
        "archive": {"url": "s3://slurm-yolo/runs/{user}/test"},
    }
    return shared_config(cfg)


def shared_config(cfg: dict, name: str = "cfg") -> Path:
    """Write ``cfg`` as YAML outside pytest's 0700 tmp tree, where the non-root test user and the
    jobs of any user can read it."""
    import yaml

    shared = Path("/tmp/slurm-yolo-test-configs")
    shared.mkdir(mode=0o755, exist_ok=True)
    path = shared / f"{name}-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    os.chmod(path, 0o644)
    return path


def slurm_yolo(env: dict[str, str], *args: str, user: str | None = None, timeout: float = 600,
               cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `slurm-yolo` CLI (optionally as another user, with that user's own env)."""
    return subprocess.run(as_user(env, [str(BIN / "slurm-yolo"), *args], user), capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd or "/tmp")


def as_user(env: dict[str, str], argv: list[str], user: str | None) -> list[str]:
    """``argv`` as ``user`` (``None``: as is), with that user's own shell environment."""
    if not user:
        return argv
    return ["runuser", "-u", user, "--", "env", *(f"{k}={env[k]}" for k in USER_ENV if k in env), *argv]


def submit_json(env, config: Path, *sets: str, user: str | None = None, runs_root: Path | None = None,
                extra: tuple[str, ...] = ()) -> dict:
    """`slurm-yolo submit CONFIG --json` → the printed object (asserts exit 0)."""
    args = ["submit", str(config), "--json", *extra]
    if runs_root:
        args += ["--set", f"runs_root={runs_root}"]
    for s in sets:
        args += ["--set", s]
    proc = slurm_yolo(env, *args, user=user)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def submit_standins(env, config: Path, jobs: Iterable[tuple[Iterable[str], dict[str, Any]]], *,
                    user: str | None = None, runs_root: Path | None = None) -> list[dict]:
    """Submit one stand-in job per ``(overrides, StandIn fields)`` through the launcher, from one
    driver process; returns their run handles (as ``submit --json`` prints them)."""
    base = [f"runs_root={runs_root}"] if runs_root else []
    spec = [[base + list(sets), workload] for sets, workload in jobs]
    argv = as_user(env, [str(BIN / "python"), "-c", STANDIN_DRIVER, str(config), json.dumps(spec)], user)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd="/tmp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(outs) == len(spec), proc.stdout + proc.stderr
    return outs


def submit_standin(env, config: Path, *sets: str, user: str | None = None, runs_root: Path | None = None,
                   **workload: Any) -> dict:
    """One stand-in job (``workload``: :class:`slurm_yolo.job.workloads.StandIn` fields) with
    config overrides ``sets``; returns its run handle."""
    return submit_standins(env, config, [(sets, workload)], user=user, runs_root=runs_root)[0]


def results_rows(run_dir: Path) -> int:
    """Data rows in the run's results.csv (epochs done); 0 before the first."""
    try:
        return max(0, len((run_dir / "results.csv").read_text().strip().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def epochs_in(run_dir: Path) -> list[int]:
    """The epoch column of the run's results.csv."""
    try:
        rows = (run_dir / "results.csv").read_text().strip().splitlines()[1:]
    except FileNotFoundError:
        return []
    return [int(float(r.split(",")[0])) for r in rows if r.strip()]


def wait_epochs(run_dir: Path, n: int = 1, timeout: float = 300) -> None:
    wait_for(lambda: results_rows(run_dir) >= n, timeout, f"{n} epoch(s) in {run_dir}/results.csv")


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def running_node(cluster, job_id: str) -> str:
    """The node list of job ``job_id`` once it runs (waits up to 2 minutes)."""
    def node():
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %N"], capture_output=True, text=True,
                             env=cluster, timeout=30).stdout.split()
        return out[1] if len(out) == 2 and out[0] == "RUNNING" else None

    return wait_for(node, 120, f"job {job_id} to run")


def job_state(env, job_id: str) -> str | None:
    """Slurm's state of the job (``squeue -t all``), or ``None`` once it is gone."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True,
                         text=True, env=env, timeout=30).stdout.strip()
    return out.splitlines()[0] if out else None


def wait_job_over(env, job_id: str, timeout: float = 300) -> str:
    """Wait until Slurm lists the job in a final state (its epilog has then finished)."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}
    return wait_for(lambda: (s := job_state(env, job_id)) in final and s, timeout, f"job {job_id} to end")


def split(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def read_object(s3, url: str) -> bytes:
    bucket, key = split(url)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def list_keys(s3, url: str) -> list[str]:
    bucket, prefix = split(url)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
    return keys


def archived_record(s3, archive_url: str, timeout: float = 120, state: str | None = None) -> dict | None:
    """Wait for the run's run.json in the store (with an end state); return it."""
    def get():
        try:
            r = json.loads(read_object(s3, archive_url + "run.json"))
        except s3.exceptions.NoSuchKey:
            return None
        if not r.get("end_state") or (state and r["end_state"] != state):
            return None
        return r

    return wait_for(get, timeout, f"{archive_url}run.json" + (f" with end_state {state}" if state else ""))


def verify_archive(s3, archive_url: str) -> tuple[dict, dict]:
    """Every manifest file is in the store with the same size and sha256; returns (run.json, manifest)."""
    manifest = json.loads(read_object(s3, archive_url + "MANIFEST.json"))
    record = json.loads(read_object(s3, archive_url + "run.json"))
    assert manifest["files"], "empty manifest"
    stored = set(list_keys(s3, archive_url))
    for rel, want in manifest["files"].items():
        assert rel in stored, f"{rel} missing from the store"
        data = read_object(s3, archive_url + rel)
        assert len(data) == want["size"], rel
        assert hashlib.sha256(data).hexdigest() == want["sha256"], f"{rel}: sha256 mismatch"
    extra = {k for k in stored - set(manifest["files"]) if not k.startswith("attempts/attempt-")}
    assert extra <= {"run.json", "MANIFEST.json"}, extra
    return record, manifest


def index_record(s3, env, run_id: str) -> dict:
    """The run's record in the store's index (what the epilog's index step wrote)."""
    bucket, prefix = split(env.get("SLURM_YOLO_INDEX", "s3://slurm-yolo/index/"))
    return json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}runs/{run_id}.json")["Body"].read())
