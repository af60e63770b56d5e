"""Helpers shared by the benchmarks: free loopback ports, waiting for a server to listen, and
the loopback S3 servers (SeaweedFS, moto) that the benchmarks compare side by side."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurm_yolo.store import Store  # noqa: E402


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    """Wait (30 s at most) until ``proc`` listens on ``port``; raise if it exits first."""
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within 30 s")


STORE_SH = Path(__file__).resolve().parents[1] / "scripts" / "store.sh"
STORES = ("seaweedfs", "moto")


@dataclass(frozen=True)
class S3Server:
    """A loopback S3 server started by ``scripts/store.sh`` (as for the tests and the dev cluster)."""

    kind: str
    endpoint: str
    keys: tuple[tuple[str, str], ...]
    pid: int

    def store(self, **kw) -> Store:
        """Store settings for this server; SeaweedFS commits conditional writes atomically, moto does not."""
        return Store(endpoint_url=self.endpoint, keys=self.keys, atomic_conditional_writes=self.kind == "seaweedfs",
                     **kw)


@contextlib.contextmanager
def s3_server(kind: str) -> Iterator[S3Server]:
    """A fresh ``kind`` server (seaweedfs or moto) on a free loopback port, its state in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as folder:
        out = subprocess.run(["bash", str(STORE_SH), "start", kind, folder, str(free_port())], capture_output=True,
                             text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "SLURM_YOLO_VENV": str(Path(sys.executable).parent.parent)})
        try:
            if out.returncode != 0:
                raise RuntimeError(f"scripts/store.sh could not start {kind}: {out.stderr[-2000:]}")
            env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
            yield S3Server(kind, env["ENDPOINT"], (("AWS_ACCESS_KEY_ID", env["ACCESS_KEY"]),
                                                   ("AWS_SECRET_ACCESS_KEY", env["SECRET_KEY"])),
                           int(Path(folder, "server.pid").read_text()))
        finally:
            subprocess.run(["bash", str(STORE_SH), "stop", folder], capture_output=True, timeout=60)


def poll(what: str, fn: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Call ``fn`` every ``every`` s until it returns something truthy; raise after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def slurm_setting(env: dict[str, str], name: str) -> str:
    """One setting of ``scontrol show config`` (``?`` when absent), for a benchmark's header."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, env=env, check=True).stdout
    m = re.search(rf"^{name}\s*=\s*(.+)$", out, re.M)
    return m.group(1).strip() if m else "?"
