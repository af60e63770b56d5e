"""No run is lost when its node dies, on the real multi-node dev cluster.

A node "dies" the way a kernel panic or a power cut looks to Slurm: every process in its
namespace (slurmd, slurmstepd, the training job) gets SIGKILL at once
(`scripts/dev-cluster.sh crash nX`). No node epilog runs; Slurm declares the node DOWN after
SlurmdTimeout (10 s here) and runs EpilogSlurmctld on the controller, which archives the run
from the shared filesystem as NODE_FAIL. Every archive is read back and every sha256 checked;
after each test the crashed node is revived and must return to service, and no other node
may be drained (conftest's node_stays_usable).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from slurm_yolo.config import load_config
from slurm_yolo.launcher.slurm_params import make_marker
from slurm_yolo.launcher.submit import prepare_run
from tests.cluster.helpers import (running_node, DEV, archived_record, demo_config, index_record, job_state, list_keys,
                                   read_object, results_rows as rows, slurm_yolo as cli, submit_standin,
                                   verify_archive, wait_for, wait_job_over)

pytestmark = [pytest.mark.cluster, pytest.mark.multinode]
MULTI = "slurm.partition=multi"


@pytest.fixture
def nodes(cluster):
    """The namespace nodes (n1..nN); the suite needs `scripts/dev-cluster.sh up --nodes 3`."""
    n = int(cluster.get("SLURM_YOLO_NODES") or 0)
    if n < 3:
        pytest.fail("these tests need the multi-node dev cluster: scripts/dev-cluster.sh up --nodes 3")
    return [f"n{i}" for i in range(1, n + 1)]


@pytest.fixture
def crasher(cluster, nodes):
    """crash(node) kills a node; every crashed node is revived after the test and must come back idle."""
    crashed: list[str] = []

    def crash(node: str) -> float:
        proc = subprocess.run(["bash", str(DEV), "crash", node], capture_output=True, text=True, env=cluster,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        crashed.append(node)
        return time.monotonic()

    yield crash
    for node in crashed:
        proc = subprocess.run(["bash", str(DEV), "revive", node], capture_output=True, text=True, env=cluster,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        state = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True,
                               env=cluster, timeout=30).stdout.strip()
        assert state in ("idle", "mixed", "allocated"), f"{node} did not return to service: {state}"


def attempt_record(s3, archive_url: str, n: int, state: str, timeout: float = 150) -> dict:
    def get():
        try:
            r = json.loads(read_object(s3, f"{archive_url}attempts/attempt-{n}.json"))
        except s3.exceptions.NoSuchKey:
            return None
        return r if r["attempts"][n - 1].get("end_state") == state else None

    return wait_for(get, timeout, f"attempt {n} of {archive_url} archived as {state}")


def marked_job(cluster, run_dir: Path, *sbatch_args: str, sleep_s: int = 2) -> tuple[str, Path, str]:
    """A job carrying the launcher's marker for ``run_dir`` (made by ``prepare_run``) that only
    sleeps: for tests of the archiving, not of the training. Returns (job ID, folder, archive URL)."""
    job = subprocess.run(["sbatch", "--parsable", *sbatch_args, "--mem=50M", f"--comment={make_marker(str(run_dir))}",
                          "-o", "/dev/null", "--wrap", f"sleep {sleep_s}"], capture_output=True, text=True,
                         env=cluster, timeout=60)
    assert job.returncode == 0, job.stderr
    return job.stdout.strip(), run_dir, json.loads((run_dir / "run.json").read_text())["archive_url"]


def claims_of(cluster, job_id: str) -> list[dict]:
    root = Path(cluster["SLURM_YOLO_DEV_STATE"]) / "claims"
    return [json.loads(p.read_text()) for p in sorted(root.glob(f"*.{job_id}.*.a*")) if not p.name.startswith(".")]


@pytest.mark.cluster_wide
def test_node_crash_mid_training_requeues_and_resumes_on_another_node(cluster, s3, dataset, runs_root, tmp_path,
                                                                       crasher):
    """What a node death tests is Slurm's requeue onto another node, the claim that archives
    each attempt once and the second attempt carrying on from the first one's rows and
    checkpoint: the stand-in does all of that (resuming a real training from last.pt after a
    requeue: test_resume.py). Its first attempt is slow enough to be mid-run when Slurm
    declares the node down (SlurmdTimeout), the resumed one is quick."""
    epochs = 200
    out = submit_standin(cluster, demo_config(tmp_path, dataset), MULTI, runs_root=runs_root, epochs=epochs,
                         epoch_s=0.5, requeued_epoch_s=0.02)
    run_dir = Path(out["run_dir"])
    wait_for(lambda: rows(run_dir) >= 2, 300, "two epochs")
    node = running_node(cluster, out["job_id"])
    crashed_at = crasher(node)
    first = attempt_record(s3, out["archive_url"], 1, "NODE_FAIL")
    print(f"node death → attempt 1 committed in the store: {time.monotonic() - crashed_at:.1f} s")
    assert first["epilog"]["by"].startswith("epilog_slurmctld@")  # no node epilog ran
    assert 2 <= first["attempts"][0]["epoch"] < epochs
    wait_for(lambda: job_state(cluster, out["job_id"]) == "COMPLETED", 600, "the requeued run to complete")
    record = archived_record(s3, out["archive_url"], state="COMPLETED", timeout=90)
    _, manifest = verify_archive(s3, out["archive_url"])
    assert {"results.csv", "weights/last.pt", "weights/best.pt", "train.log"} <= set(manifest["files"])
    assert [(a["attempt"], a["end_state"]) for a in record["attempts"]] == [(1, "NODE_FAIL"), (2, "COMPLETED")]
    assert record["attempts"][0]["node"] == node and record["attempts"][1]["node"] != node
    assert record["attempts"][1]["epoch"] == epochs and rows(run_dir) == epochs
    # Continued, not restarted: every epoch once, in order, the second attempt after the first's rows.
    epochs_done = [int(line.split(",")[0]) for line in (run_dir / "results.csv").read_text().splitlines()[1:]]
    assert epochs_done == list(range(1, epochs + 1))
    assert "continuing after epoch" in (run_dir / "train.log").read_text()
    assert [c["state"] for c in claims_of(cluster, out["job_id"])] == ["done", "done"]


@pytest.mark.cluster_wide
@pytest.mark.endstate
def test_node_crash_without_requeue_is_archived_as_node_fail(cluster, s3, dataset, runs_root, tmp_path, crasher):
    out = submit_standin(cluster, demo_config(tmp_path, dataset), MULTI, runs_root=runs_root, epochs=200,
                         epoch_s=0.5)
    subprocess.run(["scontrol", "update", f"jobid={out['job_id']}", "requeue=0"], check=True, env=cluster, timeout=30)
    run_dir = Path(out["run_dir"])
    wait_for(lambda: rows(run_dir) >= 2, 300, "two epochs")
    crasher(running_node(cluster, out["job_id"]))
    assert wait_job_over(cluster, out["job_id"], timeout=180) == "NODE_FAIL"
    record = archived_record(s3, out["archive_url"], state="NODE_FAIL", timeout=60)
    _, manifest = verify_archive(s3, out["archive_url"])
    assert {"results.csv", "args.yaml", "weights/last.pt", "train.log"} <= set(manifest["files"])
    assert len(record["attempts"]) == 1 and record["attempts"][0]["end_state"] == "NODE_FAIL"
    assert record["epilog"]["evidence"]["node_down"] is True
    assert index_record(s3, cluster, out["run_id"])["end_state"] == "NODE_FAIL"
    # The user's folder learns it too (written as the user, from the controller).
    assert json.loads((run_dir / "run.json").read_text())["end_state"] == "NODE_FAIL"
    assert [c["state"] for c in claims_of(cluster, out["job_id"])] == ["done"]


@pytest.mark.cluster_wide
def test_first_node_of_a_two_node_job_crashes(cluster, s3, dataset, runs_root, tmp_path, crasher):
    """The node that would have archived under a "first node archives" rule is the one that
    dies: the claim lets the surviving node's epilog or the controller archive it, once.

    The job holds two nodes and sleeps (2-node training itself: test_multinode_training.py);
    its run folder is the launcher's, with what a training leaves in it."""
    config = load_config(demo_config(tmp_path, dataset), [f"runs_root={runs_root}", MULTI, "slurm.nodes=2"])
    run_dir = prepare_run(config)
    (run_dir / "weights").mkdir()
    (run_dir / "weights" / "last.pt").write_bytes(os.urandom(300_000))
    (run_dir / "results.csv").write_text("epoch,time,metrics/mAP50(B),metrics/mAP50-95(B)\n1,1.0,0.2,0.1\n")
    job_id, _, url = marked_job(cluster, run_dir, "-p", "multi", "-N", "2", "--no-requeue", sleep_s=600)
    out = {"job_id": job_id, "archive_url": url}
    nodelist = subprocess.run(["scontrol", "show", "hostnames", running_node(cluster, out["job_id"])],
                              capture_output=True, text=True, env=cluster, timeout=30).stdout.split()
    assert len(nodelist) == 2
    crasher(nodelist[0])
    assert wait_job_over(cluster, out["job_id"], timeout=180) == "NODE_FAIL"
    record = archived_record(s3, out["archive_url"], state="NODE_FAIL", timeout=60)
    _, manifest = verify_archive(s3, out["archive_url"])
    assert {"results.csv", "weights/last.pt"} <= set(manifest["files"])
    claims = claims_of(cluster, out["job_id"])
    assert [c["state"] for c in claims] == ["done"], claims  # archived once, by whoever came first
    assert claims[0]["by"] in (f"epilog_slurmd@{nodelist[1]}",) or claims[0]["by"].startswith("epilog_slurmctld@")
    assert record["epilog"]["by"] == claims[0]["by"]
    log = (Path(cluster["SLURM_YOLO_DEV_STATE"]) / "log" / "epilog.log").read_text()
    summaries = [line for line in log.splitlines() if f"job {out['job_id']}: {{'job'" in line]
    assert sum("'claimed': True" in line for line in summaries) == 1, summaries


