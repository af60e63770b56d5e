"""The requeue bound: submitit's checkpoint() stops asking for requeues after slurm.max_requeues."""

from __future__ import annotations

import pytest

from slurm_yolo import record as rec
from slurm_yolo.job.train import TrainJob


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
