"""A reconciler that was stopped while jobs ended forgets none of them, on the real 22.05 dev
cluster with Slurm accounting (slurmdbd on MariaDB: ``scripts/dev-cluster.sh accounting on``).

slurmctld lists an ended job for ``MinJobAge`` only (300 s by default; the accounting dev
cluster sets 2 s, Slurm's smallest safe value, and its purge runs about once a minute), so a
reconciler that learns ended jobs from ``squeue`` alone and was down for longer loses them.
Here slurm-yolo's epilog is out of slurm.conf (as on a cluster whose admins never installed
it), so nothing but the reconciler archives a run whose node died or whose whole job the
cgroup OOM-killed. Jobs end while no reconciler runs; once slurmctld has forgotten them, one
round archives each with the end state Slurm recorded (from sacct), a second round changes
nothing. Without accounting, a round walks the runs_roots instead: a run whose last attempt
was never archived and whose job slurmctld forgot is archived, NODE_FAIL as its node is down.

Turning accounting on restarts slurmctld and lowers MinJobAge for every job, so the test is
``cluster_wide`` and puts the cluster back (accounting off, epilog on) however it ends. It runs
when ``SLURM_YOLO_TEST_ACCOUNTING=1`` (about 3 minutes alone on the cluster; the default suite's
budget has no room for it): ``SLURM_YOLO_TEST_ACCOUNTING=1 pytest tests/cluster/test_reconcile_accounting.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from slurm_yolo.config import load_config
from slurm_yolo.launcher.slurm_params import make_marker
from slurm_yolo.launcher.submit import prepare_run
from tests.cluster.helpers import (running_node, DEV, SLURM_VERSION, archived_record, demo_config, results_rows, slurm_yolo,
                                   submit_standin, verify_archive, wait_for)

pytestmark = [
    pytest.mark.cluster, pytest.mark.multinode,
    pytest.mark.skipif(SLURM_VERSION != "22.05", reason="the accounting dev cluster is the 22.05 one"),
    pytest.mark.skipif(os.environ.get("SLURM_YOLO_TEST_ACCOUNTING") != "1",
                       reason="set SLURM_YOLO_TEST_ACCOUNTING=1 (restarts slurmctld with accounting, ~3 min alone)"),
]
MULTI = "slurm.partition=multi"


def dev(cluster, *args: str, timeout: float = 300) -> None:
    proc = subprocess.run(["bash", str(DEV), *args], capture_output=True, text=True, env=cluster, timeout=timeout)
    assert proc.returncode == 0, f"dev-cluster.sh {' '.join(args)}: {proc.stderr[-2000:]}"


@pytest.fixture
def accounting_without_epilog(cluster):
    """Accounting on, slurm-yolo's epilog out of slurm.conf; afterwards as before, crashed nodes revived."""
    crashed: list[str] = []
    dev(cluster, "accounting", "on")
    try:
        dev(cluster, "epilog", "off")
        yield crashed
    finally:
        for node in crashed:
            dev(cluster, "revive", node, timeout=120)
        dev(cluster, "epilog", "on")
        dev(cluster, "accounting", "off")


def listed(cluster, job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%i"], capture_output=True, text=True,
                         env=cluster, timeout=30)
    return out.returncode == 0 and bool(out.stdout.strip())


def accounted_state(cluster, job_id: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True,
                         env=cluster, timeout=30)
    return out.stdout.strip().split(" ")[0] if out.returncode == 0 else ""


