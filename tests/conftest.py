"""Shared fixtures: a real S3 server on loopback (moto's server), weird paths."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from slurm_yolo.archive.store import Store

ACCESS = (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_binary() -> str:
    candidate = Path(sys.executable).parent / "moto_server"
    return str(candidate) if candidate.exists() else shutil.which("moto_server") or "moto_server"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real moto S3 server process on a free loopback port, for the whole session."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    for _ in range(3):  # the free port can be taken before moto binds it: then moto exits, try another
        port = _free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen([_moto_binary(), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None:
            break
    if proc.poll() is not None or time.monotonic() >= deadline:
        proc.kill()
        pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def store(s3_endpoint) -> Store:
    """Store settings for the loopback server."""
    return Store(endpoint_url=s3_endpoint, keys=ACCESS)


@pytest.fixture
def bucket(store) -> str:
    """A fresh, empty bucket per test (moto keeps state for the session; names never repeat)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    store.boto3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def weird_path(tmp_path) -> Path:
    """A folder whose name has spaces, quotes, ';', '$' and unicode (like submitit's weird_tmp_path)."""
    p = tmp_path / "we ird 'q' ;$x ünï"
    p.mkdir()
    return p
