"""run.json round trip, atomic writes, concurrent locked updates, results.csv parsing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from slurm_yolo import record as rec

# A real Ultralytics 8.4 results.csv (unpadded, with a time column): tests/data/ultralytics/README.md.
RESULTS = (Path(__file__).resolve().parents[1] / "data" / "ultralytics" / "results_40ep.csv").read_text()


def test_round_trip(tmp_path):
    record = {"schema": 1, "run_id": "r1", "attempts": [{"attempt": 1, "signals": []}], "metrics": None,
              "unicode": "ünï ;$'\""}
    rec.write_record(tmp_path, record)
    assert rec.read_record(tmp_path) == record
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_update_is_atomic_and_locked(tmp_path):
    rec.write_record(tmp_path, {"n": 0, "items": []})

    def bump(i):
        for _ in range(25):
            rec.update_record(tmp_path, lambda r: (r.__setitem__("n", r["n"] + 1), r["items"].append(i)))

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r = rec.read_record(tmp_path)
    assert r["n"] == 100 and len(r["items"]) == 100


def test_failed_write_keeps_previous(tmp_path):
    import pytest

    rec.write_record(tmp_path, {"ok": True})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        rec.write_record(tmp_path, circular)
    assert rec.read_record(tmp_path) == {"ok": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_metrics_from_results_csv(tmp_path):
    # The first 38 epochs, as during training: the best (epoch 37) is not the last.
    (tmp_path / "results.csv").write_text("".join(RESULTS.splitlines(keepends=True)[:39]))
    m = rec.read_metrics(tmp_path / "results.csv")
    assert m == {"epoch": 37, "best_epoch": 37, "map50": 0.40436, "map50_95": 0.18035, "precision": 0.74064,
                 "recall": 0.38693, "epochs_done": 38, "fitness_metric": "metrics/mAP50-95(B)", "fitness": 0.18035}
    assert rec.read_metrics(tmp_path / "missing.csv") is None


def test_placement_keeps_exactly_what_places_the_run(tmp_path):
    from slurm_yolo.runfolder import PLACEMENT

    record = {"run_id": "r1", "task": "detect", "project": "p", "model_name": "m",
              "archive_url": "s3://b/runs/u/detect/p/m/r1/", "config": {"train": {}}, "attempts": []}
    rec.write_placement(tmp_path, record)
    assert json.loads((tmp_path / PLACEMENT).read_text()) == {k: record[k] for k in rec.PLACEMENT_KEYS}
    assert set(rec.PLACEMENT_KEYS) == {"run_id", "task", "project", "model_name", "archive_url"}
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left
