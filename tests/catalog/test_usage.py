"""``store usage``: the per-group table (pure) and its bytes against a listing of a real store."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from slurm_yolo.catalog.usage import lifecycle_transitions, monthly_cost, storage_class, totals, usage_table


def _rec(run_id, project, user="alice", task="detect", *, size=None, objects=None, gpu=None, cpu=None,
         submitted="2026-11-01T10:00:00Z"):
    return {"run_id": run_id, "project": project, "user": user, "task": task, "submitted_at": submitted,
            "end": submitted, **({"bytes": size, "objects": objects} if size is not None else {}),
            **({"gpu_hours": gpu, "cpu_hours": cpu} if gpu is not None else {})}


RECORDS = [
    _rec("r1", "pcb", size=1000, objects=5, gpu=2.0, cpu=16.0),
    _rec("r2", "pcb", user="bob", size=500, objects=4, gpu=0.5, cpu=4.0, submitted="2026-11-20T00:00:00Z"),
    _rec("r3", "wafer", task="classify", size=3000, objects=7, gpu=0.0, cpu=1.0),
    _rec("r4", "wafer", task="classify"),  # indexed before sizes and hours were recorded
]


def test_groups_sum_runs_objects_bytes_and_hours_largest_first():
    rows = usage_table(RECORDS, by="project")
    assert [r["project"] for r in rows] == ["wafer", "pcb"]
    assert rows[1] == {"project": "pcb", "runs": 2, "objects": 9, "bytes": 1500, "gpu_hours": 2.5,
                       "cpu_hours": 20.0, "unsized": 0, "unmetered": 0}
    # the old record is a run, but its size and hours are not guessed: it is counted apart
    assert rows[0]["runs"] == 2 and rows[0]["bytes"] == 3000 and rows[0]["unsized"] == 1 and rows[0]["unmetered"] == 1
    assert totals(rows)["bytes"] == 4500 and totals(rows)["runs"] == 4


def test_by_user_and_task_and_since():
    assert {r["user"]: r["bytes"] for r in usage_table(RECORDS, by="user")} == {"alice": 4000, "bob": 500}
    assert {r["task"]: r["runs"] for r in usage_table(RECORDS, by="task")} == {"classify": 2, "detect": 2}
    since = datetime(2026, 11, 10, tzinfo=timezone.utc)
    assert usage_table(RECORDS, by="project", since=since) == [
        {"project": "pcb", "runs": 1, "objects": 4, "bytes": 500, "gpu_hours": 0.5, "cpu_hours": 4.0,
         "unsized": 0, "unmetered": 0}]
    with pytest.raises(ValueError, match="model"):
        usage_table(RECORDS, by="model")


def test_monthly_cost_follows_the_lifecycle_classes():
    rules = [{"Status": "Enabled", "Transitions": [{"Days": 30, "StorageClass": "STANDARD_IA"}]},
             {"Status": "Disabled", "Transitions": [{"Days": 1, "StorageClass": "GLACIER"}]}]
    transitions = lifecycle_transitions(rules)
    assert transitions == [(30, "STANDARD_IA")]
    assert storage_class(29.9, transitions) == "STANDARD" and storage_class(31, transitions) == "STANDARD_IA"
    now = datetime(2026, 11, 25, tzinfo=timezone.utc)  # r2 is 5 days old, the others 24
    records = [_rec("a", "p", size=2e9, objects=1, submitted="2026-10-01T00:00:00Z"),
               _rec("b", "p", size=1e9, objects=1, submitted="2026-11-20T00:00:00Z"), _rec("c", "q")]
    cost = monthly_cost(records, "project", {"STANDARD": 0.023, "STANDARD_IA": 0.0125}, transitions, now=now)
    assert cost == {"p": round(2 * 0.0125 + 0.023, 4), "q": 0.0}
