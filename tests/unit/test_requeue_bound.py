"""The requeue bound: one decision (job/steps.py) for training at all and for asking for a requeue."""

from __future__ import annotations


import pytest

from slurm_yolo import record as rec
from slurm_yolo.config import SCHEMA
from slurm_yolo.job.steps import attempt_limit, may_requeue, may_train
from slurm_yolo.job.train import TrainJob
from slurm_yolo.job.workloads import StandIn


@pytest.mark.parametrize("max_requeues, restarts, requeue", [
    (1, 0, True),    # attempt 1 of 2: requeue
    (1, 1, False),   # attempt 2 of 2: the bound is reached, let the job end (TIMEOUT)
    (0, 0, False),   # requeues switched off
    (3, 2, True),
    (3, 3, False),
])
def test_checkpoint_requeues_until_the_bound(tmp_path, monkeypatch, max_requeues, restarts, requeue):
    rec.write_record(tmp_path, {"run_id": "r", "config": {"slurm": {"max_requeues": max_requeues}}})
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
    job = TrainJob()
    delayed = job.checkpoint(str(tmp_path))
    assert (delayed is not None) is requeue
    assert job.requeuing is requeue
    if requeue:  # the requeued attempt runs the same job on the same run folder
        assert isinstance(delayed.function, TrainJob) and delayed.args == (str(tmp_path),)


@pytest.mark.parametrize("max_requeues, attempt, trains, requeues", [
    (0, 1, True, False),
    (1, 1, True, True),
    (1, 2, True, False),
    (1, 3, False, False),   # a requeue Slurm made anyway (scontrol requeue) past the bound
    (3, 4, True, False),
])
def test_one_bound_for_training_and_requeueing(max_requeues, attempt, trains, requeues):
    config = {"slurm": {"max_requeues": max_requeues}}
    assert attempt_limit(config) == max_requeues + 1
    assert may_train(config, attempt) is trains
    assert may_requeue(config, attempt) is requeues


def test_a_config_without_the_key_gets_the_schema_default():
    assert attempt_limit({}) == attempt_limit({"slurm": {}}) == SCHEMA["slurm"]["max_requeues"][1] + 1


def test_the_requeued_attempt_keeps_its_workload(tmp_path, monkeypatch):
    rec.write_record(tmp_path, {"run_id": "r", "config": {"slurm": {"max_requeues": 2}}})
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    workload = StandIn(epochs=5, epoch_s=0.1)
    delayed = TrainJob(workload).checkpoint(str(tmp_path))
    assert delayed.function.workload == workload


def test_an_attempt_past_the_bound_trains_nothing_and_is_recorded_failed(tmp_path, monkeypatch, job_process):
    """The wrapper refuses before the workload runs, and says why in run.json."""
    rec.write_record(tmp_path, {"run_id": "r", "config": {"slurm": {"max_requeues": 0}, "train": {},
                                                          "archive": {}},
                                "attempts": [], "slurm": {}})
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(RuntimeError, match="exceeds slurm.max_requeues"):
        TrainJob(StandIn(epochs=1, epoch_s=0))(str(tmp_path))
    record = rec.read_record(tmp_path)
    assert record["status"] == "FAILED" and "exceeds" in record["attempts"][-1]["error"]
    assert not (tmp_path / "results.csv").exists()
    assert (tmp_path / "train.log").read_text().startswith("[slurm-yolo] run r attempt 2 on ")
