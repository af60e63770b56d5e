"""run.json round trip, atomic writes, concurrent locked updates, results.csv parsing."""

from __future__ import annotations

import threading

from slurm_yolo import record as rec

RESULTS = """\
                  epoch,         train/box_loss,   metrics/precision(B),      metrics/recall(B),       metrics/mAP50(B),    metrics/mAP50-95(B)
                      1,                 3.1000,                 0.1000,                 0.2000,                 0.3000,                 0.1500
                      2,                 2.9000,                 0.4000,                 0.5000,                 0.6000,                 0.4500
                      3,                 2.8000,                 0.3000,                 0.4000,                 0.5000,                 0.3500
"""


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
    (tmp_path / "results.csv").write_text(RESULTS)
    m = rec.read_metrics(tmp_path / "results.csv")
    assert m == {"epoch": 2, "map50": 0.6, "map50_95": 0.45, "precision": 0.4, "recall": 0.5, "epochs_done": 3}
    assert rec.read_metrics(tmp_path / "missing.csv") is None