@pytest.mark.cluster_wide
def test_thirty_runs_over_three_nodes_each_archived_once(cluster, s3, dataset, runs_root, tmp_path, nodes):
    """30 runs, 10 pinned to each node, all ending within seconds: each node's epilogs archive
    their own runs, each run once, and the catalog lists all 30.

    What is under test is the archiving, so the jobs do not train: each run folder is made by
    the launcher (run.json and all, with a 1 MB payload) and its job is a plain ``sbatch``
    carrying the launcher's marker, as `slurm-yolo submit` would. Real Slurm, real node
    epilogs, real store; no torch imports for 30 jobs on 2 cores."""
    config = load_config(demo_config(tmp_path, dataset, epochs=1), [f"runs_root={runs_root}", MULTI])
    runs = []
    for i in range(30):
        run_dir = prepare_run(config)
        (run_dir / "payload.bin").write_bytes(os.urandom(1 << 20) + str(i).encode())
        runs.append(marked_job(cluster, run_dir, "-p", "multi", "-w", nodes[i % 3]))
    for job_id, _, _ in runs:
        wait_job_over(cluster, job_id, timeout=300)
    for i, (job_id, run_dir, url) in enumerate(runs):
        record, manifest = verify_archive(s3, archived_record(s3, url) and url)
        assert record["run_id"] == run_dir.name and manifest["files"]["payload.bin"]["size"] == (1 << 20) + len(str(i))
        assert record["epilog"]["by"] == f"epilog_slurmd@{nodes[i % 3]}"
        claims = claims_of(cluster, job_id)
        assert [c["state"] for c in claims] == ["done"] and claims[0]["by"] == record["epilog"]["by"]
    listed = cli(cluster, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    ids = {run_dir.name for _, run_dir, _ in runs}
    assert sorted(r["run_id"] for r in json.loads(listed.stdout) if r["run_id"] in ids) == sorted(ids)


def test_run_json_replaced_by_garbage_mid_training_is_still_archived(cluster, s3, dataset, runs_root, tmp_path):
    out = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, epochs=6, epoch_s=0.5)
    run_dir = Path(out["run_dir"])
    wait_for(lambda: rows(run_dir) >= 2, 300, "two epochs")
    garbage = b"\x00{not json at all" + os.urandom(3000)
    (run_dir / "run.json").write_bytes(garbage)
    assert wait_job_over(cluster, out["job_id"]) == "COMPLETED"
    # Where the launcher placed the run (its .placement.json, apart from run.json): a damaged
    # record does not move the run.
    url = out["archive_url"]
    record = archived_record(s3, url, timeout=60)
    _, manifest = verify_archive(s3, url)
    assert record["record_damaged"].startswith("run.json is unreadable")
    assert record["end_state"] == "COMPLETED"  # from Slurm's own evidence: exit 0:0 in env and scontrol
    assert read_object(s3, url + "run.json.damaged") == garbage  # kept as it was
    assert {"results.csv", "weights/last.pt", "weights/best.pt", "train.log"} <= set(manifest["files"])
    assert (run_dir / "run.json").read_bytes() == garbage  # never rewritten
    assert index_record(s3, cluster, out["run_id"])["archive_url"] == url


