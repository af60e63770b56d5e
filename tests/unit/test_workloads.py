"""The stand-in workload through the real job wrapper, in process: the run folder it leaves is
one the epilog and the catalog read like a training's (header, metrics, checkpoint zip)."""

from __future__ import annotations

import zipfile

import pytest

from slurm_yolo import record as rec
from slurm_yolo.job.monitor import checkpoint_complete
from slurm_yolo.job.train import TrainJob
from slurm_yolo.job.workloads import StandIn


def _run_folder(tmp_path, max_requeues=1):
    rec.write_record(tmp_path, {"run_id": "r1", "config": {"slurm": {"max_requeues": max_requeues},
                                                           "train": {"epochs": 3}, "archive": {}},
                                "attempts": [], "slurm": {}})
    return tmp_path


def test_completes_with_a_realistic_run_folder(tmp_path, monkeypatch, job_process):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    run = _run_folder(tmp_path)
    out = TrainJob(StandIn(epochs=3, epoch_s=0, images=2))(str(run))
    assert out["status"] == "COMPLETED" and out["metrics"]["epochs_done"] == 3
    record = rec.read_record(run)
    assert record["status"] == "COMPLETED" and record["environment"]["workload"] == "stand-in"
    assert record["metrics"]["map50_95"] == pytest.approx(0.6)
    assert [r["epoch"] for r in rec.read_results_rows(run / "results.csv")] == [1, 2, 3]
    assert checkpoint_complete(run / "weights" / "last.pt")
    assert (run / "weights" / "best.pt").read_bytes() == (run / "weights" / "last.pt").read_bytes()
    assert zipfile.ZipFile(run / "weights" / "last.pt").read("archive/data.pkl").startswith(b"epoch=3\n")
    assert {"args.yaml", "val_batch0.jpg", "val_batch1.jpg", "train.log"} <= {p.name for p in run.iterdir()}


def test_fails_then_a_requeued_attempt_continues_after_the_rows_left(tmp_path, monkeypatch, job_process):
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    run = _run_folder(tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(RuntimeError, match="stand-in failure after epoch 1"):
        TrainJob(StandIn(epochs=3, epoch_s=0, fail_after=1))(str(run))
    first = rec.read_record(run)["attempts"][-1]
    assert first["status"] == "FAILED" and first["epoch"] == 1 and "stand-in failure" in first["error"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    TrainJob(StandIn(epochs=3, epoch_s=60, requeued_epoch_s=0))(str(run))  # 60 s: attempt 1's pace only
    record = rec.read_record(run)
    assert [(a["attempt"], a["status"], a["epoch"]) for a in record["attempts"]] == [(1, "FAILED", 1),
                                                                                      (2, "COMPLETED", 3)]
    assert [r["epoch"] for r in rec.read_results_rows(run / "results.csv")] == [1, 2, 3]
    assert "continuing after epoch 1" in (run / "train.log").read_text()
