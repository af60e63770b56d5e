"""On the real cluster: `slurm.nodes: 2` trains ONE model across two nodes.

Needs the dev cluster's `multi` partition (nodes n1..n3, each in its own network namespace,
the host filesystem shared): one srun task per node, each starting its node's torchrun with
a c10d rendezvous on the first node; CPU, gloo. The archive must hold one run with every
epoch, both tasks' Slurm logs, and a world of size 2 spread over two different hosts.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest

from tests.cluster.helpers import (archived_record, demo_config, read_object, submit_json, verify_archive,
                                   wait_job_over)

pytestmark = [pytest.mark.cluster, pytest.mark.training, pytest.mark.multinode]
PARTITION = "multi"
EPOCHS = 2


@pytest.fixture
def multi_partition(cluster):
    """The `multi` partition with at least two nodes that can take a job (fails if absent)."""
    out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%D %T"], capture_output=True, text=True,
                         env=cluster, timeout=30).stdout.split()
    idle = sum(int(n) for n, state in zip(out[::2], out[1::2]) if state in ("idle", "mixed"))
    if idle < 2:
        pytest.fail(f"partition {PARTITION!r} needs 2 usable nodes (sinfo: {' '.join(out) or 'nothing'}); "
                    "scripts/dev-cluster.sh builds it")
    return PARTITION


def test_two_nodes_train_one_model_and_archive_it_once(cluster, s3, dataset, runs_root, tmp_path, multi_partition):
    config = demo_config(tmp_path, dataset, epochs=EPOCHS)
    out = submit_json(cluster, config, "slurm.nodes=2", f"slurm.partition={multi_partition}",
                      "archive.sync_every=null", runs_root=runs_root)
    state = wait_job_over(cluster, out["job_id"], timeout=600)
    assert state == "COMPLETED", f"job {out['job_id']} ended {state}; see {out['run_dir']}/slurm"

    archived_record(s3, out["archive_url"], timeout=180)
    record, manifest = verify_archive(s3, out["archive_url"])
    assert record["end_state"] == "COMPLETED" and record["status"] == "COMPLETED"
    [attempt] = record["attempts"]  # task 0 alone keeps run.json: one attempt, not one per node
    assert attempt["launch"]["nnodes"] == 2 and attempt["launch"]["world_size"] == 2
    assert attempt["launch"]["backend"] == "gloo"
    world = attempt["world"]  # recorded by global rank 0 once the process group formed
    assert world["world_size"] == 2 and len(set(world["hosts"])) == 2, world

    rows = list(csv.DictReader(io.StringIO(read_object(s3, out["archive_url"] + "results.csv").decode())))
    assert [int(float(r["epoch"].strip())) for r in rows] == list(range(1, EPOCHS + 1))
    assert record["metrics"]["epochs_done"] == EPOCHS
    for name in ("weights/best.pt", "weights/last.pt", "args.yaml", "train.log"):
        assert name in manifest["files"], name
    # Both srun tasks ran (and logged): one per node.
    logs = {f"slurm/{out['job_id']}_{task}_log.out" for task in (0, 1)}
    assert logs <= set(manifest["files"]), sorted(manifest["files"])
    train_log = read_object(s3, out["archive_url"] + "train.log").decode(errors="replace")
    assert "world_size=2 backend=gloo" in train_log
    # Both nodes ran the epilog; the claim let exactly one of them archive the attempt.
    claims = sorted(Path(cluster["SLURM_YOLO_DEV_STATE"], "claims").glob(f"*.{out['job_id']}.*.a1"))
    assert len(claims) == 1 and json.loads(claims[0].read_text())["state"] == "done"
    by = json.loads(claims[0].read_text())["by"]
    assert by == record["epilog"]["by"] and by.split("@")[1] in world["hosts"]
    log = Path(cluster["SLURM_YOLO_DEV_STATE"], "log", "epilog.log").read_text()
    summaries = [line for line in log.splitlines() if f"job {out['job_id']}: {{'job'" in line]
    assert sum("'claimed': True" in line for line in summaries) == 1, summaries
    assert sum("'claimed': False" in line for line in summaries) == 1, summaries  # the other node
