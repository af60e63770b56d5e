"""``run.json``: the record of one run, and atomic reads and writes of it.

The launcher creates it, the job fills in the environment, attempts, status and metrics,
and the epilog records the end state of each attempt. Each writer replaces the whole file
atomically (temp file in the same folder + ``os.replace``), so a reader never sees half a
record and a kill mid-write leaves the previous version.

Schema (``schema: 1``)::

    run_id, sweep_id, array_index, reproduces
    task, project, model_name, user, uid, host, submitted_at
    config        the fully resolved config
    code          {repo, commit, dirty} or null
    dataset       {path, version, fingerprint, files}
    archive_url   s3://.../<task>/<project>/<model_name>/<run_id>/
    slurm         {job_id, array_job_id, array_task_id}
    environment   {python, torch, ultralytics, cuda, gpu, node, platform}
    attempts      [{attempt, node, start, end, end_state, exit_code, epoch, signals: [{signal, time}]}]
    status        SUBMITTED | RUNNING | COMPLETED | FAILED | ... (what the job last said)
    end_state     the epilog's verdict for the last attempt: COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT,
                  CANCELLED, PREEMPTED, REQUEUED, NODE_FAIL or UNKNOWN (states.EndState, docs/admin.md)
    metrics       {epoch, map50, map50_95, precision, recall} best row of results.csv

Next to it, ``.placement.json`` (:func:`write_placement`) keeps where the run is archived
(``run_id``, ``task``, ``project``, ``model_name``, ``archive_url``), written once at submit
time: a run.json damaged later does not move the run away from the URL ``submit`` printed.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from slurm_yolo.runfolder import PLACEMENT, RUN_JSON, RUN_LOCK

SCHEMA_VERSION = 1
# What the epilog needs to place a run in the store when run.json cannot be used.
PLACEMENT_KEYS = ("run_id", "task", "project", "model_name", "archive_url")

# results.csv column -> metric name in run.json (Ultralytics' detection columns).
METRIC_COLUMNS = {
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with seconds, e.g. ``2026-11-22T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_record(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``run_dir/run.json``.

    Raises:
        FileNotFoundError: no record there.
        ValueError: the file is not a JSON object.
    """
    with open(Path(run_dir) / RUN_JSON, encoding="utf-8") as f:
        record = json.load(f)
    if not isinstance(record, dict):
        raise ValueError(f"{run_dir}/{RUN_JSON} is not a JSON object")
    return record


def write_json_atomic(path: str | os.PathLike[str], obj: Any, mode: int = 0o644) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_record(run_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Atomically replace ``run_dir/run.json`` with ``record``."""
    write_json_atomic(Path(run_dir) / RUN_JSON, record)


def update_record(run_dir: str | os.PathLike[str], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read the record, apply ``change`` to it in place, write it back atomically; return it.

    The launcher (recording the job ID right after sbatch) and a job that already started
    can overlap, so the read-modify-write holds an exclusive ``flock`` on ``.run.lock``.
    """
    lock_fd = os.open(Path(run_dir) / RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        record = read_record(run_dir)
        change(record)
        write_record(run_dir, record)
        return record
    finally:
        os.close(lock_fd)


def placement_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The placement of a run (:data:`PLACEMENT_KEYS`) from its record."""
    return {k: record.get(k) for k in PLACEMENT_KEYS}


def write_placement(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Write ``run_dir/.placement.json`` atomically from the run's initial record.

    The launcher calls it once, at submit time, beside the first run.json; nothing rewrites
    it afterwards, so whatever happens to run.json, the epilog still knows where the run goes.
    """
    write_json_atomic(Path(run_dir) / PLACEMENT, placement_of(record))


def read_metrics(results_csv: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Best epoch's metrics from an Ultralytics ``results.csv`` (best by mAP50-95).

    Returns ``None`` when the file is missing or has no data rows yet. Column names are
    stripped: older Ultralytics versions pad them with spaces.
    """
    rows = read_results_rows(results_csv)
    if not rows:
        return None
    best = max(rows, key=lambda r: r.get("map50_95") if r.get("map50_95") is not None else -1.0)
    best = dict(best)
    best["epochs_done"] = len(rows)
    return best


def read_results_rows(results_csv: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All rows of ``results.csv`` as ``{epoch, map50, map50_95, precision, recall}`` dicts."""
    try:
        with open(results_csv, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            raw_rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except FileNotFoundError:
        return []
    rows = []
    for raw in raw_rows:
        row: dict[str, Any] = {"epoch": _num(raw.get("epoch"), int)}
        for column, name in METRIC_COLUMNS.items():
            row[name] = _num(raw.get(column), float)
        rows.append(row)
    return rows


def _num(text: str | None, kind: type):
    try:
        return kind(float(text)) if text not in (None, "") else None
    except ValueError:
        return None
