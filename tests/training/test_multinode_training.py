"""Multi-node training without Slurm: two "nodes" (two srun tasks' worth of TrainJob) on loopback.

Each task runs the real job code, ``TrainJob()(run_dir)``, in its own process with the
``SLURM_*`` environment srun would give it (``SLURM_PROCID``/``SLURM_NODEID`` 0 and 1,
nodelist ``127.0.0.1``), so each starts its own ``torchrun --nnodes=2`` and the two meet in
a c10d rendezvous on 127.0.0.1: CPU, gloo, world size 2, one Ultralytics model.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_yolo import record as rec
from slurm_yolo import runfolder
from slurm_yolo.config import resolve_config
from slurm_yolo.job.distributed import RDZV_PORT_BASE, RDZV_PORT_SPAN
from slurm_yolo.job.monitor import checkpoint_complete
from slurm_yolo.launcher.submit import prepare_run

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 2

pytestmark = pytest.mark.training


def _free_job_id() -> str:
    """A fake job ID whose rendezvous port (derived from it) is free on loopback now."""
    for _ in range(50):
        job_id = random.randrange(10**5, 10**6)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", RDZV_PORT_BASE + job_id % RDZV_PORT_SPAN))
                return str(job_id)
            except OSError:
                continue
    pytest.skip("no free rendezvous port in 20000-29999")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mn-data")
    subprocess.run([sys.executable, "-m", "slurm_yolo.synthetic", str(root), "--train", "32", "--val", "8",
                    "--size", "64"], check=True, cwd=REPO, capture_output=True, timeout=120)
    return root / "data.yaml"


def _run_dir(tmp_path: Path, dataset: Path, epochs: int = EPOCHS) -> Path:
    config = resolve_config({
        "run": {"task": "detect", "project": "mn-test", "model_name": "yolov8n"},
        "train": {"model": "yolov8n.yaml", "data": str(dataset), "epochs": epochs, "imgsz": 64, "batch": 8,
                  "workers": 0, "plots": False, "amp": False},
        "slurm": {"nodes": 2, "gpus": 0, "cpus_per_task": 1},
        "archive": {"url": "s3://slurm-yolo/runs/{user}/test", "sync_every": None},
        "runs_root": str(tmp_path / "runs"),
    })
    return prepare_run(config, "mn_loopback")


def _task_env(node: int, job_id: str, restarts: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "RANK", "LOCAL_RANK",
                                                                       "WORLD_SIZE", "MASTER_"))}
    env.update(SLURM_JOB_ID=job_id, SLURM_NNODES="2", SLURM_NODEID=str(node), SLURM_PROCID=str(node),
               SLURM_JOB_NODELIST="127.0.0.1", SLURM_CPUS_PER_TASK="1", SLURM_RESTART_COUNT=str(restarts),
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    return env


def _start_task(node: int, run_dir: Path, job_id: str, log: Path, restarts: int = 0) -> subprocess.Popen:
    code = "import sys; from slurm_yolo.job.train import TrainJob; print(TrainJob()(sys.argv[1]))"
    return subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", code, str(run_dir)], cwd=REPO,
                            env=_task_env(node, job_id, restarts), stdout=log.open("a"), stderr=subprocess.STDOUT)


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant: torchrun starts its workers in sessions of their own,
    so signalling the task's process group alone would miss them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def _signal_tree(pid: int, sig: int) -> None:
    for p in _tree(pid):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant, as Slurm kills a step."""
    _signal_tree(pid, signal.SIGKILL)


def _wait_tasks(tasks: list[subprocess.Popen], logs: list[Path], timeout: float = 240) -> None:
    try:
        codes = [t.wait(timeout=timeout) for t in tasks]
    finally:
        for t in tasks:
            if t.poll() is None:
                _kill_tree(t.pid)
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], f"task logs:\n{text[0][-3000:]}\n----\n{text[1][-3000:]}"