def acted(proc, outs) -> list[str]:
    """Which of this test's jobs a reconcile round archived (or would). squeue still lists
    other tests' jobs for MinJobAge (hostile markers it refuses, say): not looked at here."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ours = {o["job_id"] for o in outs}
    return [r["job"] for r in json.loads(proc.stdout) if r["job"] in ours]


@pytest.mark.cluster_wide
def test_reconciler_archives_what_no_epilog_did_and_takes_over_dead_claims(cluster, s3, dataset, runs_root,
                                                                              tmp_path):
    """The controller does not mount the users' filesystem at some sites: the reconciler timer
    (on a host that does) catches what no epilog archived. Both cases it handles are made
    real here: an ended job with no claim at all, and a claim whose holder died mid-archive."""
    config = load_config(demo_config(tmp_path, dataset, epochs=1), [f"runs_root={runs_root}"])
    outs = []
    for _ in range(2):
        run_dir = prepare_run(config)
        (run_dir / "train.log").write_text("what a run folder holds besides run.json\n")
        job_id, run_dir, url = marked_job(cluster, run_dir, "-p", "debug")
        outs.append({"job_id": job_id, "run_dir": str(run_dir), "archive_url": url})
    for out in outs:
        wait_job_over(cluster, out["job_id"])
        archived_record(s3, out["archive_url"])
    claims_dir = Path(cluster["SLURM_YOLO_DEV_STATE"]) / "claims"
    (unclaimed, dead_holder) = outs
    # 1: as if no epilog had run: no claim, nothing in the store.
    for p in claims_dir.glob(f"*.{unclaimed['job_id']}.*"):
        p.unlink()
    # 2: as if the node had died during its epilog: a claim still "claimed", long ago.
    (dead_claim,) = [p for p in claims_dir.glob(f"*.{dead_holder['job_id']}.*.a1")]
    data = json.loads(dead_claim.read_text())
    dead_claim.write_text(json.dumps({**data, "state": "claimed", "epoch_s": time.time() - 3600}))
    bucket = "slurm-yolo"
    for out in outs:
        keys = list_keys(s3, out["archive_url"])
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [
            {"Key": out["archive_url"][len(f"s3://{bucket}/"):] + k} for k in keys]})
    # The node epilogs ended just now: the unclaimed job is only due once they had their time.
    dry = cli(cluster, "reconcile", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert acted(dry, outs) == [dead_holder["job_id"]]
    ran = cli(cluster, "reconcile", "--json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert acted(ran, outs) == [dead_holder["job_id"]]
    record, _ = verify_archive(s3, dead_holder["archive_url"])
    assert record["epilog"]["by"].startswith("reconciler@")
    assert json.loads(dead_claim.read_text())["took_over"]["by"] == data["by"]
    # Once the node epilogs' time is up (--settle; by default time_budget_s + 60 s), the
    # unclaimed one is archived too.
    ran = cli(cluster, "reconcile", "--settle", "0", "--json")
    assert acted(ran, outs) == [unclaimed["job_id"]], ran.stdout + ran.stderr
    record, _ = verify_archive(s3, unclaimed["archive_url"])
    assert record["epilog"]["by"].startswith("reconciler@")
    assert acted(cli(cluster, "reconcile", "--settle", "0", "--json"), outs) == []  # idempotent
