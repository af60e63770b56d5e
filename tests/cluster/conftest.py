"""Fixtures for tests on the real one-node Slurm cluster (scripts/dev-cluster.sh up).

Everything here goes through the real parts: `slurm-yolo` as a subprocess, sbatch/scontrol,
slurmd running the project's epilog, s5cmd, and the loopback S3 server. The store is read
back with boto3 and every file is checked against the manifest by sha256.

Which cluster: ``SLURM_YOLO_TEST_SLURM`` (unset or ``22.05``: the Debian 12 cluster of
``scripts/dev-cluster.sh up``; ``24.11``: the Debian 13 one of ``up --slurm 24.11``). The core
end-state tests carry the ``endstate`` marker, so one command runs them against either:
``SLURM_YOLO_TEST_SLURM=24.11 pytest -m endstate tests/cluster``.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "scripts" / "dev-cluster.sh"
BIN = Path(sys.executable).parent
TEST_USER = "syuser"
# The Slurm version of the dev cluster under test (scripts/dev-cluster.sh --slurm).
SLURM_VERSION = os.environ.get("SLURM_YOLO_TEST_SLURM") or "22.05"

pytestmark = pytest.mark.cluster


def _cluster_env() -> dict[str, str]:
    """The environment after `eval "$(scripts/dev-cluster.sh env)"`, exactly as a shell gets it."""
    cmd = f"bash {shlex.quote(str(DEV))} --slurm {shlex.quote(SLURM_VERSION)} env"
    out = subprocess.run(["bash", "-c", f'eval "$({cmd})" && env -0'],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.fail(f"scripts/dev-cluster.sh env failed: {out.stderr.strip()}")
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)


@pytest.fixture(scope="session")
def cluster():
    """The environment of the running dev cluster; fails (not skips) if it is down."""
    env = _cluster_env()
    status = subprocess.run(["bash", str(DEV), "status"], capture_output=True, text=True, env=env, timeout=60)
    if status.returncode != 0:
        pytest.fail(f"the Slurm {SLURM_VERSION} dev cluster is not up: run `scripts/dev-cluster.sh --slurm {SLURM_VERSION}"
                    f" up` first\n" + status.stdout)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest's hook signature
    """The 24.11 dev cluster has one node: the namespace-node tests cannot run there."""
    if SLURM_VERSION == "22.05":
        return
    skip = pytest.mark.skip(reason=f"the Slurm {SLURM_VERSION} dev cluster has one node (no namespace nodes n1..n3)")
    for item in items:
        if "multinode" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def s3(cluster):
    """boto3 client for the dev cluster's store."""
    import boto3

    return boto3.client("s3", endpoint_url=cluster["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=cluster["AWS_ACCESS_KEY_ID"], aws_secret_access_key=cluster["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, cluster):
    """The synthetic PCB dataset, world-readable (jobs of the non-root test user read it too)."""
    root = Path(cluster["SLURM_YOLO_DEV_STATE"]) / "datasets" / "pcb-test"
    if not (root / "data.yaml").exists():
        subprocess.run([str(BIN / "python"), "-m", "slurm_yolo.synthetic", str(root), "--train", "32",
                        "--val", "8", "--size", "64"], check=True, env=cluster)
    subprocess.run(["chmod", "-R", "a+rX", str(root.parent)], check=True)
    return root / "data.yaml"


@pytest.fixture
def runs_root(cluster):
    """A fresh runs folder, writable by every user (sticky, like /tmp)."""
    root = Path(cluster["SLURM_YOLO_RUNS"]) / f"t-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o1777)
    os.chmod(root, 0o1777)
    yield root


@pytest.fixture(scope="session")
def test_user():
    """A non-root user for the multi-user and security cases (created once)."""
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", TEST_USER], check=True)
    return pwd.getpwnam(TEST_USER)


@pytest.fixture(autouse=True)
def node_stays_usable(request):
    """After every cluster test the node must not be drained (the epilog must never do that)."""
    yield
    if "cluster" not in request.fixturenames:
        return
    # One line per node: name, state, and the reason Slurm gives (why it was drained).
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %E"], capture_output=True, text=True, timeout=30,
                         env=request.getfixturevalue("cluster")).stdout.strip()
    nodes = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    bad = sorted({n[0] for n in nodes if len(n) < 2 or "drain" in n[1] or "down" in n[1]})
    if bad:
        # The failure below is recorded; the next tests get a usable node instead of each
        # waiting out its own timeout behind this one.
        subprocess.run(["scontrol", "update", f"nodename={','.join(bad)}", "state=resume"], capture_output=True,
                       timeout=30, env=request.getfixturevalue("cluster"))
    assert nodes and not bad, f"node state after test (name, state, reason):\n{out}"


def demo_config(tmp_path: Path, dataset: Path, **train) -> Path:  # noqa: ARG001 - tmp_path kept for symmetry
    """A tiny CPU config on the synthetic dataset (1 CPU so that two jobs run at once)."""
    import yaml

    cfg = {
        "run": {"task": "detect", "project": "pcb-test", "model_name": "yolov8n"},
        "train": {"model": "yolov8n.yaml", "data": str(dataset), "epochs": 2, "imgsz": 64, "batch": 8,
                  "workers": 0, "plots": False, "amp": False, "val": True, **train},
        "slurm": {"partition": "debug", "gpus": 0, "cpus_per_task": 1, "mem": "2500M", "time": "00:10:00",
                  "signal_delay_s": 30},
        "archive": {"url": "s3://slurm-yolo/runs/{user}/test"},
    }
    # Outside pytest's 0700 tmp tree: the non-root test user must be able to read it.
    shared = Path("/tmp/slurm-yolo-test-configs")
    shared.mkdir(mode=0o755, exist_ok=True)
    path = shared / f"cfg-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    os.chmod(path, 0o644)
    return path


def slurm_yolo(env: dict[str, str], *args: str, user: str | None = None, timeout: float = 600,
               cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `slurm-yolo` CLI (optionally as another user, with that user's own env)."""
    argv = [str(BIN / "slurm-yolo"), *args]
    if user:
        # The user's own shell: Slurm, the store endpoint and *their* S3 keys (dev: "testing").
        keep = ["SLURM_CONF", "PATH", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "SLURM_YOLO_SITE_CONFIG",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        argv = ["runuser", "-u", user, "--", "env", *(f"{k}={env[k]}" for k in keep if k in env), *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd or "/tmp")


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


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def job_state(env, job_id: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True,
                         text=True, env=env, timeout=30).stdout.strip()
    return out.splitlines()[0] if out else None


def wait_job_over(env, job_id: str, timeout: float = 300) -> str:
    """Wait until Slurm lists the job in a final state (its epilog has then finished)."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}
    return wait_for(lambda: (s := job_state(env, job_id)) in final and s, timeout, f"job {job_id} to end")


def split(url: str) -> tuple[str, str]:
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
    import hashlib

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
    bucket, prefix = split(env.get("SLURM_YOLO_INDEX", "s3://slurm-yolo/index/"))
    return json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}runs/{run_id}.json")["Body"].read())