def test_two_nodes_train_one_model_on_loopback(tmp_path, dataset):
    run_dir = _run_dir(tmp_path, dataset)
    job_id = _free_job_id()
    logs = [tmp_path / f"task{n}.log" for n in (0, 1)]
    started = time.monotonic()
    _wait_tasks([_start_task(n, run_dir, job_id, logs[n]) for n in (0, 1)], logs)
    elapsed = time.monotonic() - started
    text = [log.read_text() for log in logs]
    for n in (0, 1):
        assert f"node {n}/2" in text[n] and "world size 2, gloo, rendezvous 127.0.0.1:" in text[n]

    record = rec.read_record(run_dir)
    assert record["run_id"] == "mn_loopback" and record["config"]["slurm"]["nodes"] == 2  # run.json intact
    assert record["status"] == "COMPLETED"
    assert len(record["attempts"]) == 1, "only task 0 keeps run.json: one attempt, not one per node"
    attempt = record["attempts"][0]
    assert attempt["status"] == "COMPLETED" and attempt["epoch"] == EPOCHS
    assert attempt["launch"]["world_size"] == 2 and attempt["launch"]["backend"] == "gloo"
    assert attempt["world"]["world_size"] == 2 and len(attempt["world"]["hosts"]) == 2
    assert record["metrics"]["epochs_done"] == EPOCHS

    rows = rec.read_results_rows(run_dir / runfolder.RESULTS_CSV)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), "one writer: each epoch once"
    train_log = (run_dir / runfolder.TRAIN_LOG).read_text()
    assert "world_size=2 backend=gloo" in train_log and f"{EPOCHS}/{EPOCHS}" in train_log
    # One run folder, holding one set of outputs (no rank wrote a second one next to it).
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]
    names = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    assert names == {runfolder.RUN_JSON, runfolder.PLACEMENT, runfolder.RUN_LOCK, runfolder.TRAIN_LOG,
                     runfolder.RESULTS_CSV, runfolder.ARGS_YAML, f"{runfolder.WEIGHTS}/{runfolder.LAST_PT}",
                     f"{runfolder.WEIGHTS}/{runfolder.BEST_PT}"}, names
    # Ultralytics' end-of-training strip ran (rank 0): resume sees a finished run.
    from slurm_yolo.job.train import find_resume_checkpoint

    assert find_resume_checkpoint(run_dir)[1] is None
    print(f"two loopback nodes, world size 2, {EPOCHS} epochs: {elapsed:.1f} s", file=sys.stderr)


def test_requeued_multinode_run_resumes_from_its_checkpoint(tmp_path, dataset):
    """Both "nodes" die mid-training (SIGKILL, as a node failure or Slurm's kill after a
    requeue); attempt 2 (SLURM_RESTART_COUNT=1) resumes on both from weights/last.pt."""
    epochs = 4
    run_dir = _run_dir(tmp_path, dataset, epochs)
    job_id = _free_job_id()
    logs = [tmp_path / f"task{n}.log" for n in (0, 1)]
    tasks = [_start_task(n, run_dir, job_id, logs[n]) for n in (0, 1)]
    last = run_dir / runfolder.WEIGHTS / runfolder.LAST_PT
    try:
        deadline = time.monotonic() + 180
        # Kill once an epoch is done and last.pt is whole. Not on the monitor's last.good.pt: its
        # copier runs at nice 19, and on a loaded CI machine all epochs ended before it ran once.
        # The tasks are frozen (SIGSTOP) before the check, so no write can start between check and kill.
        while True:
            assert time.monotonic() < deadline and all(t.poll() is None for t in tasks), logs[0].read_text()[-3000:]
            if rec.read_results_rows(run_dir / runfolder.RESULTS_CSV) and last.is_file():
                for t in tasks:
                    _signal_tree(t.pid, signal.SIGSTOP)
                if checkpoint_complete(last):
                    break
                for t in tasks:
                    _signal_tree(t.pid, signal.SIGCONT)
            time.sleep(0.2)
    finally:
        for t in tasks:
            _kill_tree(t.pid)
            t.wait()
    done = len(rec.read_results_rows(run_dir / runfolder.RESULTS_CSV))
    assert done < epochs, "killed too late to test resuming"

    _wait_tasks([_start_task(n, run_dir, job_id, logs[n], restarts=1) for n in (0, 1)], logs)
    record = rec.read_record(run_dir)
    assert [a["attempt"] for a in record["attempts"]] == [1, 2] and record["status"] == "COMPLETED"
    assert record["attempts"][1]["world"]["world_size"] == 2
    assert [r["epoch"] for r in rec.read_results_rows(run_dir / runfolder.RESULTS_CSV)] == list(range(1, epochs + 1))
    assert "[slurm-yolo] resuming from" in (run_dir / runfolder.TRAIN_LOG).read_text()
