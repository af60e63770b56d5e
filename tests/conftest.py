"""Shared fixtures: real S3 servers on loopback (SeaweedFS and moto), weird paths.

Every test that takes ``store`` (or ``bucket``) runs once per server: SeaweedFS, a real S3
server whose conditional writes are atomic and whose keys are checked, and moto, a mock whose
conditional writes race. Both are started by ``scripts/store.sh``, as for the dev cluster.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from slurm_yolo.store import Store

STORE_SH = Path(__file__).resolve().parents[1] / "scripts" / "store.sh"


@dataclass(frozen=True)
class S3Server:
    """One loopback S3 server and what a test may rely on about it.

    Attributes:
        kind: ``seaweedfs`` or ``moto``.
        endpoint: ``http://127.0.0.1:PORT``.
        keys: its access key pair, as :attr:`Store.keys`.
        atomic_conditional_writes: ``If-Match``/``If-None-Match`` puts are one atomic step.
        lifecycle_transitions: storage-class transitions in lifecycle rules are accepted.
        checks_keys: a wrong key is refused.
    """

    kind: str
    endpoint: str
    keys: tuple[tuple[str, str], ...]
    atomic_conditional_writes: bool
    lifecycle_transitions: bool
    checks_keys: bool

    def store(self) -> Store:
        """Store settings for this server, declaring what its conditional writes are."""
        return Store(endpoint_url=self.endpoint, keys=self.keys,
                     atomic_conditional_writes=self.atomic_conditional_writes)


# What each server is known to do (checked by tests/catalog/test_servers.py).
PROPERTIES = {"seaweedfs": {"atomic_conditional_writes": True, "lifecycle_transitions": False, "checks_keys": True},
              "moto": {"atomic_conditional_writes": False, "lifecycle_transitions": True, "checks_keys": False}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(kind: str, tmp_path_factory):
    folder = tmp_path_factory.mktemp(kind)
    out = None
    for _ in range(3):  # the free port can be taken before the server binds it: then try another
        out = subprocess.run(["bash", str(STORE_SH), "start", kind, str(folder), str(_free_port())],
                             capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "SLURM_YOLO_VENV": str(Path(sys.executable).parent.parent)})
        if out.returncode == 0:
            break
        subprocess.run(["bash", str(STORE_SH), "stop", str(folder)], capture_output=True, timeout=60)
    if out.returncode != 0:
        pytest.fail(f"scripts/store.sh could not start {kind}: {out.stderr[-2000:]}")
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    server = S3Server(kind=kind, endpoint=env["ENDPOINT"],
                      keys=(("AWS_ACCESS_KEY_ID", env["ACCESS_KEY"]), ("AWS_SECRET_ACCESS_KEY", env["SECRET_KEY"])),
                      **PROPERTIES[kind])
    return server, folder


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto's S3 server on a free loopback port, for the whole session."""
    server, folder = _start("moto", tmp_path_factory)
    yield server
    subprocess.run(["bash", str(STORE_SH), "stop", str(folder)], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory):
    """SeaweedFS (``weed mini``, S3 only on loopback, keys checked) on free ports, for the whole session."""
    server, folder = _start("seaweedfs", tmp_path_factory)
    yield server
    subprocess.run(["bash", str(STORE_SH), "stop", str(folder)], capture_output=True, timeout=60)


@pytest.fixture(scope="session", params=["seaweedfs", "moto"])
def s3_server(request) -> S3Server:
    """Each S3 server in turn: the tests that use it run once per server."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="session")
def s3_endpoint(moto_server) -> str:
    """An S3 endpoint that accepts any key (moto), for tests about something other than the store."""
    return moto_server.endpoint


@pytest.fixture
def store(s3_server) -> Store:
    """Store settings for the server under test."""
    return s3_server.store()


@pytest.fixture
def bucket(store) -> str:
    """A fresh, empty bucket per test (the servers keep state for the session; names never repeat)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    store.boto3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def weird_path(tmp_path) -> Path:
    """A folder whose name has spaces, quotes, ';', '$' and unicode (like submitit's weird_tmp_path)."""
    p = tmp_path / "we ird 'q' ;$x ünï"
    p.mkdir()
    return p
