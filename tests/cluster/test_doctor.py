"""`slurm-yolo doctor` on the real dev clusters: the installed CLI, the real store, Slurm and a
check job on a compute node.

On the 22.05 cluster every check passes for the non-root test user (the runs_root on the
host's ext4 is a warning, not a failure: the namespace nodes share this host's filesystem,
and the check job proves the node sees it). On the 24.11 node, which sees the host's /tmp,
/home and the project venv but nothing else, a venv elsewhere (here under /var/tmp) fails the
check job clearly: the node cannot run that interpreter; doctor exits 1 and says which check
failed and what to do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from tests.cluster.helpers import BIN, DEV, SLURM_VERSION, TEST_USER, demo_config, slurm_yolo

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(SLURM_VERSION != "22.05", reason="runs from the 22.05 stage; uses both clusters")]


def doctor(env, *args: str, user: str | None = None) -> tuple[int, dict]:
    proc = slurm_yolo(env, "doctor", *args, "--json", user=user, timeout=300)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_check_passes_on_the_2205_cluster(cluster, dataset, runs_root, tmp_path, test_user):
    config = demo_config(tmp_path, dataset)
    rc, report = doctor(cluster, str(config), "--set", f"runs_root={runs_root}", user=TEST_USER)
    checks = {c["name"]: c for c in report["checks"]}
    assert rc == 0 and report["ok"] and report["failed"] == [], report
    assert list(checks) == ["credentials", "store", "archive prefix", "mode", "reconciler", "runs_root", "check job"]
    assert all(c["status"] in ("ok", "warn") for c in checks.values()), checks
    assert "slurm-yolo epilog is configured" in checks["mode"]["detail"]
    assert f"runs/{TEST_USER}/test/" in checks["archive prefix"]["detail"]
    job = checks["check job"]
    assert job["status"] == "ok" and str(BIN / "python") in job["detail"] and "ultralytics" in job["detail"], job
    assert checks["runs_root"]["status"] == "warn" and "ext4" in checks["runs_root"]["detail"]
    assert not list(runs_root.glob(".slurm-yolo-doctor-*"))  # the check job's output is cleaned up


@pytest.fixture
def env_2411(cluster):
    """The 24.11 cluster's environment (its client wrappers first on PATH); skip if it is down."""
    cmd = f"bash {DEV} --slurm 24.11"
    status = subprocess.run(["bash", "-c", f"{cmd} status"], capture_output=True, text=True, timeout=60)
    if status.returncode != 0:
        pytest.skip("the Slurm 24.11 dev cluster is not up (scripts/dev-cluster.sh --slurm 24.11 up)")
    out = subprocess.run(["bash", "-c", f'eval "$({cmd} env)" && env -0'], capture_output=True, text=True,
                         timeout=30, check=True)
    env = dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    return env


@pytest.fixture
def unseen_venv():
    """A venv under /var/tmp (which the 24.11 node does not see) whose Python finds the project's
    packages through a .pth file: it runs slurm-yolo here, and nothing on that node."""
    root = Path("/var/tmp") / f"slurm-yolo-doctor-venv-{uuid.uuid4().hex[:8]}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = Path(sysconfig.get_paths(vars={"base": str(root), "platbase": str(root)})["purelib"])
    (site / "project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_check_job_fails_clearly_where_the_node_cannot_see_the_venv(env_2411, dataset, tmp_path, unseen_venv):
    config = demo_config(tmp_path, dataset)
    runs = Path("/tmp") / f"slurm-yolo-doctor-{uuid.uuid4().hex[:8]}"  # /tmp: the node sees it
    python = unseen_venv / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "slurm_yolo.cli", "doctor", str(config), "--set", f"runs_root={runs}",
                           "--json"], capture_output=True, text=True, env=env_2411, timeout=300, cwd="/tmp")
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    checks = {c["name"]: c for c in report["checks"]}
    assert proc.returncode == 1 and report["failed"] == ["check job"], report
    job = checks["check job"]
    assert str(python) in job["detail"] and "s2411" in job["detail"], job
    assert "does not exist or cannot run" in job["detail"] and "filesystem the compute nodes share" in job["fix"], job
    assert checks["mode"]["status"] == "ok" and checks["store"]["status"] == "ok"
