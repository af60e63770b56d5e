"""The dev cluster itself: what an outage test, or a new user, does to it must be undone by `up`.

The store (SeaweedFS on 127.0.0.1) is killed while the namespace nodes are up, whose forwarder
listens on the same port on the bridge address: `scripts/dev-cluster.sh up --nodes 3` must
bring it back, answering on the host and from inside a namespace node (a job on partition
multi, through the node's forwarders). And `up --nodes 1` takes the namespace nodes down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.cluster.helpers import BIN, DEV

pytestmark = [pytest.mark.cluster, pytest.mark.multinode, pytest.mark.cluster_wide]


def dev(cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(DEV), *args], capture_output=True, text=True, env=cluster, timeout=timeout)
    assert proc.returncode == 0, f"dev-cluster.sh {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc


def store_pid(cluster) -> int:
    return int((Path(cluster["SLURM_YOLO_DEV_STATE"]) / "store" / "server.pid").read_text().strip())


def s5cmd_ls(cluster, *srun: str) -> subprocess.CompletedProcess:
    """``s5cmd ls`` of the cluster's bucket, here or (``srun`` arguments) inside a job."""
    # No retries: a store that is down must say so at once, not after s5cmd's back-off.
    argv = [str(BIN / "s5cmd"), "--json", "--retry-count", "0", "--endpoint-url", cluster["AWS_ENDPOINT_URL"], "ls",
            "s3://slurm-yolo/"]
    if srun:
        argv = ["srun", *srun, "--mem=100M", "-t", "1", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=cluster, timeout=120, cwd="/tmp")


def answers(proc: subprocess.CompletedProcess) -> bool:
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode == 0 and bool(lines) and not any("error" in x for x in lines)


def namespace_nodes(cluster) -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N"], capture_output=True, text=True,
                         env=cluster, timeout=30)
    return sorted(set(out.stdout.split())) if out.returncode == 0 else []


def test_store_killed_with_the_namespace_nodes_up_comes_back_with_up(cluster):
    if int(cluster.get("SLURM_YOLO_NODES") or 0) < 3:
        pytest.fail("this test needs the multi-node dev cluster: scripts/dev-cluster.sh up --nodes 3")
    assert answers(s5cmd_ls(cluster, "-p", "multi", "-w", "n1"))  # through the forwarders, before
    os.kill(store_pid(cluster), signal.SIGKILL)  # the way an outage test ends a store
    assert not answers(s5cmd_ls(cluster))
    up = dev(cluster, "up", "--nodes", "3")
    assert "s3: seaweedfs on" in up.stderr
    assert answers(s5cmd_ls(cluster)), "the store does not answer on the host"
    for node in ("n1", "n3"):
        proc = s5cmd_ls(cluster, "-p", "multi", "-w", node)
        assert answers(proc), f"the store does not answer from {node}: {proc.stdout}{proc.stderr}"


def test_up_with_one_node_takes_the_namespace_nodes_down(cluster):
    try:
        dev(cluster, "up", "--nodes", "1")
        assert not list(Path("/run/netns").glob("syn*"))
        assert not namespace_nodes(cluster)
        assert not list((Path(cluster["SLURM_YOLO_DEV_STATE"]) / "run").glob("slurmd-n*.pid"))
        assert answers(s5cmd_ls(cluster))  # the host's node and the store are untouched
    finally:
        dev(cluster, "up", "--nodes", "3")  # the rest of the suite needs them back
    assert namespace_nodes(cluster) == ["n1", "n2", "n3"]
    assert answers(s5cmd_ls(cluster, "-p", "multi", "-w", "n2"))