def reconcile_round(cluster, *args: str) -> dict[str, dict]:
    """One `slurm-yolo reconcile --json` round as root (the admin's timer): the results by job ID."""
    proc = slurm_yolo(cluster, "reconcile", "--json", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {r["job"]: r for r in json.loads(proc.stdout)}


@pytest.mark.cluster_wide
def test_a_stopped_reconciler_archives_what_ended_meanwhile_with_slurms_end_state(
        cluster, s3, dataset, runs_root, tmp_path, accounting_without_epilog):
    crashed = accounting_without_epilog
    config = demo_config(tmp_path, dataset)
    walked_root = runs_root / "walked"
    walked_root.mkdir()
    # Two runs on the namespace nodes whose node dies mid-run (not requeued: the attempt ends).
    died = submit_standin(cluster, config, MULTI, "slurm.max_requeues=0", runs_root=runs_root, epochs=400,
                          epoch_s=0.5)
    walked = submit_standin(cluster, config, MULTI, "slurm.max_requeues=0", runs_root=walked_root, epochs=400,
                            epoch_s=0.5)
    # A whole job the cgroup OOM-kills (its batch step: no process of it survives to archive).
    run_dir = prepare_run(load_config(config, [f"runs_root={runs_root}"]))
    (run_dir / "results.csv").write_text("epoch,time,metrics/mAP50(B),metrics/mAP50-95(B)\n1,1.0,0.2,0.1\n")
    oom = subprocess.run(["sbatch", "--parsable", "--no-requeue", "--mem=100M", f"--comment={make_marker(str(run_dir))}",
                          "-o", "/dev/null", "--wrap", "python3 -c \"b = b'x' * (600 << 20)\"; sleep 5"],
                         capture_output=True, text=True, env=cluster, timeout=60)
    assert oom.returncode == 0, oom.stderr
    oom_id, oom_url = oom.stdout.strip(), json.loads((run_dir / "run.json").read_text())["archive_url"]
    for out in (died, walked):
        subprocess.run(["scontrol", "update", f"jobid={out['job_id']}", "requeue=0"], check=True, env=cluster,
                       timeout=30)
        wait_for(lambda out=out: results_rows(Path(out["run_dir"])) >= 1, 180, "one epoch")
    for node in sorted({running_node(cluster, died["job_id"]), running_node(cluster, walked["job_id"])}):
        dev(cluster, "crash", node, timeout=60)
        crashed.append(node)
    ids = {"died": died["job_id"], "walked": walked["job_id"], "oom": oom_id}
    def ended():
        got = {k: accounted_state(cluster, j) for k, j in ids.items()}
        return got if all(v and v not in ("RUNNING", "PENDING") for v in got.values()) else None

    states = wait_for(ended, 180, "the three jobs to end in accounting")
    assert states == {"died": "NODE_FAIL", "walked": "NODE_FAIL", "oom": "OUT_OF_MEMORY"}, states
    # No reconciler ran while they ended; now slurmctld forgets them (MinJobAge, then its purge).
    wait_for(lambda: not any(listed(cluster, j) for j in ids.values()), 180, "slurmctld to forget the jobs")

    # Without accounting, a round walks the runs roots: the run whose node is down is NODE_FAIL.
    from slurm_yolo.epilog.reconcile import reconcile
    from slurm_yolo.site import load_site_config

    site = load_site_config(cluster["SLURM_YOLO_SITE_CONFIG"])
    by_walk = {r["job"]: r for r in reconcile(site, settle_s=0, runs_roots=[str(walked_root)],
                                              accounted=lambda *a: None)}
    assert by_walk[walked["job_id"]]["state"] == "NODE_FAIL", by_walk
    assert not {died["job_id"], oom_id} & set(by_walk)  # not under the walked root

    # With accounting: sacct since the last completed round, with the state Slurm recorded.
    first = reconcile_round(cluster, "--settle", "0")
    assert first[died["job_id"]]["state"] == "NODE_FAIL" and first[oom_id]["state"] == "OUT_OF_MEMORY", first
    assert walked["job_id"] not in first  # archived once, by the walk
    for url, state in ((died["archive_url"], "NODE_FAIL"), (oom_url, "OUT_OF_MEMORY"),
                       (walked["archive_url"], "NODE_FAIL")):
        record = archived_record(s3, url, state=state, timeout=60)
        verify_archive(s3, url)
        assert record["epilog"]["by"].startswith("reconciler@"), record["epilog"]
    died_record = archived_record(s3, died["archive_url"], state="NODE_FAIL")
    assert died_record["epilog"]["evidence"]["scontrol"]["source"] == "sacct"
    assert died_record["attempts"][-1]["epoch"] >= 1
    # A second round finds nothing left to do.
    second = reconcile_round(cluster, "--settle", "0")
    assert not set(ids.values()) & set(second), second
