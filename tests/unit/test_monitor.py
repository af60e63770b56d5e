"""The job monitor's checkpoint keeping and sync command, and the job's teardown on SIGTERM
(pure parts, real files, the stand-in workload in a child process; no servers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from slurm_yolo import record as rec
from slurm_yolo.store import Store
from slurm_yolo.archive import manifest, remote, s5cmd
from slurm_yolo.job.monitor import (checkpoint_complete, keep_good_checkpoint, local_etag, run_files, sync_plan,
                                    synced, upload_argv, upload_commands)
from slurm_yolo.runfolder import GOOD_CHECKPOINT
from slurm_yolo.job.train import IN_PLACE_WRITERS, ended_by_slurm, should_stop, truncate_results, writing_in_place

REPO = Path(__file__).resolve().parents[2]


def _ckpt(path, payload=b"x" * 1000):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


def test_truncated_checkpoint_is_detected(tmp_path):
    p = tmp_path / "last.pt"
    _ckpt(p)
    assert checkpoint_complete(p)
    p.write_bytes(p.read_bytes()[:-30])
    assert not checkpoint_complete(p)


def test_good_copy_only_of_complete_checkpoints(tmp_path):
    seen: dict = {}
    _ckpt(tmp_path / "last.pt", b"epoch1")
    assert keep_good_checkpoint(tmp_path, seen)
    good = (tmp_path / GOOD_CHECKPOINT).read_bytes()
    assert not keep_good_checkpoint(tmp_path, seen)  # unchanged: nothing to do
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:50])  # killed mid-write
    assert not keep_good_checkpoint(tmp_path, seen)
    assert (tmp_path / GOOD_CHECKPOINT).read_bytes() == good  # the good copy survives
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_truncate_results_drops_redone_epochs(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n")
    assert truncate_results(csv, 2) == 2
    assert csv.read_text() == "epoch,loss\n1,0.5\n2,0.4\n"
    assert truncate_results(tmp_path / "missing.csv", 2) == 0


def test_upload_argv_and_commands(tmp_path):
    argv = upload_argv(Store(endpoint_url="http://127.0.0.1:1"))
    assert argv[:3] == ["/usr/bin/nice", "-n", "19"] and argv[3].endswith("/s5cmd") and argv[-1] == "run"
    assert "--json" in argv and argv[argv.index("--numworkers") + 1] == "4"
    text = upload_commands(tmp_path, "s3://b/p/run", ["weights/best.pt", "a b;$x.png"])
    assert text.splitlines() == [
        f'cp --raw --part-size {s5cmd.PART_SIZE_MIB} "{tmp_path}/weights/best.pt" "s3://b/p/run/weights/best.pt"',
        f'cp --raw --part-size {s5cmd.PART_SIZE_MIB} "{tmp_path}/a b;$x.png" "s3://b/p/run/a b;$x.png"']


def test_run_files_leave_out_locks_temp_files_the_spare_checkpoint_and_links(tmp_path):
    (tmp_path / "weights").mkdir()
    for rel in ("results.csv", "weights/best.pt", "weights/last.good.pt", ".run.lock", ".placement.json",
                "weights/.last.pt.123.tmp", "sub/x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "link.pt").symlink_to(tmp_path / "weights" / "best.pt")
    (tmp_path / "linked").symlink_to(tmp_path / "sub", target_is_directory=True)
    assert sorted(run_files(tmp_path)) == ["results.csv", "sub/x.jpg", "weights/best.pt"]
    assert not synced("x/.run.lock") and synced("weights/last.pt") and not synced("weights/last.good.pt")


def _held(run: Path, rel: str) -> remote.RemoteObject:
    """The object an upload of the file leaves (the store's ETag computed as the store does)."""
    fd = os.open(run / rel, os.O_RDONLY)
    try:
        meta = manifest.hash_fd(fd, part_size=s5cmd.PART_SIZE)
    finally:
        os.close(fd)
    return remote.RemoteObject(meta["size"], meta["etag"])


def test_sync_plan_sends_what_the_store_does_not_hold_as_is(tmp_path):
    (tmp_path / "weights").mkdir()
    for rel, data in {"weights/best.pt": os.urandom(3000), "weights/last.pt": os.urandom(3000),
                      "results.csv": b"epoch\n1\n", "results.png": os.urandom(500)}.items():
        (tmp_path / rel).write_bytes(data)
    held = {rel: _held(tmp_path, rel) for rel in ("weights/best.pt", "weights/last.pt", "results.csv", "results.png")}
    known: dict = {}
    files = run_files(tmp_path)
    assert sync_plan(tmp_path, files, held, known) == {}  # all in the store already
    assert set(known) == set(held)  # each hashed once ...
    (tmp_path / "weights" / "last.pt").write_bytes(os.urandom(3000))  # same size, other bytes
    with open(tmp_path / "results.csv", "ab") as f:
        f.write(b"2\n")  # grown
    (tmp_path / "val_batch0.jpg").write_bytes(b"new")
    held["results.png"] = remote.RemoteObject(500, "0" * 32)  # replaced behind our back
    plan = sync_plan(tmp_path, run_files(tmp_path), held, known)
    assert plan == {"weights/last.pt": 3000, "results.csv": 10, "val_batch0.jpg": 3, "results.png": 500}


def test_local_etag_is_read_again_only_when_the_file_changed(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"a" * 100)
    known: dict = {}
    first = local_etag(path, os.lstat(path), known, "best.pt")
    known["best.pt"] = (known["best.pt"][0], "cached")
    assert local_etag(path, os.lstat(path), known, "best.pt") == "cached"  # same identity: not read
    path.write_bytes(b"b" * 100)
    assert local_etag(path, os.lstat(path), known, "best.pt") not in (first, "cached")


# ---------------------------------------------------------------- the job's teardown on SIGTERM

_JOB = ("import sys, json; from slurm_yolo.job.train import TrainJob; from slurm_yolo.job.workloads import StandIn; "
        "TrainJob(StandIn(**json.loads(sys.argv[2])))(sys.argv[1])")


def _start_job(run: Path, code: str = _JOB, executor: str | None = None, **standin) -> subprocess.Popen:
    rec.write_record(run, {"run_id": "r1", "config": {"slurm": {}, "train": {"epochs": 10**6}, "archive": {}},
                           "attempts": [], "slurm": {}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    if executor:
        env["SUBMITIT_EXECUTOR"] = executor
    return subprocess.Popen([sys.executable, "-c", code, str(run), json.dumps({"epochs": 10**6, **standin})],
                            cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_rows(run: Path, proc: subprocess.Popen, n: int) -> None:
    for _ in range(600):
        if len(rec.read_results_rows(run / "results.csv")) >= n:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"no {n} epochs in 30 s")


def _terminate(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)  # a job that trains on would train a million epochs: the wait fails
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("executor", [None, "slurm"])  # under Slurm the process skips the interpreter's shutdown
def test_sigterm_ends_the_attempt_instead_of_training_on(tmp_path, executor):
    proc = _start_job(tmp_path, executor=executor, epoch_s=0.05)
    _wait_rows(tmp_path, proc, 2)
    assert _terminate(proc) == 128 + signal.SIGTERM
    record = rec.read_record(tmp_path)
    attempt = record["attempts"][-1]
    assert [s["signal"] for s in attempt["signals"]] == ["SIGTERM"]  # recorded once, for the epilog's verdict
    # Not a failure of its own: the epilog decides the end state (cancel, time limit, requeue).
    assert attempt["status"] == record["status"] == "RUNNING" and "error" not in attempt
    assert attempt["end"] and attempt["epoch"] == len(rec.read_results_rows(tmp_path / "results.csv"))
    assert checkpoint_complete(tmp_path / "weights" / "last.pt")


# A workload whose epochs are nothing but an in-place write of last.pt in 1 MB pieces: Python
# runs signal handlers between the pieces, so an unguarded stop would truncate the file.
_WRITER = """
import sys
import time
from pathlib import Path
from slurm_yolo.job.train import TrainJob

def write_bytes(path, mb):
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(b"x" * (1 << 20))

class Writer:
    def environment(self):
        return {}

    def train(self, run_dir, config, attempt):
        (run_dir / "weights").mkdir(exist_ok=True)
        while True:  # an epoch: mark it, write its checkpoint, then "compute" (where a stop may land)
            with open(run_dir / "epochs", "a") as f:
                f.write("x")
            write_bytes(run_dir / "weights" / "last.pt", 128)
            time.sleep(0.3)

TrainJob(Writer())(sys.argv[1])
"""


def test_sigterm_during_a_checkpoint_write_waits_for_it(tmp_path):
    proc = _start_job(tmp_path, code=_WRITER)
    last = tmp_path / "weights" / "last.pt"
    for _ in range(1200):  # until a checkpoint write is half-way
        if last.exists() and 0 < last.stat().st_size < 128 << 20:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    else:
        pytest.fail("never saw a checkpoint write in flight")
    assert _terminate(proc) == 128 + signal.SIGTERM
    assert last.stat().st_size == 128 << 20  # whole, not cut short


def test_writing_in_place_sees_the_writers_on_the_stack():
    def write_bytes():  # named as pathlib's
        return inner()

    def inner():
        return writing_in_place(sys._getframe())

    assert write_bytes() is True
    assert inner() is False
    assert {"save_metrics", "write_bytes", "strip_optimizer", "_write_checkpoint", "_append_row"} <= IN_PLACE_WRITERS


@pytest.mark.parametrize(("fail_after", "code"), [(None, 0), (1, 1)])
def test_under_slurm_the_job_exits_with_its_own_code_without_the_interpreter_shutdown(tmp_path, fail_after, code):
    """The process ends in an atexit handler (os._exit) once the job returned or raised: the
    exit code is still 0 for a completed job and 1 for one that failed."""
    rec.write_record(tmp_path, {"run_id": "r1", "config": {"slurm": {}, "train": {"epochs": 2}, "archive": {}},
                                "attempts": [], "slurm": {}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    out = subprocess.run([sys.executable, "-c", _JOB + "; print('after the job')", str(tmp_path),
                          json.dumps({"epochs": 2, "epoch_s": 0, "fail_after": fail_after})],
                         cwd=REPO, env={**env, "PYTHONPATH": str(REPO), "SUBMITIT_EXECUTOR": "slurm"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stderr
    assert rec.read_record(tmp_path)["status"] == ("COMPLETED" if code == 0 else "FAILED")
    assert ("after the job" in out.stdout) == (code == 0)  # flushed before the process ended
    assert ("stand-in failure" in out.stderr) == (code == 1)


def test_sigterm_stops_the_job_only_when_slurm_is_ending_it():
    # Captured shapes of `scontrol -o show job` (22.05): a cancel, a time-out, a requeue, a pre-emption's grace.
    line = "JobId=7 JobName=x UserId=root(0) JobState={} Reason=None Dependency=(null) ExitCode=0:0"
    for state, stop in (("CANCELLED", True), ("TIMEOUT", True), ("COMPLETING", True), ("PENDING", True),
                        ("REQUEUED", True), ("RUNNING", False), ("SUSPENDED", False)):
        assert ended_by_slurm(line.format(state)) is stop, state
    assert not ended_by_slurm("slurm_load_jobs error: Invalid job id specified")
    asked = []

    def ask(argv):
        asked.append(argv)
        return line.format("RUNNING")

    assert should_stop({"SLURM_JOB_ID": "7"}, ask) is False and asked == [["scontrol", "-o", "show", "job", "7"]]
    assert should_stop({"SLURM_JOB_ID": "7"}, lambda argv: line.format("CANCELLED")) is True
    assert should_stop({}, ask) is True  # no Slurm: nobody else ends the process

    def broken(argv):
        raise OSError("no scontrol")

    assert should_stop({"SLURM_JOB_ID": "7"}, broken) is False  # never a lost requeue
