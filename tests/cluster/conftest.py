"""Fixtures for tests on the real Slurm dev cluster (scripts/dev-cluster.sh up); the helpers
the tests call are in tests/cluster/helpers.py.

Everything here goes through the real parts: `slurm-yolo` as a subprocess, sbatch/scontrol,
slurmd running the project's epilog, s5cmd, and the loopback S3 server. The store is read
back with boto3 and every file is checked against the manifest by sha256.

Which cluster: ``SLURM_YOLO_TEST_SLURM`` (unset or ``22.05``: the Debian 12 cluster of
``scripts/dev-cluster.sh up``; ``24.11``: the Debian 13 one of ``up --slurm 24.11``). The core
end-state tests carry the ``endstate`` marker, so one command runs them against either:
``SLURM_YOLO_TEST_SLURM=24.11 pytest -m endstate tests/cluster``.

Two pytest-xdist workers may share one cluster (scripts/test.sh runs them so): each test holds
a shared lock on the cluster for its whole run, and a test marked ``cluster_wide`` (it crashes
a node, stops the store, points the site config elsewhere, pre-empts the host node's jobs,
reconciles every ended job or floods the nodes) holds it alone, so no other test's job sees
what it does; the 24.11 cluster's tests take the same lock (the store is one for both). A test
that changes only its own cluster (its host node pre-empted, its epilog taken out of slurm.conf)
is ``cluster_wide(scope="cluster")``: alone on that cluster, beside the other cluster's tests.
Session fixtures run once per worker: what they create is made under a lock.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shlex
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster.helpers import BIN, DEV, SLURM_VERSION, TEST_USER


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


# One lock file for both clusters: they share the store (a test that kills it, or compacts the
# index, is cluster-wide for the other cluster's tests too). Another session's tests (the other
# xdist worker, the other Slurm version's stage, another person's pytest here) take it too.
LOCK = Path("/tmp/slurm-yolo-cluster-tests.lock")
# And one per cluster: a test that changes only its own cluster (its host node pre-empted, its
# slurm.conf's epilog taken out) is ``cluster_wide(scope="cluster")``: alone on that cluster, while
# the other cluster's tests go on (they share only the store, which it leaves alone).
CLUSTER_LOCK = LOCK.with_name(f"slurm-yolo-cluster-tests-{SLURM_VERSION}.lock")
CLUSTER_WIDE = "cluster_wide"


def pytest_configure(config):
    config.addinivalue_line("markers", f"{CLUSTER_WIDE}: changes what every job on the dev cluster sees (a node "
                            "crash, the store down, pre-emption, a flood of jobs): runs with no other cluster test; "
                            "scope='cluster': only this Slurm version's cluster changes (not the store)")


@contextmanager
def locked(path: Path, mode: int):
    """``flock`` on ``path`` (``fcntl.LOCK_SH`` or ``LOCK_EX``) for the ``with`` block."""
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def cluster_share(request):
    """Shared hold on the cluster for the test (alone for ``cluster_wide``); autouse fixtures are
    set up in name order, so this one wraps node_stays_usable and the test's own fixtures."""
    marker = request.node.get_closest_marker(CLUSTER_WIDE)
    own_cluster_only = marker is not None and marker.kwargs.get("scope") == "cluster"
    # Always the shared lock first, then this cluster's: one order, no deadlock.
    with locked(LOCK, fcntl.LOCK_EX if marker and not own_cluster_only else fcntl.LOCK_SH), \
            locked(CLUSTER_LOCK, fcntl.LOCK_EX if marker else fcntl.LOCK_SH):
        yield


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
    with locked(LOCK.with_suffix(".dataset"), fcntl.LOCK_EX):  # the other worker may be making it
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
    with locked(LOCK.with_suffix(".user"), fcntl.LOCK_EX):  # the other worker may be adding it
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
