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
    return Progress(slurm_state, status, end_state, attempt=1, epoch=0, epochs=3)


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


CLASSIFY_HEADER = "epoch,time,train/loss,metrics/accuracy_top1,metrics/accuracy_top5,val/loss,lr/pg0,lr/pg1,lr/pg2"
DETECT_HEADER = ("epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),metrics/recall(B),"
                 "metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/dfl_loss,lr/pg0,lr/pg1,lr/pg2")


@pytest.mark.parametrize("fitness_metric, header, row, shown", [
    ("metrics/accuracy_top1", CLASSIFY_HEADER, "1,2.0,1.1,0.625,1,1.0,0.1,0.1,0.1", "top1 0.6250"),
    ("metrics/mAP50-95(B)", DETECT_HEADER, "1,2.0,1,1,1,0.5,0.4,0.3,0.2,1,1,1,0.1,0.1,0.1", "map50_95 0.2000"),
    (None, DETECT_HEADER, "1,2.0,1,1,1,0.5,0.4,0.3,0.2,1,1,1,0.1,0.1,0.1", "map50_95 0.2000"),  # an older record
])
def test_progress_shows_the_tasks_own_metric(tmp_path, fitness_metric, header, row, shown):
    rec.write_record(tmp_path, {"run_id": "r", "status": "RUNNING", "fitness_metric": fitness_metric,
                                "attempts": [{}], "config": {"train": {"epochs": 3}}})
    (tmp_path / "results.csv").write_text(f"{header}\n{row}\n")
    from slurm_yolo.launcher.watch import observe

    line = observe(tmp_path, "not-a-pid", "local").line()
    assert line == f"RUNNING  epoch 1/3  {shown}"
