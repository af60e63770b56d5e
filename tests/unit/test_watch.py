"""submit --wait: reading squeue, deciding when a run is over, and which state it ended in."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from slurm_yolo import record as rec
from slurm_yolo.launcher.watch import Progress, final_state, is_over, parse_squeue_state, wait_for

SLURM_DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"  # real captures, see its README


def progress(slurm_state=None, status=None, end_state=None) -> Progress:
    return Progress(slurm_state, status, end_state, attempt=1, epoch=0, epochs=3, map50_95=None)


@pytest.mark.parametrize("name, state", [
    ("squeue_watch_running.txt", "RUNNING"), ("squeue_watch_completing.txt", "COMPLETING"),
    ("squeue_watch_requeued.txt", "PENDING"),
    ("squeue_watch_timeout.txt", "TIMEOUT"), ("squeue_watch_array_all.txt", "COMPLETED"),
    ("squeue_watch_unknown.stdout", None),
])
def test_parse_squeue_state(name, state):
    assert parse_squeue_state((SLURM_DATA / name).read_text()) == state
    assert parse_squeue_state("\n  \n") is None


@pytest.mark.parametrize("p, executor, over, final", [
    (progress("RUNNING", "RUNNING"), "slurm", False, None),
    (progress("PENDING", "RUNNING"), "slurm", False, None),       # requeued: not over
    (progress("COMPLETING", "COMPLETED"), "slurm", False, None),  # epilog still running
    (progress("COMPLETED", "COMPLETED", "COMPLETED"), "slurm", True, "COMPLETED"),
    (progress("CANCELLED", "RUNNING", "TIMEOUT"), "slurm", True, "TIMEOUT"),  # the epilog's word wins
    (progress("OUT_OF_MEMORY", "RUNNING"), "slurm", True, "OUT_OF_MEMORY"),   # no epilog: Slurm's word
    (progress(None, "RUNNING"), "slurm", True, "UNKNOWN"),        # squeue forgot it, nobody said
    (progress("RUNNING", "RUNNING"), "local", False, None),
    (progress("GONE", "COMPLETED"), "local", True, "COMPLETED"),
    (progress("GONE", "RUNNING"), "local", True, "FAILED"),       # killed without a word
])
def test_is_over_and_final_state(p, executor, over, final):
    assert is_over(p, executor) is over
    if over:
        assert final_state(p) == final


def test_wait_for_a_local_job_killed_without_a_word_ends(tmp_path):
    # A SIGKILLed (or OOM-killed) local job never writes its end: --wait must still return.
    rec.write_record(tmp_path, {"run_id": "r", "status": "RUNNING", "config": {"train": {"epochs": 3}}})
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.kill()
        got: list[str] = []
        waiter = threading.Thread(target=lambda: got.append(
            wait_for(tmp_path, str(child.pid), executor="local", poll_s=0.05)), daemon=True)
        waiter.start()
        waiter.join(30)  # a regression hangs forever: fail instead of blocking the suite
        assert got == ["FAILED"]
    finally:
        child.kill()
        try:
            child.wait(timeout=5)
        except (ChildProcessError, subprocess.TimeoutExpired):
            pass
